"""Autodiff gradients of the profiled deviance and REML criterion agree with central finite differences."""

import functools

import jax
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core._lmm import profiled_deviance

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")

# (dataset, formula, θ away from the optimum and from the boundary, criteria to check)
MODELS = {
    "single term with slope": ("sleepstudy", "Reaction ~ Days + (Days | Subject)", [0.8, 0.05, 0.3], (True, False)),
    "nested": ("Pastes", "strength ~ 1 + (1 | batch/cask)", [1.7, 0.6], (True,)),
    "crossed": ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", [1.1, 2.3], (True,)),
    "uncorrelated slope": ("sleepstudy", "Reaction ~ Days + (Days || Subject)", [0.9, 0.2], (False,)),
}

_grad = jax.jit(jax.grad(profiled_deviance), static_argnums=2)


@functools.lru_cache(maxsize=None)
def _model(name):
    dataset, formula, _, _ = MODELS[name]
    return jm.Model(formula, jm.datasets.load(dataset))


def _central_differences(model, theta, reml, h=1e-5):
    out = np.empty_like(theta)
    for i in range(theta.size):
        step = np.zeros_like(theta)
        step[i] = h * max(1.0, abs(theta[i]))
        out[i] = (model.deviance(theta + step, reml) - model.deviance(theta - step, reml)) / (2 * step[i])
    return out


@pytest.mark.parametrize(
    "name,reml", [(name, reml) for name, spec in MODELS.items() for reml in spec[3]]
)
def test_gradient_matches_finite_differences(name, reml):
    model = _model(name)
    theta = np.asarray(MODELS[name][2], dtype=float)
    auto = np.asarray(_grad(jax.numpy.asarray(theta), model.linear_problem, reml))
    numeric = _central_differences(model, theta, reml)
    assert np.all(np.abs(auto) > 1e-3), "pick a θ where the gradient is not ~0, or the check is empty"
    np.testing.assert_allclose(auto, numeric, rtol=2e-6, atol=1e-6)


def test_gradient_vanishes_at_the_fit():
    """At an interior optimum the gradient the optimizer reports is ~0 (lme4's check uses 0.002 after scaling)."""
    model = _model("single term with slope")
    fit = model.fit(method="reml")
    grad = np.asarray(_grad(jax.numpy.asarray(fit.theta), model.linear_problem, True))
    assert np.max(np.abs(grad)) < 1e-4
    assert fit.optinfo.grad_max < 1e-4


def test_host_lapack_tail_matches_xla(monkeypatch):
    """Large dense tails take the inverse S_zz⁻¹ of the gradient from LAPACK's potri on the CPU host. Forcing that
    path on a small crossed model gives the XLA path's value, gradient and Hessian (the inverse's own JVP rule
    serves the Hessian)."""
    from jaxmlm.core import _linalg

    model = jm.Model("diameter ~ 1 + (1 | plate) + (1 | sample)", jm.datasets.load("Penicillin"))
    theta = jax.numpy.asarray([1.1, 2.3])

    def derivatives():
        f = functools.partial(profiled_deviance, problem=model.linear_problem, reml=True)
        return [np.asarray(v) for v in jax.jit(lambda t: (f(t), jax.grad(f)(t), jax.hessian(f)(t)))(theta)]

    xla = derivatives()
    monkeypatch.setattr(_linalg, "_HOST_LAPACK_MIN", 1)
    assert _linalg._host_lapack(2)
    host = derivatives()
    for a, b in zip(host, xla):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
    singular = jax.numpy.asarray([[1.0, 0.0], [2.0, 0.0]])  # a factor with a zero pivot: NaN, not garbage
    assert np.all(np.isnan(np.asarray(jax.jit(_linalg.inverse_from_cholesky)(singular))[np.tril_indices(2)]))


def test_derivative_free_path_matches_lbfgs(monkeypatch):
    """Large dense tails are fitted by COBYQA and checked with lme4's finite-difference stencil. Forced on small
    crossed models, the path reaches the L-BFGS optimum, and the stencil's gradient and Hessian agree with
    autodiff's, as do the gradient differences that fits with up to 10 θ use for lme4's checks."""
    from jaxmlm.fit import _model
    from jaxmlm.core._lmm import linear_diagnostics

    for dataset, formula in [("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
                             ("sleepstudy", "Reaction ~ Days + (Days | Subject)")]:
        data = jm.datasets.load(dataset)
        reference = jm.Model(formula, data).fit(method="ml")
        monkeypatch.setattr(_model, "_DERIVATIVE_FREE_TAIL", 0)
        model = jm.Model(formula, data)
        assert model._derivative_free
        fit = model.fit(method="ml")
        monkeypatch.undo()
        assert fit.optinfo.method == "COBYQA" and fit.converged
        assert fit.objective == pytest.approx(reference.objective, rel=1e-9, abs=1e-7)
        np.testing.assert_allclose(fit.theta, reference.theta, rtol=1e-3, atol=1e-4)
        theta = np.asarray(fit.theta) + 0.05  # away from the optimum, so the gradient is not ~0
        grad, hess = _model._finite_difference_derivatives(lambda th: model.deviance(th, False), theta,
                                                          model.deviance(theta, False))
        grad2, hess2 = model._stencil_derivatives(theta, False)
        auto_grad, auto_hess = linear_diagnostics(jax.numpy.asarray(theta), model.linear_problem, False, True)
        np.testing.assert_allclose(grad, np.asarray(auto_grad), rtol=1e-5, atol=1e-5)
        # lme4's step (1e-4) divides the deviance's rounding (~1e-10 here) by δ² = 1e-8: ~0.1% on the Hessian
        np.testing.assert_allclose(hess, np.asarray(auto_hess), rtol=3e-3, atol=1e-3)
        np.testing.assert_allclose(grad2, np.asarray(auto_grad), rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(hess2, np.asarray(auto_hess), rtol=1e-6, atol=1e-6)


def test_stencil_in_one_program_matches_separate_calls():
    """Large statistics take the stencil's 2k gradients from one compiled call (`gradients_at_points`); it must
    give the same gradient and Hessian as separate calls of the optimizer's program."""
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    theta = np.asarray(model.fit(method="ml", warn=False).theta) + 0.05
    g1, h1 = model._stencil_derivatives(theta, False)
    g2, h2 = model._stencil_derivatives(theta, False, one_program=True)
    np.testing.assert_allclose(g2, g1, rtol=1e-12, atol=1e-12)
    # different programs round differently; divided by δ = 1e-5 that is ~1e-8 of the Hessian
    np.testing.assert_allclose(h2, h1, rtol=1e-7, atol=1e-7)
