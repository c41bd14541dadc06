import json
import os
import pathlib

import numpy as np
import pytest

# The tests' own programs (numpyro's samplers, optax loops in the docs' examples, jax.grad of core functions) are
# compiled by JAX's jit with XLA's defaults, as a user's would be; the suite compiles far more than it runs, so the
# test processes (and the subprocesses they start) ask XLA for its lowest optimization level and its elemental loop
# emitters, the same code generation as jaxmlm's "fast" effort (benchmarks/suite_time.md has the measurement), and
# for LLVM's code generation in one piece on one thread and XLA's plain instruction scheduler: a small program's
# module split for parallel code generation, and the scheduler that orders work for concurrency, cost more
# compiling than they save running. They change how XLA generates code, not what it computes (results agree
# to rounding). Read when the
# backend starts: set before any computation.
_FAST_XLA = ("--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false")
_LEAN_CODEGEN_XLA = ("--xla_cpu_parallel_codegen_split_count=1",
                     "--xla_cpu_enable_concurrency_optimized_scheduler=false")


def _known_xla_flags(flags) -> tuple:
    """`flags` if this jaxlib knows them all (XLA aborts the process on an unknown flag), else none of them; asked
    once, in a child process, by the first test process of a run (xdist's workers inherit the answer)."""
    known = os.environ.get("JAXMLM_TEST_LEAN_CODEGEN")
    if known is None:
        import subprocess
        import sys

        env = dict(os.environ, XLA_FLAGS=" ".join(flags), JAX_PLATFORMS="cpu")
        probe = subprocess.run([sys.executable, "-c", "import jax; jax.devices()"], env=env, capture_output=True)
        known = os.environ["JAXMLM_TEST_LEAN_CODEGEN"] = "1" if probe.returncode == 0 else "0"
    return tuple(flags) if known == "1" else ()


if os.environ.get("JAXMLM_TEST_XLA_DEFAULT", "0") != "1":
    _flags = os.environ.setdefault("JAXMLM_TEST_USER_XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    _wanted = _FAST_XLA + _known_xla_flags(_LEAN_CODEGEN_XLA)
    os.environ["XLA_FLAGS"] = " ".join([_flags] + [f for f in _wanted if f.split("=")[0] not in _flags]).strip()

import jaxmlm as jm  # noqa: E402

# The suite compiles afresh: entries left in a shared cache directory by earlier runs (of other versions, or cut
# short) are not what the tests are about. JAXMLM_CACHE_DIR still turns the persistent cache on for a run that
# asks for it; importing jaxmlm alone leaves JAX's cache setting alone.
#
# Within one run, though, the same program is compiled many times over: by both xdist workers, by every
# `model.sample` (numpyro jits its sampler afresh for each MCMC object), and again after a worker drops its
# caches near the memory-mapping limit below. So the tests' processes (never the library, never the
# subprocesses that tests start) share JAX's persistent cache in a directory made for this run alone and
# removed when it ends. JAXMLM_TEST_XLA_CACHE=0 turns it off.
_RUN_CACHE_VAR = "JAXMLM_TEST_XLA_CACHE_DIR"
_own_cache_dir: list = []


def pytest_configure(config):
    if os.environ.get("JAXMLM_TEST_XLA_CACHE", "1") == "0" or os.environ.get("JAXMLM_CACHE_DIR"):
        return
    if not _atomic_cache_writes():
        return
    path = os.environ.get(_RUN_CACHE_VAR)
    if not path:  # the controller (or a run without xdist): xdist's workers inherit the variable
        import tempfile

        path = tempfile.mkdtemp(prefix="jaxmlm-test-xla-")
        os.environ[_RUN_CACHE_VAR] = path
        _own_cache_dir.append(path)
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)  # every entry, however small


def run_cache_reader_env() -> dict:
    """Environment variables under which a test's subprocess reads the run's shared cache and never writes it
    (its writes would not be atomic: only the tests' own processes replace JAX's writer, `_atomic_cache_writes`):
    every entry takes less than the threshold to compile. Empty when the run has no shared cache."""
    path = os.environ.get(_RUN_CACHE_VAR)
    if not path or not os.path.isdir(path):
        return {}
    return {"JAX_COMPILATION_CACHE_DIR": path, "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1e9"}


def _atomic_cache_writes():
    """JAX writes an entry in place: the other worker could read it half-written, and JAX's warning about the
    bad entry would fail a test that turns warnings into errors. Entries appear whole instead (a temporary file,
    then a rename); without the private class the cache is simply not used."""
    try:
        from jax._src import lru_cache
    except ImportError:  # pragma: no cover
        return False
    if not hasattr(lru_cache, "_CACHE_SUFFIX"):  # pragma: no cover
        return False
    if getattr(lru_cache.LRUCache.put, "_atomic", False):
        return True
    original = lru_cache.LRUCache.put

    def put(self, key, value):
        if self.eviction_enabled:  # eviction writes under JAX's own file lock
            return original(self, key, value)
        target = self.path / f"{key}{lru_cache._CACHE_SUFFIX}"
        if target.exists():
            return
        partial = self.path / f".{key}.{os.getpid()}.partial"
        partial.write_bytes(value)
        os.replace(partial, target)

    put._atomic = True
    lru_cache.LRUCache.put = put
    return True


def pytest_unconfigure(config):
    if _own_cache_dir:
        import shutil

        shutil.rmtree(_own_cache_dir.pop(), ignore_errors=True)
        os.environ.pop(_RUN_CACHE_VAR, None)

# The run's shared cache is for XLA's executables only: jaxmlm's program store (`_program_store`, which keeps
# compiled programs beside JAX's cache so that a new process skips tracing) is tested on its own, in
# tests/test_program_store.py; in the workers it would only write entries that the other worker, fitting other
# models, seldom reads (a whole run with it on: the same tests passing, 2-3% more CPU).
os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")

# The suite compiles far more than it runs: jaxmlm's programs at XLA's lowest optimization level (its own
# compile option, not XLA_FLAGS) halve the compile time; tests/test_compile.py checks that both efforts agree.
os.environ.setdefault("JAXMLM_COMPILE", "fast")

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"

# A worker runs hundreds of tests in one process and compiles thousands of programs, each holding ~9 memory
# mappings; past vm.max_map_count (65,530) XLA's compiler segfaults. jaxmlm bounds its own programs; the tests'
# own (eager operations, jax.jit in tests) are dropped here when the process gets near the limit, with room left
# for the largest test's compiles (dropping them costs the recompiles that follow; benchmarks/suite_time.md has
# the workers' peaks). JAXMLM_TEST_MAP_LIMIT sets another limit.
_MAP_LIMIT = int(os.environ.get("JAXMLM_TEST_MAP_LIMIT", "50000"))


def _memory_mappings() -> int:
    try:
        with open("/proc/self/maps", "rb") as fh:
            return fh.read().count(b"\n")
    except OSError:
        return 0


@pytest.fixture(autouse=True)
def _bounded_memory_mappings():
    yield
    if _memory_mappings() > _MAP_LIMIT:
        import gc

        import jax

        jax.clear_caches()
        gc.collect()


@pytest.fixture
def x64():
    """float64 for a test that calls jaxmlm's core functions directly (its public entry points turn it on for
    themselves; the core's own functions expect the caller to, as `jax.enable_x64` does)."""
    import jax

    with jax.enable_x64(True):
        yield


class _LmerFits(dict):
    """REML fits of (formula, dataset) pairs, fitted once a session: several reference files test the same fits."""

    def __call__(self, formula: str, dataset: str):
        key = (formula, dataset)
        if key not in self:
            self[key] = jm.lmer(formula, jm.datasets.load(dataset), warn=False)
        return self[key]


@pytest.fixture(scope="session")
def lmer_fit():
    """`lmer_fit(formula, dataset)`: the session's REML fit of a bundled dataset (the tests only read it)."""
    return _LmerFits()


class _GlmerFits(dict):
    """Laplace fits of (formula, dataset, family) triples, fitted once a session (cbpp's binomial model is read by
    tests in several files)."""

    def __call__(self, formula: str, dataset: str, family: str = "binomial"):
        key = (formula, dataset, family)
        if key not in self:
            self[key] = jm.glmer(formula, jm.datasets.load(dataset), family=family)
        return self[key]


@pytest.fixture(scope="session")
def glmer_fit():
    """`glmer_fit(formula, dataset, family)`: the session's Laplace fit of a bundled dataset (the tests only read
    it)."""
    return _GlmerFits()


CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


@pytest.fixture(scope="session")
def cbpp_fit(glmer_fit):
    """glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial)."""
    return glmer_fit(CBPP, "cbpp")


@pytest.fixture(scope="session")
def lme4_reference():
    return json.loads((REFERENCE_DIR / "lme4_public.json").read_text())


@pytest.fixture(scope="session")
def lme4_confint():
    return json.loads((REFERENCE_DIR / "lme4_confint.json").read_text())


def check_against_lme4(fit, ref, *, objective_rtol=1e-6):
    """The tolerances of the reference README."""
    obj = fit.objective
    assert obj <= ref["objective"] * (1 + objective_rtol) + 1e-9, (obj, ref["objective"])
    assert obj >= ref["objective"] * (1 - 1e-4), "objective far below lme4's: a different model?"
    theta_ref = np.atleast_1d(np.asarray(ref["theta"], dtype=float))
    np.testing.assert_allclose(fit.theta, theta_ref, atol=1e-3, rtol=0)
    for name, value in ref["fixef"].items():
        got = fit.fixef[name]
        if abs(value) < 1e-6:
            assert abs(got - value) < 1e-6
        else:
            assert abs(got - value) <= 1e-4 * abs(value), (name, got, value)
    for name, value in ref["se"].items():
        assert abs(fit.se[name] - value) <= 1e-3 * abs(value), (name, fit.se[name], value)
    if ref.get("sigma") is not None:
        assert abs(fit.sigma - ref["sigma"]) <= 1e-4 * ref["sigma"]
    vc = fit.varcorr()
    assert len(vc) == len(ref["varcorr"])
    for got, want in zip(vc.to_dict(orient="records"), ref["varcorr"]):
        assert got["grp"] == want["grp"]
        assert (got["var1"] if isinstance(got["var1"], str) else None) == want["var1"]
        assert (got["var2"] if isinstance(got["var2"], str) else None) == want["var2"]
        if want["var2"] is None:  # standard deviations: 1e-3 relative (absolute near 0)
            assert abs(got["sdcor"] - want["sdcor"]) <= 1e-3 * max(abs(want["sdcor"]), 1e-3)
        else:  # correlations are on [-1, 1]
            assert abs(got["sdcor"] - want["sdcor"]) <= 2e-3
    assert fit.nobs == ref["nobs"]
    assert fit.ngroups == ref["ngrps"]
    assert fit.is_singular == ref["singular"]
    if ref["nagq"] in (None, 1):
        assert abs(fit.loglik - ref["loglik"]) <= 1e-6 * abs(ref["loglik"]) + 1e-6 or fit.loglik > ref["loglik"]
        assert abs(fit.aic - ref["aic"]) <= 1e-6 * abs(ref["aic"]) + 1e-6 or fit.aic < ref["aic"]
        assert abs(fit.bic - ref["bic"]) <= 1e-6 * abs(ref["bic"]) + 1e-6 or fit.bic < ref["bic"]
