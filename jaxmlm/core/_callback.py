"""Host callbacks that return float64 whatever the calling thread's float64 setting.

jaxmlm turns float64 on per thread (`_config.float64`), but JAX checks and canonicalizes a callback's result in
XLA's own thread, where that setting is off: a float64 result would arrive as float32 and be refused. The result's
bits therefore travel as pairs of uint32 (which every setting keeps) and are reinterpreted as float64 in XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["float64_callback"]


def float64_callback(fn, shape, *args, vmap_method: str = "sequential") -> jax.Array:
    """jax.pure_callback(fn, float64 of `shape`, *args), exact to the bit, under any float64 setting."""
    shape = tuple(shape)

    def host(*host_args):
        out = np.ascontiguousarray(np.asarray(fn(*host_args), dtype=np.float64).reshape(shape))
        return out.view(np.uint32).reshape(shape + (2,))

    bits = jax.pure_callback(host, jax.ShapeDtypeStruct(shape + (2,), jnp.uint32), *args, vmap_method=vmap_method)
    return jax.lax.bitcast_convert_type(bits, jnp.float64)
