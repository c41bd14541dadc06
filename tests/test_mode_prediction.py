"""core._mode_prediction: the first-order prediction of the conditional modes that starts the Laplace sampler's
PIRLS, against finite differences of PIRLS's own modes and the same deviance from any start."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import special

import jaxmlm as jm
from jaxmlm.core._linalg import scale_modes
from jaxmlm.core._mode_prediction import _MIN_DIAGONAL, mode_prediction, predict_modes, unscale_modes
from jaxmlm.core._pirls import flat_modes, laplace_deviance_from, pirls
from jaxmlm.fit._glmm import glmm_problem

pytestmark = pytest.mark.usefixtures("x64")


def _crossed_slopes(seed=3, n_g=7, n_h=5, cells=6):
    """Binomial cells with a correlated (1 + x | g) term and a scalar (1 | h) term."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_g), cells)
    h = rng.integers(0, n_h, size=g.size)
    x = rng.normal(size=g.size)
    a, s = rng.normal(size=(2, n_g)) * np.array([[0.8], [0.4]])
    eta = -0.3 + 0.5 * x + a[g] + s[g] * x + 0.6 * rng.normal(size=n_h)[h]
    n = rng.integers(20, 40, size=g.size)
    yes = rng.binomial(n, special.expit(eta))
    return pd.DataFrame({"g": [f"g{i}" for i in g], "h": [f"h{i}" for i in h], "x": x, "yes": yes, "no": n - yes})


@pytest.fixture(scope="module")
def fitted():
    with jax.enable_x64(True):
        model = jm.Model("cbind(yes, no) ~ 1 + x + (1 + x | g) + (1 | h)", _crossed_slopes(), family="binomial")
        fit = model.fit(warn=False)
        problem = glmm_problem(model)
        x_hat = np.concatenate([fit.getme("theta"), fit.getme("beta")])
        return problem, x_hat, np.asarray(fit.getme("u"))


# PIRLS as one program (called at 13 points): run eagerly, each operation around its loop compiles on its own
_pirls_modes = jax.jit(lambda theta, beta, problem: flat_modes(pirls(theta, beta, problem)[1]))


def _modes(problem, x):
    nt = problem.structure.n_theta
    return np.asarray(_pirls_modes(jnp.asarray(x[:nt]), jnp.asarray(x[nt:]), problem))


def test_the_derivatives_are_those_of_pirls_modes(fitted):
    """∂û/∂x and ∂(Λû)/∂x at the fit against central differences of PIRLS's converged modes."""
    problem, x_hat, u_hat = fitted
    st = problem.structure
    nt = st.n_theta
    pred = mode_prediction(x_hat, u_hat, problem)
    np.testing.assert_allclose(np.asarray(pred.u), _modes(problem, x_hat), atol=1e-7)
    step = 1e-5
    for j in range(x_hat.size):
        e = np.zeros_like(x_hat)
        e[j] = step
        up, down = _modes(problem, x_hat + e), _modes(problem, x_hat - e)
        du = (up - down) / (2 * step)
        b = lambda x, u: np.asarray(scale_modes(jnp.asarray(x[:nt]), st.qs, st.n_levels, jnp.asarray(u)))  # noqa: E731
        db = (b(x_hat + e, up) - b(x_hat - e, down)) / (2 * step)
        np.testing.assert_allclose(np.asarray(pred.du[:, j]), du, atol=1e-5 * (1 + np.abs(du).max()))
        np.testing.assert_allclose(np.asarray(pred.db[:, j]), db, atol=1e-5 * (1 + np.abs(db).max()))


def test_unscale_inverts_scale_and_falls_back_where_the_factor_is_singular(fitted):
    problem, x_hat, _ = fitted
    st = problem.structure
    rng = np.random.default_rng(0)
    theta = jnp.asarray(np.array([0.9, -0.3, 0.5, 0.7]))  # (1 + x | g): T = [[0.9, 0], [-0.3, 0.5]]; (1 | h): 0.7
    u = jnp.asarray(rng.normal(size=sum(l * q for l, q in zip(st.n_levels, st.qs))))
    fallback = jnp.asarray(rng.normal(size=u.shape))
    b = scale_modes(theta, st.qs, st.n_levels, u)
    np.testing.assert_allclose(np.asarray(unscale_modes(theta, st.qs, st.n_levels, b, fallback)), np.asarray(u),
                               atol=1e-12)
    # the slope's sd at the boundary: the (1 + x | g) levels take the fallback, the (1 | h) levels stay exact
    singular = theta.at[2].set(0.1 * _MIN_DIAGONAL)
    out = np.asarray(unscale_modes(singular, st.qs, st.n_levels, scale_modes(singular, st.qs, st.n_levels, u),
                                   fallback))
    m_g = st.n_levels[0] * st.qs[0]
    assert st.qs[0] == 2
    np.testing.assert_array_equal(out[:m_g], np.asarray(fallback)[:m_g])
    np.testing.assert_allclose(out[m_g:], np.asarray(u)[m_g:], atol=1e-12)


def test_pirls_from_the_prediction_reaches_the_same_deviance_in_fewer_iterations(fitted):
    """At points around the fit (log-sds and β moved by about a posterior's spread): the same Laplace deviance
    and modes as PIRLS from 0 and from the fit's modes, in fewer iterations than from the fit's modes."""
    problem, x_hat, u_hat = fitted
    pred = mode_prediction(x_hat, u_hat, problem)
    nt = problem.structure.n_theta
    rng = np.random.default_rng(1)
    evaluate = jax.jit(lambda x, u0: laplace_deviance_from(x, problem, u0, 1, True))
    iterations = {"prediction": [], "fit": []}
    for _ in range(12):
        x = x_hat.copy()
        x[:nt] = x_hat[:nt] * np.exp(0.4 * rng.normal(size=nt))
        x[nt:] = x_hat[nt:] + 0.3 * rng.normal(size=x.size - nt)
        x = jnp.asarray(x)
        v0, (u0, ok0, _) = evaluate(x, jnp.zeros_like(jnp.asarray(u_hat)))
        vf, (uf, okf, itf) = evaluate(x, jnp.asarray(u_hat))
        vp, (up, okp, itp) = evaluate(x, predict_modes(pred, x, problem))
        assert bool(ok0) and bool(okf) and bool(okp)
        np.testing.assert_allclose(float(vp), float(v0), rtol=1e-11)
        np.testing.assert_allclose(float(vp), float(vf), rtol=1e-11)
        np.testing.assert_allclose(np.asarray(up), np.asarray(u0), atol=1e-6)
        iterations["prediction"].append(int(itp))
        iterations["fit"].append(int(itf))
    assert np.mean(iterations["prediction"]) < np.mean(iterations["fit"])
