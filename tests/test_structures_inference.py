"""Inference for models with cs() / ar1() terms: the parametric bootstrap (each refit equal to its single fit) and
Satterthwaite's degrees of freedom (against a finite-difference recomputation on the dense likelihood; lmerTest
has no cs or ar1)."""

from __future__ import annotations

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.inference._confint import parameter_names, variance_parameters
from tests.test_covariance_structures import _ar1_data, _dense_z, _sigma_rel


@pytest.fixture(scope="module")
def ar1_ml():
    return jm.Model("y ~ time + ar1(0 + ftime | g)", _ar1_data()).fit(method="ml")


def test_bootstrap_refits_equal_single_fits(ar1_ml):
    fit, n, seed = ar1_ml, 4, 11
    boot = fit.bootstrap(n, seed=seed)
    assert list(boot.draws.columns) == parameter_names(fit.model)
    assert boot.converged.all()
    assert boot.batch.psi.shape == (n, 2)
    sims = fit._simulate_draws(np.random.default_rng(seed), n)  # the same draws: one block, one generator
    data = _ar1_data()
    for j in range(n):
        single = jm.Model("y_sim ~ time + ar1(0 + ftime | g)", data.assign(y_sim=sims[:, j])).fit(method="ml")
        np.testing.assert_allclose(boot.batch.psi[j], single.extra["psi"], atol=2e-4)
        expected = np.r_[variance_parameters(single.theta, single.sigma, fit.model.qs)[0], single.fixef.to_numpy()]
        np.testing.assert_allclose(boot.draws.iloc[j].to_numpy(), expected, rtol=2e-4, atol=1e-5)
    # the estimate row: the fit's own sds and correlations σ² T(ψ̂) T(ψ̂)ᵀ (ar1: cor at lag k is φ^k)
    (term,) = fit.extra["structures"]
    est = boot.estimate
    assert est["sd_ftime1|g"] == pytest.approx(term["sd"][0], rel=1e-8)
    assert est["cor_ftime3.ftime1|g"] == pytest.approx(term["rho"] ** 2, rel=1e-8)
    ci = fit.confint(method="boot", nsim=n, seed=seed)
    np.testing.assert_allclose(ci.to_numpy(), boot.confint().to_numpy())


def _dense_pieces(design, which, varpar, reml):
    """The deviance (ML or REML criterion, β profiled out) and vcov(β) at (ψ, σ), written densely in NumPy."""
    psi, sigma = varpar[:-1], varpar[-1]
    term = design.terms[0]
    Z = _dense_z(term, design.n)
    V = sigma**2 * (Z @ np.kron(np.eye(term.n_levels), _sigma_rel(which, psi, term.q)) @ Z.T + np.eye(design.n))
    X, y = design.X, design.y
    Vi_X = np.linalg.solve(V, X)
    info = X.T @ Vi_X
    beta = np.linalg.solve(info, Vi_X.T @ y)
    r = y - X @ beta
    dev = np.linalg.slogdet(V)[1] + r @ np.linalg.solve(V, r)
    if reml:
        dev += np.linalg.slogdet(info)[1]
    return dev, np.linalg.inv(info)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_satterthwaite_df_against_dense_finite_differences(ar1_ml, method):
    fit = ar1_ml if method == "ml" else ar1_ml.model.fit(method="reml")
    table = fit.t_tests()
    design = fit.model.design
    x = np.r_[fit.extra["psi"], fit.sigma]
    h = 1e-4
    k = x.size
    E = np.eye(k) * h
    f = lambda v: _dense_pieces(design, "ar1", v, fit.reml)[0]  # noqa: E731
    H = np.array([[(f(x + E[i] + E[j]) - f(x + E[i] - E[j]) - f(x - E[i] + E[j]) + f(x - E[i] - E[j])) / (4 * h * h)
                   for j in range(k)] for i in range(k)])
    J = np.stack([(_dense_pieces(design, "ar1", x + E[i], fit.reml)[1]
                   - _dense_pieces(design, "ar1", x - E[i], fit.reml)[1]) / (2 * h) for i in range(k)], axis=-1)
    A = 2.0 * np.linalg.inv(H)
    vcov = _dense_pieces(design, "ar1", x, fit.reml)[1]
    np.testing.assert_allclose(fit.vcov, vcov, rtol=1e-6)
    for i, name in enumerate(design.x_names):
        g = J[i, i]
        df = 2.0 * vcov[i, i] ** 2 / (g @ A @ g)
        assert table.loc[name, "df"] == pytest.approx(df, rel=1e-4)
    assert list(table.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]


def test_type3_anova_uses_the_structured_df_and_kenward_roger_refuses(ar1_ml):
    reml = ar1_ml.model.fit(method="reml")
    table = reml.anova(type=3)
    assert table.loc["time", "DenDF"] == pytest.approx(reml.t_tests().loc["time", "df"], rel=1e-8)
    for call in (lambda: reml.anova(type=3, ddf="kenward-roger"), lambda: reml.t_tests("kenward-roger")):
        with pytest.raises(jm.JaxmlmError, match="ddf='satterthwaite'"):
            call()
