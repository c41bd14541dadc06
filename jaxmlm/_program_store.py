"""Compiled programs kept on disk, so that a new process skips tracing, lowering and compiling them.

JAX's persistent cache stores XLA's executables keyed by the lowered module: a new process still traces and lowers
every program before it can look one up, and for a small fit (sleepstudy) that is most of the first call
(benchmarks/results/first_fit.md). jaxmlm keeps each of its own programs, serialized after compiling, keyed by
everything the program depends on: the function, the compile effort, the argument tree (static fields and static
arguments included, pickled) and the arguments' shapes and dtypes, JAX's tracing configuration, XLA_FLAGS, the
backend, the host's processor and its instruction sets, and the versions of JAX, jaxlib, equinox, NumPy and
jaxmlm's own sources. A later process with the same key loads the executable and runs it.

Where: beside JAX's persistent cache when the user has turned it on (`enable_compilation_cache`,
JAXMLM_CACHE_DIR, or JAX's own `jax_compilation_cache_dir`), under `<cache dir>/jaxmlm-programs/`; otherwise in
jaxmlm's own cache directory, `$XDG_CACHE_HOME/jaxmlm/jaxmlm-programs/` (`~/.cache/...` without XDG_CACHE_HOME),
so that a user's second session fits without compiling whether or not JAX's cache is on. JAX's settings are never
changed. The directory is kept under JAXMLM_PROGRAM_STORE_MAX_MB megabytes (default 1024): after a write that
takes it over, the entries used least recently are removed. JAXMLM_PROGRAM_STORE=0, JAXMLM_NO_CACHE=1 or JAX's
`jax_enable_compilation_cache` set to False turn the store off.

What is never stored: a program on a backend other than XLA:CPU (only its serialized executables are known to
keep their kernels; there every call runs through `jax.jit`, as without the store), a program with host
callbacks or side effects (compiled once, such a program is kept for the process only), a lambda or closure (its
name does not say what it computes), and, running through `jax.jit` as usual, a call whose arguments live on
several devices or another device than the default, or whose argument tree holds a function or class from
outside jaxmlm, JAX, equinox, NumPy and the standard library (a user's family or link, whose source could change
between sessions under the same name). A damaged, unreadable or read-only store never stops a call: the program
is compiled again.

Loading an entry unpickles it, as JAX's own executable cache loads code: the store is as trusted as the cache
directory itself.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import io
import os
import pathlib
import pickle
import threading
import weakref

import jax
import numpy as np

__all__ = ["active", "nameable", "lookup", "clear", "size", "STORE_DIRNAME"]

STORE_DIRNAME = "jaxmlm-programs"
_FORMAT = 2  # bumped when an entry's layout changes
_ENV_VAR = "JAXMLM_PROGRAM_STORE"
_DEFAULT_MAX_MB = 1024


class _Unstorable(Exception):
    """The program runs through jax.jit: its arguments cannot be keyed, or its executable cannot be stored."""


def _cache_dir() -> str | None:
    """The directory the store lives in (its entries under STORE_DIRNAME), or None when the store is off."""
    if os.environ.get(_ENV_VAR, "1") == "0" or os.environ.get("JAXMLM_NO_CACHE"):
        return None
    if not getattr(jax.config, "jax_enable_compilation_cache", True):
        return None
    return getattr(jax.config, "jax_compilation_cache_dir", None) or _default_dir()


def _default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "jaxmlm")


def _capacity_bytes() -> int:
    try:
        megabytes = float(os.environ.get("JAXMLM_PROGRAM_STORE_MAX_MB", _DEFAULT_MAX_MB))
    except ValueError:
        megabytes = _DEFAULT_MAX_MB
    return int(max(megabytes, 0.0) * 2**20)


def nameable(fn) -> bool:
    """Whether `fn`'s module and qualified name identify what it computes: a module-level function of jaxmlm (the
    key hashes jaxmlm's sources), not a lambda, a closure or a function defined inside another."""
    module, qualname = getattr(fn, "__module__", None) or "", getattr(fn, "__qualname__", None) or "<"
    return (module == "jaxmlm" or module.startswith("jaxmlm.")) and "<" not in qualname and \
        getattr(fn, "__closure__", None) is None


def active() -> bool:
    """Whether calls go through the store (it is not turned off: module docstring)."""
    return _cache_dir() is not None


# ---------------------------------------------------------------------------------------------- in memory
# (function, effort, the arguments' signature) -> the loaded executable, or None for "runs through jax.jit".
# Objects other than arrays and plain values (a problem's Module) enter a signature by identity, with a weak
# reference checked on every hit, so that an entry never serves another object that reuses a freed id.
# Where a signature is new (a new problem object of a known shape), the key finds the executable already loaded:
# key -> executable, so that an entry is read from disk once per process.
_loaded: dict[tuple, tuple] = {}
_by_key: dict[str, object] = {}
_lock = threading.Lock()
_SIGNATURES_KEPT = 4096


def clear() -> None:
    """Drops every loaded executable (the files stay)."""
    with _lock:
        _loaded.clear()
        _by_key.clear()
        _keys.clear()


def size() -> int:
    """How many executables are loaded in this process."""
    return len(_by_key)


def _remember(signature, executable, refs) -> None:
    with _lock:
        if len(_loaded) >= _SIGNATURES_KEPT:  # signatures of objects freed since
            for stale in [s for s, (_, r) in _loaded.items() if any(ref() is None for ref in r)]:
                del _loaded[stale]
            if len(_loaded) >= _SIGNATURES_KEPT:
                _loaded.clear()
        _loaded[signature] = (executable, refs)


def _signature(obj, refs: list, dynamic: bool):
    """A hashable description of `obj` that equals another's only where both trace to the same program: arrays
    by shape and dtype, dynamic Python numbers by type, static values by value, containers element by element,
    any other object by identity (its weak reference appended to refs)."""
    kind = type(obj)
    if obj is None or kind is str:
        return obj
    if kind in (bool, int, float, complex):
        return (kind,) if dynamic else (kind, obj)
    if kind in (tuple, list):
        return (kind, tuple(_signature(o, refs, dynamic) for o in obj))
    if kind is dict:
        return (dict, tuple((k, _signature(v, refs, dynamic)) for k, v in sorted(obj.items())))
    if kind is np.ndarray or isinstance(obj, np.generic):
        return ("np", obj.shape, obj.dtype.str)
    if isinstance(obj, jax.Array):
        return ("jax", obj.shape, obj.dtype.str, bool(getattr(obj, "weak_type", False)))
    try:
        refs.append(weakref.ref(obj))
    except TypeError:
        raise _Unstorable from None
    return ("id", kind, id(obj))


def _split_static(args: tuple, kwargs: dict, static_positions: frozenset, static_names: frozenset):
    dyn_args = tuple(a for i, a in enumerate(args) if i not in static_positions)
    static_args = tuple((i, a) for i, a in enumerate(args) if i in static_positions)
    dyn_kwargs = {k: v for k, v in kwargs.items() if k not in static_names}
    static_kwargs = {k: v for k, v in kwargs.items() if k in static_names}
    return dyn_args, dyn_kwargs, static_args, static_kwargs


# ---------------------------------------------------------------------------------------------- the key
_ALLOWED_ROOTS = frozenset({"jaxmlm", "jax", "jaxlib", "equinox", "numpy", "builtins", "collections", "functools",
                            "operator", "math", "dataclasses", "enum", "types", "copyreg", "_operator",
                            "_functools", "ml_dtypes"})


# Sentinels compared by identity when a tree is rebuilt (equinox's unflatten tests `aux[0] is not MISSING`): an
# entry's output tree names them, and loading it gives back this process's objects.
@functools.cache
def _sentinels() -> dict:
    import dataclasses

    from equinox._module import _flatten

    return {"equinox.MISSING": _flatten.MISSING, "dataclasses.MISSING": dataclasses.MISSING}


class _TreePickler(pickle.Pickler):
    def persistent_id(self, obj):
        for name, sentinel in _sentinels().items():
            if obj is sentinel:
                return name
        return None


class _TreeUnpickler(pickle.Unpickler):
    def persistent_load(self, name):
        return _sentinels()[name]


def _dump_tree(tree) -> bytes:
    with io.BytesIO() as buffer:
        _TreePickler(buffer, protocol=4).dump(tree)
        return buffer.getvalue()


class _KeyPickler(_TreePickler):
    """Pickles the static content of a key; refuses functions and classes from outside the allowed libraries."""

    def reducer_override(self, obj):
        if isinstance(obj, (type, type(len), type(_cache_dir))) or callable(obj) and hasattr(obj, "__qualname__"):
            module = getattr(obj, "__module__", None) or ""
            if module.split(".")[0] not in _ALLOWED_ROOTS:
                raise _Unstorable
        return NotImplemented


def _pickled(obj) -> bytes:
    with io.BytesIO() as buffer:
        try:
            _KeyPickler(buffer, protocol=4).dump(obj)
        except _Unstorable:
            raise
        except Exception:  # noqa: BLE001  (anything that does not pickle is simply not stored)
            raise _Unstorable from None
        return buffer.getvalue()


_environment: list = []


def _environment_digest() -> bytes:
    """The versions and sources the programs come from, hashed once per process."""
    if not _environment:
        import equinox
        import jaxlib

        digest = hashlib.sha256()
        for part in (jax.__version__, getattr(jaxlib, "__version__", ""), getattr(equinox, "__version__", ""),
                     np.__version__, os.environ.get("XLA_FLAGS", ""), _processor()):
            digest.update(part.encode() + b"\0")
        root = pathlib.Path(__file__).resolve().parent
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
        _environment.append(digest.digest())
    return _environment[0]


def _processor() -> str:
    """The host's processor and its instruction set extensions: XLA:CPU compiles for the machine it runs on, and a
    cache directory shared between machines (a network home) must not hand one's code to another."""
    import platform

    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(("flags", "Features")):
                    return platform.machine() + ":" + line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + ":" + platform.processor()


def _trace_configuration() -> str:
    try:
        from jax._src.config import trace_context
    except ImportError:  # pragma: no cover
        return repr(bool(jax.config.jax_enable_x64))
    # plain settings by value; an object among them (the empty axis environment outside any trace) by its type,
    # as its repr holds an address
    plain = (type(None), bool, int, float, str, tuple, enum.Enum)
    return repr([v if isinstance(v, plain) else type(v).__name__ for v in trace_context()])


def _device_check(leaves) -> None:
    default = jax.devices()[0]
    for leaf in leaves:
        if isinstance(leaf, jax.Array):
            devices = leaf.sharding.device_set
            if len(devices) != 1 or next(iter(devices)) != default:
                raise _Unstorable


def _key(name: str, effort: str, options, treedef, leaves, static_args, static_kwargs) -> str:
    device = jax.devices()[0]
    digest = hashlib.sha256()
    digest.update(_environment_digest())
    for part in (str(_FORMAT), name, effort, repr(sorted((options or {}).items())), _trace_configuration(),
                 f"x64={bool(jax.config.jax_enable_x64)}",
                 jax.default_backend(), str(device.device_kind), str(jax.device_count())):
        digest.update(part.encode() + b"\0")
    digest.update(_pickled(treedef))
    digest.update(_pickled((static_args, sorted(static_kwargs.items()))))
    for leaf in leaves:
        if isinstance(leaf, (np.ndarray, np.generic, jax.Array)):
            weak = bool(getattr(leaf, "weak_type", False))
            digest.update(f"{leaf.shape}|{leaf.dtype.str}|{weak};".encode())
        else:  # a Python number: traced as a weakly typed scalar of its kind
            digest.update(f"{type(leaf).__name__};".encode())
    return digest.hexdigest()


# A new problem object of a known layout (each fit builds its own) needs its key again: the key's pickles cost
# a few hundred microseconds per program, so keys are kept by what they hash (the tree's layout compared as JAX
# compares it for its own jit cache).
_keys: dict = {}
_KEYS_KEPT = 4096


def _known_key(name: str, effort: str, options, treedef, leaves, static_args, static_kwargs) -> str:
    try:
        memo = (name, effort, repr(sorted((options or {}).items())), _trace_configuration(),
                bool(jax.config.jax_enable_x64), treedef, static_args, tuple(sorted(static_kwargs.items())),
                tuple((leaf.shape, leaf.dtype.str, bool(getattr(leaf, "weak_type", False)))
                      if isinstance(leaf, (np.ndarray, np.generic, jax.Array)) else type(leaf).__name__
                      for leaf in leaves))
        key = _keys.get(memo)
    except TypeError:  # an unhashable static value: the key from its pickle alone
        return _key(name, effort, options, treedef, leaves, static_args, static_kwargs)
    if key is None:
        key = _key(name, effort, options, treedef, leaves, static_args, static_kwargs)
        with _lock:
            if len(_keys) >= _KEYS_KEPT:
                _keys.clear()
            _keys[memo] = key
    return key


# ---------------------------------------------------------------------------------------------- load or compile
def _read(path: pathlib.Path, treedef):
    """The stored executable at path, called with trees of `treedef` (this process's: the key holds its pickle,
    so the stored one is the same), or None."""
    from jax.experimental import serialize_executable

    try:
        with open(path, "rb") as fh:
            entry = pickle.load(fh)
        if entry[0] != _FORMAT:
            return None
        _, executable, out_tree, uses_lapack = entry
        if uses_lapack:
            _prepare_backend()
        out_tree = _TreeUnpickler(io.BytesIO(out_tree)).load()
        loaded = serialize_executable.deserialize_and_load(executable, treedef, out_tree)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001  (a missing, partial or damaged entry is compiled again)
        return None
    try:
        os.utime(path)  # used now: the last entry `_prune` would remove
    except OSError:
        pass
    return loaded


def _storable(compiled) -> bool:
    unloaded = getattr(compiled._executable, "_unloaded_executable", None)
    if unloaded is None:
        return False
    if getattr(unloaded, "host_callbacks", None) or getattr(unloaded, "ordered_effects", None) or \
            getattr(unloaded, "unordered_effects", None):
        return False
    return not getattr(getattr(compiled, "_params", None), "const_args", None)


def _write(path: pathlib.Path, entry: bytes) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(entry)
        os.replace(partial, path)  # whole or not at all: a reader never sees half an entry
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001  (a read-only or full directory: the program still runs)
        try:
            partial.unlink(missing_ok=True)  # what a full disk let through
        except OSError:
            pass
        return
    _prune(path.parent, _capacity_bytes())


def _prune(directory: pathlib.Path, capacity: int) -> None:
    """Removes the entries used least recently (by modification time: a read touches its entry) until the
    directory holds at most 80% of `capacity` bytes, when it holds more than `capacity`."""
    entries = []
    try:
        with os.scandir(directory) as listing:
            for entry in listing:
                if entry.name.endswith(".bin"):
                    info = entry.stat()
                    entries.append((info.st_mtime, info.st_size, entry.path))
    except OSError:
        return
    total = sum(size for _, size, _ in entries)
    if total <= capacity:
        return
    for _, size, path in sorted(entries):
        if total <= 0.8 * capacity:
            break
        try:
            os.remove(path)
            total -= size
        except OSError:  # removed by another process already, or not ours to remove
            pass


def lookup(name: str, effort: str, options, variant, args: tuple, kwargs: dict, static_positions: frozenset,
           static_names: frozenset):
    """(executable, dynamic args, dynamic kwargs) for this call of `variant` (the jitted function of `effort`),
    or None where it runs through jax.jit. Loads the stored executable, or compiles, stores and keeps it."""
    refs: list = []
    dyn_args, dyn_kwargs, static_args, static_kwargs = _split_static(args, kwargs, static_positions, static_names)
    try:
        signature = (name, effort, bool(jax.config.jax_enable_x64),
                     _signature(dyn_args, refs, True), _signature(dyn_kwargs, refs, True),
                     _signature(static_args, refs, False), _signature(sorted(static_kwargs.items()), refs, False))
    except (_Unstorable, TypeError):
        return None
    entry = _loaded.get(signature)
    if entry is not None and all(ref() is not None for ref in entry[1]):
        return None if entry[0] is None else (entry[0], dyn_args, dyn_kwargs)
    executable = _load_or_compile(name, effort, options, variant, args, kwargs, dyn_args, dyn_kwargs, static_args,
                                  static_kwargs)
    _remember(signature, executable, refs)
    return None if executable is None else (executable, dyn_args, dyn_kwargs)


def _load_or_compile(name, effort, options, variant, args, kwargs, dyn_args, dyn_kwargs, static_args,
                     static_kwargs):
    directory = _cache_dir()
    if directory is None or jax.default_backend() != "cpu":  # other backends: jax.jit's own path (module doc)
        return None
    leaves, treedef = jax.tree_util.tree_flatten((dyn_args, dyn_kwargs))
    try:
        _device_check(leaves)
        key = _known_key(name, effort, options, treedef, leaves, static_args, static_kwargs)
    except _Unstorable:
        return None
    executable = _by_key.get(key)
    if executable is not None:
        return executable
    path = pathlib.Path(directory) / STORE_DIRNAME / f"{key}.bin"
    executable = _read(path, treedef) if path.exists() else None
    if executable is None:
        lowered = variant.lower(*args, **kwargs)
        executable = lowered.compile()
        targets = _custom_call_targets(lowered) if _storable(executable) else None
        if targets is not None and all(t.startswith("lapack_") for t in targets):  # else kept for this process only
            uses_lapack = bool(targets)
            entry = _whole_entry(executable, uses_lapack)
            if entry is None:  # a copy JAX read back from its cache: compiled afresh, once, for the store
                entry = _whole_entry(lowered.compile(compiler_options=_FRESH_COMPILE), uses_lapack)
            if entry is not None:
                _write(path, entry)
    with _lock:
        _by_key[key] = executable
    return executable


# An executable that JAX's persistent cache gave back (then, or earlier in the process through JAX's in-memory
# cache of compiles) serializes on XLA:CPU without its kernels, the object code that a fresh compile carries: a
# copy loaded later fails with "Function ... not found". So an entry is written only with that object code in
# it. Where the executable at hand lacks it, the program is compiled once more with an option at its default
# value, which makes another key for both of JAX's caches and changes nothing in the code; if that copy lacks it
# too (JAX's cache holds that one as well), the program is not stored.
_FRESH_COMPILE = {"xla_cpu_enable_fast_math": False}
_OBJECT_CODE = b"\x7fELF"


def _whole_entry(compiled, uses_lapack: bool) -> bytes | None:
    """The store's entry for `compiled`: its serialized executable, with its kernels' object code, its output
    tree and whether it calls LAPACK; None where the serialization lacks the object code."""
    from jax.experimental import serialize_executable

    try:
        executable, _, out_tree = serialize_executable.serialize(compiled)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception:  # noqa: BLE001  (not serializable: kept for this process only)
        return None
    if _OBJECT_CODE not in executable:
        return None
    return pickle.dumps((_FORMAT, executable, _dump_tree(out_tree), uses_lapack), protocol=4)


def _custom_call_targets(lowered) -> set:
    """The program's custom calls. Only LAPACK's are ones a new process can have ready before running a loaded
    executable: JAX registers its CPU LAPACK kernels only when a program using them is first lowered, which a
    loaded executable skips (`_prepare_backend` registers them, for the entries that call them: registering
    imports SciPy's LAPACK wrappers)."""
    import re

    return set(re.findall(r"custom_call @([A-Za-z0-9_.]+)", lowered.as_text()))


def _prepare_backend() -> None:
    """What lowering would have set up: JAX's CPU LAPACK kernels (as `jax.export` does for a deserialized call)."""
    from jax._src.lax import linalg

    linalg.initialize_lapack()
