"""Rows sharded across devices and hosts: the statistics are sums over rows, so each device sums its own rows
and one all-reduce (psum) adds them up.

Every block of [Z F]ᵀW[Z F] is a segment sum over rows into a fixed set of segments (levels, entries, tail
cells) decided by the symbolic structure. So rows can be split anywhere: each device runs `cross_products` on its
slice and the partial Blocks are summed across the mesh axis. The structure itself (block kinds, entries, pairs)
depends only on which level combinations occur, so it is built once from the codes and replicated; the per-row
numbers (z, X, y, weights) never leave their device. Rows are padded to a multiple of the device count with
weight 0, which contributes nothing to any sum.

Several hosts join through `jax.distributed.initialize`: each process passes its own rows and the global mesh
spans every process's devices; the psum then crosses hosts. After the reduction the statistics are replicated
and the fit (which touches only the statistics) runs as on one device.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ._blocks import Blocks, RowData, Structure, cross_products
from .._compile import jit

__all__ = ["row_mesh", "pad_rows", "sharded_cross_products", "sharded_linear_problem", "distributed_cross_products"]

AXIS = "rows"


def row_mesh(devices=None) -> Mesh:
    """A one-axis mesh over the given devices (default: every device of every process)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (AXIS,))


def pad_rows(rows: RowData, weights, F, multiple: int, n_pad_to: int | None = None):
    """Pad the rows (weight 0, codes 0, values 0) to a multiple of `multiple` (or to n_pad_to)."""
    n = int(weights.shape[0])
    target = n_pad_to if n_pad_to is not None else -(-n // multiple) * multiple
    extra = target - n
    if extra == 0:
        return rows, jnp.asarray(weights), jnp.asarray(F)

    def pad(x):
        x = jnp.asarray(x)
        return jnp.concatenate([x, jnp.zeros((extra,) + x.shape[1:], dtype=x.dtype)], axis=0)

    return jax.tree.map(pad, rows), pad(weights), pad(F)


@jit(static_argnames=("mesh",))
def _sharded_sum(structure: Structure, rows: RowData, weights, F, mesh: Mesh) -> Blocks:
    def local(structure, rows, weights, F):
        blocks = cross_products(structure, rows, weights, F)
        return jax.tree.map(lambda b: jax.lax.psum(b, AXIS), blocks)

    return jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P(AXIS)),
        out_specs=P(),
        check_vma=False,
    )(structure, rows, weights, F)


def _place(tree, mesh: Mesh, spec):
    sharding = NamedSharding(mesh, spec)
    return jax.tree.map(lambda x: jax.device_put(x, sharding), tree)


def sharded_cross_products(structure: Structure, rows: RowData, weights, F, mesh: Mesh | None = None) -> Blocks:
    """`cross_products` with the rows split across the mesh's devices (one process)."""
    mesh = row_mesh() if mesh is None else mesh
    rows, weights, F = pad_rows(rows, weights, F, mesh.size)
    rows, weights, F = _place((rows, weights, F), mesh, P(AXIS))
    return _sharded_sum(_place(structure, mesh, P()), rows, weights, F, mesh)


def sharded_linear_problem(structure: Structure, rows: RowData, weights, X, y, mesh: Mesh | None = None):
    """`make_linear_problem` with the statistics formed across devices."""
    from ._lmm import LinearProblem

    weights = jnp.asarray(weights)
    F = jnp.concatenate([jnp.asarray(X), jnp.asarray(y)[:, None]], axis=1)
    blocks = sharded_cross_products(structure, rows, weights, F, mesh)
    positive = weights > 0
    sum_log_w = jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, weights, 1.0)), 0.0))
    return LinearProblem(structure=structure, blocks=jax.device_get(blocks), n=int(np.sum(np.asarray(weights) > 0)),
                         p=int(X.shape[1]), sum_log_w=sum_log_w)


def distributed_cross_products(structure: Structure, local_rows: RowData, local_weights, local_F,
                               rows_per_process: int) -> Blocks:
    """Statistics over the rows of every process (after `jax.distributed.initialize`).

    Each process passes its own rows (at most `rows_per_process`, padded to it) and the same `structure`,
    built from the codes of all rows. Returns the summed Blocks, replicated, as NumPy-backed arrays."""
    mesh = row_mesh()
    n_local_dev = len(jax.local_devices())
    per_device = -(-rows_per_process // n_local_dev)
    rows, weights, F = pad_rows(local_rows, local_weights, local_F, 1, n_pad_to=per_device * n_local_dev)
    sharding = NamedSharding(mesh, P(AXIS))

    def globalize(x):
        x = np.asarray(x)
        return jax.make_array_from_process_local_data(sharding, x, (x.shape[0] * jax.process_count(),) + x.shape[1:])

    rows, weights, F = jax.tree.map(globalize, (rows, weights, F))
    structure = jax.tree.map(
        lambda x: jax.make_array_from_callback(np.shape(x), NamedSharding(mesh, P()), lambda idx: np.asarray(x)[idx]),
        structure,
    )
    blocks = _sharded_sum(structure, rows, weights, F, mesh)
    return jax.tree.map(lambda b: np.asarray(b.addressable_data(0)), blocks)
