"""Programs a fit runs once (`jit(once=True)`: the GLMM start, the state at the optimum) compile "lean" under
"auto" when their arguments are not small; `compile_ahead` compiles a program in a worker thread into the cache
its later call reads; the GLMM fit's state at the optimum comes from the search program's own PIRLS modes."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm._compile import AUTO_FAST_ELEMENTS, compile_ahead, jit
from jaxmlm._config import float64
from jaxmlm.fit import _glmm


@jit(once=True)
def _once_sum(x, w):
    return jnp.sum(x * w)


@jit
def _search_sum(x, w):
    return jnp.sum(x * w)


def _programs(fn):
    return {name: v._cache_size() for name, v in fn.variants.items()}


def test_once_programs_compile_lean_on_large_arguments(monkeypatch):
    monkeypatch.delenv("JAXMLM_COMPILE", raising=False)
    small = np.arange(10.0)
    large = np.arange(float(AUTO_FAST_ELEMENTS))
    assert float(_once_sum(small, small)) == pytest.approx(float(np.sum(small * small)))
    assert float(_once_sum(large, large)) == pytest.approx(float(np.sum(large * large)))
    assert _programs(_once_sum) == {"default": 0, "fast": 1, "lean": 1}
    with jm.compile_effort("default"):  # an explicit effort still wins
        _once_sum(large, large)
    assert _programs(_once_sum)["default"] == 1


def _compiles(caplog, name):
    return sum(f"XLA compilation of jit({name})" in r.getMessage() for r in caplog.records)


def test_compile_ahead_fills_the_cache_the_call_reads(monkeypatch, caplog):
    monkeypatch.delenv("JAXMLM_COMPILE", raising=False)
    x = np.arange(float(AUTO_FAST_ELEMENTS))
    caplog.set_level(logging.DEBUG, logger="jax")
    with jax.log_compiles(True):
        assert compile_ahead(_search_sum, x, x).result() is None
        assert _compiles(caplog, "_search_sum") == 1
        assert float(_search_sum(x, x)) == pytest.approx(float(np.sum(x * x)))
        assert _compiles(caplog, "_search_sum") == 1  # the call found the program compiled ahead
    assert _programs(_search_sum) == {"default": 1, "fast": 0, "lean": 0}
    # anything but one of jaxmlm's jitted functions: a finished future, nothing compiled
    assert compile_ahead(lambda a: a, x).result() is None


def test_compile_ahead_keeps_an_error_for_the_caller():
    bad = compile_ahead(_search_sum, np.ones(3), np.ones(4))
    assert isinstance(bad.exception(), (TypeError, ValueError))


@float64
def test_state_from_search_modes_equals_the_state_by_its_own_pirls():
    cbpp = jm.datasets.load("cbpp")
    model = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    problem = _glmm.glmm_problem(model)
    x = np.array([0.64, -1.4, -0.99, -1.13, -1.58])
    _, _, (u, ok, iters) = _glmm._value_and_grad(x, problem, None, None)
    from_search = dict(_glmm._state_from(x, u, problem), ok=ok, iters=iters)
    own = _glmm._state_at(jnp.asarray(x), problem)
    assert bool(from_search["ok"]) and int(from_search["iters"]) == int(own["iters"])
    for key in ("w", "vcov_rx"):
        np.testing.assert_allclose(np.asarray(from_search[key]), np.asarray(own[key]), rtol=1e-12)
    for a, b in zip(from_search["u"], own["u"]):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-10, atol=1e-13)


@pytest.mark.filterwarnings("ignore::jaxmlm.SingularFitWarning")  # (1 | period) is singular on cbpp
def test_a_fit_compiles_the_state_program_ahead_once(caplog):
    """The search's and the state's programs are compiled by the worker, once: the shapes it compiles for are the
    calls' (a wrong shape would fail there and leave the compile to the call)."""
    cbpp = jm.datasets.load("cbpp")
    caplog.set_level(logging.DEBUG, logger="jax")
    with jax.log_compiles(True):
        jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd) + (1 | period)", cbpp,
                 family="binomial")
    for name in ("_state_from", "_value_and_grad"):
        compiled = [r for r in caplog.records if f"XLA compilation of jit({name})" in r.getMessage()]
        assert len(compiled) == 1, name
        assert compiled[0].threadName.startswith("jaxmlm-compile"), name  # the worker's, not the call's
