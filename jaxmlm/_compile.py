"""How hard XLA optimizes jaxmlm's programs: the trade between compiling and running.

A fit on small data spends most of its first call compiling (LLVM's optimization passes), while on large data the
run dominates and XLA's full optimization pays. `compile_effort("fast")` compiles jaxmlm's programs with XLA's
backend optimization level 0, its elemental (non-MLIR) loop emitters, LLVM's code generated in one piece and XLA's
plain instruction scheduler on the CPU: about a third of the compile time, several times the run time per
evaluation (docs/scale.md, "Compile effort", has the measurements). The objective agrees to rounding; the options
change code generation, not the operations XLA emits.

The default, "auto", compiles with "fast" the programs whose arguments are small (a first fit of sleepstudy's
size is then mostly not compiling), the larger ones that a fit runs only once or twice (`jit(once=True)`: a
start, the state at the optimum) with "lean": XLA's full optimization through the elemental emitters, which
compiles a PIRLS program in under half the time and, measured, to the same bits (docs/bayes_mrp.md); every other
program with XLA's full optimization. The choice depends on the program and its arguments' sizes only, so the same
data always run the same program. The setting is jaxmlm's own (per call, per thread, or by JAXMLM_COMPILE in the
environment): the user's XLA_FLAGS and the options of the user's own
programs are never touched. Each effort is a separate jitted function, so both keep their compiled programs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import contextvars
import functools
import os
import weakref

import jax
import numpy as np

from . import _program_store

__all__ = ["EFFORTS", "carry_effort", "compile_ahead", "compile_effort", "compiled_programs", "current_effort", "jit",
           "release_programs"]

try:  # JAX's own test of "not inside a trace" (private, hence the fallback on traced arguments)
    from jax._src.core import trace_state_clean as _trace_state_clean
except ImportError:  # pragma: no cover
    _trace_state_clean = None


def _outside_trace(args, kwargs) -> bool:
    if _trace_state_clean is not None:
        return _trace_state_clean()
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs)))


EFFORTS: dict[str, dict | None] = {
    "auto": None,  # per call: "fast" on small arguments (AUTO_FAST_ELEMENTS), else "default" ("lean" if once)
    "default": None,  # XLA's own choice
    # level 0 for LLVM, XLA's elemental emitters for fused loops (its MLIR fusion emitters cost a pass pipeline
    # per fusion that only pays on long runs), LLVM's code generated in one piece on one thread, and XLA's plain
    # instruction scheduler: splitting a small module for parallel code generation, and ordering its work for
    # concurrency, cost more compiling than they save running
    "fast": {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False,
             "xla_cpu_parallel_codegen_split_count": 1, "xla_cpu_enable_concurrency_optimized_scheduler": False},
    # XLA's full optimization with the elemental emitters alone: what "auto" gives a program run once per fit
    "lean": {"xla_cpu_use_fusion_emitters": False},
}

_ENV_VAR = "JAXMLM_COMPILE"
_scoped: contextvars.ContextVar[str | None] = contextvars.ContextVar("jaxmlm_compile_effort", default=None)


def _checked(effort: str, source: str) -> str:
    if effort not in EFFORTS:
        raise ValueError(f"{source}: compile effort must be one of {sorted(EFFORTS)}, got {effort!r}")
    return effort


# A program whose array arguments hold at most this many numbers in all (sleepstudy's, cbpp's) runs for well under
# a millisecond either way, so its first call is all compiling: "auto" compiles it with "fast".
AUTO_FAST_ELEMENTS = 1 << 14


def _small(args, kwargs) -> bool:
    return _numbers(args) + _numbers(kwargs) <= AUTO_FAST_ELEMENTS


# Flattening a problem's pytree (an equinox Module of a few dozen arrays) costs ~50-100 µs in Python, as much as
# a small model's evaluation, and a host optimizer passes the same problem on every call: its count is kept per
# object (a weak reference, so that a count never outlives its object nor is read for another at the same id).
_counts: dict[int, tuple] = {}
_COUNTS_KEPT = 512


def _numbers(tree) -> int:
    """How many numbers the array leaves of `tree` hold (other leaves count 1): the sum of `size` over
    jax.tree_util.tree_leaves(tree). Dispatch on type() alone: an equinox Module's attribute lookup (isinstance,
    hasattr) costs microseconds."""
    hit = _counts.get(id(tree))
    if hit is not None and hit[0]() is tree:
        return hit[1]
    kind = type(tree)
    if tree is None:
        return 0
    if kind in (tuple, list):
        return sum(_numbers(t) for t in tree)
    if kind is dict:
        return sum(_numbers(t) for t in tree.values())
    if kind in (bool, int, float, complex, str):
        return 1
    if issubclass(kind, (np.ndarray, np.generic, jax.Array)):
        return int(tree.size)
    count = sum(getattr(leaf, "size", 1) for leaf in jax.tree_util.tree_leaves(tree))
    try:
        ref = weakref.ref(tree)
    except TypeError:  # not weakly referable: counted on every call
        return count
    if len(_counts) >= _COUNTS_KEPT:
        _counts.clear()
    _counts[id(tree)] = (ref, count)
    return count


def current_effort() -> str:
    """The effort in force: a `compile_effort` block, else JAXMLM_COMPILE, else "auto"."""
    return _scoped.get() or _environment_effort()


def _environment_effort() -> str:
    raw = os.environ.get(_ENV_VAR)
    if raw in EFFORTS:
        return raw
    return _checked(raw or "auto", _ENV_VAR)


@contextlib.contextmanager
def compile_effort(effort: str):
    """Within: jaxmlm compiles its programs with `effort`: "fast" (see the module docstring), "default" (XLA's own
    optimization) or "auto" (the default: "fast" for programs on small data, else "default")."""
    token = _scoped.set(_checked(effort, "compile_effort"))
    try:
        yield
    finally:
        _scoped.reset(token)


# Every compiled CPU program keeps about nine memory mappings for its code and data, and Linux allows a process
# 65,530 (vm.max_map_count) by default: past that, LLVM's next allocation fails and the process dies with a
# segmentation fault inside XLA's compiler. A long session that fits models of many shapes (each fit compiles
# 10-20 programs) would get there after a few hundred fits, so jaxmlm bounds what it keeps: every CHECK_EVERY calls
# it counts its compiled programs and, past PROGRAM_LIMIT, drops them all (later calls compile again).
PROGRAM_LIMIT = 2000
CHECK_EVERY = 256
_all_variants: list = []
_calls = [0]


def compiled_programs() -> int:
    """How many compiled programs jaxmlm's own jitted functions hold now."""
    return sum(getattr(v, "_cache_size", lambda: 0)() for v in _all_variants) + _program_store.size()


def release_programs() -> None:
    """Drops every compiled program of jaxmlm's own functions (the user's programs are left alone)."""
    for variant in _all_variants:
        variant.clear_cache()
    _program_store.clear()


def _bound_programs() -> None:
    if compiled_programs() > PROGRAM_LIMIT:
        release_programs()


# Compiler options that only some jaxlib versions know (an unknown one fails the compile): dropped, for every
# program of the process, the first time jaxlib refuses one.
_OPTIONAL_OPTIONS = ("xla_cpu_parallel_codegen_split_count", "xla_cpu_enable_concurrency_optimized_scheduler")
_rebuilders: list = []


def _variants(fn, jit_kwargs) -> dict:
    variants = {name: jax.jit(fn, compiler_options=options, **jit_kwargs)
                for name, options in EFFORTS.items() if name != "auto"}
    _all_variants.extend(variants.values())
    return variants


def _drop_unknown_options(error: Exception) -> bool:
    """True if `error` is jaxlib refusing one of the optional options, which are then dropped everywhere."""
    refused = [name for name in _OPTIONAL_OPTIONS if name in str(error) and "compile option" in str(error)]
    if not refused:
        return False
    for options in EFFORTS.values():
        for name in _OPTIONAL_OPTIONS:
            (options or {}).pop(name, None)
    for rebuild in _rebuilders:
        rebuild()
    return True


def jit(fn=None, /, *, once: bool = False, **jit_kwargs):
    """`jax.jit` with one compiled variant per effort; as a decorator with or without keyword arguments. once: the
    program runs once or a few times per fit, so that "auto" compiles it "lean" when its arguments are not small."""
    if fn is None:
        return functools.partial(jit, once=once, **jit_kwargs)
    variants = _variants(fn, jit_kwargs)
    _rebuilders.append(lambda: variants.update(_variants(fn, jit_kwargs)))
    default = variants["default"]
    large = "lean" if once else "default"
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', '')}"
    static_positions, static_names = _static_arguments(fn, jit_kwargs)
    # the store keys a program by its function's name (jaxmlm's sources are hashed into the key): only a
    # module-level jaxmlm function, whose name says what it computes (a lambda or a closure does not)
    storable = _program_store.nameable(fn)

    def effort_for(args, kwargs) -> str:
        effort = _scoped.get() or _environment_effort()
        if effort == "auto":
            effort = "fast" if _small(args, kwargs) else large
        return effort

    def variant_for(args, kwargs):
        return variants[effort_for(args, kwargs)]

    def stored(effort, args, kwargs):
        """The call's executable from `_program_store` (loaded, or compiled and kept), or None."""
        try:
            return _program_store.lookup(name, effort, EFFORTS[effort], variants[effort], args, kwargs,
                                         static_positions, static_names)
        except Exception:  # noqa: BLE001  (an unknown compile option, an error of the call: jax.jit says it)
            return None

    # a host optimizer calls these programs a few dozen times per fit: the wrapper does the least it can per call
    @functools.wraps(fn)
    def call(*args, **kwargs):
        _calls[0] += 1
        if _calls[0] % CHECK_EVERY == 0:
            _bound_programs()
        effort = effort_for(args, kwargs)
        variant = variants[effort]
        # inside another program's trace the call is inlined there, and JAX refuses compiler options on it
        if not _outside_trace(args, kwargs):
            return default(*args, **kwargs)
        if storable and _program_store.active():
            hit = stored(effort, args, kwargs)
            if hit is not None:
                executable, dynamic_args, dynamic_kwargs = hit
                try:
                    return executable(*dynamic_args, **dynamic_kwargs)
                except (TypeError, ValueError):  # arguments it refuses (a static field equal but not ==)
                    pass
        if variant is default:
            return default(*args, **kwargs)
        try:
            return variant(*args, **kwargs)
        except Exception as error:  # noqa: BLE001  (jaxlib's error class has changed name between versions)
            if not _drop_unknown_options(error):
                raise
            return variant_for(args, kwargs)(*args, **kwargs)

    call.variants = variants
    call.variant_for = variant_for
    call.stored = (lambda args, kwargs: stored(effort_for(args, kwargs), args, kwargs)) if storable else None
    return call


def _static_arguments(fn, jit_kwargs) -> tuple[frozenset, frozenset]:
    """The positions and names of `fn`'s static arguments (jax.jit's static_argnums and static_argnames, each
    completed from the signature), which a compiled executable does not take."""
    import inspect

    numbers = jit_kwargs.get("static_argnums") or ()
    names = jit_kwargs.get("static_argnames") or ()
    numbers = {numbers} if isinstance(numbers, int) else set(numbers)
    names = {names} if isinstance(names, str) else set(names)
    try:
        parameters = list(inspect.signature(fn).parameters)
    except (TypeError, ValueError):  # pragma: no cover
        parameters = []
    numbers |= {i for i, p in enumerate(parameters) if p in names}
    names |= {parameters[i] for i in numbers if i < len(parameters)}
    return frozenset(numbers), frozenset(names)


_ahead = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="jaxmlm-compile")


def compile_ahead(program, *args, **kwargs) -> concurrent.futures.Future:
    """Starts compiling jaxmlm's jitted `program` for these arguments in a worker thread: the variant a call with
    them picks, under the caller's float64 setting, into the program's own cache (a later call finds it there).
    XLA compiles without Python's lock, so on two cores the caller can meanwhile compile and run another program
    (a fit's start while its search program compiles). Wait on the future before calling `program` with such
    arguments (two compiles of one program at once would each do the work). Its result is None; an error is
    kept there (the call itself will raise it)."""
    choose = getattr(program, "variant_for", None)
    if choose is None:  # not one of jaxmlm's jitted functions (a wrapper around one): nothing to start
        done = concurrent.futures.Future()
        done.set_result(None)
        return done
    variant = choose(args, kwargs)
    x64 = bool(jax.config.jax_enable_x64)
    store = _program_store.active() and getattr(program, "stored", None)
    effort = current_effort()

    def work():
        with jax.enable_x64(x64), compile_effort(effort):
            if store and store(args, kwargs) is not None:  # loaded or compiled into the store's memory
                return
            variant.lower(*args, **kwargs).compile()

    return _ahead.submit(work)


def carry_effort(fn):
    """`fn` for a worker thread, compiling with the caller's effort (a new thread does not inherit a
    `compile_effort` block)."""
    effort = current_effort()

    @functools.wraps(fn)
    def run(*args, **kwargs):
        with compile_effort(effort):
            return fn(*args, **kwargs)

    return run
