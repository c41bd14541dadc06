"""The derivative-free path's finish (`_optimize.cobyqa_newton_minimize`: COBYQA to a coarse radius, one Newton step
on central differences, the gradient's differences at the new point) and the seven-point differences of lme4's
check (`_optimize.difference_derivatives`), against exact derivatives, plain COBYQA to 1e-6 and BFGS fits."""

from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.optim import _optimize


def _counted(fun):
    calls = []

    def f(x):
        calls.append(np.array(x))
        return fun(x)

    return f, calls


def _smooth(x):
    """A smooth, non-quadratic bowl with its minimum at (0.3, 0.5, 0.07) (all coordinates > 0)."""
    d = x - np.array([0.3, 0.5, 0.07])
    A = np.array([[3.0, 0.4, -0.2], [0.4, 1.5, 0.1], [-0.2, 0.1, 6.0]])
    return 100.0 + d @ A @ d + 0.8 * d[0] ** 3 + 0.5 * (d[1] * d[2]) ** 2 + d[0] ** 4


def test_seven_point_differences_exact_for_quadratics_and_count():
    A = np.array([[2.0, 0.3, -0.5], [0.3, 1.0, 0.2], [-0.5, 0.2, 4.0]])
    b = np.array([0.1, -0.2, 0.3])
    quad = lambda x: 7.0 + b @ x + 0.5 * x @ A @ x  # noqa: E731
    x = np.array([0.4, -0.3, 1.2])
    f, calls = _counted(quad)
    grad, hess = _optimize.difference_derivatives(f, x, quad(x))
    assert len(calls) == 3 * 4  # 2k + k(k − 1) = k(k + 1), the centre given
    np.testing.assert_allclose(grad, b + A @ x, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(hess, A, rtol=1e-6, atol=1e-6)
    # and lme4's O(δ²) accuracy on a non-quadratic function
    x = np.array([0.35, 0.45, 0.1])
    grad, hess = _optimize.difference_derivatives(_smooth, x, _smooth(x))
    with jax.enable_x64(True):
        exact_grad = jax.grad(_smooth_jax)(jax.numpy.asarray(x))
        exact_hess = jax.hessian(_smooth_jax)(jax.numpy.asarray(x))
    np.testing.assert_allclose(grad, np.asarray(exact_grad), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(hess, np.asarray(exact_hess), rtol=1e-5, atol=1e-5)


def _smooth_jax(x):
    d = x - jax.numpy.asarray([0.3, 0.5, 0.07])
    A = jax.numpy.asarray([[3.0, 0.4, -0.2], [0.4, 1.5, 0.1], [-0.2, 0.1, 6.0]])
    return 100.0 + d @ A @ d + 0.8 * d[0] ** 3 + 0.5 * (d[1] * d[2]) ** 2 + d[0] ** 4


def test_newton_finish_reaches_cobyqas_optimum_with_fewer_evaluations():
    lower = np.zeros(3)
    with jax.enable_x64(True):
        f, calls = _counted(_smooth)
        res, hess = _optimize.cobyqa_newton_minimize(f, np.ones(3), lower)
        plain = _optimize.cobyqa_minimize(_smooth, np.ones(3), lower)
    assert hess is not None  # the Newton step was taken
    assert int(res.n_eval) == len(calls)
    np.testing.assert_allclose(res.x, [0.3, 0.5, 0.07], atol=1e-6)
    np.testing.assert_allclose(plain.x, [0.3, 0.5, 0.07], atol=1e-5)
    assert float(res.value) <= float(plain.value) + 1e-12
    assert float(res.value) == _smooth(np.asarray(res.x))
    np.testing.assert_allclose(res.grad, _optimize.difference_gradient(_smooth, res.x), rtol=0, atol=1e-12)
    assert np.max(np.abs(res.grad)) < 1e-5
    with jax.enable_x64(True):
        exact = np.asarray(jax.hessian(_smooth_jax)(jax.numpy.asarray(res.x)))
    np.testing.assert_allclose(hess, exact, rtol=1e-3)  # the Hessian a short step from the end point


def test_newton_finish_falls_back_to_cobyqa_near_a_bound():
    """An optimum near the bound (a coordinate 1e-3 from 0): no Newton step; COBYQA goes on to 1e-6."""
    centre = np.array([0.3, 0.5, 0.001])
    fun = lambda x: float(np.sum((x - centre) ** 2 * np.array([1.0, 2.0, 3.0])))  # noqa: E731
    f, calls = _counted(fun)
    res, hess = _optimize.cobyqa_newton_minimize(f, np.ones(3), np.zeros(3))
    assert hess is None
    assert int(res.n_eval) == len(calls)
    np.testing.assert_allclose(res.x, centre, atol=1e-5)
    # a bound on the optimum itself (a variance at 0) also takes plain COBYQA
    res, hess = _optimize.cobyqa_newton_minimize(lambda x: fun(x + np.array([0, 0, 0.5])), np.ones(3), np.zeros(3))
    assert hess is None and abs(float(res.x[2])) < 1e-6


def _crossed_frame(seed: int = 5, n: int = 800) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 60, n), rng.integers(0, 15, n), rng.integers(0, 4, n)
    x = rng.standard_normal(n)
    y = (1.0 + 0.4 * x + 0.7 * rng.standard_normal(60)[a] + 0.5 * rng.standard_normal(15)[b]
         + 0.6 * rng.standard_normal(4)[c] + rng.standard_normal(n))
    return pd.DataFrame({"y": y, "x": x, "a": pd.Categorical(a), "b": pd.Categorical(b), "c": pd.Categorical(c)})


@pytest.mark.parametrize("reml", [False, True])
def test_derivative_free_fit_finish_and_check(monkeypatch, reml):
    """InstEval's shape in small, fitted by the derivative-free path (forced): the Newton finish's optimum equals
    plain COBYQA's to 1e-6 in θ and BFGS's objective to 1e-9; the check's gradient and Hessian (from the finish)
    agree with autodiff's at θ̂."""
    from jaxmlm.core._lmm import linear_diagnostics
    from jaxmlm.fit import _linear
    from jaxmlm.fit import _model as model_module

    data, method = _crossed_frame(), "reml" if reml else "ml"
    formula = "y ~ x + (1 | a) + (1 | b) + (1 | c)"
    bfgs = jm.Model(formula, data).fit(method=method)
    monkeypatch.setattr(model_module, "_DERIVATIVE_FREE_TAIL", 0)
    finished = []
    original = _linear._derivatives
    monkeypatch.setattr(_linear, "_derivatives", lambda model, obj, *a: finished.append(obj.finished) or original(
        model, obj, *a))
    values = []  # every evaluation of the objective in the fit, the check's included
    value = _linear.deviance_value
    monkeypatch.setattr(_linear, "deviance_value", lambda *a: values.append(1) or value(*a))
    model = jm.Model(formula, data)
    fit = model.fit(method=method)
    n_fit = len(values)
    monkeypatch.setattr(_optimize, "COARSE_RADIUS", 10.0)  # COBYQA alone, to 1e-6
    plain = jm.Model(formula, data).fit(method=method)
    n_plain = len(values) - n_fit
    monkeypatch.undo()
    assert finished[0] is not None and finished[1] is None  # the Newton finish ran, then plain COBYQA
    assert fit.optinfo.method == "COBYQA" and fit.converged and plain.converged
    assert fit.objective == pytest.approx(bfgs.objective, rel=1e-9)
    assert fit.objective <= plain.objective + 1e-9
    np.testing.assert_allclose(fit.theta, plain.theta, atol=2e-6)
    assert n_fit < n_plain and fit.optinfo.n_eval <= n_fit  # the check spends no evaluations of its own
    theta, grad, hess = finished[0]
    np.testing.assert_array_equal(theta, fit.theta)
    with jax.enable_x64(True):
        exact_grad, exact_hess = linear_diagnostics(jax.numpy.asarray(theta), model.linear_problem, reml, True)
    np.testing.assert_allclose(grad, np.asarray(exact_grad), atol=2e-4)
    # the Hessian at COBYQA's end, ~1e-3 from θ̂ in θ (lme4's own stencil at θ̂ is ~1e-3 off, test_gradients.py)
    np.testing.assert_allclose(hess, np.asarray(exact_hess), rtol=1e-2)
    assert fit.optinfo.grad_max == pytest.approx(np.max(np.abs(grad)))
