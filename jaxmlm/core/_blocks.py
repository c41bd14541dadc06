"""Block kinds and sufficient statistics of the blocked system [Z X y]ᵀ W [Z X y].

The random-effects columns are grouped by term (terms in lme4's order) and, within a term, by level. The
symbolic analysis here, done once in NumPy, decides how each term's block is stored and eliminated:

* **prefix terms** (block-diagonal): the first term always; a later term joins the prefix while every level of
  every earlier prefix term sits inside exactly one of its levels (nesting, or the same grouping factor).
  Eliminating a prefix level then creates no fill between levels of a later prefix term, so each prefix term
  keeps a block-diagonal diagonal block (l levels of q×q) and a one-to-one "parent" map to each later prefix
  term. Its coupling to the rest of the system is stored as sparse *entries* (level, tail row).
* **tail** (dense): the first term that is crossed with the prefix, all terms after it, and the fixed-effects
  columns F (X and the response, or PIRLS's working response). The tail's Schur complement is a dense matrix;
  eliminating a prefix term updates it through precomputed pairs of entries that share a level.

Because every row carries a level of every term, the fill pattern of the prefix equals its direct pattern, so no
fill entries are needed. The statistics are segment sums over rows, written in JAX so that PIRLS can recompute
them with new working weights inside jit.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Structure", "RowData", "Blocks", "build_structure", "row_data", "cross_products", "same_q_runs", "host_to_device"]


class Structure(eqx.Module):
    """Symbolic layout: sizes are static, index arrays are leaves (so one compile serves any data of a shape)."""

    qs: tuple[int, ...] = eqx.field(static=True)
    n_levels: tuple[int, ...] = eqx.field(static=True)
    n_prefix: int = eqx.field(static=True)
    tail_offsets: tuple[int, ...] = eqx.field(static=True)  # column offset of each tail term in the tail Z block
    m_z: int = eqx.field(static=True)  # number of tail random-effect columns
    # parents[t][i]: level of prefix term t+1+i containing each level of prefix term t
    parents: tuple[tuple[jax.Array, ...], ...]
    # per prefix term: its sparse coupling to the tail Z columns
    entry_level: tuple[jax.Array, ...]
    entry_row: tuple[jax.Array, ...]
    # entry_map[t][i]: for each entry of prefix term t, the entry of prefix term t+1+i with the parent level, same row
    entry_map: tuple[tuple[jax.Array, ...], ...]
    # pairs of entries of prefix term t that share a level, lower triangle of the tail: (a, b, flat target)
    pair_a: tuple[jax.Array, ...]
    pair_b: tuple[jax.Array, ...]
    pair_target: tuple[jax.Array, ...]
    # (G, K): the tail columns of each distinct combination of tail levels, when every tail term is a scalar
    # intercept and the rows have at most half as many combinations as rows (`_tail_groups`); else None
    tail_groups: jax.Array | None = None

    @property
    def n_terms(self) -> int:
        return len(self.qs)

    @property
    def n_theta(self) -> int:
        return sum(q * (q + 1) // 2 for q in self.qs)

    @property
    def n_pairs(self) -> int:
        return sum(int(p.shape[0]) for p in self.pair_a)


class RowData(eqx.Module):
    """Per-row data the statistics are summed from."""

    codes: tuple[jax.Array, ...]  # per term (n,) int32
    z: tuple[jax.Array, ...]  # per term (n, q)
    tail_row: tuple[jax.Array, ...]  # per tail term (n,): first tail column of the row's level
    # row_entry[t][j]: per prefix term t and tail term j, the index of the row's first scalar entry in E_t
    row_entry: tuple[tuple[jax.Array, ...], ...]
    # (n,): the row's combination of tail levels (a row of Structure.tail_groups), or None
    tail_group: jax.Array | None = None


class Blocks(eqx.Module):
    """Values of the blocked system (before scaling by Λθ). F holds the columns after Z: [X, y] or [working y].

    The per-level blocks of prefix terms are stored level-minor (the level or entry axis last), the layout their
    elimination works in (`_levelwise`): element (i, j) of every level is one contiguous vector."""

    diag: tuple[jax.Array, ...]  # prefix t: (q_t, q_t, l_t)
    offdiag: tuple[tuple[jax.Array, ...], ...]  # [t][i]: prefix t+1+i against t: (q_{t+1+i}, q_t, l_t)
    fixed: tuple[jax.Array, ...]  # prefix t: (f, q_t, l_t)
    entries: tuple[jax.Array, ...]  # prefix t: (q_t, nnz_t)
    tail_zz: jax.Array  # (m_z, m_z)
    tail_fz: jax.Array  # (f, m_z)
    tail_ff: jax.Array  # (f, f)


def split_levels(blocks: Blocks) -> Blocks:
    """The same values with every per-level element an array of its own: diag and offdiag as nested tuples
    [i][j] of (l,) arrays, fixed as a tuple of q (f, l) arrays, entries as a tuple of q (nnz,) arrays
    (`_levelwise.unpack` takes either form). A program that takes stacked blocks as arguments reads their elements
    as slices, which XLA's CPU backend copies out on every call (nearly doubling a large model's evaluation:
    docs/scale.md). The optimizer's programs therefore take split blocks (`split_problem`)."""
    def split(A):
        return tuple(tuple(A[i, j] for j in range(A.shape[1])) for i in range(A.shape[0]))

    return Blocks(
        diag=tuple(split(A) for A in blocks.diag),
        offdiag=tuple(tuple(split(B) for B in row) for row in blocks.offdiag),
        fixed=tuple(tuple(A[:, j] for j in range(A.shape[1])) for A in blocks.fixed),
        entries=tuple(tuple(E[j] for j in range(E.shape[0])) for E in blocks.entries),
        tail_zz=blocks.tail_zz,
        tail_fz=blocks.tail_fz,
        tail_ff=blocks.tail_ff,
    )


def host_to_device(a, dtype=None) -> jax.Array:
    """A host array on the default device as jnp.asarray would give it (dtype canonical: int64 stays int64 only
    under float64), by a plain transfer: jnp.asarray of a NumPy array compiles a small copy program per shape and
    dtype, three to five of them on a first fit."""
    if isinstance(a, jax.Array):
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    host = np.asarray(a, dtype=dtype)
    return jax.device_put(host.astype(jax.dtypes.canonicalize_dtype(host.dtype), copy=False))


def _is_function(codes_from: np.ndarray, codes_to: np.ndarray, n_from: int, n_to: int) -> np.ndarray | None:
    """If each level of `from` co-occurs with exactly one level of `to`, that map; else None."""
    key = np.unique(codes_from.astype(np.int64) * n_to + codes_to)
    src = key // n_to
    if len(src) != n_from or np.any(np.diff(src) == 0):
        return None
    return (key % n_to).astype(np.int32)


def _pairs_within_levels(levels: np.ndarray, rows: np.ndarray, m_z: int):
    """All (a, b) entry pairs with the same level and rows[a] >= rows[b]; target a flat index into m_z × m_z
    (int32 where m_z² fits). The pairs come ordered by their target's row, then level, then rows[b], so that the
    scatter into the m_z × m_z tail walks it row by row (several times faster than in random order): generated
    in that order from the entries sorted by (row, level) — entry a's partners are the first k + 1 entries of its
    level by row, k its rank there — with no sort over the pairs (docs/scale.md)."""
    n = levels.shape[0]
    wide = m_z * m_z > 2**31 - 1
    if n == 0:
        empty = np.zeros(0, np.int32)
        return empty, empty, np.zeros(0, np.int64 if wide else np.int32)
    index = np.int64 if n > 2**31 - 1 else np.int32
    by_level = np.lexsort((rows, levels)).astype(index)  # entries by level, then row
    counts = np.bincount(levels, minlength=int(levels.max()) + 1)
    level_start = (np.cumsum(counts) - counts).astype(index)[levels]  # per entry: its level's first position
    rank = np.empty(n, index)
    rank[by_level] = np.arange(n, dtype=index) - level_start[by_level]
    by_row = np.lexsort((levels, rows))  # the a of the pairs: by row, then level
    reps = rank[by_row] + 1
    first = np.cumsum(reps, dtype=np.int64)
    total = int(first[-1])
    slot_type = np.int64 if total > 2**31 - 1 else np.int32
    first = (first - reps).astype(slot_type)
    # the pair's b as a position in by_level: its level's start plus its offset within the run of a's partners
    slot = np.arange(total, dtype=slot_type)
    slot -= np.repeat(first - level_start[by_row].astype(slot_type), reps)  # in place: fewer fresh pages
    a = np.repeat(by_row.astype(np.int32), reps)
    b = by_level.astype(np.int32)[slot]
    flat = np.int64 if wide else np.int32
    target = np.repeat(rows[by_row].astype(flat) * flat(m_z), reps)
    target += rows[by_level].astype(flat)[slot]
    return a, b, target


def build_structure(codes: list[np.ndarray], qs: list[int], n_levels: list[int]):
    """Symbolic analysis: block kinds, parent maps, entries, pairs. Returns (Structure, RowData index parts)."""
    n_terms = len(codes)
    n_prefix = 1
    parent_maps: dict[tuple[int, int], np.ndarray] = {}
    for k in range(1, n_terms):
        maps = {}
        for t in range(n_prefix):
            m = _is_function(codes[t], codes[k], n_levels[t], n_levels[k])
            if m is None:
                break
            maps[(t, k)] = m
        else:
            if n_prefix == k:
                parent_maps.update(maps)
                n_prefix += 1
                continue
        break

    tail_terms = list(range(n_prefix, n_terms))
    tail_offsets = []
    m_z = 0
    for k in tail_terms:
        tail_offsets.append(m_z)
        m_z += n_levels[k] * qs[k]
    tail_row = [(tail_offsets[i] + codes[k].astype(np.int64) * qs[k]).astype(np.int32) for i, k in enumerate(tail_terms)]

    entry_level, entry_row, row_entry, entry_keys = [], [], [], []
    for t in range(n_prefix):
        levels_t, rows_t, row_entry_t = [], [], []
        base = 0
        for i, k in enumerate(tail_terms):
            key = codes[t].astype(np.int64) * n_levels[k] + codes[k]
            uniq, inv = np.unique(key, return_inverse=True)
            lev = (uniq // n_levels[k]).astype(np.int32)
            a = (uniq % n_levels[k]).astype(np.int64)
            q = qs[k]
            levels_t.append(np.repeat(lev, q))
            rows_t.append((tail_offsets[i] + (a * q)[:, None] + np.arange(q)[None, :]).ravel())
            row_entry_t.append((base + inv * q).astype(np.int32))
            base += len(uniq) * q
        lv = np.concatenate(levels_t) if levels_t else np.zeros(0, np.int32)
        rw = np.concatenate(rows_t) if rows_t else np.zeros(0, np.int64)
        entry_level.append(lv.astype(np.int32))
        entry_row.append(rw.astype(np.int32))
        row_entry.append(row_entry_t)
        entry_keys.append(lv.astype(np.int64) * max(m_z, 1) + rw)

    parents = []
    entry_map = []
    for t in range(n_prefix):
        par_t, emap_t = [], []
        for k in range(t + 1, n_prefix):
            par = parent_maps[(t, k)]
            par_t.append(par)
            keys_k = entry_keys[k]  # sorted by construction? sort to be safe
            order = np.argsort(keys_k, kind="stable")
            want = par[entry_level[t]].astype(np.int64) * max(m_z, 1) + entry_row[t]
            pos = np.searchsorted(keys_k[order], want)
            emap_t.append(order[np.clip(pos, 0, max(len(order) - 1, 0))].astype(np.int32) if len(order) else pos.astype(np.int32))
        parents.append(tuple(host_to_device(p) for p in par_t))
        entry_map.append(tuple(host_to_device(e) for e in emap_t))

    pa, pb, pt = [], [], []
    for t in range(n_prefix):
        a, b, target = _pairs_within_levels(entry_level[t], entry_row[t], max(m_z, 1))
        pa.append(host_to_device(a))
        pb.append(host_to_device(b))
        pt.append(host_to_device(target))

    group, groups = _tail_groups(tail_row, [qs[k] for k in tail_terms])
    structure = Structure(
        qs=tuple(int(q) for q in qs),
        n_levels=tuple(int(l) for l in n_levels),
        n_prefix=n_prefix,
        tail_offsets=tuple(tail_offsets),
        m_z=m_z,
        parents=tuple(parents),
        entry_level=tuple(host_to_device(e) for e in entry_level),
        entry_row=tuple(host_to_device(e) for e in entry_row),
        entry_map=tuple(entry_map),
        pair_a=tuple(pa),
        pair_b=tuple(pb),
        pair_target=tuple(pt),
        tail_groups=None if groups is None else host_to_device(groups),
    )
    index_parts = dict(tail_row=tail_row, row_entry=row_entry, tail_group=group, tail_terms=tail_terms)
    return structure, index_parts


def _tail_groups(tail_row: list[np.ndarray], tail_qs: list[int]):
    """(row → combination, (G, K) tail columns of each combination) of the rows' tail levels, or (None, None).

    With scalar intercept tail terms a row's contribution to the tail's ZᵀWZ and FᵀWZ depends only on its
    combination of tail levels (its z are ones), so `cross_products` first sums the rows' weights within
    combinations and scatters once per combination: a poststratification cells model (every cell its own row,
    a few thousand combinations of the demographic terms) scatters a fraction of the products."""
    if not tail_row or any(q != 1 for q in tail_qs):
        return None, None
    n = tail_row[0].shape[0]
    if len(tail_row) == 1:
        used, group = np.unique(tail_row[0], return_inverse=True)
        groups = used[:, None]
    else:
        groups, group = _unique_rows(np.stack(tail_row, axis=1))
    if groups.shape[0] > n // 2:
        return None, None
    return group.reshape(-1).astype(np.int32), groups.astype(np.int32)


def _unique_rows(cols: np.ndarray):
    """np.unique(cols, axis=0, return_inverse=True) for non-negative integer columns: each row read as one
    mixed-radix number (first column most significant, so the same lexicographic order) and the 1-d numbers
    made unique, several times faster than sorting rows; np.unique's rows where the numbers would overflow."""
    lo = cols.min(axis=0).astype(np.int64)
    span = cols.max(axis=0).astype(np.int64) - lo + 1
    if np.prod(span.astype(np.float64)) >= 2.0**62:
        return np.unique(cols, axis=0, return_inverse=True)
    stride = np.concatenate([np.cumprod(span[::-1])[::-1][1:], [1]])
    used, group = np.unique((cols - lo) @ stride, return_inverse=True)
    digits = (used[:, None] // stride[None, :]) % span[None, :]
    return (digits + lo).astype(cols.dtype), group


def row_data(codes: list[np.ndarray], zs: list[np.ndarray], index_parts: dict) -> RowData:
    group = index_parts.get("tail_group")
    # the combinations stand for the rows only where every tail z is 1 (intercepts, no weights folded into z)
    if group is not None and not all(np.all(np.asarray(zs[k]) == 1.0) for k in index_parts["tail_terms"]):
        group = None
    return RowData(
        codes=tuple(host_to_device(c, np.int32) for c in codes),
        z=tuple(host_to_device(z) for z in zs),
        tail_row=tuple(host_to_device(r) for r in index_parts["tail_row"]),
        row_entry=tuple(tuple(host_to_device(r) for r in re_t) for re_t in index_parts["row_entry"]),
        tail_group=None if group is None else host_to_device(group),
    )


def _segsum(values, ids, n):
    return jax.ops.segment_sum(values, ids, num_segments=n)


def _stacked_columns(first: tuple, qs: tuple[int, ...], D: int) -> jax.Array:
    """(n, s): per row, the q_k consecutive positions from first[i] (one (n,) array per tail term k = D + i), for
    all tail terms side by side; one stacked operation per run of same-q terms, not one per term."""
    pieces = []
    for k0, k1, q in same_q_runs(qs[D:]):
        starts = jnp.stack(first[k0:k1], axis=1)  # (n, K)
        columns = starts[:, :, None] + jnp.arange(q, dtype=starts.dtype)[None, None, :]
        pieces.append(columns.reshape(starts.shape[0], -1))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=1)


def same_q_runs(qs: tuple[int, ...], first: int = 0, stop: int | None = None) -> list[tuple[int, int, int]]:
    """(first term, end term, q) of each run of consecutive terms with the same q among terms first..stop. A run
    is handled as one stacked operation (its levels side by side), so a program's size grows with the number of
    runs, not of terms."""
    stop = len(qs) if stop is None else stop
    runs, k = [], first
    while k < stop:
        end = k
        while end < stop and qs[end] == qs[k]:
            end += 1
        runs.append((k, end, qs[k]))
        k = end
    return runs


def _grouped_tail(structure: Structure, group: jax.Array, w: jax.Array, wF: jax.Array):
    """The tail's ZᵀWZ and FᵀWZ from the rows' weights summed within combinations of tail levels (`_tail_groups`)."""
    m_z, idx = structure.m_z, structure.tail_groups
    n_groups, f = idx.shape[0], wF.shape[1]
    w_group = _segsum(w, group, n_groups)  # (G,)
    wF_group = _segsum(wF, group, n_groups)  # (G, f)
    wide = jnp.int64 if m_z * m_z > 2**31 - 1 else jnp.int32
    target = idx[:, :, None].astype(wide) * m_z + idx[:, None, :]
    vals = jnp.broadcast_to(w_group[:, None, None], target.shape)
    tail_zz = _segsum(vals.reshape(-1), target.reshape(-1), m_z * m_z).reshape(m_z, m_z)
    vals = jnp.broadcast_to(wF_group[:, None, :], (n_groups, idx.shape[1], f))
    tail_fz = _segsum(vals.reshape(-1, f), idx.reshape(-1), m_z).T
    return tail_zz, tail_fz


def cross_products(structure: Structure, rows: RowData, weights: jax.Array, F: jax.Array) -> Blocks:
    """One pass of segment sums over the rows: every block of [Z F]ᵀ W [Z F]. Pure JAX (usable inside jit)."""
    D = structure.n_prefix
    qs, nl = structure.qs, structure.n_levels
    w = weights
    f = F.shape[1]
    wF = F * w[:, None]
    # the tail terms' Z columns side by side (n, s), s = Σ q over tail terms: the tail's statistics are one
    # segment sum each over all tail terms, not one per term (or pair of terms), so the program's size does not
    # grow with the number of terms
    tail_terms = range(D, structure.n_terms)
    tail_z = jnp.concatenate([rows.z[k] for k in tail_terms], axis=1) if len(tail_terms) else None
    diag, offdiag, fixed, entries = [], [], [], []
    for t in range(D):
        zt = rows.z[t]
        ct = rows.codes[t]
        wz = zt * w[:, None]
        diag.append(_segsum(wz[:, :, None] * zt[:, None, :], ct, nl[t]))
        offdiag.append(
            tuple(_segsum(rows.z[k][:, :, None] * wz[:, None, :], ct, nl[t]) for k in range(t + 1, D))
        )
        fixed.append(_segsum(F[:, :, None] * wz[:, None, :], ct, nl[t]))
        nnz = int(structure.entry_level[t].shape[0])
        if len(tail_terms):
            # every tail term's entries in one segment sum (the entries of different terms are disjoint)
            ids = _stacked_columns(rows.row_entry[t], qs, D)  # (n, s)
            contrib = tail_z[:, :, None] * wz[:, None, :]  # (n, s, qt)
            entries.append(_segsum(contrib.reshape(-1, qs[t]), ids.reshape(-1), nnz))
        else:
            entries.append(jnp.zeros((nnz, qs[t]), dtype=F.dtype))
    m_z = structure.m_z
    tail_zz = jnp.zeros((m_z, m_z), dtype=F.dtype)
    tail_fz = jnp.zeros((f, m_z), dtype=F.dtype)
    if m_z and rows.tail_group is not None and structure.tail_groups is not None:
        tail_zz, tail_fz = _grouped_tail(structure, rows.tail_group, w, wF)
    elif m_z:
        # each row's tail columns (n, s); every (column, column) pair of a row lands in its own cell of the tail
        tail_idx = _stacked_columns(rows.tail_row, qs, D)
        wz_tail = tail_z * w[:, None]
        wide = jnp.int64 if m_z * m_z > 2**31 - 1 else jnp.int32
        target = tail_idx[:, :, None].astype(wide) * m_z + tail_idx[:, None, :]
        vals = wz_tail[:, :, None] * tail_z[:, None, :]
        tail_zz = _segsum(vals.reshape(-1), target.reshape(-1), m_z * m_z).reshape(m_z, m_z)
        vals = wF[:, None, :] * tail_z[:, :, None]  # (n, s, f)
        tail_fz = _segsum(vals.reshape(-1, f), tail_idx.reshape(-1), m_z).T
    # Σ_rows F Fᵀ w as a fused elementwise product and reduction: XLA's CPU dot for this (f × n)·(n × f) shape
    # with n in the millions was slower (docs/scale.md)
    tail_ff = jnp.sum(F[:, :, None] * wF[:, None, :], axis=0)
    level_minor = lambda a: jnp.moveaxis(a, 0, -1)  # noqa: E731  (once per pass over the rows)
    return Blocks(
        diag=tuple(level_minor(a) for a in diag),
        offdiag=tuple(tuple(level_minor(a) for a in o) for o in offdiag),
        fixed=tuple(level_minor(a) for a in fixed),
        entries=tuple(level_minor(a) for a in entries),
        tail_zz=tail_zz,
        tail_fz=tail_fz,
        tail_ff=tail_ff,
    )
