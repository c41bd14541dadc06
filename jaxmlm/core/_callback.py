"""Host callbacks that return float64 whatever the calling thread's float64 setting.

jaxmlm turns float64 on per thread (`_config.float64`), but JAX checks and canonicalizes a callback's result in
XLA's own thread, where that setting is off: a float64 result would arrive as float32 and be refused, and float64
arguments would reach the host rounded to float32. Both therefore travel as pairs of uint32 (which every setting
keeps) and are reinterpreted as float64 on the other side.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["float64_callback"]


def float64_callback(fn, shape, *args, vmap_method: str = "sequential") -> jax.Array:
    """jax.pure_callback(fn, float64 of `shape`, *args), exact to the bit, under any float64 setting."""
    shape = tuple(shape)
    is_float64 = [jnp.asarray(a).dtype == jnp.float64 for a in args]
    sent = [jax.lax.bitcast_convert_type(a, jnp.uint32) if f else a for a, f in zip(args, is_float64)]

    def host(*host_args):
        received = [np.ascontiguousarray(np.asarray(a)).view(np.float64)[..., 0] if f else np.asarray(a)
                    for a, f in zip(host_args, is_float64)]
        out = np.ascontiguousarray(np.asarray(fn(*received), dtype=np.float64).reshape(shape))
        return out.view(np.uint32).reshape(shape + (2,))

    bits = jax.pure_callback(host, jax.ShapeDtypeStruct(shape + (2,), jnp.uint32), *sent, vmap_method=vmap_method)
    return jax.lax.bitcast_convert_type(bits, jnp.float64)
