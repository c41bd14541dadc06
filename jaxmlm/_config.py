"""Process-wide JAX settings jaxmlm relies on.

float64 is the default: mixed-model deviances are sums over many rows and the optimum is flat in θ, so single
precision loses the digits lme4 reports. A persistent compilation cache lets a second process reuse the XLA
programs of the first (shapes are the cache key, so one compile serves every refit of the same design shape).
"""

from __future__ import annotations

import os

import jax

jax.config.update("jax_enable_x64", True)


def _enable_compilation_cache() -> None:
    if os.environ.get("JAXMLM_NO_CACHE"):
        return
    path = os.environ.get("JAXMLM_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "jaxmlm", "xla"
    )
    try:
        os.makedirs(path, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
        # Cache even quick compiles: many of ours take well under a second but add up across a session.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    except Exception:  # a read-only home must never stop a fit
        pass


_enable_compilation_cache()
