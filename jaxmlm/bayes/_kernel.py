"""The compiled post-stratification program: Σ_c N_c μ_c(draw) per group, for every draw, in bounded memory.

Draw tables are laid out with the draws on the minor axis, so a cell's random effect for all draws of a chunk is
one contiguous row gathered from its level (b_k: levels × q × draws), and the group sums are row scatter-adds
(`segment_sum` with the cells' group codes: no group-by-cell matrix). Cells are visited in chunks by a scan and
draws in chunks (one compiled call each), so the working set is chunk_cells × chunk_draws × (a few + Σ q) numbers
whatever the frame's size; the result is groups × draws.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ..core._blocks import host_to_device
from ._cells import Cells
from .._compile import jit

__all__ = ["group_draws", "chunk_sizes", "summarize"]

_CPU_CHUNK_DRAWS, _CPU_CHUNK_BYTES = 64, 256 << 10
_DEVICE_CHUNK_DRAWS = 256
_MIN_GROUPS = 64
_MAX_WORKING_BYTES = 1 << 30


def available_memory() -> int:
    """Bytes free on the default device (the host's available memory on a CPU)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        try:
            stats = device.memory_stats()
            return int(stats["bytes_limit"] - stats["bytes_in_use"])
        except Exception:  # a backend without memory statistics
            return 1 << 30
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def chunk_sizes(n_cells: int, n_draws: int, q_total: int, chunk_cells=None, chunk_draws=None):
    """(cells, draws) per chunk, powers of two (a frame is padded up to its chunk, so frames and draw counts of
    similar sizes share one program). On a CPU the chunk's arrays are kept cache-sized (64 draws × 512 cells, 256
    KiB each), which beat chunks that fill memory (docs/bayes_mrp.md); on an accelerator the chunk's working set
    (η, μ and a gathered row per term component) fills a share of the free memory instead."""
    on_cpu = jax.devices()[0].platform == "cpu"
    draws = int(chunk_draws) if chunk_draws else (_CPU_CHUNK_DRAWS if on_cpu else _DEVICE_CHUNK_DRAWS)
    if chunk_cells:
        return max(1, min(int(chunk_cells), n_cells)), max(1, draws)
    if on_cpu:
        cells = max(1, _CPU_CHUNK_BYTES // (8 * draws))
    else:
        budget = min(_MAX_WORKING_BYTES, available_memory() // 8)
        cells = max(256, budget // (8 * draws * (3 + q_total)))
    cells = 1 << int(np.floor(np.log2(cells)))
    return int(min(cells, _next_power_of_two(n_cells))), draws


def _next_power_of_two(n: int) -> int:
    return 1 << max(0, int(np.ceil(np.log2(max(n, 1)))))


def _pad_rows(a, rows: int) -> jax.Array:
    """The cell array padded with zero rows to `rows`, on the device (padded on the host: an eager join would
    compile a program per shape)."""
    a = np.asarray(a)
    pad = rows - a.shape[0]
    return host_to_device(a if pad == 0 else np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)], axis=0))


def _inverse_link(family, eta):
    return family.linkinv(eta) if hasattr(family, "linkinv") else eta


def _chunk_sums(cells: Cells, beta_t, tables, family, n_groups: int, chunk_cells: int):
    """Σ N μ per group for one chunk of draws (beta_t: p × s, tables[k]: (levels + 1) × q × s): (groups, s)."""
    n_chunks = cells.weight.shape[0] // chunk_cells

    def step(acc, i):
        take = lambda a: jax.lax.dynamic_slice_in_dim(a, i * chunk_cells, chunk_cells, axis=0)  # noqa: E731
        eta = take(cells.X) @ beta_t + take(cells.offset)[:, None]
        for codes, z, table in zip(cells.codes, cells.z, tables):
            rows = table[take(codes)]  # (chunk, q, s): contiguous rows of draws
            eta = eta + jnp.einsum("cq,cqs->cs", take(z), rows)
        mu = _inverse_link(family, eta)
        acc = acc + jax.ops.segment_sum(take(cells.weight)[:, None] * mu, take(cells.group), n_groups)
        return acc, None

    acc = jnp.zeros((n_groups, beta_t.shape[1]), beta_t.dtype)
    acc, _ = jax.lax.scan(step, acc, jnp.arange(n_chunks))
    return acc


@jit(static_argnames=("family", "n_groups", "chunk_cells"))
def _draw_chunk_sums(cells: Cells, beta, b_terms, family, n_groups: int, chunk_cells: int):
    """One chunk of draws (beta: s × p, b_terms[k]: s × levels × q, a row for every code the cells use):
    Σ N μ per group, (groups, s)."""
    tables = [b.transpose(1, 2, 0) for b in b_terms]  # the draws last
    return _chunk_sums(cells, beta.T, tables, family, n_groups, chunk_cells)


def group_draws(cells: Cells, beta, b_terms, family, totals, chunk_cells: int, chunk_draws: int) -> np.ndarray:
    """Per group and draw, Σ N μ / Σ N: (groups, draws). beta: draws × p; b_terms[k]: draws × codes × q.

    Cells are padded to a multiple of chunk_cells (weight 0: they add nothing; code 0: any valid level) and the
    draws run in chunks of chunk_draws (the last padded), so one compiled program serves any number of draws."""
    # padded (the extra groups stay empty) so that tables by state, by state × age or overall share a program
    n_groups = max(_MIN_GROUPS, _next_power_of_two(int(totals.shape[0])))
    rows = -(-cells.weight.shape[0] // chunk_cells) * chunk_cells
    cells = jax.tree.map(lambda a: _pad_rows(a, rows), cells)
    n_draws = beta.shape[0]
    pad = -n_draws % chunk_draws
    beta = np.concatenate([beta, np.repeat(beta[:1], pad, axis=0)]) if pad else beta
    b_terms = [np.concatenate([b, np.repeat(b[:1], pad, axis=0)]) if pad else b for b in b_terms]
    parts = []
    for i in range(0, n_draws + pad, chunk_draws):
        sl = slice(i, i + chunk_draws)
        parts.append(_draw_chunk_sums(cells, host_to_device(beta[sl]), tuple(host_to_device(b[sl]) for b in b_terms),
                                      family, n_groups, chunk_cells))
    sums = np.concatenate([np.asarray(part) for part in parts], axis=1)[: totals.shape[0], :n_draws]
    return sums / np.asarray(totals)[:, None]


def summarize(sims: np.ndarray, level: float):
    """sd, lower and upper quantiles over the last axis (draws)."""
    alpha = (1.0 - level) / 2.0
    return sims.std(axis=-1, ddof=1), np.quantile(sims, alpha, axis=-1), np.quantile(sims, 1.0 - alpha, axis=-1)
