"""The dispersion families' Laplace objective against a dense computation written independently (Newton on u with
jax.hessian of the conditional log density from jax.scipy.stats, log det by slogdet), and their quadrature
objective against numerical integration per group (scipy.integrate.quad) on small simulated data."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from jax.scipy import stats as jstats
from scipy import integrate, stats

import jaxmlm as jm
from jaxmlm.core._agq import agq_deviance, gauss_hermite
from jaxmlm.core._pirls import laplace_deviance
from jaxmlm.fit._glmm import glmm_problem

N_GROUPS, PER_GROUP = 6, 5


def _frame(family: str, seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    x = rng.normal(size=g.size)
    b = rng.normal(scale=0.6, size=N_GROUPS)[g]
    eta = 0.3 + 0.5 * x + b
    if family in ("nbinom2", "nbinom1"):
        mu = np.exp(eta + 0.7)
        y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    elif family == "beta":
        mu = 1 / (1 + np.exp(-eta))
        y = rng.beta(6 * mu, 6 * (1 - mu))
    elif family == "gamma_inverse":
        y = rng.gamma(3.0, 1.0 / (2.0 + 0.3 * x + 0.3 * b[:] ) / 3.0)
    else:  # Gamma and inverse Gaussian, log link
        y = rng.gamma(3.0, np.exp(eta) / 3.0)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})


def _log_density(name: str, y, mu, d):
    """log p(y | μ, d) written from jax.scipy.stats (or the textbook formula), independent of the families."""
    if name == "nbinom2":
        return jstats.nbinom.logpmf(y, d, d / (d + mu))
    if name == "nbinom1":
        return jstats.nbinom.logpmf(y, mu / d, 1.0 / (1.0 + d))
    if name in ("gamma_log", "gamma_inverse"):
        shape = 1.0 / d**2
        return jstats.gamma.logpdf(y, shape, scale=mu / shape)
    if name == "ig_log":
        lam = 1.0 / d**2
        return 0.5 * jnp.log(lam / (2 * jnp.pi * y**3)) - lam * (y - mu) ** 2 / (2 * mu**2 * y)
    return jstats.beta.logpdf(y, mu * d, (1 - mu) * d)


CASES = {  # name: (data family, jaxmlm family, inverse link, x = (θ, β0, β1, log d))
    "nbinom2": ("nbinom2", "nbinom2", jnp.exp, [0.7, 0.9, 0.4, np.log(2.5)]),
    "nbinom1": ("nbinom1", "nbinom1", jnp.exp, [0.5, 1.0, 0.5, np.log(1.5)]),
    "gamma_log": ("gamma", jm.families.Gamma(link="log"), jnp.exp, [0.6, 0.2, 0.5, np.log(0.6)]),
    "gamma_inverse": ("gamma_inverse", jm.families.Gamma(), lambda e: 1 / e, [0.1, 2.0, 0.3, np.log(0.6)]),
    "ig_log": ("gamma", jm.families.inverse_gaussian(link="log"), jnp.exp, [0.6, 0.2, 0.5, np.log(0.5)]),
    "beta": ("beta", "beta", jax.nn.sigmoid, [0.6, 0.3, 0.5, np.log(6.0)]),
}


def _setup(name):
    kind, family, linkinv, x = CASES[name]
    df = _frame(kind)
    model = jm.Model("y ~ x + (1 | g)", df, family=family)
    Z = (df["g"].to_numpy()[:, None] == np.array([f"g{k}" for k in range(N_GROUPS)])[None, :]).astype(float)
    X = np.column_stack([np.ones(len(df)), df["x"].to_numpy()])
    return model, jnp.asarray(df["y"].to_numpy()), jnp.asarray(X), jnp.asarray(Z), linkinv, jnp.asarray(x)


def _dense_laplace(name, y, X, Z, linkinv, x, fisher_weights=None):
    """2 f(ũ) + log det ∂²f at the mode of f(u) = −log p(y | u) + ‖u‖²/2, by Newton with jax.hessian."""
    theta, beta, d = x[0], x[1:3], jnp.exp(x[3])

    def f(u):
        mu = linkinv(X @ beta + Z @ (theta * u))
        return -jnp.sum(_log_density(name, y, mu, d)) + 0.5 * jnp.sum(u**2)

    newton = jax.jit(lambda u: u - jnp.linalg.solve(jax.hessian(f)(u), jax.grad(f)(u)))
    u = jnp.zeros(Z.shape[1])
    for _ in range(30):
        u = newton(u)
    H = jax.hessian(f)(u)
    if fisher_weights is not None:  # lme4's glmer.nb: Fisher weights in the log-determinant
        w = fisher_weights(linkinv(X @ beta + Z @ (theta * u)), d)
        H = theta**2 * (Z.T * w) @ Z + jnp.eye(Z.shape[1])
    return 2 * f(u) + jnp.linalg.slogdet(H)[1]


_SLOW = ("nbinom1", "gamma_inverse", "ig_log")  # run by `make test`; the others in the quick suite


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in _SLOW else n for n in CASES])
def test_laplace_equals_dense_laplace(name, x64):
    model, y, X, Z, linkinv, x = _setup(name)
    engine = float(jax.jit(laplace_deviance)(x, glmm_problem(model)))
    dense = float(_dense_laplace(name, y, X, Z, linkinv, x))
    assert engine == pytest.approx(dense, rel=1e-10, abs=1e-9)


@pytest.mark.parametrize("name", [
    "nbinom2", *(pytest.param(n, marks=pytest.mark.slow) for n in ("nbinom1", "gamma_log", "ig_log", "beta"))])
def test_gradient_against_finite_differences(name, x64):
    """The gradient of the engine's objective (through the mode, in θ, β and log d) against central differences."""
    model, y, X, Z, linkinv, x = _setup(name)
    grad = np.asarray(jax.jit(jax.grad(laplace_deviance))(x, glmm_problem(model)))
    step = 1e-5
    fd = [(float(jax.jit(laplace_deviance)(x.at[j].add(step), glmm_problem(model)))
           - float(jax.jit(laplace_deviance)(x.at[j].add(-step), glmm_problem(model)))) / (2 * step)
          for j in range(x.size)]
    np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-5)


def test_nb2_lme4_approximation_equals_dense_fisher_laplace(x64):
    model, y, X, Z, linkinv, x = _setup("nbinom2")
    problem = glmm_problem(model, "lme4")
    engine = float(jax.jit(laplace_deviance)(x, problem))
    dense = float(_dense_laplace("nbinom2", y, X, Z, linkinv, x, fisher_weights=lambda mu, th: mu / (1 + mu / th)))
    assert engine == pytest.approx(dense, rel=1e-10)
    assert abs(engine - float(jax.jit(laplace_deviance)(x, glmm_problem(model)))) > 1e-4  # a different objective


def _scipy_log_density(name: str, y, mu, d):
    if name == "nbinom2":
        return stats.nbinom.logpmf(y, d, d / (d + mu))
    if name in ("gamma_log", "gamma_inverse"):
        return stats.gamma.logpdf(y, 1.0 / d**2, scale=mu * d**2)
    return stats.beta.logpdf(y, mu * d, (1 - mu) * d)


_NUMPY_LINKS = {"nbinom2": np.exp, "gamma_log": np.exp, "beta": lambda e: 1 / (1 + np.exp(-e))}


def _quadrature(name, y, X, x) -> float:
    """−2 log L by scipy.integrate.quad over each group's random effect b ~ N(0, θ²), densities from scipy.stats."""
    theta, beta, d = float(x[0]), np.asarray(x[1:3]), float(np.exp(x[3]))
    y, eta = np.asarray(y), np.asarray(X) @ beta
    linkinv = _NUMPY_LINKS[name]
    total = 0.0
    for k in range(N_GROUPS):
        rows = slice(k * PER_GROUP, (k + 1) * PER_GROUP)  # the frame's groups come in blocks
        yk, eta_k = y[rows], eta[rows]
        shift = -np.sum(_scipy_log_density(name, yk, linkinv(eta_k), d))

        def integrand(b):
            log_p = np.sum(_scipy_log_density(name, yk, linkinv(eta_k + b), d))
            return np.exp(log_p + shift - 0.5 * (b / theta) ** 2) / (theta * np.sqrt(2 * np.pi))

        value, _ = integrate.quad(integrand, -8 * theta, 8 * theta, epsabs=0, epsrel=1e-12, limit=200)
        total += -2 * (np.log(value) - shift)
    return total


@pytest.mark.parametrize("name", [
    "nbinom2", pytest.param("gamma_log", marks=pytest.mark.slow), pytest.param("beta", marks=pytest.mark.slow)])
def test_quadrature_against_numerical_integration(name, x64):
    """25-node adaptive Gauss–Hermite equals the integral; the Laplace value is close to it."""
    model, y, X, Z, linkinv, x = _setup(name)
    problem = glmm_problem(model)
    nodes, weights = (jnp.asarray(a) for a in gauss_hermite(25))
    agq = float(jax.jit(agq_deviance)(x, problem, nodes, weights))
    exact = _quadrature(name, y, X, x)
    assert agq == pytest.approx(exact, rel=1e-8)
    laplace = float(jax.jit(laplace_deviance)(x, problem))
    assert laplace == pytest.approx(exact, abs=0.5)
    one_node = float(jax.jit(agq_deviance)(x, problem, *(jnp.asarray(a) for a in gauss_hermite(1))))
    assert one_node == pytest.approx(laplace, rel=1e-10)
