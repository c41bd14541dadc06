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
import scipy.linalg

from . import _levelwise as lw
from ._callback import float64_callback
from ._blocks import Blocks, Structure

__all__ = ["Factor", "theta_to_factors", "factorize", "eliminate_prefix", "tail_log_terms", "solve_coefficients",
           "solve_left_lower_t", "inverse_from_cholesky"]

# Inside fits, the inverse S_zz⁻¹ that the gradient needs comes from LAPACK's potri on the host (a callback) for
# dense tails at least this large on the CPU, several times faster there than XLA's triangular solve and product;
# the factor itself stays in XLA, which was faster end to end (measurements: docs/scale.md). The public objective
# (`_problem`) never takes the callback.
_HOST_LAPACK_MIN = 512


def theta_to_factors(theta: jax.Array, qs: tuple[int, ...]) -> list[jax.Array]:
    """θ (per term, lower triangle column-major, lme4's layout) → list of q×q lower-triangular T_k."""
    # a reshape (q = 1) or one gather from a static index per term, not a scatter into zeros: a scatter's HLO is
    # large, and every program that touches Λ (PIRLS's loop bodies, the Newton steps, their derivatives) holds
    # a copy per term
    out = []
    pos = 0
    for q in qs:
        k = q * (q + 1) // 2
        if q == 1:
            out.append(theta[pos : pos + 1].reshape(1, 1))
        else:
            index = np.full((q, q), k)  # position k holds the zero above the diagonal
            lower_positions = [(r, c) for c in range(q) for r in range(c, q)]  # lme4's column-major order
            for i, (r, c) in enumerate(lower_positions):
                index[r, c] = i
            padded = jnp.concatenate([theta[pos : pos + k], jnp.zeros((1,), dtype=theta.dtype)])
            out.append(padded[index])
        pos += k
    return out


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
        L_xx = self.tail[m_z : m_z + p, m_z : m_z + p]
        return jax.scipy.linalg.solve_triangular(L_xx, jnp.eye(p, dtype=L_xx.dtype), lower=True)

    def logdet_z(self, m_z: int) -> jax.Array:
        """log det(ΛᵀZᵀWZΛ + I) = 2 Σ log diag of the Z part of L."""
        total = jnp.zeros((), dtype=self.tail.dtype)
        for L in self.diag:
            total = total + 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))
        if m_z:
            total = total + 2.0 * jnp.sum(jnp.log(jnp.diagonal(self.tail)[:m_z]))
        return total


def _scale_tail_columns(M: jax.Array, structure: Structure, factors) -> jax.Array:
    """M Λ_tail for the tail Z columns of M (last axis, size m_z)."""
    D = structure.n_prefix
    pieces = []
    for i, k in enumerate(range(D, structure.n_terms)):
        q, l = structure.qs[k], structure.n_levels[k]
        off = structure.tail_offsets[i]
        block = M[..., off : off + l * q].reshape(M.shape[:-1] + (l, q))
        pieces.append((block @ factors[k]).reshape(M.shape[:-1] + (l * q,)))
    return jnp.concatenate(pieces, axis=-1) if pieces else M


def _tail_column_scale(structure: Structure, factors) -> jax.Array | None:
    """The diagonal of Λ_tail when every tail term is scalar (q = 1), else None."""
    D = structure.n_prefix
    if any(structure.qs[k] != 1 for k in range(D, structure.n_terms)):
        return None
    return jnp.concatenate([jnp.broadcast_to(factors[k][0, 0], (structure.n_levels[k],))
                            for k in range(D, structure.n_terms)])


# ---------------------------------------------------------------------------------------------- dense kernels
def _host_lapack(n: int) -> bool:
    return n >= _HOST_LAPACK_MIN and jax.default_backend() == "cpu"


def _potri(L) -> np.ndarray:
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


@jax.custom_jvp
def cholesky_of_lower(S: jax.Array) -> jax.Array:
    """The Cholesky factor of the symmetric matrix whose lower triangle is S's, reading S's lower triangle only.
    Its derivative mirrors the tangent first (the generic rule takes the tangent whole, as if symmetric)."""
    return jax.lax.linalg.cholesky(S, symmetrize_input=False)


@cholesky_of_lower.defjvp
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
    Linv = jax.lax.linalg.triangular_solve(L, jnp.eye(n, dtype=L.dtype), left_side=True, lower=True)
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
    return prefix._replace_tail(jnp.linalg.cholesky(symmetric_from_lower(S)))


def eliminate_prefix(theta: jax.Array, blocks: Blocks, structure: Structure):
    """The prefix blocks of L and the tail's matrix S (before its dense Cholesky; its lower triangle, the strict
    upper one undefined), as (Factor with an empty tail, S). The objective differentiates the tail through
    `tail_log_terms`, not through a generic Cholesky.

    The per-level blocks are worked on level-minor (`_levelwise`): every small-matrix formula is unrolled over
    elementwise vectors of all levels, then packed back into the (l, q, q) layout of `Factor`."""
    D = structure.n_prefix
    qs, nl = structure.qs, structure.n_levels
    factors = theta_to_factors(theta, qs)
    f = blocks.tail_ff.shape[0]
    m_z = structure.m_z

    # scale the prefix blocks by Λ (tail side of entries stays unscaled, see module docstring)
    diag = [lw.add_identity(lw.sandwich(factors[t], lw.unpack(blocks.diag[t]), factors[t])) for t in range(D)]
    offdiag = [
        [lw.sandwich(factors[t + 1 + i], lw.unpack(B), factors[t]) for i, B in enumerate(blocks.offdiag[t])]
        for t in range(D)
    ]
    fixed = [lw.times(lw.unpack_rows(blocks.fixed[t]), factors[t]) for t in range(D)]
    entries = [lw.times(lw.unpack_entries(blocks.entries[t]), factors[t]) for t in range(D)]
    n_entries = [int(entries[t][0][0].shape[0]) for t in range(D)]

    upd_zz = jnp.zeros((m_z * m_z,), dtype=theta.dtype) if m_z else None
    upd_fz = jnp.zeros((m_z, f), dtype=theta.dtype) if m_z else None
    upd_ff = jnp.zeros((f, f), dtype=theta.dtype)

    L_diag, L_off, L_fixed, L_entries = [], [], [], []
    for t in range(D):
        L_t = lw.cholesky(diag[t])
        Lb = [lw.solve_right_lower_t(B, L_t) for B in offdiag[t]]
        Lf = lw.solve_right_lower_t(fixed[t], L_t)  # one row of q_t arrays (f, l_t)
        lev = structure.entry_level[t]
        Le = lw.solve_right_lower_t(entries[t], lw.gather(L_t, lev)) if n_entries[t] else entries[t]
        L_diag.append(lw.pack(L_t))
        L_off.append(tuple(lw.pack(B) for B in Lb))
        L_fixed.append(lw.pack_rows(Lf))
        L_entries.append(lw.pack_entries(Le))
        # push the Schur updates into later prefix terms
        for i, k in enumerate(range(t + 1, D)):
            par = structure.parents[t][i]
            diag[k] = lw.subtract(diag[k], lw.segment_sum(lw.outer_sum(Lb[i], Lb[i]), par, nl[k]))
            for i2, k2 in enumerate(range(k + 1, D)):
                j2 = k2 - t - 1  # index of k2 among t's later terms
                offdiag[k][i2] = lw.subtract(offdiag[k][i2], lw.segment_sum(lw.outer_sum(Lb[j2], Lb[i]), par, nl[k]))
            fixed[k] = lw.subtract(fixed[k], lw.segment_sum(lw.outer_sum(Lf, Lb[i]), par, nl[k]))
            if n_entries[t]:
                contrib = lw.outer_sum(Le, lw.gather(Lb[i], lev))
                entries[k] = lw.subtract(entries[k], lw.segment_sum(contrib, structure.entry_map[t][i], n_entries[k]))
        # and into the dense tail
        upd_ff = upd_ff + sum(x @ x.T for x in Lf[0])
        if m_z and n_entries[t]:
            a, b = structure.pair_a[t], structure.pair_b[t]
            upd_zz = upd_zz + jax.ops.segment_sum(sum(x[a] * x[b] for x in Le[0]), structure.pair_target[t], m_z * m_z)
            fz = sum(lf[:, lev] * le for lf, le in zip(Lf[0], Le[0]))  # (f, nnz)
            upd_fz = upd_fz + jax.ops.segment_sum(fz.T, structure.entry_row[t], m_z)

    # the tail: Schur complement, then its own Λ and identity, then a dense Cholesky
    S_ff = blocks.tail_ff - upd_ff
    if m_z:
        S_zz = blocks.tail_zz - upd_zz.reshape(m_z, m_z)  # the pairs' targets are in the lower triangle
        S_fz = blocks.tail_fz - upd_fz.T
        scale = _tail_column_scale(structure, factors)
        if scale is not None:  # scalar tail terms: Λ_tail is diagonal, one fused elementwise pass
            S_zz = scale[:, None] * S_zz * scale[None, :] + jnp.eye(m_z, dtype=theta.dtype)
            S_fz = S_fz * scale[None, :]
        else:  # T_k mixes the components of a level: mirror first
            S_zz = _scale_tail_columns(symmetric_from_lower(S_zz), structure, factors)
            S_zz = _scale_tail_columns(S_zz.T, structure, factors) + jnp.eye(m_z, dtype=theta.dtype)
            S_fz = _scale_tail_columns(S_fz, structure, factors)
        S = jnp.block([[S_zz, jnp.zeros((m_z, f), dtype=S_zz.dtype)], [S_fz, S_ff]])
    else:
        S = S_ff
    prefix = Factor(
        diag=tuple(L_diag),
        offdiag=tuple(L_off),
        fixed=tuple(L_fixed),
        entries=tuple(L_entries),
        tail=jnp.zeros((0, 0), dtype=S.dtype),
        factors=tuple(factors),
    )
    return prefix, S


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
    Lb = L[: m - 1, : m - 1]
    G_z = inverse_from_cholesky(L[:m_z, :m_z], host_lapack) if m_z else jnp.zeros((0, 0), S.dtype)
    # Bᵀ = L_b⁻ᵀ E_x: the X rows of L_b⁻¹, by one triangular solve with p right-hand sides
    E_x = jnp.eye(m - 1, dtype=S.dtype)[:, m_z:]
    Bt = jax.lax.linalg.triangular_solve(Lb, E_x, left_side=True, lower=True, transpose_a=True)
    u_head = -jax.lax.linalg.triangular_solve(Lb, L[-1, : m - 1][:, None], left_side=True, lower=True,
                                              transpose_a=True)[:, 0]
    u = jnp.concatenate([u_head, jnp.ones((1,), S.dtype)]) / L[-1, -1]
    t_z = jnp.sum(lower_weights(G_z) * dS[:m_z, :m_z])
    t_x = jnp.sum(lower_weights(Bt @ Bt.T) * dS[: m - 1, : m - 1])
    t_r = jnp.sum(lower_weights(jnp.outer(u, u)) * dS)
    return values, jnp.stack([t_z, t_x, t_r])


def solve_coefficients(factor: Factor, structure: Structure, n_fixed: int):
    """Back substitution for [u; β] given that the last F column is the response.

    Returns (beta (p,), u per term (l_k, q_k) spherical, b per term (l_k, q_k) = T_k u).
    """
    D = structure.n_prefix
    m_z = structure.m_z
    tail = factor.tail
    top = tail[:-1, :-1]
    rhs = tail[-1, :-1]
    x_tail = jax.scipy.linalg.solve_triangular(top, rhs, lower=True, trans="T")
    beta = x_tail[m_z : m_z + n_fixed]
    u_terms: list = [None] * structure.n_terms
    b_terms: list = [None] * structure.n_terms
    for i, k in enumerate(range(D, structure.n_terms)):
        q, l = structure.qs[k], structure.n_levels[k]
        off = structure.tail_offsets[i]
        u_k = x_tail[off : off + l * q].reshape(l, q)
        u_terms[k] = u_k
        b_terms[k] = u_k @ factor.factors[k].T
    b_tail = jnp.concatenate([b_terms[k].reshape(-1) for k in range(D, structure.n_terms)]) if m_z else None
    for t in reversed(range(D)):
        Lf = factor.fixed[t]  # (l, f, q)
        r = Lf[:, -1, :] - jnp.einsum("lpq,p->lq", Lf[:, :n_fixed, :], beta)
        for i, k in enumerate(range(t + 1, D)):
            par = structure.parents[t][i]
            r = r - jnp.einsum("lrq,lr->lq", factor.offdiag[t][i], u_terms[k][par])
        if m_z and factor.entries[t].shape[0]:
            contrib = factor.entries[t] * b_tail[structure.entry_row[t]][:, None]
            r = r - jax.ops.segment_sum(contrib, structure.entry_level[t], structure.n_levels[t])
        u_t = solve_left_lower_t(factor.diag[t], r)
        u_terms[t] = u_t
        b_terms[t] = u_t @ factor.factors[t].T
    return beta, tuple(u_terms), tuple(b_terms)
