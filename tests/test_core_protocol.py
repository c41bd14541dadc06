"""The public objective protocol (`Model.problem`, `Model.deviance`): jax.grad, jax.hessian, jax.jit and jax.vmap
of the objective against central finite differences, against the fitted optimum, and against models refitted on
another response; no host callback on its path; a clear error without float64."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core import _linalg
from jaxmlm.core._lmm import deviance_and_gradient

SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"


def central_gradient(f, x, h=1e-5):
    x = np.asarray(x, dtype=np.float64)
    return np.array([(float(f(x + h * e)) - float(f(x - h * e))) / (2 * h) for e in np.eye(x.size)])


@pytest.fixture(scope="module")
def sleep_model():
    return jm.Model(SLEEP, jm.datasets.load("sleepstudy"))


@pytest.fixture(scope="module")
def sleep_fits(sleep_model):
    return {method: sleep_model.fit(method) for method in ("reml", "ml")}


@pytest.fixture(scope="module")
def cbpp_model():
    return jm.Model(CBPP, jm.datasets.load("cbpp"), family="binomial")


def _glmm_x(fit):
    return np.concatenate([fit.theta, fit.fixef.to_numpy()])


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_linear_objective_at_the_fit_and_its_derivatives(sleep_model, sleep_fits, method):
    fit, problem = sleep_fits[method], sleep_model.problem(method)
    assert problem.names == ("Subject.(Intercept)", "Subject.Days.(Intercept)", "Subject.Days")
    np.testing.assert_array_equal(problem.x0, [1.0, 0.0, 1.0])
    np.testing.assert_array_equal(problem.lower, [0.0, -np.inf, 0.0])
    x = jnp.asarray(fit.theta)
    objective, grad_fn = jax.jit(problem.objective), jax.jit(jax.grad(problem.objective))
    value = objective(x)
    assert float(value) == pytest.approx(fit.objective, rel=1e-10)
    assert float(problem.objective(x)) == pytest.approx(float(value), rel=1e-14)  # eager, as jitted
    assert np.max(np.abs(grad_fn(x))) < 1e-3
    # at a point away from the optimum: gradient and Hessian against central differences
    point = np.array([0.7, 0.2, 0.4])
    np.testing.assert_allclose(grad_fn(point), central_gradient(objective, point), rtol=1e-6, atol=1e-6)
    hess = np.asarray(jax.jit(jax.hessian(problem.objective))(point))
    fd_hess = np.stack([central_gradient(lambda t: grad_fn(t)[j], point) for j in range(3)])
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(hess, hess.T, rtol=1e-10)
    # the same as lme4's devfun through the model, and as the fit's own program
    assert float(jax.jit(sleep_model.deviance, static_argnums=1)(jnp.asarray(point), method == "reml")) == \
        pytest.approx(float(objective(point)), rel=1e-13)
    assert float(deviance_and_gradient(point, sleep_model.linear_problem, method == "reml")[0]) == pytest.approx(
        float(objective(point)), rel=1e-13)
    named = problem.unpack(x)
    np.testing.assert_allclose(named["beta"], fit.fixef.to_numpy(), rtol=1e-9)
    assert float(named["sigma"]) == pytest.approx(fit.sigma, rel=1e-9)


@pytest.mark.usefixtures("x64")
def test_linear_objective_vmaps_over_theta_and_over_responses(sleep_model):
    problem = sleep_model.problem("ml")
    grid = jnp.stack([jnp.array([s, 0.0, t]) for s in (0.5, 1.0, 1.5) for t in (0.1, 0.3)])
    values = jax.jit(jax.vmap(problem.objective))(grid)
    objective = jax.jit(problem.objective)
    np.testing.assert_allclose(values, [float(objective(x)) for x in grid], rtol=1e-13)
    # vmap over responses: each against a model built on a data frame with that response
    data = jm.datasets.load("sleepstudy")
    rng = np.random.default_rng(3)
    Y = data["Reaction"].to_numpy()[:, None] + rng.normal(scale=20.0, size=(len(data), 3))
    theta = jnp.array([0.9, 0.05, 0.2])
    swapped = jax.jit(jax.vmap(lambda y: problem.with_response(y).objective(theta)))(jnp.asarray(Y.T))
    for j in range(Y.shape[1]):
        other = jm.Model(SLEEP, data.assign(Reaction=Y[:, j]))
        assert float(swapped[j]) == pytest.approx(float(other.deviance(np.asarray(theta), reml=False)), rel=1e-12)
    # the data as an argument: one compiled program for every response
    objective_of_data = jax.jit(lambda d, x: problem.objective(x, d))
    d1 = problem.with_response(jnp.asarray(Y[:, 1])).data
    assert float(objective_of_data(d1, theta)) == pytest.approx(float(swapped[1]), rel=1e-13)


@pytest.mark.usefixtures("x64")
def test_laplace_objective_at_the_fit_and_its_derivatives(cbpp_model):
    fit, problem = cbpp_model.fit(), cbpp_model.problem("laplace")
    assert problem.names == ("herd.(Intercept)", "(Intercept)", "period2", "period3", "period4")
    assert problem.x0.shape == (5,) and float(problem.lower[0]) == 0.0 and np.isneginf(problem.lower[1:]).all()
    x = jnp.asarray(_glmm_x(fit))
    objective, grad_fn = jax.jit(problem.objective), jax.jit(jax.grad(problem.objective))
    assert float(objective(x)) == pytest.approx(fit.objective, rel=1e-10)
    assert np.max(np.abs(grad_fn(x))) < 1e-3
    point = np.asarray(problem.x0) * 0.8
    np.testing.assert_allclose(grad_fn(point), central_gradient(objective, point), rtol=1e-5, atol=1e-5)
    points = jnp.stack([x, x * 1.05, jnp.asarray(point)])
    np.testing.assert_allclose(jax.jit(jax.vmap(problem.objective))(points), [float(objective(p)) for p in points],
                               rtol=1e-11)
    named = problem.unpack(x)
    np.testing.assert_allclose(named["theta"], fit.theta)
    np.testing.assert_allclose(named["beta"], fit.fixef.to_numpy())


@pytest.mark.slow  # jax.hessian through PIRLS and its Newton steps compiles slowly
@pytest.mark.usefixtures("x64")
def test_laplace_objective_hessian(cbpp_model):
    fit, problem = cbpp_model.fit(), cbpp_model.problem("laplace")
    x = jnp.asarray(_glmm_x(fit))
    grad_fn = jax.jit(jax.grad(problem.objective))
    hess = np.asarray(jax.jit(jax.hessian(problem.objective))(x))
    fd_hess = np.stack([central_gradient(lambda t: grad_fn(t)[j], x) for j in range(x.size)])
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-4, atol=1e-4)
    assert np.all(np.linalg.eigvalsh(hess) > 0)  # a minimum


@pytest.mark.slow  # an nAGQ fit and its compiled gradient
@pytest.mark.usefixtures("x64")
def test_agq_objective_at_the_fit_and_its_gradient(cbpp_model):
    fit, problem = cbpp_model.fit("agq", nagq=5), cbpp_model.problem("agq", nagq=5)
    x = jnp.asarray(_glmm_x(fit))
    objective, grad_fn = jax.jit(problem.objective), jax.jit(jax.grad(problem.objective))
    assert float(objective(x)) == pytest.approx(fit.objective, rel=1e-10)
    assert np.max(np.abs(grad_fn(x))) < 1e-3
    point = np.asarray(x) + np.array([0.1, 0.05, -0.05, 0.02, 0.0])
    np.testing.assert_allclose(grad_fn(point), central_gradient(objective, point),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.usefixtures("x64")
def test_agq_objective_hessian_and_vmap(cbpp_model):
    problem = cbpp_model.problem("agq", nagq=5)
    grad_fn = jax.jit(jax.grad(problem.objective))
    x = np.asarray(problem.x0)
    hess = np.asarray(jax.jit(jax.hessian(problem.objective))(x))
    fd_hess = np.stack([central_gradient(lambda t: grad_fn(t)[j], x) for j in range(x.size)])
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-4, atol=1e-4)
    points = jnp.stack([x, x * 0.9])
    objective = jax.jit(problem.objective)
    np.testing.assert_allclose(jax.jit(jax.vmap(problem.objective))(points), [float(objective(p)) for p in points],
                               rtol=1e-11)


@pytest.mark.usefixtures("x64")
def test_glmm_with_response_matches_a_model_on_that_response(cbpp_model):
    problem = cbpp_model.problem("laplace")
    data = jm.datasets.load("cbpp")
    flipped = data.assign(incidence=data["size"] - data["incidence"])
    other = jm.Model(CBPP, flipped, family="binomial").problem("laplace")
    x = jnp.asarray(problem.x0)
    y = 1.0 - np.asarray(cbpp_model.design.y)
    objective_of_data = jax.jit(lambda d, t: problem.objective(t, d))  # one program for both data
    assert float(objective_of_data(problem.with_response(y).data, x)) == pytest.approx(
        float(objective_of_data(other.data, x)), rel=1e-12)
    with pytest.raises(ValueError, match="constant="):
        jax.vmap(lambda yy: problem.with_response(yy).objective(x))(jnp.asarray(y)[None])


def test_default_path_has_no_host_callback(sleep_model, monkeypatch):
    """Even where the fit's own program uses LAPACK on the host (large dense tails on a CPU; forced here), the
    public objective and Model.deviance stay in XLA, so they run under any transformation and backend."""
    monkeypatch.setattr(_linalg, "_HOST_LAPACK_MIN", 0)
    crossed = jm.Model("y ~ 1 + (1 | a) + (1 | b)", _crossed_frame())
    with jax.enable_x64(True):
        problem = crossed.problem("reml")
        x = jnp.asarray(problem.x0)
        internal = str(jax.make_jaxpr(lambda t: deviance_and_gradient(t, crossed.linear_problem, True))(x))
        public = str(jax.make_jaxpr(jax.grad(problem.objective))(x))
        devfun = str(jax.make_jaxpr(jax.grad(lambda t: crossed.deviance(t, reml=True)))(x))
        assert "callback" in internal  # the check can see one
        assert "callback" not in public and "callback" not in devfun


def _crossed_frame():
    import pandas as pd

    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 6, 80), rng.integers(0, 5, 80)
    y = rng.normal(size=6)[a] + rng.normal(size=5)[b] + rng.normal(size=80)
    return pd.DataFrame(dict(y=y, a=a.astype(str), b=b.astype(str)))


def test_without_float64_the_core_says_so(sleep_model, cbpp_model):
    if jax.config.jax_enable_x64:
        pytest.skip("the process runs with float64 on")
    problem = sleep_model.problem("reml")  # built in float64 by jaxmlm
    with pytest.raises(jm.PrecisionError, match="float64"):
        problem.objective(problem.x0)
    with pytest.raises(jm.PrecisionError, match="float64"):
        jax.grad(problem.objective)(problem.x0)
    with pytest.raises(jm.PrecisionError, match="Model.deviance"):
        sleep_model.deviance(jnp.asarray([1.0, 0.0, 1.0]))
    # NumPy in: a float, computed in float64 whatever the caller's setting
    value = sleep_model.deviance(np.array([1.0, 0.0, 1.0]), reml=True)
    assert isinstance(value, float)
    with jax.enable_x64(True):
        assert value == pytest.approx(float(problem.objective(problem.x0)), rel=1e-13)
    with pytest.raises(jm.PrecisionError):
        cbpp_model.problem("laplace").objective(jnp.zeros(5))


def test_problem_rejects_unknown_methods(sleep_model, cbpp_model):
    with pytest.raises(ValueError, match="method must be one of"):
        sleep_model.problem("bfgs")
    with pytest.raises(ValueError, match="linear mixed models"):
        cbpp_model.problem("reml")
    with pytest.raises(ValueError, match="generalized"):
        sleep_model.problem("laplace")


@pytest.mark.slow  # programs with host callbacks are not kept in the compilation cache
def test_host_lapack_path_runs_under_scoped_float64(monkeypatch):
    """The fits' host LAPACK inverse (forced on here for a small tail) returns float64 through a callback that
    JAX checks in its own thread, where the scoped float64 setting is off: the value and gradient still arrive
    in float64 and equal the pure-XLA path's."""
    monkeypatch.setattr(_linalg, "_HOST_LAPACK_MIN", 0)
    crossed = jm.Model("y ~ 1 + (1 | a) + (1 | b)", _crossed_frame())
    with jax.enable_x64(True):
        x = jnp.asarray([0.8, 0.6])
        value, grad = deviance_and_gradient(x, crossed.linear_problem, True)
        assert grad.dtype == jnp.float64
        pure = jax.jit(jax.grad(crossed.problem("reml").objective))(x)
    np.testing.assert_allclose(grad, pure, rtol=1e-10)
