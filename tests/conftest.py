import json
import os
import pathlib

import numpy as np
import pytest

import jaxmlm as jm

# The suite compiles afresh: entries left in a shared cache directory by earlier runs (of other versions, or cut
# short) are not what the tests are about. JAXMLM_CACHE_DIR still turns the persistent cache on for a run that
# asks for it; importing jaxmlm alone leaves JAX's cache setting alone.

# The suite compiles far more than it runs: jaxmlm's programs at XLA's lowest optimization level (its own
# compile option, not XLA_FLAGS) halve the compile time; tests/test_compile.py checks that both efforts agree.
os.environ.setdefault("JAXMLM_COMPILE", "fast")

REFERENCE_DIR = pathlib.Path(__file__).parent / "reference"

# A worker runs hundreds of tests in one process and compiles thousands of programs, each holding ~9 memory
# mappings; past vm.max_map_count (65,530) XLA's compiler segfaults. jaxmlm bounds its own programs; the tests'
# own (eager operations, jax.jit in tests) are dropped here when the process gets near the limit.
_MAP_LIMIT = 30_000


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
