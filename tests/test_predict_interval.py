"""Prediction standard errors and intervals (fit.predict(interval=..., se_fit=True)) against a dense computation
from V (the textbook BLUP prediction-error variance), a brute-force simulation, the exact Hessian of a GLMM's
penalized log-likelihood, and merTools' simulated predictInterval (reference/predict_interval.R)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from brute_force import dense_z_lambda
from jaxmlm._errors import DataError
from conftest import REFERENCE_DIR

MERTOOLS = json.loads((REFERENCE_DIR / "predict_interval.json").read_text())
_FITS: dict = {}


def _fit(name):
    if name not in _FITS:
        if name == "sleepstudy":
            _FITS[name] = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        elif name == "penicillin":
            _FITS[name] = jm.lmer("diameter ~ 1 + (1 | plate) + (1 | sample)", jm.datasets.load("Penicillin"))
        else:
            _FITS[name] = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                   jm.datasets.load("cbpp"), family="binomial")
    return _FITS[name]


def _dense_prediction_error(fit):
    """Var(η̂ − η) per data row from V = σ²(MMᵀ + W⁻¹), M = ZΛ, u ~ N(0, σ²I): Var β̂ = Φ = (XᵀV⁻¹X)⁻¹,
    PEV(u) = G − GMᵀPMG, Cov(β̂, û − u) = −ΦXᵀV⁻¹MG (G = σ²I, P = V⁻¹ − V⁻¹XΦXᵀV⁻¹)."""
    d = fit.design
    M, X, s2 = dense_z_lambda(d, fit.theta), d.X, fit.sigma**2
    Vi = np.linalg.inv(s2 * (M @ M.T + np.diag(1.0 / d.weights)))
    Phi = np.linalg.inv(X.T @ Vi @ X)
    P = Vi - Vi @ X @ Phi @ X.T @ Vi
    G = s2 * np.eye(M.shape[1])
    pev_u = G - G @ M.T @ P @ M @ G
    cross = -Phi @ X.T @ Vi @ M @ G
    return (np.einsum("ij,jk,ik->i", X, Phi, X) + np.einsum("ij,jk,ik->i", M, pev_u, M)
            + 2.0 * np.einsum("ij,jk,ik->i", X, cross, M))


@pytest.mark.parametrize("name", ["sleepstudy", "penicillin"])
def test_conditional_se_matches_the_dense_prediction_error_variance(name):
    """Random slopes (sleepstudy) and two crossed terms (Penicillin), where the covariance between the terms'
    conditional modes matters."""
    fit = _fit(name)
    table = fit.predict(se_fit=True)
    assert list(table.columns) == ["fit", "se", "lower", "upper"]
    np.testing.assert_allclose(table["fit"], fit.fitted(), rtol=1e-12)
    np.testing.assert_allclose(table["se"] ** 2, _dense_prediction_error(fit), rtol=1e-6)
    pred = fit.predict(interval="prediction")
    np.testing.assert_allclose(pred["se"] ** 2, table["se"] ** 2 + fit.sigma**2, rtol=1e-10)
    np.testing.assert_allclose(pred["upper"] - pred["fit"], 1.959963984540054 * pred["se"], rtol=1e-10)


def test_population_level_se_is_from_vcov_beta():
    fit = _fit("sleepstudy")
    new = jm.datasets.load("sleepstudy").iloc[[0, 5, 9]]
    table = fit.predict(new, re_form="~0", interval="confidence", level=0.9)
    X = np.c_[np.ones(3), new["Days"].to_numpy()]
    np.testing.assert_allclose(table["se"] ** 2, np.einsum("ij,jk,ik->i", X, fit.vcov.to_numpy(), X), rtol=1e-10)
    np.testing.assert_allclose(table["lower"], table["fit"] - 1.6448536269514722 * table["se"], rtol=1e-10)


def test_new_levels_add_their_prior_variance():
    """A subject not in the data: its random effects are unknown, so the prediction's variance is the
    population-level one plus zᵀΣz."""
    fit = _fit("sleepstudy")
    new = jm.datasets.load("sleepstudy").iloc[[0, 9]].assign(Subject="new subject")
    cond = fit.predict(new, allow_new_levels=True, se_fit=True)
    pop = fit.predict(new, re_form="~0", se_fit=True)
    z = np.c_[np.ones(2), new["Days"].to_numpy()]
    Sigma = fit.varcorr()
    cov = np.array([[Sigma.vcov[0], Sigma.vcov[2]], [Sigma.vcov[2], Sigma.vcov[1]]])
    np.testing.assert_allclose(cond["se"] ** 2, pop["se"] ** 2 + np.einsum("ij,jk,ik->i", z, cov, z), rtol=1e-8)


def test_conditional_se_matches_a_simulation():
    """Responses simulated at the fitted θ, σ and β: the spread of (η̂ − η) over 20000 simulations, with β̂ by
    generalized least squares and û the conditional modes, against the reported se (Monte Carlo error ~1%)."""
    fit = _fit("sleepstudy")
    d = fit.design
    rng = np.random.default_rng(3)
    M, X, s = dense_z_lambda(d, fit.theta), d.X, fit.sigma
    u = s * rng.standard_normal((M.shape[1], 20000))
    Y = (X @ fit._beta)[:, None] + M @ u + s * rng.standard_normal((d.n, 20000))
    Vi = np.linalg.inv(M @ M.T + np.eye(d.n))  # σ² cancels in GLS and the BLUP
    beta_hat = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ Y)
    u_hat = M.T @ Vi @ (Y - X @ beta_hat)
    errors = X @ beta_hat + M @ u_hat - (X @ fit._beta[:, None] + M @ u)
    rows = [0, 14, 41, 77, 123, 179]
    se = fit.predict(se_fit=True)["se"].to_numpy()[rows]
    np.testing.assert_allclose(errors[rows].std(axis=1), se, rtol=0.04)


def test_glmm_se_is_from_the_hessian_of_the_penalized_likelihood():
    """cbpp: the joint curvature of −log p(y | u, β) + ‖u‖²/2 at the conditional modes (autodiff, dense), link
    scale; the response scale maps the bounds through the inverse logit and the se by dμ/dη."""
    fit = _fit("cbpp")
    d = fit.design
    M = dense_z_lambda(d, fit.theta)
    u_hat = fit._b[0][:, 0] / fit.theta[0]

    def penalized(params):
        eta = M @ params[: M.shape[1]] + d.X @ params[M.shape[1]:]
        return -jnp.sum(d.weights * (d.y * eta - jnp.logaddexp(0.0, eta))) + 0.5 * params[: M.shape[1]] @ params[: M.shape[1]]

    with jax.enable_x64(True):
        H = np.asarray(jax.hessian(penalized)(jnp.asarray(np.r_[u_hat, fit._beta])))
    A = np.c_[M, d.X]
    link = fit.predict(type="link", se_fit=True)
    np.testing.assert_allclose(link["se"] ** 2, np.einsum("ij,ij->i", A, np.linalg.solve(H, A.T).T), rtol=1e-5)
    response = fit.predict(interval="confidence")
    expit = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(response["lower"], expit(link["lower"]), rtol=1e-10)
    np.testing.assert_allclose(response["upper"], expit(link["upper"]), rtol=1e-10)
    mu = expit(link["fit"])
    np.testing.assert_allclose(response["se"], link["se"] * mu * (1 - mu), rtol=1e-10)


def test_against_mertools_predict_interval():
    """merTools draws β from vcov(β) and b from its conditional variance independently, so its intervals are
    those of vcov(β) plus condvar: that sum agrees with merTools' simulation (20000 draws) within 3%; the joint
    covariance, which keeps the negative covariance of β̂ and the conditional modes, gives narrower intervals."""
    fit = _fit("sleepstudy")
    new = jm.datasets.load("sleepstudy").iloc[MERTOOLS["rows"]]
    population = fit.predict(new, re_form="~0", se_fit=True)["se"].to_numpy()
    ranef = fit.ranef()["Subject"]
    blocks = ranef.attrs["condvar"][ranef.index.get_indexer(new["Subject"].astype(str))]
    z = np.c_[np.ones(len(new)), new["Days"].to_numpy()]
    independent = population**2 + np.einsum("ij,ijk,ik->i", z, blocks, z)
    for kind, added in (("confidence", 0.0), ("prediction", fit.sigma**2)):
        ref = MERTOOLS[kind]
        table = fit.predict(new, interval=kind)
        half_ref = (np.asarray(ref["upr"]) - np.asarray(ref["lwr"])) / 2
        np.testing.assert_allclose(table["fit"], ref["fit"], atol=0.05 * half_ref.min())
        np.testing.assert_allclose(1.959963984540054 * np.sqrt(independent + added), half_ref, rtol=0.03)
        assert np.all(table["se"] ** 2 <= independent + added)


def test_bad_interval_arguments():
    fit = _fit("sleepstudy")
    with pytest.raises(ValueError, match="interval must be"):
        fit.predict(interval="credible")
    with pytest.raises(ValueError, match="level must be"):
        fit.predict(interval="confidence", level=95)
    with pytest.raises(DataError, match="residual variance"):
        _fit("cbpp").predict(interval="prediction")
