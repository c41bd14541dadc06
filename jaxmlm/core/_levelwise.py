"""Small per-level matrices held level-minor ("struct of arrays"), with unrolled arithmetic.

A prefix term with l levels carries l small blocks (q × q, q' × q, f × q). Stored as (l, q, q) arrays, every XLA
CPU operation on them runs over a minor dimension of 1-6 elements and is not vectorized. Held instead as Python
lists of arrays whose *last* axis is the level — element (i, j) of every level in one contiguous vector — and
combined by unrolled scalar formulas, the same work is a few fused elementwise loops over l, an order of
magnitude faster (docs/scale.md).
(Broadcast-and-reduce forms in this layout were no better than the batched einsum: XLA's CPU reductions over a
non-minor axis are slow, so the small dimensions are unrolled in Python instead.)

A *level matrix* is a list of rows, each a list of arrays whose last axis is the level (or entry) axis. Elements
may carry leading axes, broadcasting against (l,): the F rows of a term are one row of q arrays of shape (f, l).
Above `UNROLL_MAX` the Cholesky and the triangular solve hand the blocks to LAPACK in the (l, q, q) layout.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["unpack", "unpack_rows", "unpack_entries", "pack", "pack_rows", "pack_entries", "sandwich", "times",
           "add_identity", "subtract", "cholesky", "solve_right_lower_t", "gather", "outer_sum", "segment_sum",
           "log_diagonal_sum"]

UNROLL_MAX = 8  # unrolled formulas cost O(q³) traced operations; beyond this, batched LAPACK calls

LevelMatrix = list  # list[list[jax.Array]]: rows × columns of (..., l) arrays


# ------------------------------------------------------------------------------------ layout conversions
def unpack(A) -> LevelMatrix:
    """(r, c, l) → r × c level matrix of (l,) vectors; already split blocks (`_blocks.split_levels`) as they are."""
    if isinstance(A, (tuple, list)):
        return [list(row) for row in A]
    return [[A[i, j] for j in range(A.shape[1])] for i in range(A.shape[0])]


def unpack_rows(A) -> LevelMatrix:
    """(f, q, l) → one row of q arrays (f, l): a term's F rows, kept together along f (or already split)."""
    if isinstance(A, (tuple, list)):
        return [list(A)]
    return [[A[:, j] for j in range(A.shape[1])]]


def unpack_entries(E) -> LevelMatrix:
    """(q, nnz) → one row of q arrays (nnz,) (or already split)."""
    if isinstance(E, (tuple, list)):
        return [list(E)]
    return [[E[j] for j in range(E.shape[0])]]


def _filled(M: LevelMatrix) -> LevelMatrix:
    like = next(x for row in M for x in row if x is not None)
    return [[jnp.zeros_like(like) if x is None else x for x in row] for row in M]


def pack(M: LevelMatrix) -> jax.Array:
    """r × c level matrix of (l,) vectors → (l, r, c); absent (upper-triangle) elements become 0."""
    M = _filled(M)
    return jnp.stack([jnp.stack(row, axis=-1) for row in M], axis=-2)


def pack_rows(M: LevelMatrix) -> jax.Array:
    """One row of q arrays (f, l) → (l, f, q)."""
    return jnp.moveaxis(jnp.stack(M[0], axis=-1), -2, 0)


def pack_entries(M: LevelMatrix) -> jax.Array:
    """One row of q arrays (nnz,) → (nnz, q)."""
    return jnp.stack(M[0], axis=-1)


# ------------------------------------------------------------------------------------------- arithmetic
def _wide(*dims: int) -> bool:
    return max(dims) > UNROLL_MAX


def _unpack_packed(P: jax.Array) -> LevelMatrix:
    """(..., l, r, c) → r × c level matrix of (..., l) arrays."""
    return [[P[..., i, j] for j in range(P.shape[-1])] for i in range(P.shape[-2])]


def sandwich(Ta: jax.Array, B: LevelMatrix, Tb: jax.Array) -> LevelMatrix:
    """Taᵀ B Tb for constant lower-triangular Ta (r × r) and Tb (c × c) (the zeros above their diagonals are
    skipped). Above `UNROLL_MAX` one batched product instead (unrolled, the traced program grows as r c²)."""
    r, c = len(B), len(B[0])
    if _wide(r, c):
        return _unpack_packed(jnp.einsum("ji,...jk,km->...im", Ta, pack(B), Tb))
    BT = [[sum(B[i][k] * Tb[k, m] for k in range(m, c)) for m in range(c)] for i in range(r)]
    return [[sum(Ta[j, i] * BT[j][m] for j in range(i, r)) for m in range(c)] for i in range(r)]


def times(M: LevelMatrix, T: jax.Array) -> LevelMatrix:
    """M T for a constant lower-triangular T."""
    c = len(M[0])
    if _wide(c):
        return _unpack_packed(pack(M) @ T)
    return [[sum(row[k] * T[k, m] for k in range(m, c)) for m in range(c)] for row in M]


def add_identity(M: LevelMatrix) -> LevelMatrix:
    return [[x + 1.0 if i == j else x for j, x in enumerate(row)] for i, row in enumerate(M)]


def subtract(A: LevelMatrix, B: LevelMatrix) -> LevelMatrix:
    return [[a - b for a, b in zip(ra, rb)] for ra, rb in zip(A, B)]


def cholesky(A: LevelMatrix) -> LevelMatrix:
    """Lower Cholesky factor of every level's symmetric positive definite block (upper elements None)."""
    q = len(A)
    if q > UNROLL_MAX:
        L = jnp.linalg.cholesky(pack(A))
        return [[L[:, i, j] if j <= i else None for j in range(q)] for i in range(q)]
    L = [[None] * q for _ in range(q)]
    for i in range(q):
        for j in range(i + 1):
            s = A[i][j]
            for k in range(j):
                s = s - L[i][k] * L[j][k]
            L[i][j] = jnp.sqrt(s) if i == j else s / L[j][j]
    return L


def solve_right_lower_t(M: LevelMatrix, L: LevelMatrix) -> LevelMatrix:
    """X with X Lᵀ = M, level by level (L lower triangular, q × q; M rows × q)."""
    q = len(L)
    if q > UNROLL_MAX:
        packed = pack(L)
        out = []
        for row in M:
            Mr = jnp.stack(row, axis=-1)  # (..., l, q)
            lead = Mr.shape[:-2]
            Mr = jnp.moveaxis(Mr.reshape((-1,) + Mr.shape[-2:]), 0, 1)  # (l, rows, q)
            X = jax.lax.linalg.triangular_solve(packed, Mr, left_side=False, lower=True, transpose_a=True)
            X = jnp.moveaxis(X, 0, 1).reshape(lead + X.shape[:1] + (q,))
            out.append([X[..., j] for j in range(q)])
        return out
    out = []
    for row in M:
        x = []
        for j in range(q):
            s = row[j]
            for k in range(j):
                s = s - x[k] * L[j][k]
            x.append(s / L[j][j])
        out.append(x)
    return out


def gather(M: LevelMatrix, index: jax.Array) -> LevelMatrix:
    """Every element at the given levels (for per-entry copies of a level's block)."""
    return [[None if x is None else x[..., index] for x in row] for row in M]


def outer_sum(X: LevelMatrix, Y: LevelMatrix) -> LevelMatrix:
    """X Yᵀ level by level: element (r, s) = Σ_c X[r][c] Y[s][c]."""
    if _wide(len(X[0])):
        return _unpack_packed(pack(X) @ jnp.swapaxes(pack(Y), -1, -2))
    return [[sum(xr[c] * ys[c] for c in range(len(xr))) for ys in Y] for xr in X]


def segment_sum(M: LevelMatrix, ids: jax.Array, n: int) -> LevelMatrix:
    """Sum every element over levels sharing an id (ids: one per level, values < n): one scatter for all."""
    flat = [x for row in M for x in row]
    stacked = jnp.moveaxis(jnp.stack(flat), -1, 0)  # (l, K, ...)
    summed = jnp.moveaxis(jax.ops.segment_sum(stacked, ids, num_segments=n), 0, -1)  # (K, ..., n)
    out, pos = [], 0
    for row in M:
        out.append([summed[pos + j] for j in range(len(row))])
        pos += len(row)
    return out


def log_diagonal_sum(L: LevelMatrix) -> jax.Array:
    """Σ over levels and i of log L_ii (half the log determinant of the blocks)."""
    return sum(jnp.sum(jnp.log(L[i][i])) for i in range(len(L)))
