"""GLMM objectives against direct dense computations, and the GLMM input checks."""

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special

import jaxmlm as jm
from jaxmlm.core._agq import agq_deviance, gauss_hermite
from jaxmlm.fit._glmm import glmm_problem
from jaxmlm.core._pirls import laplace_deviance

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")


@pytest.fixture(scope="module")
def small():
    """cbpp (56 rows, 15 herds) as a binomial model, at a point away from the optimum."""
    model = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                     family="binomial")
    x = np.array([0.9, -1.2, -0.8, -1.0, -1.3])
    return model, x


def _neg2_log_density(model, eta):
    d = model.design
    m = d.extra["trials"]
    k = np.round(d.y * m)
    mu = special.expit(eta)
    return -2.0 * np.sum(special.gammaln(m + 1) - special.gammaln(k + 1) - special.gammaln(m - k + 1)
                         + k * np.log(mu) + (m - k) * np.log1p(-mu))


def test_laplace_equals_dense_newton(small):
    """Newton to the mode on the dense penalized log-likelihood, dense Hessian, plain NumPy."""
    model, x = small
    d = model.design
    theta, beta = x[0], x[1:]
    Z = np.zeros((d.n, model.design.terms[0].n_levels))
    Z[np.arange(d.n), d.terms[0].codes] = 1.0
    ZL = theta * Z
    u = np.zeros(Z.shape[1])
    for _ in range(50):
        mu = special.expit(d.X @ beta + ZL @ u)
        grad = ZL.T @ (d.weights * (d.y - mu)) - u
        H = ZL.T @ (ZL * (d.weights * mu * (1 - mu))[:, None]) + np.eye(len(u))
        step = np.linalg.solve(H, grad)
        u = u + step
        if np.max(np.abs(step)) < 1e-13:
            break
    eta = d.X @ beta + ZL @ u
    mu = special.expit(eta)
    H = ZL.T @ (ZL * (d.weights * mu * (1 - mu))[:, None]) + np.eye(len(u))
    want = _neg2_log_density(model, eta) + u @ u + np.linalg.slogdet(H)[1]
    got = float(laplace_deviance(np.asarray(x), glmm_problem(model)))
    assert got == pytest.approx(want, rel=1e-11)


def test_agq_approaches_numerical_integration(small):
    """25-node AGQ vs scipy.integrate.quad of each group's marginal likelihood (constants added back)."""
    model, x = small
    d = model.design
    theta, beta = x[0], x[1:]
    codes = d.terms[0].codes
    total = 0.0
    for g in range(d.terms[0].n_levels):
        rows = codes == g

        def integrand(b, rows=rows):
            eta = d.X[rows] @ beta + theta * b
            m = d.extra["trials"][rows]
            k = np.round(d.y[rows] * m)
            mu = special.expit(eta)
            logp = np.sum(special.gammaln(m + 1) - special.gammaln(k + 1) - special.gammaln(m - k + 1)
                          + k * np.log(mu) + (m - k) * np.log1p(-mu))
            return np.exp(logp - 0.5 * b * b) / np.sqrt(2 * np.pi)

        value, _ = integrate.quad(integrand, -12, 12, epsabs=0, epsrel=1e-13, limit=200)
        total += -2.0 * np.log(value)
    problem = glmm_problem(model)
    z, w = gauss_hermite(25)
    got = float(agq_deviance(np.asarray(x), problem, z, w)) + float(problem.constant)
    assert got == pytest.approx(total, rel=1e-9)
    laplace = float(laplace_deviance(np.asarray(x), problem))
    assert abs(laplace - total) > 10 * abs(got - total)  # quadrature improves on Laplace


def _frame(y, n=40):
    rng = np.random.default_rng(3)
    return pd.DataFrame({"y": y, "x": rng.normal(size=n), "g": np.repeat(np.arange(8), n // 8)})


@pytest.mark.parametrize(
    "family,y,match",
    [
        ("poisson", np.r_[-1.0, np.ones(39)], "non-negative"),
        ("binomial", np.r_[2.0, np.zeros(39)], r"\[0, 1\]"),
    ],
)
def test_bad_responses_raise(family, y, match):
    with pytest.raises(jm.ResponseError, match=match) as info:
        jm.Model("y ~ x + (1 | g)", _frame(y), family=family)
    assert "'y'" in str(info.value)


def _dense_poisson_laplace(d, x):
    """Laplace deviance of a Poisson (1 | g) model by Newton on the dense penalized log-likelihood, with
    log Γ(y + 1) for log y!, so that it is defined for non-integer y."""
    theta, beta = x[0], x[1:]
    Z = np.zeros((d.n, d.terms[0].n_levels))
    Z[np.arange(d.n), d.terms[0].codes] = theta
    u = np.zeros(Z.shape[1])
    for _ in range(100):
        mu = np.exp(d.X @ beta + Z @ u)
        H = Z.T @ (Z * mu[:, None]) + np.eye(len(u))
        step = np.linalg.solve(H, Z.T @ (d.y - mu) - u)
        u = u + step
        if np.max(np.abs(step)) < 1e-13:
            break
    mu = np.exp(d.X @ beta + Z @ u)
    H = Z.T @ (Z * mu[:, None]) + np.eye(len(u))
    log_density = np.sum(d.y * np.log(mu) - mu - special.gammaln(d.y + 1))
    return -2.0 * log_density + u @ u + np.linalg.slogdet(H)[1]


def test_non_integer_poisson_counts_fit_with_a_warning():
    """As R: non-integer counts warn; the fit maximizes the same Laplace approximation (the deviance residuals are
    defined for any y >= 0; log Γ(y + 1) stands in for log y!, a constant), and logLik is -inf. lme4's glmer
    itself cannot fit these (its objective is Inf everywhere, so it stops at its start)."""
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(8), 6)
    x = rng.normal(size=48)
    y = rng.poisson(np.exp(0.8 + 0.4 * x + rng.normal(0, 0.5, 8)[g])) + np.where(np.arange(48) % 3 == 0, 0.5, 0.0)
    data = pd.DataFrame({"y": y, "x": x, "g": g})
    with pytest.warns(UserWarning, match=r"non-integer counts in the poisson response 'y' \(first: 0\.5\)"):
        model = jm.Model("y ~ x + (1 | g)", data, family="poisson")
    fit = model.fit(method="laplace")
    assert fit.converged
    assert fit.loglik == -np.inf and fit.aic == np.inf and fit.bic == np.inf
    d = model.design
    point = np.r_[fit.theta, fit.fixef.to_numpy()]
    assert fit.objective == pytest.approx(_dense_poisson_laplace(d, point), rel=1e-10)
    from scipy.optimize import minimize

    dense = minimize(lambda v: _dense_poisson_laplace(d, v), point + 0.05, method="Nelder-Mead",
                     options=dict(xatol=1e-9, fatol=1e-12, maxiter=5000))
    assert fit.objective <= dense.fun + 1e-8
    np.testing.assert_allclose(point, dense.x, atol=2e-4)


def test_cbind_with_more_successes_than_trials_raises():
    data = _frame(np.ones(40)).assign(s=3, n=2)
    with pytest.raises(jm.ResponseError, match="negative"):
        jm.Model("cbind(s, n - s) ~ x + (1 | g)", data, family="binomial")


def test_agq_needs_one_scalar_term():
    data = _frame(np.ones(40)).assign(h=np.tile(np.arange(5), 8))
    model = jm.Model("y ~ x + (1 | g) + (1 | h)", data, family="poisson")
    with pytest.raises(ValueError, match="single, scalar random-effects term"):
        model.fit(method="agq", nagq=5)
    with pytest.raises(ValueError, match="at most 25"):
        jm.Model("y ~ x + (1 | g)", data, family="poisson").fit(method="agq", nagq=30)
    with pytest.raises(jm.FamilyError):
        jm.Model("y ~ x + (1 | g)", data, family="poisson", link="logit")
