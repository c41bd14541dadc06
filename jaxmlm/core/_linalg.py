"""Blocked Cholesky factor of Λθᵀ[Z F]ᵀW[Z F]Λθ + diag(I, 0), and the solves that use it.

For θ, each term's relative covariance factor T_k (lower triangular, q×q) scales its columns. The prefix terms are
eliminated level by level in a batch (small unrolled Choleskys and triangular solves, vectorized over levels and
worked level-minor: see `_levelwise`), pushing their updates into later prefix terms through the parent maps and
into the dense tail through the entry pairs. The tail (crossed terms, then F) is factored densely.

The tail is updated in *unscaled* coordinates (its Λ is applied after the prefix is eliminated), which is exact
because Λ is block diagonal: S_tail = Λ_tailᵀ (A_tail − A_tp Λ_p M_pp⁻¹ Λ_pᵀ A_pt) Λ_tail + I.

S_tail is symmetric and is carried by its lower triangle only (LAPACK's potrf reads no more): the prefix's updates
land in the lower triangle, and neither the objective nor its gradient pays for dense passes that would mirror
them (at InstEval's 1146² tail those passes, and their transposes in the gradient, cost more than the Cholesky).
"""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from . import _levelwise as lw
from ._callback import float64_callback
from ._blocks import Blocks, Structure, same_q_runs

__all__ = ["Factor", "theta_to_factors", "factorize", "eliminate_prefix", "tail_log_terms", "solve_coefficients",
           "solve_modes", "solve_left_lower_t", "prefix_log_terms", "inverse_from_cholesky", "same_q_runs", "scale_modes",
           "scale_columns", "column_scale"]

# Inside fits, the inverse S_zz⁻¹ that the gradient needs comes from LAPACK's potri on the host (a callback) for
# dense tails at least this large on the CPU, several times faster there than XLA's triangular solve and product;
# the factor itself stays in XLA, which was faster end to end (measurements: docs/scale.md). The public objective
# (`_problem`) never takes the callback.
_HOST_LAPACK_MIN = 512

# Dense matrices this small (the tail of a model without crossed terms holds only its fixed effects and the
# response) are factored, inverted and solved by unrolled formulas (`_levelwise`'s, O(n³) traced operations),
# not by LAPACK: a program without LAPACK's custom calls never needs its kernels, which jaxlib registers through
# SciPy's LAPACK wrappers (their import is a fifth of a second of a first fit), and at these sizes a call's
# overhead exceeds its arithmetic.
SMALL_DENSE = lw.UNROLL_MAX


def _small(n: int) -> bool:
    return n <= SMALL_DENSE


def _small_cholesky(S: jax.Array) -> jax.Array:
    """The lower Cholesky factor of the symmetric matrix whose lower triangle is S's (n ≤ SMALL_DENSE, leading
    batch axes allowed), zeros above; NaN everywhere when S is not positive definite, as LAPACK's is in jax."""
    n = S.shape[-1]
    if n == 0:
        return S
    L = lw.cholesky([[S[..., i, j] for j in range(n)] for i in range(n)])
    out = _stack_lower(L, n)
    diag = jnp.diagonal(out, axis1=-2, axis2=-1)
    ok = jnp.all((diag > 0) & jnp.isfinite(diag), axis=-1)
    return jnp.where(ok[..., None, None], out, jnp.nan)


def _stack_lower(L, n: int) -> jax.Array:
    zero = jnp.zeros_like(L[0][0])
    return jnp.stack([jnp.stack([L[i][j] if j <= i else zero for j in range(n)], axis=-1) for i in range(n)],
                     axis=-2)


def _small_lower_inverse(L: jax.Array) -> jax.Array:
    """L⁻¹ of a lower triangular L (n ≤ SMALL_DENSE) by forward substitution against I, unrolled."""
    n = L.shape[-1]
    if n == 0:
        return L
    X = [[None] * n for _ in range(n)]
    for i in range(n):
        X[i][i] = 1.0 / L[..., i, i]
        for j in range(i):
            s = L[..., i, j] * X[j][j]
            for k in range(j + 1, i):
                s = s + L[..., i, k] * X[k][j]
            X[i][j] = -s * X[i][i]
    return _stack_lower(X, n)


def lower_inverse(L: jax.Array) -> jax.Array:
    """L⁻¹ of a lower triangular L: unrolled for small n, else one triangular solve against I."""
    n = L.shape[-1]
    if _small(n):
        return _small_lower_inverse(L)
    return jax.lax.linalg.triangular_solve(L, jnp.eye(n, dtype=L.dtype), left_side=True, lower=True)


def theta_to_factors(theta: jax.Array, qs: tuple[int, ...]) -> list[jax.Array]:
    """θ (per term, lower triangle column-major, lme4's layout) → list of q×q lower-triangular T_k."""
    # a reshape (q = 1) or one gather from a static index per term, not a scatter into zeros: a scatter's HLO is
    # large, and every program that touches Λ holds a copy per term
    out = []
    pos = 0
    for q in qs:
        k = q * (q + 1) // 2
        if q == 1:
            out.append(theta[pos : pos + 1].reshape(1, 1))
        else:
            padded = jnp.concatenate([theta[pos : pos + k], jnp.zeros((1,), dtype=theta.dtype)])
            out.append(padded[_tril_index(q)])
        pos += k
    return out


def _tril_index(q: int) -> np.ndarray:
    """(q, q) positions of T's elements in a term's θ (lme4's column-major lower triangle); q(q+1)/2 above."""
    index = np.full((q, q), q * (q + 1) // 2)
    for i, (r, c) in enumerate((r, c) for c in range(q) for r in range(c, q)):
        index[r, c] = i
    return index


def run_factors(theta: jax.Array, qs: tuple[int, ...], first: int, end: int) -> jax.Array:
    """(K, q, q): the T_k of the run of terms first..end (all of one q), one reshape or one gather."""
    q = qs[first]
    k = q * (q + 1) // 2
    pos = sum(p * (p + 1) // 2 for p in qs[:first])
    th = theta[pos : pos + (end - first) * k].reshape(end - first, k)
    if q == 1:
        return th.reshape(end - first, 1, 1)
    padded = jnp.concatenate([th, jnp.zeros((end - first, 1), dtype=theta.dtype)], axis=1)
    return padded[:, _tril_index(q)]


def _level_terms(n_levels: tuple[int, ...]) -> jax.Array | None:
    """Per level of a run (levels of its terms one after another), the term's position in the run; None for one
    term. From the K − 1 boundaries, not a per-level constant (the program stays small for any number of levels)."""
    if len(n_levels) == 1:
        return None
    bounds = jnp.asarray(np.cumsum(n_levels)[:-1], dtype=jnp.int32)
    return jnp.sum(jnp.arange(sum(n_levels), dtype=jnp.int32)[:, None] >= bounds[None, :], axis=1)


def level_factors(theta: jax.Array, qs: tuple[int, ...], n_levels: tuple[int, ...], first: int,
                  end: int) -> jax.Array:
    """T of each level's term over the run first..end: (Σ l, q, q), or (1, q, q) for a one-term run."""
    T = run_factors(theta, qs, first, end)
    terms = _level_terms(tuple(n_levels[first:end]))
    return T if terms is None else T[terms]


def scale_modes(theta: jax.Array, qs: tuple[int, ...], n_levels: tuple[int, ...], u: jax.Array, first: int = 0,
                stop: int | None = None) -> jax.Array:
    """Λθ u for the flat vector u of terms first..stop (term by term, level by level, component fastest)."""
    pieces, pos = [], 0
    for a, e, q in same_q_runs(qs, first, stop):
        n = sum(n_levels[a:e])
        ur = u[pos : pos + n * q].reshape(n, q)
        pos += n * q
        T = level_factors(theta, qs, n_levels, a, e)
        if q == 1:
            pieces.append(ur[:, 0] * T[:, 0, 0])
        elif T.shape[0] == 1:
            pieces.append((ur @ T[0].T).reshape(-1))
        else:
            pieces.append(jnp.einsum("lrc,lc->lr", T, ur).reshape(-1))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def scale_columns(M: jax.Array, theta: jax.Array, qs: tuple[int, ...], n_levels: tuple[int, ...], first: int = 0,
                  stop: int | None = None) -> jax.Array:
    """M Λθ for the columns (last axis) of terms first..stop."""
    pieces, pos = [], 0
    for a, e, q in same_q_runs(qs, first, stop):
        n = sum(n_levels[a:e])
        block = M[..., pos : pos + n * q].reshape(M.shape[:-1] + (n, q))
        pos += n * q
        T = level_factors(theta, qs, n_levels, a, e)
        if T.shape[0] == 1:
            out = block @ T[0]
        else:
            out = jnp.einsum("...lr,lrc->...lc", block, T)
        pieces.append(out.reshape(M.shape[:-1] + (n * q,)))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=-1)


def column_scale(theta: jax.Array, qs: tuple[int, ...], n_levels: tuple[int, ...], first: int = 0,
                 stop: int | None = None) -> jax.Array | None:
    """The diagonal of Λθ over the columns of terms first..stop when all of them are scalar (q = 1), else None."""
    stop = len(qs) if stop is None else stop
    if any(qs[k] != 1 for k in range(first, stop)):
        return None
    T = level_factors(theta, qs, n_levels, first, stop)[:, 0, 0]
    return jnp.broadcast_to(T, (sum(n_levels[first:stop]),))


def solve_left_lower_t(L: jax.Array, v: jax.Array) -> jax.Array:
    """x with Lᵀ x = v, batched: L (..., q, q) lower, v (..., q)."""
    q = L.shape[-1]
    if q == 1:
        return v / L[..., 0, 0][..., None]
    xs = [None] * q
    for j in reversed(range(q)):
        s = v[..., j]
        for k in range(j + 1, q):
            s = s - L[..., k, j] * xs[k]
        xs[j] = s / L[..., j, j]
    return jnp.stack(xs, axis=-1)


class Factor(eqx.Module):
    """The blocked factor L (prefix blocks, their couplings, and the dense tail)."""

    diag: tuple[jax.Array, ...]  # prefix t: (l_t, q_t, q_t) lower-triangular blocks of L
    offdiag: tuple[tuple[jax.Array, ...], ...]  # L blocks of later prefix terms against t: (l_t, q', q_t)
    fixed: tuple[jax.Array, ...]  # L blocks of F rows against prefix t: (l_t, f, q_t)
    entries: tuple[jax.Array, ...]  # L entries of tail rows against prefix t (tail side unscaled): (nnz, q_t)
    tail: jax.Array  # (m_z + f, m_z + f) Cholesky factor of the tail
    factors: tuple[jax.Array, ...]  # the T_k used

    def _replace_tail(self, tail: jax.Array) -> "Factor":
        return eqx.tree_at(lambda f: f.tail, self, tail)

    def logdet_prefix(self) -> jax.Array:
        """2 Σ log diag of the prefix blocks of L."""
        total = jnp.zeros((), dtype=self.diag[0].dtype)
        for L in self.diag:
            total = total + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
        return total

    def fixed_inverse(self, m_z: int, p: int) -> jax.Array:
        """L_X⁻¹, L_X the fixed effects' diagonal block of the tail: L_X⁻ᵀ L_X⁻¹ = (R_Xᵀ R_X)⁻¹ is vcov(β) / σ²."""
        return lower_inverse(self.tail[m_z : m_z + p, m_z : m_z + p])

    def logdet_z(self, m_z: int) -> jax.Array:
        """log det(ΛᵀZᵀWZΛ + I) = 2 Σ log diag of the Z part of L."""
        total = jnp.zeros((), dtype=self.tail.dtype)
        for L in self.diag:
            total = total + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
        if m_z:
            total = total + 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.tail)[:m_z]))
        return total


# ---------------------------------------------------------------------------------------------- dense kernels
def _host_lapack(n: int) -> bool:
    return n >= _HOST_LAPACK_MIN and jax.default_backend() == "cpu"


def _potri(L) -> np.ndarray:
    import scipy.linalg  # here: a fit that never inverts a large tail on the host does not pay its import

    L = np.array(L)  # a writable copy for LAPACK to overwrite
    (potri,) = scipy.linalg.get_lapack_funcs(("potri",), (L,))
    inv, info = potri(L, lower=True, overwrite_c=True)
    if info != 0:
        return np.full_like(L, np.nan)
    return inv  # the lower triangle of the inverse; the strict upper one is L's (zeros), unused


def lower(M: jax.Array) -> jax.Array:
    """The lower triangle of M, zeros above (one fused pass)."""
    n = M.shape[-1]
    return jnp.where(jnp.arange(n)[:, None] >= jnp.arange(n)[None, :], M, 0.0)


def symmetric_from_lower(M: jax.Array) -> jax.Array:
    """The symmetric matrix whose lower triangle is M's."""
    Ml = lower(M)
    return Ml + jnp.tril(Ml, -1).T


def cholesky_of_lower(S: jax.Array) -> jax.Array:
    """The Cholesky factor of the symmetric matrix whose lower triangle is S's, reading S's lower triangle only:
    unrolled for small matrices (differentiated as written), else LAPACK's (`_dense_cholesky_of_lower`)."""
    if _small(S.shape[-1]):
        return _small_cholesky(S)
    return _dense_cholesky_of_lower(S)


@jax.custom_jvp
def _dense_cholesky_of_lower(S: jax.Array) -> jax.Array:
    """`cholesky_of_lower` by LAPACK (on the CPU by `_potrf_row_major`). Its derivative mirrors the tangent first
    (the generic rule takes the tangent whole, as if symmetric)."""
    return jax.lax.platform_dependent(S, cpu=_potrf_row_major, default=_lax_cholesky)


def _lax_cholesky(S: jax.Array) -> jax.Array:
    return jax.lax.linalg.cholesky(S, symmetrize_input=False)


def _potrf_row_major(S: jax.Array) -> jax.Array:
    """jax's Cholesky on the CPU, without its layout: LAPACK's potrf on S's own row-major memory. Read as
    column-major (LAPACK's order) that memory is Sᵀ, whose upper triangle holds S's lower one, so potrf is asked
    for the upper factor U of Sᵀ (UᵀU = Sᵀ), which read back row-major is S's lower factor L; then, as jax's, zeros
    above the diagonal and NaN where the factorization fails. jax's own call asks XLA for a column-major operand,
    so XLA writes the assembled tail transposed (strided reads of the tail-sized statistics and updates) and copies
    it once more (benchmarks/results/insteval_value.md)."""
    from jaxlib import lapack

    if S.dtype not in (jnp.float32, jnp.float64):
        return _lax_cholesky(S)
    target = lapack.prepare_lapack_call("potrf_ffi", np.dtype(S.dtype))
    call = jax.ffi.ffi_call(target, (jax.ShapeDtypeStruct(S.shape, S.dtype),
                                     jax.ShapeDtypeStruct(S.shape[:-2], jnp.int32)),
                            input_output_aliases={0: 0}, vmap_method="broadcast_all")
    L, info = call(S, uplo=np.uint8(ord("U")))
    n = S.shape[-1]
    below = jnp.arange(n)[:, None] >= jnp.arange(n)[None, :]
    return jnp.where((info == 0)[..., None, None], jnp.where(below, L, 0.0), jnp.nan)


@_dense_cholesky_of_lower.defjvp
def _cholesky_of_lower_jvp(primals, tangents):
    (S,), (dS,) = primals, tangents
    return jax.jvp(jnp.linalg.cholesky, (symmetric_from_lower(S),), (symmetric_from_lower(dS),))


def lower_weights(G: jax.Array) -> jax.Array:
    """W with Σ W ∘ dS = Σ G ∘ sym(dS) for a symmetric G and a lower-triangle-carried dS: 2 G below the diagonal,
    G on it, 0 above."""
    n = G.shape[-1]
    i, j = jnp.arange(n)[:, None], jnp.arange(n)[None, :]
    return jnp.where(i > j, 2.0 * G, jnp.where(i == j, G, 0.0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def inverse_from_cholesky(L: jax.Array, host_lapack: bool = True) -> jax.Array:
    """The lower triangle (zeros above) of (L Lᵀ)⁻¹ from the lower factor L: LAPACK's potri on the CPU host for
    large matrices (n³/3 + n³/3 flops with the triangular shapes used) when host_lapack, else a triangular solve
    against I and a product (pure XLA: what the public objective uses, for any backend and transformation)."""
    n = L.shape[-1]
    if host_lapack and _host_lapack(n):
        return lower(float64_callback(_potri, L.shape, L).astype(L.dtype))
    Linv = lower_inverse(L)
    return lower(Linv.T @ Linv)


@inverse_from_cholesky.defjvp
def _inverse_from_cholesky_jvp(host_lapack, primals, tangents):
    (L,), (dL,) = primals, tangents
    G_lower = inverse_from_cholesky(L, host_lapack)
    G = symmetric_from_lower(G_lower)
    dS = dL @ L.T + L @ dL.T
    return G_lower, lower(-(G @ dS @ G))


def factorize(theta: jax.Array, blocks: Blocks, structure: Structure) -> Factor:
    """L for the given θ. Pure JAX; differentiable; shapes fixed by `structure`."""
    prefix, S = eliminate_prefix(theta, blocks, structure)
    # mirrored, not read as a lower triangle only: callers differentiate through the generic Cholesky (GLMMs),
    # whose rule wants a symmetric tangent
    if _small(S.shape[-1]):
        return prefix._replace_tail(_small_cholesky(symmetric_from_lower(S)))
    return prefix._replace_tail(jnp.linalg.cholesky(symmetric_from_lower(S)))


def eliminate_prefix(theta: jax.Array, blocks: Blocks, structure: Structure):
    """The prefix blocks of L and the tail's matrix S (before its dense Cholesky; its lower triangle, the strict
    upper one undefined), as (Factor with an empty tail, S). The objective differentiates the tail through
    `tail_log_terms`, not through a generic Cholesky.

    The per-level blocks are worked on level-minor (`_levelwise`): every small-matrix formula is unrolled over
    elementwise vectors of all levels, then packed back into the (l, q, q) layout of `Factor`."""
    prefix, upd = _eliminate(theta, blocks, structure, False)
    S = _tail_matrix(theta, blocks, structure, upd)
    return prefix._replace_tail(jnp.zeros((0, 0), dtype=S.dtype)), S


def prefix_log_terms(theta: jax.Array, blocks: Blocks, structure: Structure, p: int, host_lapack: bool = True):
    """(Factor with an empty tail, [log det S_zz, log det of the X block's Schur complement, log r²]): the prefix
    elimination and `tail_log_terms` of its tail matrix, the same values, with hand-written reverse rules for
    the large pieces of the gradient (the entry pairs' update, `_pair_update`, and, for scalar tail terms, the
    tail's assembly and log terms, `_scalar_tail_log_terms`). The gradient of an InstEval-sized tail costs a
    fraction of autodiff's (docs/scale.md); there are no forward-mode derivatives (grad and vjp only)."""
    prefix, upd = _eliminate(theta, blocks, structure, True)
    m_z = structure.m_z
    scale = column_scale(theta, structure.qs, structure.n_levels, structure.n_prefix) if m_z else None
    if scale is None:
        S = _tail_matrix(theta, blocks, structure, upd)
        terms = tail_log_terms(S, m_z, p, host_lapack)
    else:
        terms = _scalar_tail_log_terms(p, bool(host_lapack), upd["zz"], upd["fz"], upd["ff"], scale, blocks.tail_zz,
                                       blocks.tail_fz, blocks.tail_ff)
    return prefix._replace_tail(jnp.zeros((0, 0), dtype=theta.dtype)), terms


def _eliminate(theta: jax.Array, blocks: Blocks, structure: Structure, reverse_only: bool):
    """The prefix's blocks of L (a Factor without its tail) and the updates for the tail (`upd`: zz flat, fz, ff).
    reverse_only: the entry pairs' update by `_pair_update`'s reverse rule (no forward-mode derivatives)."""
    factors = theta_to_factors(theta, structure.qs)
    work = _scaled_prefix(blocks, structure, factors)
    f, m_z = blocks.tail_ff.shape[0], structure.m_z
    upd = dict(zz=jnp.zeros((m_z * m_z,), dtype=theta.dtype) if m_z else None,
               fz=jnp.zeros((m_z, f), dtype=theta.dtype) if m_z else None,
               ff=jnp.zeros((f, f), dtype=theta.dtype))
    packed = [_eliminate_term(t, work, upd, structure, reverse_only) for t in range(structure.n_prefix)]
    prefix = Factor(
        diag=tuple(p[0] for p in packed),
        offdiag=tuple(p[1] for p in packed),
        fixed=tuple(p[2] for p in packed),
        entries=tuple(p[3] for p in packed),
        tail=jnp.zeros((0, 0), dtype=theta.dtype),
        factors=tuple(factors),
    )
    return prefix, upd


def _scaled_prefix(blocks: Blocks, structure: Structure, factors) -> dict:
    """The prefix blocks scaled by Λ as level matrices (the tail side of entries stays unscaled, see the module
    docstring): the working state that `_eliminate_term` updates term by term."""
    D = structure.n_prefix
    return dict(
        diag=[lw.add_identity(lw.sandwich(factors[t], lw.unpack(blocks.diag[t]), factors[t])) for t in range(D)],
        offdiag=[[lw.sandwich(factors[t + 1 + i], lw.unpack(B), factors[t]) for i, B in enumerate(blocks.offdiag[t])]
                 for t in range(D)],
        fixed=[lw.times(lw.unpack_rows(blocks.fixed[t]), factors[t]) for t in range(D)],
        entries=[lw.times(lw.unpack_entries(blocks.entries[t]), factors[t]) for t in range(D)],
    )


def _eliminate_term(t: int, work: dict, upd: dict, structure: Structure, reverse_only: bool = False):
    """Eliminates prefix term t: its blocks of L (packed: diag, offdiag, fixed, entries), its Schur updates pushed
    into the later prefix terms of `work` and accumulated for the tail in `upd`."""
    n_entries = int(work["entries"][t][0][0].shape[0])
    L_t = lw.cholesky(work["diag"][t])
    Lb = [lw.solve_right_lower_t(B, L_t) for B in work["offdiag"][t]]
    Lf = lw.solve_right_lower_t(work["fixed"][t], L_t)  # one row of q_t arrays (f, l_t)
    lev = structure.entry_level[t]
    Le = lw.solve_right_lower_t(work["entries"][t], lw.gather(L_t, lev)) if n_entries else work["entries"][t]
    _update_later_prefix(t, work, Lb, Lf, Le if n_entries else None, structure)
    upd["ff"] = upd["ff"] + sum(x @ x.T for x in Lf[0])
    if structure.m_z and n_entries:
        m_z = structure.m_z
        a, b = structure.pair_a[t], structure.pair_b[t]
        pairs = _pair_update if reverse_only else _pair_update.fun
        upd["zz"] = upd["zz"] + pairs(tuple(Le[0]), a, b, structure.pair_target[t], m_z * m_z)
        fz = sum(lf[:, lev] * le for lf, le in zip(Lf[0], Le[0]))  # (f, nnz)
        upd["fz"] = upd["fz"] + jax.ops.segment_sum(fz.T, structure.entry_row[t], m_z)
    return lw.pack(L_t), tuple(lw.pack(B) for B in Lb), lw.pack_rows(Lf), lw.pack_entries(Le)


def _update_later_prefix(t: int, work: dict, Lb, Lf, Le, structure: Structure) -> None:
    """The Schur updates of eliminating prefix term t on the later prefix terms' blocks (through the parent maps)."""
    D, nl = structure.n_prefix, structure.n_levels
    lev = structure.entry_level[t]
    for i, k in enumerate(range(t + 1, D)):
        par = structure.parents[t][i]
        work["diag"][k] = lw.subtract(work["diag"][k], lw.segment_sum(lw.outer_sum(Lb[i], Lb[i]), par, nl[k]))
        for i2, k2 in enumerate(range(k + 1, D)):
            j2 = k2 - t - 1  # index of k2 among t's later terms
            work["offdiag"][k][i2] = lw.subtract(work["offdiag"][k][i2],
                                                 lw.segment_sum(lw.outer_sum(Lb[j2], Lb[i]), par, nl[k]))
        work["fixed"][k] = lw.subtract(work["fixed"][k], lw.segment_sum(lw.outer_sum(Lf, Lb[i]), par, nl[k]))
        if Le is not None:
            n_k = int(work["entries"][k][0][0].shape[0])
            contrib = lw.outer_sum(Le, lw.gather(Lb[i], lev))
            work["entries"][k] = lw.subtract(work["entries"][k],
                                             lw.segment_sum(contrib, structure.entry_map[t][i], n_k))


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _pair_update(xs, a, b, target, size: int) -> jax.Array:
    """Σ_c x_c[a] x_c[b] summed into the flat tail positions `target` (the entry pairs of one prefix term).
    Its reverse rule gathers the cotangent once at the targets and scatters it back into the entries twice; autodiff
    transposes each of the two gathers and the products separately (1.8M-long buffers each at InstEval's size)."""
    return jax.ops.segment_sum(sum(x[a] * x[b] for x in xs), target, size)


def _pair_update_fwd(xs, a, b, target, size):
    return _pair_update.fun(xs, a, b, target, size), (xs, a, b, target)


def _pair_update_bwd(size, res, g):
    xs, a, b, target = res
    h, n = g[target], xs[0].shape[0]
    back = tuple(jax.ops.segment_sum(h * x[b], a, n) + jax.ops.segment_sum(h * x[a], b, n) for x in xs)
    return back, None, None, None


_pair_update.defvjp(_pair_update_fwd, _pair_update_bwd)


def _scalar_tail_matrix(upd_zz, upd_fz, upd_ff, scale, tail_zz, tail_fz, tail_ff):
    """`_tail_matrix` for scalar tail terms (Λ_tail = diag(scale)): S (lower triangle) and the unscaled blocks."""
    m_z, f = scale.shape[0], tail_ff.shape[0]
    S_u = tail_zz - upd_zz.reshape(m_z, m_z)  # the pairs' targets are in the lower triangle
    S_fz_u = tail_fz - upd_fz.T
    S_zz = scale[:, None] * S_u * scale[None, :] + jnp.eye(m_z, dtype=S_u.dtype)
    S = jnp.block([[S_zz, jnp.zeros((m_z, f), dtype=S_u.dtype)], [S_fz_u * scale[None, :], tail_ff - upd_ff]])
    return S, S_u, S_fz_u


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scalar_tail_log_terms(p: int, host_lapack: bool, upd_zz, upd_fz, upd_ff, scale, tail_zz, tail_fz, tail_ff):
    """`tail_log_terms` of `_scalar_tail_matrix`'s S, as a function of the prefix's updates, the tail's scale and
    the tail's statistics. Its reverse rule builds the log terms' derivative with respect to S (`_tail_adjoint`)
    for the blocks the updates touch and takes it through the scaling in a few fused passes, where autodiff's
    transposes of the same steps write several fresh tail-sized buffers (benchmarks/results/insteval_gradient.md)."""
    S = _scalar_tail_matrix(upd_zz, upd_fz, upd_ff, scale, tail_zz, tail_fz, tail_ff)[0]
    return _tail_values(jnp.diagonal(cholesky_of_lower(S)), scale.shape[0], p)


def _scalar_tail_fwd(p, host_lapack, upd_zz, upd_fz, upd_ff, scale, tail_zz, tail_fz, tail_ff):
    S = _scalar_tail_matrix(upd_zz, upd_fz, upd_ff, scale, tail_zz, tail_fz, tail_ff)[0]
    L = cholesky_of_lower(S)
    return _tail_values(jnp.diagonal(L), scale.shape[0], p), (L, upd_zz, upd_fz, scale, tail_zz, tail_fz)


def _scalar_tail_bwd(p, host_lapack, res, c):
    # every m_z × m_z intermediate here is an elementwise expression of the inverse and the statistics, so XLA
    # fuses it into its consumers (the pairs' gather, two reductions) instead of writing new dense buffers: on
    # the CPU each fresh InstEval-sized buffer costs about as much in page faults as a pass of arithmetic
    L, upd_zz, upd_fz, scale, tail_zz, tail_fz = res
    m_z = scale.shape[0]
    g_zz, g_fz, g_ff = _tail_adjoint(L, m_z, p, host_lapack, c)
    S_u = tail_zz - upd_zz.reshape(m_z, m_z)
    P = g_zz * S_u  # S_u's rows and columns both carry the scale: two reductions, no transposed copy
    d_scale = (jnp.sum(P * scale[None, :], axis=1) + jnp.sum(P * scale[:, None], axis=0)
               + jnp.sum(g_fz * (tail_fz - upd_fz.T), axis=0))
    scaled = scale[:, None] * g_zz * scale[None, :]
    g_fz_scaled = g_fz * scale[None, :]
    return (-scaled.reshape(-1), -g_fz_scaled.T, -g_ff, d_scale, scaled, g_fz_scaled, g_ff)


_scalar_tail_log_terms.defvjp(_scalar_tail_fwd, _scalar_tail_bwd)


def _tail_adjoint(L: jax.Array, m_z: int, p: int, host_lapack: bool, c: jax.Array):
    """Σ_i c_i ∂(log terms)_i/∂S on S's lower triangle (`lower_weights`: what a lower-triangle-carried tangent
    pairs with), in its zz, fz and ff blocks: c_z S_zz⁻¹ + c_x B Bᵀ + c_r u uᵀ as in `_tail_log_terms`, the
    rank-(p + 1) part as a sum of outer products (elementwise, fused with the inverse's pass)."""
    L_zz = L[:m_z, :m_z]
    if host_lapack and _host_lapack(m_z):  # its strict upper triangle is L's zeros: lower_weights drops it anyway
        G_z = float64_callback(_potri, L_zz.shape, L_zz).astype(L.dtype)
    else:
        G_z = inverse_from_cholesky(L_zz, False)
    Bt, u = _thin_log_term_solves(L, m_z)
    R = jnp.concatenate([jnp.concatenate([Bt, jnp.zeros((1, p), L.dtype)]), u[:, None]], axis=1)  # (m, p + 1)
    Rc = R * jnp.concatenate([jnp.full((p,), c[1]), c[2:3]])[None, :]
    rank = sum(Rc[:m_z, r, None] * R[None, :m_z, r] for r in range(p + 1))
    g_zz = lower_weights(c[0] * G_z + rank)
    g_fz = 2.0 * (Rc[m_z:] @ R[:m_z].T)
    g_ff = lower_weights(Rc[m_z:] @ R[m_z:].T)
    return g_zz, g_fz, g_ff


def _tail_matrix(theta: jax.Array, blocks: Blocks, structure: Structure, upd: dict) -> jax.Array:
    """The tail's Schur complement, then its own Λ and identity: S (lower triangle) for the dense Cholesky."""
    m_z, f = structure.m_z, blocks.tail_ff.shape[0]
    S_ff = blocks.tail_ff - upd["ff"]
    if not m_z:
        return S_ff
    qs, nl, D = structure.qs, structure.n_levels, structure.n_prefix
    S_zz = blocks.tail_zz - upd["zz"].reshape(m_z, m_z)  # the pairs' targets are in the lower triangle
    S_fz = blocks.tail_fz - upd["fz"].T
    scale = column_scale(theta, qs, nl, D)
    if scale is not None:  # scalar tail terms: Λ_tail is diagonal, one fused elementwise pass
        S_zz = scale[:, None] * S_zz * scale[None, :] + jnp.eye(m_z, dtype=theta.dtype)
        S_fz = S_fz * scale[None, :]
    else:  # T_k mixes the components of a level: mirror first
        S_zz = scale_columns(symmetric_from_lower(S_zz), theta, qs, nl, D)
        S_zz = scale_columns(S_zz.T, theta, qs, nl, D) + jnp.eye(m_z, dtype=theta.dtype)
        S_fz = scale_columns(S_fz, theta, qs, nl, D)
    return jnp.block([[S_zz, jnp.zeros((m_z, f), dtype=S_zz.dtype)], [S_fz, S_ff]])


def _tail_values(diag_L: jax.Array, m_z: int, p: int) -> jax.Array:
    d = jnp.log(diag_L)
    return jnp.stack([2.0 * jnp.sum(d[:m_z]), 2.0 * jnp.sum(d[m_z : m_z + p]), 2.0 * d[-1]])


def tail_log_terms(S: jax.Array, m_z: int, p: int, host_lapack: bool = True) -> jax.Array:
    """[log det S_zz, log det of the X block's Schur complement, log r²] of the tail matrix S (see
    `_tail_log_terms`). host_lapack=False keeps the derivative in XLA (no host callback)."""
    return _tail_log_terms(S, m_z, p, bool(host_lapack))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def _tail_log_terms(S: jax.Array, m_z: int, p: int, host_lapack: bool) -> jax.Array:
    """[log det S_zz, log det of the X block's Schur complement (2 Σ log diag L_xx), log r² (r = L_yy)] of the
    tail matrix S = [[S_zz, ·, ·], [·, S_xx, ·], [·, ·, S_yy]] given by its lower triangle, through its Cholesky
    factor L.

    Differentiating a generic Cholesky costs several dense solves and products; these three scalars have
    closed-form derivatives: ∂ log det S_zz/∂S = S_zz⁻¹, ∂ log det S_[zx]/∂S = S_[zx]⁻¹ (so the X term's is
    S_[zx]⁻¹ − S_zz⁻¹ = BᵀB for the X rows B of L_[zx]⁻¹), ∂ log r²/∂S = u uᵀ with u = L⁻ᵀ e_last. One
    factor inverse (`inverse_from_cholesky` of the Z block) and two thin triangular solves give all three (custom
    JVP, so grad, jacfwd and hessian all work). As S, the derivatives live on the lower triangle
    (`lower_weights`)."""
    return _tail_values(jnp.diagonal(cholesky_of_lower(S)), m_z, p)


@_tail_log_terms.defjvp
def _tail_log_terms_jvp(m_z, p, host_lapack, primals, tangents):
    (S,), (dS,) = primals, tangents
    L = cholesky_of_lower(S)
    values = _tail_values(jnp.diagonal(L), m_z, p)
    m = S.shape[0]
    G_z = inverse_from_cholesky(L[:m_z, :m_z], host_lapack) if m_z else jnp.zeros((0, 0), S.dtype)
    Bt, u = _thin_log_term_solves(L, m_z)
    t_z = jnp.sum(lower_weights(G_z) * dS[:m_z, :m_z])
    t_x = jnp.sum(lower_weights(Bt @ Bt.T) * dS[: m - 1, : m - 1])
    t_r = jnp.sum(lower_weights(jnp.outer(u, u)) * dS)
    return values, jnp.stack([t_z, t_x, t_r])


def _thin_log_term_solves(L: jax.Array, m_z: int):
    """Bᵀ (the X rows of L_b⁻¹, L_b = L without its last row and column, by one triangular solve with p right-hand
    sides) and u = L⁻ᵀ e_last: what the X block's and log r²'s derivatives need besides S_zz⁻¹."""
    m = L.shape[0]
    Lb = L[: m - 1, : m - 1]
    if _small(m - 1):  # Lb⁻ᵀ by the unrolled inverse
        Lb_inv_t = _small_lower_inverse(Lb).T
        Bt, u_head = Lb_inv_t[:, m_z:], -(Lb_inv_t @ L[-1, : m - 1])
    else:
        E_x = jnp.eye(m - 1, dtype=L.dtype)[:, m_z:]
        Bt = jax.lax.linalg.triangular_solve(Lb, E_x, left_side=True, lower=True, transpose_a=True)
        u_head = -jax.lax.linalg.triangular_solve(Lb, L[-1, : m - 1][:, None], left_side=True, lower=True,
                                                  transpose_a=True)[:, 0]
    return Bt, jnp.concatenate([u_head, jnp.ones((1,), L.dtype)]) / L[-1, -1]


def _solve_tail(factor: Factor, structure: Structure, n_fixed: int):
    """The tail's back substitution: (the tail terms' spherical modes, flat (m_z,), and β)."""
    m_z = structure.m_z
    tail = factor.tail
    if _small(tail.shape[0] - 1):
        x_tail = _small_lower_inverse(tail[:-1, :-1]).T @ tail[-1, :-1]
    else:
        x_tail = jax.scipy.linalg.solve_triangular(tail[:-1, :-1], tail[-1, :-1], lower=True, trans="T")
    return x_tail[:m_z], x_tail[m_z : m_z + n_fixed]


def _solve_prefix(factor: Factor, structure: Structure, n_fixed: int, beta, b_tail) -> list:
    """The prefix terms' spherical modes (l_t, q_t), last term first, given β and the tail's b = Λ u (flat)."""
    D = structure.n_prefix
    u_prefix: list = [None] * D
    for t in reversed(range(D)):
        Lf = factor.fixed[t]  # (l, f, q)
        r = Lf[:, -1, :] - jnp.einsum("lpq,p->lq", Lf[:, :n_fixed, :], beta)
        for i, k in enumerate(range(t + 1, D)):
            par = structure.parents[t][i]
            r = r - jnp.einsum("lrq,lr->lq", factor.offdiag[t][i], u_prefix[k][par])
        if structure.m_z and factor.entries[t].shape[0]:
            contrib = factor.entries[t] * b_tail[structure.entry_row[t]][:, None]
            r = r - jax.ops.segment_sum(contrib, structure.entry_level[t], structure.n_levels[t])
        u_prefix[t] = solve_left_lower_t(factor.diag[t], r)
    return u_prefix


def solve_coefficients(factor: Factor, structure: Structure, n_fixed: int):
    """Back substitution for [u; β] given that the last F column is the response.

    Returns (beta (p,), u per term (l_k, q_k) spherical, b per term (l_k, q_k) = T_k u).
    """
    D = structure.n_prefix
    u_tail, beta = _solve_tail(factor, structure, n_fixed)
    u_terms: list = [None] * structure.n_terms
    b_terms: list = [None] * structure.n_terms
    for i, k in enumerate(range(D, structure.n_terms)):
        q, l = structure.qs[k], structure.n_levels[k]
        off = structure.tail_offsets[i]
        u_terms[k] = u_tail[off : off + l * q].reshape(l, q)
        b_terms[k] = u_terms[k] @ factor.factors[k].T
    b_tail = jnp.concatenate([b_terms[k].reshape(-1) for k in range(D, structure.n_terms)]) if structure.m_z else None
    u_terms[:D] = _solve_prefix(factor, structure, n_fixed, beta, b_tail)
    for t in range(D):
        b_terms[t] = u_terms[t] @ factor.factors[t].T
    return beta, tuple(u_terms), tuple(b_terms)


def solve_modes(factor: Factor, structure: Structure, n_fixed: int, theta: jax.Array):
    """As `solve_coefficients`, with all terms' spherical modes as one flat vector (term by term, level by level,
    component fastest): (β, u). The tail terms are scaled by Λ in one operation per run of same-q terms
    (`scale_modes`), so the program does not grow with their number."""
    D = structure.n_prefix
    u_tail, beta = _solve_tail(factor, structure, n_fixed)
    b_tail = scale_modes(theta, structure.qs, structure.n_levels, u_tail, D) if structure.m_z else None
    u_prefix = _solve_prefix(factor, structure, n_fixed, beta, b_tail)
    return beta, jnp.concatenate([u.reshape(-1) for u in u_prefix] + [u_tail])
