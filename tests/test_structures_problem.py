"""Model.problem() for models with cs() / ar1() terms: the objective over ψ (the structures' own parameters),
checked against the fitted optimum of Model.fit, finite differences, vmap over a grid, and the θ-space objective
at θ(ψ)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core._structures import psi_to_theta
from tests.test_covariance_structures import REF_DIR, _ar1_data, _cs_data


@pytest.fixture(scope="module")
def ar1_model():
    return jm.Model("y ~ time + ar1(0 + ftime | g)", _ar1_data())


def _cs2_data() -> pd.DataFrame:
    """Two levels of f only: a 2 × 2 cs() term, small enough for a Laplace program that compiles quickly."""
    d = _cs_data()
    d = d[d["f"] != "c"].copy()
    d["f"] = pd.Categorical(d["f"].astype(str), ["a", "b"])
    return d


def _central_gradient(f, x, h=1e-5):
    x = np.asarray(x, dtype=np.float64)
    return np.array([(f(x + h * e) - f(x - h * e)) / (2 * h) for e in np.eye(x.size)])


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_linear_problem_over_psi_matches_the_fit(ar1_model, method):
    fit = ar1_model.fit(method=method)
    problem = ar1_model.problem(method)
    assert problem.names == tuple(ar1_model.psi_names) == ("g.log_sd", "g.cor_transf")
    np.testing.assert_array_equal(np.asarray(problem.x0), [0.0, 0.0])
    assert np.all(np.isneginf(np.asarray(problem.lower)))
    psi = fit.extra["psi"]
    with jax.enable_x64(True):
        x = jnp.asarray(psi)
        f, gradient = jax.jit(problem.objective), jax.jit(jax.grad(problem.objective))  # each compiled once
        value = float(f(x))
        grad = np.asarray(gradient(x))
        # forward over forward: the same exact Hessian as jax.hessian's forward over reverse, whose transposed
        # factorization compiles several times slower (two parameters: the four products cost nothing to run)
        hess = np.asarray(jax.jit(jax.jacfwd(jax.jacfwd(problem.objective)))(x))
        named = jax.jit(problem.unpack)(x)
        fd_grad = _central_gradient(lambda p: float(f(jnp.asarray(p))), psi)
        fd_hess = np.stack([(np.asarray(gradient(x + 1e-5 * e)) - np.asarray(gradient(x - 1e-5 * e))) / 2e-5
                            for e in jnp.eye(psi.size)])
        # the same objective as the θ-space problem at θ(ψ)
        theta = psi_to_theta(x, ar1_model.structures)
        inner = float(problem.inner.objective(theta))
    assert value == pytest.approx(fit.objective, rel=1e-10)
    assert inner == pytest.approx(value, rel=1e-12)
    assert np.max(np.abs(grad)) < 1e-4  # the fit's optimum (its gradient tolerance)
    np.testing.assert_allclose(grad, fd_grad, atol=1e-5)
    np.testing.assert_allclose(hess, fd_hess, rtol=1e-5, atol=1e-6)
    assert np.all(np.linalg.eigvalsh(hess) > 0)
    np.testing.assert_allclose(np.asarray(named["theta"]), fit.theta, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(named["beta"]), fit.fixef.to_numpy(), rtol=1e-10)
    assert float(named["sigma"]) == pytest.approx(fit.sigma, rel=1e-10)
    np.testing.assert_allclose(np.asarray(named["psi"]), psi)
    (term,) = named["structures"]
    (ref,) = fit.extra["structures"]
    np.testing.assert_allclose(np.asarray(term["sd"]), ref["sd"], rtol=1e-10)
    assert float(term["rho"]) == pytest.approx(ref["rho"], rel=1e-10)


def test_linear_problem_vmaps_over_psi_and_responses(ar1_model):
    problem = ar1_model.problem("ml")
    fit = ar1_model.fit(method="ml")
    rng = np.random.default_rng(3)
    grid = fit.extra["psi"] + rng.normal(scale=0.3, size=(5, 2))
    y2 = ar1_model.design.y + rng.normal(scale=0.5, size=ar1_model.design.n)
    with jax.enable_x64(True):
        f = jax.jit(problem.objective)
        batched = np.asarray(jax.jit(jax.vmap(problem.objective))(jnp.asarray(grid)))
        looped = np.array([float(f(jnp.asarray(g))) for g in grid])
        other = problem.with_response(jnp.asarray(y2))
        by_vmap = np.asarray(jax.jit(jax.vmap(lambda y: problem.with_response(y).objective(problem.x0)))(
            jnp.stack([jnp.asarray(ar1_model.design.y), jnp.asarray(y2)])))
        direct = float(other.objective(other.x0))
        at_start = float(f(problem.x0))
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
    assert by_vmap[0] == pytest.approx(at_start, rel=1e-12)
    assert by_vmap[1] == pytest.approx(direct, rel=1e-12)
    own = jm.Model("y2 ~ time + ar1(0 + ftime | g)", _ar1_data().assign(y2=y2)).problem("ml")
    with jax.enable_x64(True):
        assert direct == pytest.approx(float(own.objective(own.x0)), rel=1e-12)


@pytest.mark.slow  # a Laplace program for a 2 × 2 term
def test_glmm_problem_over_psi_matches_the_fit():
    model = jm.Model("count ~ x + cs(0 + f | g)", _cs2_data(), family="poisson")
    fit = model.fit()
    problem = model.problem("laplace")
    k = len(model.psi_names)
    assert problem.names[:k] == tuple(model.psi_names)
    assert problem.names[k:] == tuple(model.design.x_names)
    x = np.concatenate([fit.extra["psi"], fit.fixef.to_numpy()])
    with jax.enable_x64(True):
        value = float(jax.jit(problem.objective)(jnp.asarray(x)))
        grad = np.asarray(jax.jit(jax.grad(problem.objective))(jnp.asarray(x)))
        f = jax.jit(problem.objective)
        fd = _central_gradient(lambda p: float(f(jnp.asarray(p))), x)
        named = problem.unpack(jnp.asarray(x))
        start_value = float(f(problem.x0))
    assert value == pytest.approx(fit.objective, rel=1e-10)
    np.testing.assert_allclose(grad, fd, atol=1e-4)
    assert np.max(np.abs(grad)) < 1e-3
    assert start_value > value
    np.testing.assert_allclose(np.asarray(named["theta"]), fit.theta, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(np.asarray(named["beta"]), fit.fixef.to_numpy())
    (term,) = named["structures"]
    np.testing.assert_allclose(np.asarray(term["sd"]), fit.extra["structures"][0]["sd"], rtol=1e-10)
