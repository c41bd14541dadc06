"""The program store (`jaxmlm._program_store`): a new process with the persistent cache filled runs jaxmlm's
programs without tracing, lowering or compiling them, with the same numbers to the bit, and never keeps a copy
that JAX's cache gave back (it lacks its kernels); a damaged entry is compiled again; what cannot be keyed safely
(lambdas, closures, a user's functions in the arguments, host callbacks) is never stored."""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm import _compile, _program_store

# Fits sleepstudy (ML, REML) and cbpp's binomial GLMM in a new process on the cache directory argv[1]; with argv[2]
# "reference" the first fits run with the store off. Prints the estimates (bit patterns) and the names of the
# programs JAX traced.
_CHILD = r"""
import json, os, sys
import jax.monitoring as monitoring
traced = []
monitoring.register_event_duration_secs_listener(
    lambda event, duration, **kw: traced.append(kw.get("fun_name")) if event.endswith("jaxpr_trace_duration") else None)
import numpy as np
import pandas as pd
import jaxmlm as jm

def fits():
    sleep, cbpp = jm.datasets.load("sleepstudy"), jm.datasets.load("cbpp")
    out = []
    for reml in (False, True):
        fit = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=reml)
        out.append([fit.objective, *fit.theta, *fit.fixef, fit.sigma, *np.ravel(fit.vcov)])
    fit = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    out.append([fit.objective, *fit.theta, *fit.fixef, *np.ravel(fit.vcov)])
    # crossed, with a tail of 23 columns: programs that call LAPACK (the small tails above are unrolled)
    rng = np.random.default_rng(3)
    a, b = rng.integers(0, 30, 400), rng.integers(0, 20, 400)
    frame = pd.DataFrame({"a": pd.Categorical(a), "b": pd.Categorical(b), "x": rng.standard_normal(400)})
    frame["y"] = frame.x + rng.standard_normal(30)[a] + rng.standard_normal(20)[b] + rng.standard_normal(400)
    fit = jm.lmer("y ~ x + (1 | a) + (1 | b)", frame, REML=False)
    out.append([fit.objective, *fit.theta, *fit.fixef])
    return [[float(v).hex() for v in row] for row in out]

jm.enable_compilation_cache(sys.argv[1])
result = {}
if sys.argv[2] == "xla-only":
    os.environ["JAXMLM_PROGRAM_STORE"] = "0"
if sys.argv[2] == "reference":
    os.environ["JAXMLM_PROGRAM_STORE"] = "0"
    result["reference"] = fits()
    result["traced_reference"] = sorted(set(traced))
    os.environ["JAXMLM_PROGRAM_STORE"] = "1"
result["fits"] = fits()
result["traced"] = sorted(set(traced))
print(json.dumps(result))
"""

_STORED_PROGRAMS = {"_statistics_and_split", "deviance_and_gradient", "linear_estimates", "_start_beta",
                    "_value_and_grad", "_state_from"}


def _child(cache_dir, mode):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("JAXMLM_CACHE", "JAX_COMPILATION_CACHE"))}
    env.pop("JAXMLM_PROGRAM_STORE", None)
    out = subprocess.run([sys.executable, "-c", _CHILD, str(cache_dir), mode], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_filled_store_skips_tracing_with_the_same_numbers(tmp_path):
    # JAX's cache filled first: the executables the next process gets from it (and keeps in memory) serialize
    # without their kernels, and the store must not keep such a copy
    assert _child(tmp_path, "xla-only")["fits"]
    assert not (tmp_path / _program_store.STORE_DIRNAME).exists()
    first = _child(tmp_path, "reference")
    # the store's executables (compiled and written by this process) give the plain jit's numbers, to the bit
    assert first["fits"] == first["reference"]
    assert _STORED_PROGRAMS <= set(first["traced_reference"])
    store = tmp_path / _program_store.STORE_DIRNAME
    entries = sorted(store.glob("*.bin"))
    assert len(entries) >= 6
    # the crossed model's programs call LAPACK (registered before they load), the others do not
    import pickle

    assert {pickle.loads(entry.read_bytes())[3] for entry in entries} == {True, False}

    second = _child(tmp_path, "fits")
    assert second["fits"] == first["reference"]
    assert not (_STORED_PROGRAMS & set(second["traced"])), second["traced"]

    # damaged entries (cut short, overwritten) are compiled again; the numbers stay. (They are not rewritten
    # here: both of JAX's keys for each program are in its cache by now, so no fresh copy is at hand.)
    for i, entry in enumerate(entries):
        entry.write_bytes(b"" if i % 2 else b"not an executable")
    third = _child(tmp_path, "fits")
    assert third["fits"] == first["reference"]
    assert _STORED_PROGRAMS <= set(third["traced"])


def test_only_module_level_jaxmlm_functions_are_keyed_by_name():
    from jaxmlm.core import _lmm

    assert _program_store.nameable(_lmm.deviance_and_gradient.__wrapped__)
    assert not _program_store.nameable(lambda x: x)
    scale = 2.0

    def closure(x):
        return scale * x

    assert not _program_store.nameable(closure)
    assert not _program_store.nameable(test_only_module_level_jaxmlm_functions_are_keyed_by_name)


class _UsersLink:  # a class of the user's (here, of this test module)
    def __call__(self, eta):
        return eta


def test_a_users_function_or_class_in_the_arguments_is_never_stored():
    with pytest.raises(_program_store._Unstorable):
        _program_store._pickled((1, _UsersLink()))
    with pytest.raises(_program_store._Unstorable):
        _program_store._pickled({"link": test_a_users_function_or_class_in_the_arguments_is_never_stored})
    with pytest.raises(_program_store._Unstorable):
        _program_store._pickled(lambda x: x)  # not picklable at all
    # jaxmlm's own families and NumPy's arrays are content the key can hold
    assert _program_store._pickled((jm.families.binomial(), np.arange(3), jnp.float64)) != b""


def _store_in(tmp_path, monkeypatch):
    monkeypatch.setattr(_program_store, "_cache_dir", lambda: str(tmp_path))
    monkeypatch.setenv("JAXMLM_PROGRAM_STORE", "1")
    _program_store.clear()
    return tmp_path / _program_store.STORE_DIRNAME


def test_static_arguments_shapes_and_efforts_have_their_own_entries(tmp_path, monkeypatch):
    from jaxmlm.core import _lmm

    store = _store_in(tmp_path, monkeypatch)
    with jax.enable_x64(True):
        model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        model.linear_problem  # noqa: B018  (forms the statistics and their split form)
        problem = model._evaluation_problem
        theta = np.array([0.9, 0.1, 0.3])
        values = {}
        for reml in (False, True):
            for effort in ("fast", "default"):
                with jm.compile_effort(effort):
                    values[reml, effort] = _lmm.deviance_and_gradient(theta, problem, reml)
        entries = {p.name for p in store.glob("*.bin")}
        assert len(entries) >= 4  # ML and REML, each with two efforts (and the statistics' program)
        for (reml, _), (value, grad) in values.items():
            plain_value, plain_grad = jax.jit(jax.value_and_grad(_lmm.profiled_deviance),
                                              static_argnums=2)(jnp.asarray(theta), problem, reml)
            np.testing.assert_allclose(float(value), float(plain_value), rtol=1e-12)
            np.testing.assert_allclose(np.asarray(grad), np.asarray(plain_grad), rtol=1e-9, atol=1e-9)
        # another model's problem (other shapes) is another program; the same problem again is not
        before = len(list(store.glob("*.bin")))
        other = jm.Model("Reaction ~ Days + (1 | Subject)", jm.datasets.load("sleepstudy"))
        other.linear_problem  # noqa: B018
        _lmm.deviance_value(theta, problem, False)
        _lmm.deviance_value(theta[:1], other._evaluation_problem, False)
        _lmm.deviance_value(theta + 0.1, problem, False)
        assert len(list(store.glob("*.bin"))) == before + 3  # two programs, and the other model's statistics
    _program_store.clear()


def test_host_callbacks_and_closures_stay_out_of_the_store(tmp_path, monkeypatch):
    store = _store_in(tmp_path, monkeypatch)
    with jax.enable_x64(True):
        through_host = _compile.jit(_callback_program)
        out = through_host(np.ones(3))
        np.testing.assert_array_equal(np.asarray(out), 2.0 * np.ones(3))
        closure = _compile.jit(lambda x: x + 1.0)
        np.testing.assert_array_equal(np.asarray(closure(np.ones(2))), 2.0 * np.ones(2))
    assert not store.exists() or not list(store.glob("*.bin"))
    _program_store.clear()


def _double_on_host(x):
    return np.asarray(x) * 2.0


def _callback_program(x):
    return jax.pure_callback(_double_on_host, jax.ShapeDtypeStruct(x.shape, x.dtype), x)


_callback_program.__module__ = "jaxmlm.tests_only"  # as if jaxmlm's own: the host callback keeps it out


def test_an_unwritable_store_never_stops_a_call(tmp_path, monkeypatch):
    from jaxmlm.core import _lmm

    blocker = tmp_path / _program_store.STORE_DIRNAME
    blocker.write_text("a file where the store's directory would be")
    _store_in(tmp_path, monkeypatch)
    with jax.enable_x64(True):
        model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        model.linear_problem  # noqa: B018
        value, _ = _lmm.deviance_and_gradient(np.array([0.9, 0.1, 0.3]), model._evaluation_problem, False)
    assert np.isfinite(float(value)) and blocker.is_file()
    _program_store.clear()


def test_fits_from_several_threads_share_the_store(tmp_path, monkeypatch):
    """Threads compiling and loading the same programs at once: each fit as alone, every entry whole."""
    import concurrent.futures

    store = _store_in(tmp_path, monkeypatch)
    sleep = jm.datasets.load("sleepstudy")

    def fit(reml):
        out = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=reml)
        return (out.objective, *out.theta, *out.fixef)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        together = list(pool.map(fit, [False, True, False, True]))
    alone = {reml: fit(reml) for reml in (False, True)}
    assert together == [alone[False], alone[True], alone[False], alone[True]]
    entries = list(store.glob("*.bin"))
    assert entries and not list(store.glob(".*.partial"))
    _program_store.clear()


def test_the_key_changes_with_what_the_program_depends_on(monkeypatch):
    """jaxmlm's sources (and the versions hashed with them), float64's setting, JAX's tracing configuration and
    the effort's options each give another key; the same inputs, the same key."""
    leaves, treedef = jax.tree_util.tree_flatten(((np.zeros(3), 1.0), {}))

    def key(effort="fast", options=None):
        return _program_store._key("jaxmlm.core._lmm.deviance_and_gradient", effort,
                                   _compile.EFFORTS["fast"] if options is None else options, treedef, leaves,
                                   ((2, False),), {})

    with jax.enable_x64(True):
        base = key()
        assert key() == base
        assert key("default", {}) != base
        with jax.default_matmul_precision("highest"):
            assert key() != base
        monkeypatch.setattr(_program_store, "_environment", [b"other sources"])
        assert key() != base
        monkeypatch.undo()
        assert key() == base
    with jax.enable_x64(False):
        assert key() != base
    # the keys kept for new problem objects of a known layout are the same keys, and follow the configuration
    with jax.enable_x64(True):
        def known():
            return _program_store._known_key("jaxmlm.core._lmm.deviance_and_gradient", "fast",
                                             _compile.EFFORTS["fast"], treedef, leaves, ((2, False),), {})

        assert known() == known() == key()
        with jax.default_matmul_precision("highest"):
            assert known() == key() != base


def _traced_programs():
    import jax.monitoring as monitoring

    traced: list = []
    monitoring.register_event_duration_secs_listener(
        lambda event, duration, **kw: traced.append(kw.get("fun_name")) if event.endswith("jaxpr_trace_duration")
        else None)
    return traced


def test_without_jaxs_cache_the_store_is_in_jaxmlms_cache_directory(tmp_path, monkeypatch):
    """No persistent cache set: the store lives in $XDG_CACHE_HOME/jaxmlm (JAX's settings untouched), a later
    lookup loads the fit's programs from there with the same numbers; JAXMLM_PROGRAM_STORE=0, JAXMLM_NO_CACHE and
    JAX's own switch turn it off; with JAX's cache set it sits beside it."""
    for name in ("JAXMLM_PROGRAM_STORE", "JAXMLM_NO_CACHE", "JAXMLM_PROGRAM_STORE_MAX_MB"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    jax_dir = jax.config.jax_compilation_cache_dir
    jax.config.update("jax_compilation_cache_dir", None)
    try:
        _program_store.clear()
        assert _program_store._cache_dir() == str(tmp_path / "jaxmlm") and _program_store.active()
        sleep = jm.datasets.load("sleepstudy")
        first = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)
        store = tmp_path / "jaxmlm" / _program_store.STORE_DIRNAME
        assert len(list(store.glob("*.bin"))) >= 3
        _program_store.clear()  # as a new process: the loaded executables dropped, the files kept
        traced = _traced_programs()
        again = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep, REML=False)
        assert (again.objective, *again.theta, *again.fixef) == (first.objective, *first.theta, *first.fixef)
        assert not {"deviance_and_gradient", "linear_estimates", "_statistics_and_split"} & set(traced), traced
        assert jax.config.jax_compilation_cache_dir is None  # nothing of JAX's was set
        monkeypatch.setenv("JAXMLM_NO_CACHE", "1")
        assert _program_store._cache_dir() is None
        monkeypatch.delenv("JAXMLM_NO_CACHE")
        monkeypatch.setenv("JAXMLM_PROGRAM_STORE", "0")
        assert not _program_store.active()
        monkeypatch.delenv("JAXMLM_PROGRAM_STORE")
        jax.config.update("jax_enable_compilation_cache", False)
        try:
            assert _program_store._cache_dir() is None
        finally:
            jax.config.update("jax_enable_compilation_cache", True)
        jax.config.update("jax_compilation_cache_dir", str(tmp_path / "xla"))
        assert _program_store._cache_dir() == str(tmp_path / "xla")
    finally:
        jax.config.update("jax_compilation_cache_dir", jax_dir)
        _program_store.clear()


def test_the_store_keeps_under_its_size_by_removing_the_least_recently_used(tmp_path, monkeypatch):
    store = tmp_path / _program_store.STORE_DIRNAME
    store.mkdir()
    for i in range(10):  # 10 entries of 100 kB, entry 0 the oldest
        path = store / f"{i}.bin"
        path.write_bytes(b"x" * 100_000)
        os.utime(path, (1_000 + i, 1_000 + i))
    os.utime(store / "0.bin", (5_000, 5_000))  # read lately: kept
    (store / ".unrelated.partial").write_bytes(b"x" * 500_000)  # not an entry: never counted or removed
    _program_store._prune(store, 1_000_000)
    assert len(list(store.glob("*.bin"))) == 10  # at the limit: nothing removed
    _program_store._prune(store, 900_000)  # over it: down to 80% of it (720 kB), the least recently used first
    assert sorted(p.name for p in store.glob("*.bin")) == ["0.bin", "4.bin", "5.bin", "6.bin", "7.bin", "8.bin",
                                                            "9.bin"]
    assert (store / ".unrelated.partial").exists()
    monkeypatch.setenv("JAXMLM_PROGRAM_STORE_MAX_MB", "0.5")
    assert _program_store._capacity_bytes() == 2**19
    monkeypatch.setenv("JAXMLM_PROGRAM_STORE_MAX_MB", "a lot")
    assert _program_store._capacity_bytes() == _program_store._DEFAULT_MAX_MB * 2**20
    # a store filled by fits stays within its size (rows of their own: programs that nothing has compiled before,
    # so that JAX's cache holds no copy of them without their kernels)
    monkeypatch.setenv("JAXMLM_PROGRAM_STORE_MAX_MB", "0.3")
    fits = _store_in(tmp_path / "fits", monkeypatch)
    jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy").iloc[:130], REML=True)
    sizes = [p.stat().st_size for p in fits.glob("*.bin")]
    assert sizes and sum(sizes) <= 0.3 * 2**20
    _program_store.clear()
