"""How jaxmlm uses JAX's settings without changing them for the user's own programs.

* float64 where jaxmlm computes: mixed-model deviances are sums over many rows and the optimum is flat in θ, so
  single precision loses the digits lme4 reports. Every public entry point that computes runs under `float64`
  (JAX's `jax.enable_x64` context, scoped to the calling thread), so the user's `jax_enable_x64` is never touched.
* The persistent compilation cache is the user's choice: `enable_compilation_cache()` or the environment variable
  JAXMLM_CACHE_DIR. A directory the user has set already (`jax_compilation_cache_dir`) is never replaced.
* glibc's allocator is tuned during fits only when asked: `heap_allocations()` as a context, or
  JAXMLM_MALLOPT=1 for every fit.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import threading

import jax

from ._errors import PrecisionError

__all__ = ["float64", "float64_methods", "caller_precision", "require_float64", "enable_compilation_cache", "heap_allocations",
           "fit_allocations"]


# ------------------------------------------------------------------------------------------------- float64
def float64(fn):
    """Run `fn` with JAX's float64 enabled for the calling thread only; the user's setting is back afterwards.

    Every public entry point that computes is wrapped in this, so jaxmlm computes in float64 whatever the user's
    `jax_enable_x64` is, and never changes it for the user's own programs."""
    if getattr(fn, "_jaxmlm_float64", False):
        return fn

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    wrapped._jaxmlm_float64 = True
    return wrapped


def caller_precision(fn):
    """Mark a public method that runs under its caller's float64 setting instead (it takes JAX arrays that may be
    traced by the caller's transformation, and checks the setting itself): `float64_methods` leaves it alone."""
    fn._jaxmlm_float64 = True
    return fn


_WRAPPED_DUNDERS = ("__init__", "__call__", "__repr__", "__str__", "__getitem__", "__len__")


def float64_methods(cls):
    """Class decorator: every public method and property of `cls` (and __init__, __repr__, ...) runs under
    `float64`. Methods inherited from a base class are left to that class's own decoration."""
    for name, member in list(vars(cls).items()):
        if name.startswith("_") and name not in _WRAPPED_DUNDERS:
            continue
        if isinstance(member, property):
            setattr(cls, name, property(float64(member.fget) if member.fget else None,
                                        float64(member.fset) if member.fset else None,
                                        member.fdel, member.__doc__))
        elif isinstance(member, functools.cached_property):
            wrapped = functools.cached_property(float64(member.func))
            wrapped.__set_name__(cls, name)
            setattr(cls, name, wrapped)
        elif isinstance(member, staticmethod):
            setattr(cls, name, staticmethod(float64(member.__func__)))
        elif isinstance(member, classmethod):
            setattr(cls, name, classmethod(float64(member.__func__)))
        elif inspect.isfunction(member):
            setattr(cls, name, float64(member))
    return cls


def require_float64(what: str) -> None:
    """Raise a clear error where a jaxmlm core function is called (or traced) with float64 off: it would
    silently compute in float32 otherwise."""
    if not jax.config.jax_enable_x64:
        raise PrecisionError(
            f"{what} needs JAX's float64: call it inside `with jax.enable_x64(True):` (jaxmlm's own entry points "
            "do this for you), or set jax.config.update('jax_enable_x64', True)"
        )


# ------------------------------------------------------------------------------------ compilation cache
def _default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "jaxmlm", "xla")


def enable_compilation_cache(path: str | os.PathLike | None = None) -> str | None:
    """Keep XLA programs in JAX's persistent compilation cache, so that a later process reuses them (shapes are
    the key: one compile serves every refit of the same design shape). Returns the directory in use, or None if
    none could be set.

    path: the directory; default JAXMLM_CACHE_DIR, else ~/.cache/jaxmlm/xla. A directory the user has already
    set through `jax_compilation_cache_dir` is kept (and returned) whatever `path` says. A directory that cannot
    be created is skipped; one that cannot be written or holds damaged entries only costs compiles (JAX
    reports cache errors as warnings and compiles afresh)."""
    current = jax.config.jax_compilation_cache_dir
    if current:
        return current
    path = os.fspath(path) if path is not None else (os.environ.get("JAXMLM_CACHE_DIR") or _default_cache_dir())
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # cache every compile: under the "fast" effort most of ours take a tenth of a second, and a first fit of a
    # small model compiles about ten of them
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def _cache_from_environment() -> None:
    """JAXMLM_CACHE_DIR set (and JAXMLM_NO_CACHE not): the user asked for the cache there."""
    if os.environ.get("JAXMLM_CACHE_DIR") and not os.environ.get("JAXMLM_NO_CACHE"):
        enable_compilation_cache(os.environ["JAXMLM_CACHE_DIR"])


_cache_from_environment()


# ------------------------------------------------------------------------------------ heap during fits
# XLA's CPU runtime takes one buffer for all of a program's temporaries on every call. When that buffer is large,
# glibc's malloc serves it by mmap and returns it by munmap, so every call faults in (and the kernel zeroes) fresh
# pages (docs/scale.md has the measurements). While a linear model's host optimizer runs (many calls of one
# program) `heap_allocations` asks glibc to serve every allocation from the heap and not to trim it, and restores
# both settings afterwards. Fits do this only when asked (JAXMLM_MALLOPT=1); JAXMLM_NO_MALLOPT=1 turns it off even
# inside `heap_allocations`. Elsewhere (not glibc) it does nothing.
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


def fit_allocations():
    """The allocator setting a fit's optimizer runs under: `heap_allocations` when JAXMLM_MALLOPT=1, else none."""
    if os.environ.get("JAXMLM_MALLOPT", "").strip() not in ("", "0"):
        return heap_allocations()
    return contextlib.nullcontext()
