"""Designs of different sizes in one compiled program: size buckets and padding.

A compiled objective fixes every size of the blocked system. To fit many designs that differ in rows and levels
with few compiles, each design is padded up to its bucket's levels per term:

* padded levels have no rows, so their block of ΛᵀZᵀWZΛ is zero and their block of ΛᵀZᵀWZΛ + I is I: Cholesky
  factor I, log determinant 0, u = 0. They change nothing in the objective;
* rows need no padding: the objective sees the rows only through the statistics [Z X y]ᵀW[Z X y], which
  `complete_statistics` sums over each design's real rows (so n, the rows with positive weight, and Σ log w
  count real rows only).

A bucket's block structure is built from its *complete* design: every level of the first term meets every level
of each later term. The first term stays block-diagonal (the prefix); every later term goes to the dense tail,
coupled to every level of the first. That layout holds the system of any design of the bucket's sizes (a real
design's missing couplings are zeros in it), so the structure's index arrays are shared by the whole bucket and
only the rows differ between its designs. A later term nested in the first is handled as crossed: same
objective, a larger tail (the buckets serve small designs).
"""

from __future__ import annotations

import math

import jax
import numpy as np

from ._blocks import Blocks, Structure, build_structure

__all__ = ["round_up", "complete_structure", "padded_row_index", "complete_statistics"]

# The complete design couples every level of the first term with every tail column; its pair count (per level of
# the first term, every pair of tail columns) bounds the work of one evaluation. Past this the padded path is the
# wrong tool (a single fit's sparse structure is what such a design needs).
MAX_PADDED_PAIRS = 4_000_000


def round_up(n: int, growth: float = 2.0, minimum: int = 4) -> int:
    """The smallest size of the ladder minimum, ⌈minimum·growth⌉, ... that holds n. growth=2: powers of two
    (from `minimum`); a smaller growth wastes less padding and makes more buckets (more compiles)."""
    if growth <= 1.0:
        raise ValueError(f"growth must be > 1, got {growth!r}")
    size = max(int(minimum), 1)
    while size < n:
        size = max(size + 1, int(math.ceil(size * growth)))
    return size


def _complete_codes(n_levels: tuple[int, ...]) -> list[np.ndarray]:
    """Rows in which every level of the first term meets every level of each later term (later terms take level
    0 in the rows that pair the first term with another one)."""
    first = [np.zeros(0, np.int64)]
    others = [[np.zeros(0, np.int64)] for _ in n_levels[1:]]
    if len(n_levels) == 1:
        return [np.arange(n_levels[0])]
    for i, l_k in enumerate(n_levels[1:]):
        c0, ck = np.meshgrid(np.arange(n_levels[0]), np.arange(l_k), indexing="ij")
        first.append(c0.ravel())
        for j in range(len(n_levels) - 1):
            others[j].append(ck.ravel() if j == i else np.zeros(c0.size, np.int64))
    return [np.concatenate(first)] + [np.concatenate(o) for o in others]


def complete_structure(qs: tuple[int, ...], n_levels: tuple[int, ...]) -> Structure:
    """The block structure shared by every design of a bucket (sizes `n_levels`, z widths `qs`, terms in the
    designs' order): the first term block-diagonal, the later ones in the dense tail."""
    if len(n_levels) > 1 and min(n_levels[1:]) < 2:
        raise ValueError("padded level counts of later terms must be at least 2")  # else they would nest
    m_z = sum(l * q for l, q in zip(n_levels[1:], qs[1:]))
    pairs = n_levels[0] * qs[0] * m_z * (m_z + 1) // 2
    if pairs > MAX_PADDED_PAIRS:
        raise ValueError(f"a padded crossed design of {n_levels} levels couples {pairs} pairs of random effects "
                         f"(more than {MAX_PADDED_PAIRS}); fit such designs one at a time")
    codes = _complete_codes(tuple(int(l) for l in n_levels))
    structure, _ = build_structure(codes, list(qs), list(n_levels))
    assert structure.n_prefix == 1, "the complete design keeps only the first term block-diagonal"
    return structure


def padded_row_index(structure: Structure, codes: list[np.ndarray]) -> dict:
    """The rows' indices into a complete structure's tail and entries (what `build_structure` returns as
    index_parts), for codes of any leading shape (one design's rows, or a bucket's (designs × rows)).

    In the complete design the first term's entries for tail term i are ordered by (first-term level, level of
    term i, component), after those of the tail terms before it."""
    qs, n_levels = structure.qs, structure.n_levels
    tail_row, row_entry = [], []
    base = 0
    for i, k in enumerate(range(1, structure.n_terms)):
        tail_row.append((structure.tail_offsets[i] + codes[k].astype(np.int64) * qs[k]).astype(np.int32))
        row_entry.append((base + (codes[0].astype(np.int64) * n_levels[k] + codes[k]) * qs[k]).astype(np.int32))
        base += n_levels[0] * n_levels[k] * qs[k]
    return dict(tail_row=tail_row, row_entry=[row_entry])


def _sums(ids: np.ndarray, values: np.ndarray, size: int) -> np.ndarray:
    return np.bincount(ids, weights=values, minlength=size)[:size]


def complete_statistics(structure: Structure, slot: np.ndarray, codes: list[np.ndarray], zs: list[np.ndarray],
                        weights: np.ndarray, F: np.ndarray, n_slots: int):
    """The statistics of `_blocks.cross_products` ([Z F]ᵀW[Z F] in `Blocks`' layout for a complete structure)
    of several designs at once, summed in NumPy over their real rows: row r belongs to design slot[r], with
    levels codes[k][r] (within the design), z rows zs[k][r], weight and F row. Every array gets a leading axis
    of n_slots designs; slots without rows are copies of slot 0. No row is padded (sums over rows need no
    common row count), so nothing here compiles. Returns (blocks, n, sum_log_w) with n the rows of positive
    weight and Σ log w over them, per design."""
    qs, levels = structure.qs, structure.n_levels
    q0, l0, f, m_z = qs[0], levels[0], F.shape[1], structure.m_z
    w = weights
    wz0 = zs[0] * w[:, None]
    first = slot.astype(np.int64) * l0 + codes[0]
    per_level = lambda v: _sums(first, v, n_slots * l0).reshape(n_slots, l0)  # noqa: E731
    diag = np.stack([np.stack([per_level(wz0[:, i] * zs[0][:, j]) for j in range(q0)], 1) for i in range(q0)], 1)
    fixed = np.stack([np.stack([per_level(F[:, a] * wz0[:, i]) for i in range(q0)], 1) for a in range(f)], 1)
    index = padded_row_index(structure, codes)
    nnz = sum(l0 * l * q for l, q in zip(levels[1:], qs[1:]))
    entries = np.zeros((n_slots, q0, nnz))
    tail_zz = np.zeros((n_slots, m_z * m_z))
    tail_fz = np.zeros((n_slots, f, m_z))
    tail_cols = [(index["tail_row"][i][:, None] + np.arange(qs[k])[None, :]).astype(np.int64)
                 for i, k in enumerate(range(1, len(qs)))]
    for i, k in enumerate(range(1, len(qs))):
        for j in range(qs[k]):
            ids = slot.astype(np.int64) * nnz + index["row_entry"][0][i] + j
            for c in range(q0):
                entries[:, c] += _sums(ids, zs[k][:, j] * wz0[:, c], n_slots * nnz).reshape(n_slots, nnz)
            wzk = zs[k][:, j] * w
            col = slot.astype(np.int64) * m_z + tail_cols[i][:, j]
            for a in range(f):
                tail_fz[:, a] += _sums(col, F[:, a] * wzk, n_slots * m_z).reshape(n_slots, m_z)
            for i2, k2 in enumerate(range(1, len(qs))):
                for j2 in range(qs[k2]):
                    target = (slot.astype(np.int64) * m_z + tail_cols[i][:, j]) * m_z + tail_cols[i2][:, j2]
                    tail_zz += _sums(target, wzk * zs[k2][:, j2], n_slots * m_z * m_z).reshape(n_slots, -1)
    wF = F * w[:, None]
    tail_ff = np.stack([np.stack([_sums(slot, F[:, a] * wF[:, b], n_slots) for b in range(f)], 1)
                        for a in range(f)], 1)
    positive = w > 0
    n = _sums(slot, positive.astype(np.float64), n_slots)
    sum_log_w = _sums(slot, np.log(np.where(positive, w, 1.0)), n_slots)
    blocks = Blocks(diag=(diag,), offdiag=((),), fixed=(fixed,), entries=(entries,),
                    tail_zz=tail_zz.reshape(n_slots, m_z, m_z), tail_fz=tail_fz, tail_ff=tail_ff)
    filled = int(slot.max()) + 1 if slot.size else 0
    if 0 < filled < n_slots:
        copy = lambda a: np.concatenate([a[:filled], np.repeat(a[:1], n_slots - filled, axis=0)])  # noqa: E731
        blocks, n, sum_log_w = jax.tree.map(copy, (blocks, n, sum_log_w))
    return blocks, n, sum_log_w
