"""Process-wide JAX settings jaxmlm relies on.

float64 is the default: mixed-model deviances are sums over many rows and the optimum is flat in θ, so single
precision loses the digits lme4 reports. A persistent compilation cache lets a second process reuse the XLA
programs of the first (shapes are the cache key, so one compile serves every refit of the same design shape).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading

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


def float64(fn):
    """Run `fn` with JAX's float64 enabled for the calling thread only; the user's setting is back afterwards.

    Every public entry point that computes is wrapped in this, so jaxmlm computes in float64 whatever the user's
    `jax_enable_x64` is, and never changes it for the user's own programs."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


# ------------------------------------------------------------------------------------ heap during fits
# XLA's CPU runtime takes one buffer for all of a program's temporaries on every call. When that buffer is large,
# glibc's malloc serves it by mmap and returns it by munmap, so every call faults in (and the kernel zeroes) fresh
# pages: at 1M rows × 100k groups (intercept + slope) a value-and-gradient call cost 27-28 ms on its own against
# 12-13 ms inside a compiled loop, and 16-18 ms once the buffer came from the heap. While a linear model's host
# optimizer runs (many calls of one program) jaxmlm therefore asks glibc to serve every allocation from the heap
# and not to trim it, and restores both settings afterwards, when the heap's free top is returned as usual. The
# statistics pass runs before, under the defaults, so its large transient buffers go back to the system. Set
# JAXMLM_NO_MALLOPT=1 to leave the allocator alone. Elsewhere (not glibc) this does nothing.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_GLIBC_DEFAULTS = {_M_TRIM_THRESHOLD: 128 * 1024, _M_MMAP_MAX: 65536}
_heap_lock = threading.Lock()
_heap_depth = 0


def _mallopt():
    import ctypes
    import platform

    if os.environ.get("JAXMLM_NO_MALLOPT") or platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


@contextlib.contextmanager
def heap_allocations():
    """Within: glibc serves allocations from the heap and keeps it (see above); re-entrant and thread-safe."""
    global _heap_depth
    mallopt = _mallopt()
    if mallopt is None:
        yield
        return
    with _heap_lock:
        if _heap_depth == 0:
            mallopt(_M_MMAP_MAX, 0)
            mallopt(_M_TRIM_THRESHOLD, 1 << 30)
        _heap_depth += 1
    try:
        yield
    finally:
        with _heap_lock:
            _heap_depth -= 1
            if _heap_depth == 0:
                for param, value in _GLIBC_DEFAULTS.items():
                    mallopt(param, value)
