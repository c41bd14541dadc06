"""The fit's exact gradient for dense-tail (crossed) models: `profiled_deviance(..., reverse_only=True)`, whose
entry-pair update and scalar tail take hand-written reverse rules (`_linalg.prefix_log_terms`), against autodiff
of the same objective and against central differences of the deviance, on small crossed designs."""

from __future__ import annotations

import functools

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core import _linalg
from jaxmlm.core._lmm import deviance_and_gradient, gradients_at_points, profiled_deviance


def _crossed_frame(seed: int = 3, n: int = 600) -> pd.DataFrame:
    """InstEval's shape in small: a many-level first factor crossed with two smaller ones, a covariate."""
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 60, n), rng.integers(0, 15, n), rng.integers(0, 4, n)
    x = rng.standard_normal(n)
    y = (1.0 + 0.4 * x + 0.7 * rng.standard_normal(60)[a] + (0.5 + 0.3 * x) * rng.standard_normal(15)[b]
         + 0.3 * rng.standard_normal(4)[c] + rng.standard_normal(n))
    return pd.DataFrame({"y": y, "x": x, "a": pd.Categorical(a), "b": pd.Categorical(b), "c": pd.Categorical(c)})


FORMULAS = {
    "scalar": "y ~ x + (1 | a) + (1 | b) + (1 | c)",  # the scalar tail's own reverse rule
    "vector_tail": "y ~ x + (1 | a) + (x | b)",  # the generic tail (tail_log_terms) after the pairs' rule
    "vector_prefix": "y ~ x + (x | a) + (1 | b) + (1 | c)",  # q = 2 entries in the pairs' rule
}


@functools.lru_cache(maxsize=None)
def _model(name: str) -> jm.Model:
    model = jm.Model(FORMULAS[name], _crossed_frame())
    assert model.structure.m_z > 0 and model.structure.n_pairs > 0  # the dense tail and its entry pairs
    return model


def _points(model: jm.Model) -> list[np.ndarray]:
    """A generic θ, one with a tail variance on the boundary (0), and one with the first term's at 0."""
    rng = np.random.default_rng(0)
    k = model.theta_start().size
    generic = 0.3 + rng.random(k)
    lower = model.theta_lower()
    tail_zero = generic.copy()
    tail_zero[np.flatnonzero(lower == 0)[-1]] = 0.0
    first_zero = generic.copy()
    first_zero[0] = 0.0
    return [generic, tail_zero, first_zero]


def _autodiff(theta, problem, reml):
    with jax.enable_x64(True):
        f = jax.jit(jax.value_and_grad(profiled_deviance), static_argnums=(2,))
        value, grad = f(jax.numpy.asarray(theta), problem, reml)
        return float(value), np.asarray(grad)


def _fast(theta, problem, reml):
    with jax.enable_x64(True):
        value, grad = deviance_and_gradient(np.asarray(theta), problem, reml)
        return float(value), np.asarray(grad)


@pytest.mark.parametrize("reml", [False, True])
@pytest.mark.parametrize("name", list(FORMULAS))
def test_gradient_matches_autodiff(name, reml):
    model = _model(name)
    problem = model._for_evaluation()
    for theta in _points(model):
        v_ref, g_ref = _autodiff(theta, problem, reml)
        v, g = _fast(theta, problem, reml)
        assert v == pytest.approx(v_ref, rel=1e-14)  # the same forward computation
        np.testing.assert_allclose(g, g_ref, rtol=1e-9, atol=1e-9 * np.max(np.abs(g_ref)))
        assert np.max(np.abs(g)) > 1e-3  # away from the optimum: a gradient that tells something


@pytest.mark.parametrize("name", ["scalar", "vector_prefix"])
def test_gradient_matches_central_differences(name):
    """Against differences of the public deviance (lme4's devfun), step 1e-6: agreement to ~1e-6 relative."""
    model = _model(name)
    problem = model._for_evaluation()
    for reml in (False, True):
        for theta in _points(model)[:2]:
            _, g = _fast(theta, problem, reml)
            h = 1e-6
            fd = np.array([(model.deviance(theta + h * e, reml) - model.deviance(theta - h * e, reml)) / (2 * h)
                           for e in np.eye(theta.size)])
            np.testing.assert_allclose(g, fd, rtol=2e-6, atol=2e-6 * np.max(np.abs(fd)))


def test_host_lapack_inverse_in_the_reverse_rule(monkeypatch):
    """Large tails take S_zz⁻¹ from LAPACK's potri on the host inside the scalar tail's reverse rule; forced on a
    small tail it gives the XLA inverse's gradient, also for the stencil's batched gradients."""
    model = _model("scalar")
    problem = model._for_evaluation()
    theta = _points(model)[0]
    xla = _fast(theta, problem, True)
    monkeypatch.setattr(_linalg, "_HOST_LAPACK_MIN", 1)
    for variant in deviance_and_gradient.variants.values():
        variant.clear_cache()
    host = _fast(theta, problem, True)
    assert host[0] == pytest.approx(xla[0], rel=1e-14)
    np.testing.assert_allclose(host[1], xla[1], rtol=1e-10, atol=1e-10)
    with jax.enable_x64(True):
        batched = np.asarray(gradients_at_points(jax.numpy.asarray(np.stack([theta, theta + 0.1])), problem, True, 1))
    np.testing.assert_allclose(batched[0], xla[1], rtol=1e-10, atol=1e-10)
    monkeypatch.undo()
    for variant in deviance_and_gradient.variants.values():
        variant.clear_cache()


@pytest.mark.parametrize("reml", [False, True])
def test_crossed_fit_same_optimum_by_either_optimizer(monkeypatch, reml):
    """The InstEval-shaped model in small, fitted by BFGS on the exact gradient and by COBYQA (the path of large
    dense tails, forced): the same optimum, objective within 1e-9 relative."""
    from jaxmlm.fit import _model as model_module

    data = _crossed_frame(seed=5, n=800)
    method = "reml" if reml else "ml"
    bfgs = jm.Model(FORMULAS["scalar"], data).fit(method=method)
    monkeypatch.setattr(model_module, "_DERIVATIVE_FREE_TAIL", 0)
    cobyqa = jm.Model(FORMULAS["scalar"], data).fit(method=method)
    assert bfgs.optinfo.method == "BFGS" and cobyqa.optinfo.method == "COBYQA"
    assert bfgs.converged and cobyqa.converged
    assert bfgs.objective == pytest.approx(cobyqa.objective, rel=1e-9)
    np.testing.assert_allclose(bfgs.theta, cobyqa.theta, rtol=1e-3, atol=1e-4)
