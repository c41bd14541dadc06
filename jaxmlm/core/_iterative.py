"""The iterative path: the linear mixed model's objective without factoring, for crossed designs whose dense tail
(the Schur complement left after the largest factor is eliminated) will not fit in memory.

With A = ΛᵀZᵀWZΛ + I (m × m) every piece of the profiled deviance is reached through products with Z alone
(segment sums over rows, O(rows + levels) memory):

* log det A = log det A₁₁ + log det S. A₁₁, the block of the term with the most columns, is block diagonal (its
  levels do not couple), so its log-determinant is exact; S = A_rr − A_r1 A₁₁⁻¹ A_1r, the Schur complement on the
  other terms, is applied matrix-free (two products with A) and scaled by its per-level diagonal blocks D_r
  (exact log det D_r). What remains, log det(L_r⁻¹ S L_r⁻ᵀ), is estimated by Hutch++ with stochastic Lanczos
  quadrature (`_slq_logdet`). Sketch and probes are drawn once from a fixed seed, so the estimate is a smooth,
  deterministic function of θ (the optimizer sees no noise); its standard error over the probes is reported.
* A⁻¹[ΛᵀZᵀWX, ΛᵀZᵀWy] by block-Jacobi preconditioned conjugate gradients (columns in lockstep), giving the Schur
  complement S_X = XᵀWX − XᵀWZΛ A⁻¹ ΛᵀZᵀWX (log det for REML, vcov(β)), β, u = A⁻¹ΛᵀZᵀW(y − Xβ), and the
  penalized residual sum of squares r² evaluated directly at (β, u) (its error is second order in the solver's).

ML: d = log det A + n(1 + log(2π r²/n)) − Σ log w; REML adds log det S_X with n − p for n (as `_lmm`). Given θ, β and
u are exact to the solver's tolerance; only log det A is estimated, so the objective, and through it θ, carry the
quadrature's error (tests/test_iterative.py measures it against the direct path).

Products with the Schur complement go by rows (a gather and a segment sum per side) or, where the first term's
cross-products with the others are small against the rows (`make_iterative_problem`'s `products`), as matrix
products from those θ-free cross-products: the same numbers to rounding, faster at those sizes (docs/scale.md,
the iterative path, has the costs).
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._callback import float64_callback
from ._linalg import theta_to_factors
from ._lmm import _deviance
from .._compile import jit

__all__ = ["IterativeProblem", "make_iterative_problem", "iterative_deviance", "iterative_estimates"]

class IterativeProblem(eqx.Module):
    """The rows themselves and their θ-free summaries (pairwise cross-products only for small designs: `cross`)."""

    codes: tuple[jax.Array, ...]  # per term: (n,) level of each row
    z: tuple[jax.Array, ...]  # per term: (n, q) random-effects columns
    level_zz: tuple[jax.Array, ...]  # per term: (l, q, q) Σ_rows w z zᵀ per level (D before Λ)
    X: jax.Array  # (n, p)
    y: jax.Array  # (n,) response minus offset
    w: jax.Array  # (n,) weights
    xwx: jax.Array  # (p, p)
    n: jax.Array  # rows with positive weight
    sum_log_w: jax.Array
    probes: jax.Array  # (m − m_first, P) Rademacher probes, fixed
    sketch: jax.Array  # (m − m_first, s) Gaussian sketch for Hutch++, fixed
    cross: jax.Array | None  # small designs: Z_1ᵀWZ_r (m_first, m − m_first), the first term against the rest
    rest_gram: jax.Array | None  # and Z_rᵀWZ_r (m − m_first, m − m_first); None: products by rows
    qs: tuple[int, ...] = eqx.field(static=True)
    n_levels: tuple[int, ...] = eqx.field(static=True)
    first: int = eqx.field(static=True)  # the term eliminated exactly (the most columns)

    @property
    def p(self) -> int:
        return self.X.shape[1]


# Products by dense cross-products when they hold at most this many numbers per number of the rows' own
# random-effects columns (n Σq): their memory stays O(rows), and below that size a matrix product beats a gather
# and a segment sum over the rows at both compile efforts (docs/scale.md, the iterative path, has the crossover).
DENSE_CROSS_PER_ROW_ENTRY = 8
DENSE_CROSS_MAX = 1 << 24


def make_iterative_problem(codes, zs, n_levels, X, y, weights, n_probes: int, seed: int,
                           sketch_size: int, products: str = "auto") -> IterativeProblem:
    """products: "rows" (gathers and segment sums over the rows, O(rows + levels) memory), "dense" (the first
    term's and the others' cross-products formed once, θ-free) or "auto" (dense while they are small against the
    rows: DENSE_CROSS_PER_ROW_ENTRY, DENSE_CROSS_MAX). Either gives the same estimate to rounding."""
    if products not in ("auto", "rows", "dense"):
        raise ValueError(f"products must be 'auto', 'rows' or 'dense', got {products!r}")
    qs = tuple(int(z.shape[1]) for z in zs)
    n_levels = tuple(int(l) for l in n_levels)
    w = jnp.asarray(weights, dtype=jnp.float64)
    codes = tuple(jnp.asarray(c, dtype=jnp.int32) for c in codes)
    zs = tuple(jnp.asarray(z, dtype=jnp.float64) for z in zs)
    level_zz = tuple(jax.ops.segment_sum(w[:, None, None] * z[:, :, None] * z[:, None, :], c, num_segments=l)
                     for c, z, l in zip(codes, zs, n_levels))
    X = jnp.asarray(X, dtype=jnp.float64)
    positive = w > 0
    sizes = [l * q for l, q in zip(n_levels, qs)]
    first = int(np.argmax(sizes))
    m_rest = sum(sizes) - sizes[first]
    key_probes, key_sketch = jax.random.split(jax.random.PRNGKey(seed))
    probes = jax.random.rademacher(key_probes, (m_rest, n_probes), dtype=jnp.float64)
    sketch = jax.random.normal(key_sketch, (m_rest, min(sketch_size, m_rest)), dtype=jnp.float64)
    entries = m_rest * (sizes[first] + m_rest)
    dense = m_rest > 0 and (products == "dense" or products == "auto" and entries <= DENSE_CROSS_MAX
                            and entries <= DENSE_CROSS_PER_ROW_ENTRY * int(w.shape[0]) * sum(qs))
    cross, rest_gram = _cross_products(codes, zs, w, n_levels, first) if dense else (None, None)
    return IterativeProblem(
        cross=cross, rest_gram=rest_gram, codes=codes, z=zs, level_zz=level_zz, X=X, y=jnp.asarray(y, dtype=jnp.float64), w=w,
        xwx=X.T @ (w[:, None] * X), n=jnp.sum(positive).astype(jnp.float64),
        sum_log_w=jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, w, 1.0)), 0.0)),
        probes=probes, sketch=sketch, qs=qs, n_levels=n_levels, first=first,
    )


def _cross_products(codes, zs, w, n_levels, first):
    """Z_1ᵀWZ_r (m_first, m_rest) and Z_rᵀWZ_r (m_rest, m_rest), r the other terms in order: one segment sum per
    pair of terms over (row column, column column) positions."""
    rest = [k for k in range(len(zs)) if k != first]
    qs = [int(z.shape[1]) for z in zs]
    offsets = np.cumsum([0] + [n_levels[k] * qs[k] for k in rest])
    m_rest = int(offsets[-1])

    def index(k, offset):  # (n, q): the coordinate of each row's column j of term k
        return offset + codes[k][:, None] * qs[k] + jnp.arange(qs[k], dtype=jnp.int32)

    def block(j, size_j):
        total = 0.0
        for k, offset in zip(rest, offsets[:-1]):
            rows, cols = index(j, 0), index(k, int(offset))
            vals = w[:, None, None] * zs[j][:, :, None] * zs[k][:, None, :]
            flat = rows[:, :, None] * m_rest + cols[:, None, :]
            total = total + jax.ops.segment_sum(vals.reshape(-1), flat.reshape(-1), num_segments=size_j * m_rest)
        return total.reshape(size_j, m_rest)

    cross = block(first, n_levels[first] * qs[first])
    rest_gram = sum(jnp.pad(block(k, n_levels[k] * qs[k]),
                            ((int(offset), m_rest - int(offset) - n_levels[k] * qs[k]), (0, 0)))
                    for k, offset in zip(rest, offsets[:-1]))
    return cross, rest_gram


# ----------------------------------------------------------------------------------------- products with Z
def _split(V, problem, terms=None):
    """(m, c) → per term (l, q, c); `terms`: V holds only these terms' rows."""
    terms = range(len(problem.qs)) if terms is None else terms
    out, pos = [], 0
    for k in terms:
        l, q = problem.n_levels[k], problem.qs[k]
        out.append(V[pos : pos + l * q].reshape(l, q, -1))
        pos += l * q
    return out


def _rows(parts, factors, problem, terms):
    """Σ_k Z_k T_k V_k over `terms` for V_k (l, q, c): (n, c). T is applied per level, before the gather."""
    total = 0.0
    for Vk, k in zip(parts, terms):
        Bk = _times_factor([Vk], factors, [k], False)[0][problem.codes[k]]  # (n, q, c)
        z = problem.z[k]
        total = total + (Bk[:, 0] * z[:, :1] if problem.qs[k] == 1 else jnp.sum(z[:, :, None] * Bk, axis=1))
    return total


def _levels(R, factors, problem, terms):
    """T_kᵀ Z_kᵀ R for R (n, c), per term in `terms`: (l, q, c)."""
    out = []
    for k in terms:
        z = problem.z[k]
        G = jax.ops.segment_sum(z[:, :, None] * R[:, None, :], problem.codes[k], num_segments=problem.n_levels[k])
        out.append(_times_factor([G], factors, [k], True)[0])
    return out


def _flat(parts):
    return jnp.concatenate([p.reshape(-1, p.shape[-1]) for p in parts], axis=0)


def _times_factor(parts, factors, terms, transpose: bool):
    """T_k V_k (or T_kᵀ V_k) per level, per term."""
    spec = "ji,ljc->lic" if transpose else "ij,ljc->lic"
    # a one-column term's factor is a scalar: a product, not a batched matrix product per level
    return [factors[k][0, 0] * Vk if Vk.shape[1] == 1 else jnp.einsum(spec, factors[k], Vk)
            for Vk, k in zip(parts, terms)]


def _z_lambda(V, factors, problem):
    """ZΛ V for V (m, c): (n, c)."""
    terms = range(len(problem.qs))
    return _rows(_split(V, problem), factors, problem, terms)


def _z_lambda_t(R, factors, problem):
    """ΛᵀZᵀ R for R (n, c): (m, c)."""
    return _flat(_levels(R, factors, problem, range(len(problem.qs))))


def _apply_A(V, factors, problem):
    """(ΛᵀZᵀWZΛ + I) V: by rows, or from the dense cross-products when the problem holds them."""
    if problem.cross is None:
        return _z_lambda_t(problem.w[:, None] * _z_lambda(V, factors, problem), factors, problem) + V
    k1, rest = problem.first, _rest(problem)
    parts = _split(V, problem)
    v1 = _times_factor([parts[k1]], factors, [k1], False)[0]
    vr = _flat(_times_factor([parts[k] for k in rest], factors, rest, False))
    y1 = jnp.einsum("lij,ljc->lic", problem.level_zz[k1], v1) + (problem.cross @ vr).reshape(v1.shape)
    yr = problem.cross.T @ v1.reshape(-1, V.shape[1]) + problem.rest_gram @ vr
    out = _split(yr, problem, rest)
    out.insert(k1, y1)
    terms = list(rest)
    terms.insert(k1, k1)
    return _flat(_times_factor(out, factors, terms, True)) + V


def _rest(problem):
    return [k for k in range(len(problem.qs)) if k != problem.first]


def _diagonal_factors(factors, problem):
    """Cholesky factors of A's per-level diagonal blocks Tᵀ(Σ w z zᵀ)T + I: per term (l, q, q)."""
    out = []
    for Tk, G in zip(factors, problem.level_zz):
        D = jnp.einsum("ji,ljk,km->lim", Tk, G, Tk) + jnp.eye(Tk.shape[0], dtype=G.dtype)
        out.append(jnp.linalg.cholesky(D))
    return out


def _block_solve(L_blocks, V, problem, transpose: bool, terms=None):
    """L_D⁻¹ V (or L_D⁻ᵀ V) for V (m, c), block by block; `terms`: V holds only these terms' rows."""
    terms = range(len(problem.qs)) if terms is None else terms
    parts = [Vk / L_blocks[k] if problem.qs[k] == 1 else  # 1 × 1 blocks: a division per level
             jax.lax.linalg.triangular_solve(L_blocks[k], Vk, left_side=True, lower=True, transpose_a=transpose)
             for k, Vk in zip(terms, _split(V, problem, terms))]
    return _flat(parts)


def _schur_operator(factors, L_blocks, problem):
    """u ↦ S u for the Schur complement S = A_rr − A_r1 A_11⁻¹ A_1r of the first term's block A_11 (block
    diagonal: its levels do not couple, so A_11⁻¹ is exact), on the other terms' coordinates. With η = Z_r Λ_r u
    and ξ = Z_1 Λ_1 A_11⁻¹ Λ_1ᵀ Z_1ᵀ W η, S u = Λ_rᵀ Z_rᵀ W (η − ξ) + u: one gather and one segment sum per side
    (the zero blocks of two full products with A are never formed). From the dense cross-products (small
    designs, `make_iterative_problem`) the same three products are matrix products."""
    k1, rest = problem.first, _rest(problem)

    def inverse_first(Y1):  # A_11⁻¹ Y1 (per level, exact)
        return _block_solve(L_blocks, _block_solve(L_blocks, Y1, problem, False, [k1]), problem, True, [k1])

    def S_rows(u):
        w = problem.w[:, None]
        eta = _rows(_split(u, problem, rest), factors, problem, rest)
        t1 = inverse_first(_flat(_levels(w * eta, factors, problem, [k1])))
        xi = _rows(_split(t1, problem, [k1]), factors, problem, [k1])
        return _flat(_levels(w * (eta - xi), factors, problem, rest)) + u

    def S_dense(u):
        v = _flat(_times_factor(_split(u, problem, rest), factors, rest, False))
        y1 = _times_factor(_split(problem.cross @ v, problem, [k1]), factors, [k1], True)
        s1 = _times_factor(_split(inverse_first(_flat(y1)), problem, [k1]), factors, [k1], False)
        y = problem.rest_gram @ v - problem.cross.T @ _flat(s1)
        return _flat(_times_factor(_split(y, problem, rest), factors, rest, True)) + u

    return (S_rows if problem.cross is None else S_dense), rest


# --------------------------------------------------------------------------------------------- the solvers
def _pcg(apply, precondition, B, tol: float, max_iter: int):
    """Solve apply(X) = B for every column of B (m, c) by preconditioned conjugate gradients, columns in lockstep.
    Stops when every column's residual norm is below tol × its right-hand side's. Returns (X, iterations,
    largest relative residual)."""
    b_norm = jnp.maximum(jnp.linalg.norm(B, axis=0), 1e-300)
    X = precondition(B)
    R = B - apply(X)
    Zr = precondition(R)
    P = Zr
    rz = jnp.sum(R * Zr, axis=0)

    def cond(s):
        X, R, P, rz, it = s
        return (it < max_iter) & jnp.any(jnp.linalg.norm(R, axis=0) > tol * b_norm)

    def body(s):
        X, R, P, rz, it = s
        AP = apply(P)
        alpha = rz / jnp.where(rz == 0, 1.0, jnp.sum(P * AP, axis=0))
        alpha = jnp.where(rz == 0, 0.0, alpha)
        X = X + alpha * P
        R = R - alpha * AP
        Zr = precondition(R)
        rz_new = jnp.sum(R * Zr, axis=0)
        P = Zr + jnp.where(rz == 0, 0.0, rz_new / jnp.where(rz == 0, 1.0, rz)) * P
        return X, R, P, rz_new, it + 1

    X, R, _, _, it = jax.lax.while_loop(cond, body, (X, R, P, rz, jnp.asarray(0)))
    return X, it, jnp.max(jnp.linalg.norm(R, axis=0) / b_norm)


def _lanczos_quadrature(apply, probes, steps: int):
    """vᵀ log(M) v for every column v of probes (m, P), by `steps` Lanczos steps from v (Gauss quadrature of the
    spectral measure). No reorthogonalization: the quadrature tolerates the loss of orthogonality."""
    norms2 = jnp.sum(probes * probes, axis=0)
    Q0 = probes / jnp.sqrt(jnp.maximum(norms2, 1e-300))

    def step(carry, _):
        Q, Q_prev, beta_prev = carry
        W = apply(Q) - beta_prev * Q_prev
        alpha = jnp.sum(Q * W, axis=0)
        W = W - alpha * Q
        beta = jnp.linalg.norm(W, axis=0)
        beta = jnp.where(beta > 1e-12, beta, 0.0)  # breakdown: the Krylov space is exhausted, T decouples
        Q_next = W / jnp.where(beta > 0, beta, 1.0) * (beta > 0)
        return (Q_next, Q, beta), (alpha, beta)

    zeros = jnp.zeros_like(norms2)
    _, (alphas, betas) = jax.lax.scan(step, (Q0, jnp.zeros_like(Q0), zeros), None, length=steps)
    log_quadrature = float64_callback(_tridiagonal_log_quadrature, norms2.shape, alphas, betas)
    return norms2 * log_quadrature


def _tridiagonal_log_quadrature(alphas: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """e₀ᵀ log(T) e₀ for each probe's Lanczos tridiagonal T (diagonal alphas[:, p], off-diagonal betas[:-1, p]),
    from its eigenpairs by LAPACK on the host, all probes in one batched call: inside these programs XLA's CPU
    eigh of the batch never returned for 32 or fewer Lanczos steps (33 and more did). A breakdown (β = 0) leaves
    a zero block whose eigenvectors carry no weight on e₀."""
    alphas, betas = np.asarray(alphas).T, np.asarray(betas).T  # (P, steps)
    k = alphas.shape[1]
    T = np.zeros((alphas.shape[0], k, k))
    diagonal, below = np.arange(k), np.arange(k - 1)
    T[:, diagonal, diagonal] = alphas
    T[:, below + 1, below] = betas[:, :-1]
    T[:, below, below + 1] = betas[:, :-1]
    lam, U = np.linalg.eigh(T)
    weight = U[:, 0, :] ** 2
    return np.sum(np.where(weight > 0, weight * np.log(np.maximum(lam, 1e-300)), 0.0), axis=1)


def _slq_logdet(apply, probes, sketch, steps: int, sketch_iterations: int):
    """log det M for the SPD operator `apply` by Hutch++ (Meyer, Musco, Musco & Woodruff 2021) with Lanczos
    quadrature: tr(log M) = tr(Qᵀ log(M) Q) + tr((I − QQᵀ) log(M) (I − QQᵀ)), Q an orthonormal basis of
    M⁻¹·sketch (a fixed number of conjugate-gradient steps, so Q is smooth in θ). The first term is computed
    exactly (up to quadrature) on Q's columns; only the second, whose dominant directions Q has removed, is
    estimated from the probes. The directions that dominate log M are those of M's smallest eigenvalues (strongly
    coupled levels), hence the inverse sketch. Returns (estimate, standard error)."""
    if sketch.shape[1]:
        Y, _, _ = _pcg(apply, lambda V: V, sketch, 1e-14, sketch_iterations)
        Q, _ = jnp.linalg.qr(Y)
        probes = probes - Q @ (Q.T @ probes)
        # the basis and the probes in one Lanczos run (its columns are independent): one loop, one callback
        both = _lanczos_quadrature(apply, jnp.concatenate([Q, probes], axis=1), steps)
        head, per_probe = jnp.sum(both[: Q.shape[1]]), both[Q.shape[1]:]
    else:
        per_probe = _lanczos_quadrature(apply, probes, steps)
        head = jnp.zeros((), probes.dtype)
    return head + jnp.mean(per_probe), jnp.std(per_probe, ddof=1) / jnp.sqrt(probes.shape[1])


def _solve_all(theta, problem: IterativeProblem, lanczos_steps: int, cg_tol: float, cg_max_iter: int,
               sketch_iterations: int):
    factors = theta_to_factors(theta, problem.qs)
    L_blocks = _diagonal_factors(factors, problem)
    logdet_D = sum(2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1))) for L in L_blocks)

    def apply(V):
        return _apply_A(V, factors, problem)

    def precondition(V):
        return _block_solve(L_blocks, _block_solve(L_blocks, V, problem, False), problem, True)

    # log det A = log det A_11 + log det S (S: the Schur complement of the first term's exact block);
    # log det S = log det D_r + log det(L_r⁻¹ S L_r⁻ᵀ), the last by quadrature
    if len(problem.qs) > 1:
        S, rest = _schur_operator(factors, L_blocks, problem)

        def apply_scaled(V):
            inner = S(_block_solve(L_blocks, V, problem, True, rest))
            return _block_solve(L_blocks, inner, problem, False, rest)

        logdet_scaled, logdet_se = _slq_logdet(apply_scaled, problem.probes, problem.sketch, lanczos_steps,
                                               sketch_iterations)
    else:  # one term: A is its own block diagonal, log det D is exact
        logdet_scaled, logdet_se = jnp.zeros((), theta.dtype), jnp.zeros((), theta.dtype)
    wX = problem.w[:, None] * problem.X
    rhs = _z_lambda_t(jnp.concatenate([wX, (problem.w * problem.y)[:, None]], axis=1), factors, problem)
    sol, iterations, residual = _pcg(apply, precondition, rhs, cg_tol, cg_max_iter)
    p = problem.p
    C = rhs[:, :p]
    S_x = problem.xwx - C.T @ sol[:, :p]
    S_x = 0.5 * (S_x + S_x.T)
    L_x = jnp.linalg.cholesky(S_x)
    xwy = wX.T @ problem.y
    beta = jax.scipy.linalg.cho_solve((L_x, True), xwy - C.T @ sol[:, p])
    u = sol[:, p] - sol[:, :p] @ beta  # A⁻¹ΛᵀZᵀW(y − Xβ)
    resid = problem.y - problem.X @ beta - _z_lambda(u[:, None], factors, problem)[:, 0]
    r2 = jnp.sum(problem.w * resid**2) + jnp.sum(u**2)
    return dict(factors=factors, logdet_z=logdet_D + logdet_scaled, logdet_se=logdet_se,
                logdet_x=2.0 * jnp.sum(jnp.log(jnp.diagonal(L_x))), L_x=L_x, beta=beta, u=u, r2=r2,
                cg_iterations=iterations, cg_residual=residual)


def _objective(parts, problem: IterativeProblem, reml: bool):
    return _deviance(parts["logdet_z"], parts["logdet_x"], jnp.log(parts["r2"]), problem, reml)


@jit(static_argnames=("reml", "lanczos_steps", "cg_tol", "cg_max_iter", "sketch_iterations"))
def iterative_deviance(theta, problem: IterativeProblem, reml: bool, lanczos_steps: int = 30, cg_tol: float = 1e-10,
                       cg_max_iter: int = 2000, sketch_iterations: int = 20):
    """The profiled deviance (ML) or REML criterion at θ, its log-determinant's standard error, and the largest
    relative residual the conjugate gradients left."""
    parts = _solve_all(theta, problem, lanczos_steps, cg_tol, cg_max_iter, sketch_iterations)
    return _objective(parts, problem, reml), parts["logdet_se"], parts["cg_residual"]


@jit(static_argnames=("reml", "lanczos_steps", "cg_tol", "cg_max_iter", "sketch_iterations"))
def iterative_estimates(theta, problem: IterativeProblem, reml: bool, lanczos_steps: int = 30,
                        cg_tol: float = 1e-10, cg_max_iter: int = 2000, sketch_iterations: int = 20):
    """β, b per term, σ, vcov(β), the objective and its standard error at θ."""
    parts = _solve_all(theta, problem, lanczos_steps, cg_tol, cg_max_iter, sketch_iterations)
    n, p = problem.n, problem.p
    sigma = jnp.sqrt(parts["r2"] / (n - p if reml else n))
    inv_lx = jax.scipy.linalg.solve_triangular(parts["L_x"], jnp.eye(p, dtype=theta.dtype), lower=True)
    b = tuple(jnp.einsum("ij,lj->li", Tk, uk[:, :, 0]) for Tk, uk in
              zip(parts["factors"], _split(parts["u"][:, None], problem)))
    return dict(beta=parts["beta"], b=b, sigma=sigma, vcov=sigma**2 * inv_lx.T @ inv_lx,
                objective=_objective(parts, problem, reml), objective_se=parts["logdet_se"],
                cg_iterations=parts["cg_iterations"], cg_residual=parts["cg_residual"])
