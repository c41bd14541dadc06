"""The "auto" compile effort (jaxmlm's default): programs on small arguments compile with "fast", the rest with
XLA's own optimization; the choice depends on the arguments' sizes only."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm import _compile
from jaxmlm._compile import AUTO_FAST_ELEMENTS, current_effort, jit


@jit
def _weighted_sum(x, w):
    return jnp.sum(x * w)


def _programs(fn):
    return {name: v._cache_size() for name, v in fn.variants.items() if name in ("default", "fast")}


def test_auto_is_the_default_when_nothing_is_set(monkeypatch):
    monkeypatch.delenv("JAXMLM_COMPILE", raising=False)
    assert current_effort() == "auto"
    with jm.compile_effort("default"):
        assert current_effort() == "default"


def test_auto_compiles_small_arguments_fast_and_large_ones_fully(monkeypatch):
    monkeypatch.delenv("JAXMLM_COMPILE", raising=False)
    _weighted_sum.variants["fast"].clear_cache()
    _weighted_sum.variants["default"].clear_cache()
    small = np.arange(10.0)
    large = np.arange(float(AUTO_FAST_ELEMENTS))  # two arguments of this size are over the bound together
    assert float(_weighted_sum(small, small)) == pytest.approx(float(np.sum(small * small)))
    assert _programs(_weighted_sum) == {"default": 0, "fast": 1}
    assert float(_weighted_sum(large, large)) == pytest.approx(float(np.sum(large * large)))
    assert _programs(_weighted_sum) == {"default": 1, "fast": 1}
    # an explicit effort overrides the size rule
    with jm.compile_effort("default"):
        _weighted_sum(small, small)
    assert _programs(_weighted_sum) == {"default": 2, "fast": 1}


def test_auto_fit_equals_the_default_fit(monkeypatch):
    sleepstudy = jm.datasets.load("sleepstudy")
    monkeypatch.delenv("JAXMLM_COMPILE", raising=False)
    auto = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    with jm.compile_effort("default"):
        full = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, REML=False)
    assert auto.objective == pytest.approx(full.objective, rel=1e-10)
    np.testing.assert_allclose(np.asarray(auto.theta), np.asarray(full.theta), rtol=1e-5)


def test_unknown_effort_is_refused(monkeypatch):
    monkeypatch.setenv("JAXMLM_COMPILE", "fastest")
    with pytest.raises(ValueError, match="auto"):
        current_effort()
    assert _compile.EFFORTS.keys() >= {"auto", "default", "fast"}
