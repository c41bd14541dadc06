"""cs() and ar1() covariance structures: glmmTMB 1.1.5's fits (tests/reference/covstruct.R, .json) and a dense
brute-force likelihood with Σ built from the structure's parameters directly.

glmmTMB fits by ML; its standard errors of β come from the joint Hessian in (β, ψ, log σ), while lme4 (and
jaxmlm, for every linear mixed model) reports σ² (Xᵀ V⁻¹ X)⁻¹ at the estimates. For linear models both are checked
against the dense likelihood here, and glmmTMB's against the joint form; for the Poisson fit both engines take
the Laplace Hessian in (ψ, β) and are compared directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core._covariance import theta_to_matrices
from jaxmlm.core._structures import Structure, psi_to_theta

REF_DIR = Path(__file__).parent / "reference"
REF = json.loads((REF_DIR / "covstruct.json").read_text())


def _cs_data() -> pd.DataFrame:
    d = pd.read_csv(REF_DIR / "covstruct_cs.csv")
    d["f"] = pd.Categorical(d["f"], ["a", "b", "c"])
    return d


def _ar1_data() -> pd.DataFrame:
    d = pd.read_csv(REF_DIR / "covstruct_ar1.csv")
    levels = sorted(d["time"].unique())
    d["ftime"] = pd.Categorical(d["time"], levels)
    return d


@pytest.fixture(scope="module")
def cs_fit():
    return jm.Model(REF["cs_gaussian"]["formula"], _cs_data()).fit(method="ml")


@pytest.fixture(scope="module")
def ar1_fit():
    return jm.Model(REF["ar1_gaussian"]["formula"], _ar1_data()).fit(method="ml")


def _check_against_glmmtmb(fit, ref, se=True):
    assert fit.converged
    assert -2 * fit.loglik <= -2 * ref["loglik"] + 2e-6 * abs(ref["loglik"])  # no worse than glmmTMB's optimum
    assert fit.loglik == pytest.approx(ref["loglik"], rel=1e-6)
    assert fit.n_params == ref["df"]
    assert fit.aic == pytest.approx(ref["aic"], rel=1e-6)
    assert fit.bic == pytest.approx(ref["bic"], rel=1e-6)
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-4, atol=1e-6)
    if se:
        np.testing.assert_allclose(np.sqrt(np.diag(fit.vcov)), list(ref["se"].values()), rtol=1e-3)
    (structure,) = fit.extra["structures"]
    np.testing.assert_allclose(structure["sd"], ref["sd"], rtol=1e-3)
    assert structure["rho"] == pytest.approx(np.asarray(ref["cor"])[1, 0], abs=1e-3)
    # VarCorr from Σ = σ² TTᵀ shows the same sds and correlations (every off-diagonal the structure's)
    vc = fit.varcorr()
    term = vc[vc["grp"] != "Residual"]
    q = len(ref["sd"])
    np.testing.assert_allclose(term["sdcor"].to_numpy()[:q], ref["sd"], rtol=1e-3)
    R = np.asarray(ref["cor"])
    np.testing.assert_allclose(term["sdcor"].to_numpy()[q:], [R[r, c] for c in range(q) for r in range(c + 1, q)],
                               atol=1e-3)
    if ref["sigma"] is not None:
        assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)


def test_cs_gaussian_matches_glmmtmb(cs_fit):
    _check_against_glmmtmb(cs_fit, REF["cs_gaussian"], se=False)
    # glmmTMB's own parameters: log sds on the response's scale, then its correlation transform
    psi = cs_fit.extra["psi"]
    ref_theta = np.asarray(REF["cs_gaussian"]["theta"])
    np.testing.assert_allclose(psi[:3] + np.log(cs_fit.sigma), ref_theta[:3], atol=1e-3)
    assert psi[3] == pytest.approx(ref_theta[3], abs=2e-3)


@pytest.mark.slow  # one more program (the REML criterion's) to compile
def test_cs_gaussian_reml_matches_glmmtmb():
    fit = jm.Model(REF["cs_gaussian_reml"]["formula"], _cs_data()).fit(method="reml")
    _check_against_glmmtmb(fit, REF["cs_gaussian_reml"], se=False)  # glmmTMB's REML logLik is lme4's criterion


def test_ar1_gaussian_matches_glmmtmb(ar1_fit):
    _check_against_glmmtmb(ar1_fit, REF["ar1_gaussian"], se=False)
    ref_theta = np.asarray(REF["ar1_gaussian"]["theta"])
    psi = ar1_fit.extra["psi"]
    assert psi[0] + np.log(ar1_fit.sigma) == pytest.approx(ref_theta[0], abs=1e-3)
    assert psi[1] == pytest.approx(ref_theta[1], abs=2e-3)


@pytest.mark.slow  # the Laplace program for a 3 × 3 term compiles for a while
def test_cs_poisson_matches_glmmtmb():
    fit = jm.Model(REF["cs_poisson"]["formula"], _cs_data(), family="poisson").fit()
    _check_against_glmmtmb(fit, REF["cs_poisson"])
    assert fit.theta.shape == (6,)  # θ in lme4's layout, the full 3 × 3 factor


# ------------------------------------------------------------------ dense brute force, Σ from ψ directly
def _sigma_rel(kind: str, psi: np.ndarray, q: int) -> np.ndarray:
    """Σ/σ² written from the definitions (glmmTMB's transforms), not through the Cholesky map."""
    if kind == "cs":
        s = np.exp(psi[:q])
        a = 1.0 / (q - 1)
        rho = 1.0 / (1.0 + np.exp(-psi[q])) * (1 + a) - a
        R = np.full((q, q), rho) + (1 - rho) * np.eye(q)
        return np.outer(s, s) * R
    s, phi = np.exp(psi[0]), psi[1] / np.sqrt(1 + psi[1] ** 2)
    lags = np.abs(np.subtract.outer(np.arange(q), np.arange(q)))
    return s**2 * phi**lags


def _dense_z(term, n):
    Z = np.zeros((n, term.n_levels * term.q))
    for c in range(term.q):
        Z[np.arange(n), term.codes * term.q + c] = term.z[:, c]
    return Z


def _dense_ml(design, Sigma_rel, beta, sigma):
    """−2 log-likelihood of y ~ N(Xβ, σ²(Z (I ⊗ Σ_rel) Zᵀ + I)), in JAX (for the joint Hessian)."""
    (term,) = design.terms
    Z = jnp.asarray(_dense_z(term, design.n))
    V = sigma**2 * (Z @ jnp.kron(jnp.eye(term.n_levels), Sigma_rel) @ Z.T + jnp.eye(design.n))
    r = jnp.asarray(design.y) - jnp.asarray(design.X) @ beta
    _, logdet = jnp.linalg.slogdet(V)
    return design.n * jnp.log(2 * jnp.pi) + logdet + r @ jnp.linalg.solve(V, r)


@pytest.mark.parametrize("which", ["cs", "ar1"])
def test_objective_equals_dense_likelihood(which, cs_fit, ar1_fit):
    fit = cs_fit if which == "cs" else ar1_fit
    model, design = fit.model, fit.model.design
    q = design.terms[0].q
    rng = np.random.default_rng(1)
    problem = model.problem("ml").inner  # the θ-space objective the structured problem composes
    for psi in [fit.extra["psi"], fit.extra["psi"] + rng.normal(scale=0.3, size=fit.extra["psi"].size)]:
        Sigma_rel = _sigma_rel(which, psi, q)
        with jax.enable_x64(True):
            theta = np.asarray(psi_to_theta(jnp.asarray(psi), model.structures))
            # the engine's profiled deviance at θ(ψ) equals the dense likelihood at the β̂, σ̂ it profiles out
            est = problem.unpack(jnp.asarray(theta))
            dense = float(_dense_ml(design, jnp.asarray(Sigma_rel), jnp.asarray(est["beta"]), float(est["sigma"])))
            engine = float(problem.objective(jnp.asarray(theta)))
        assert engine == pytest.approx(dense, rel=1e-10)
        # and θ(ψ) is Σ_rel's Cholesky factor in lme4's layout
        L = np.linalg.cholesky(Sigma_rel)
        np.testing.assert_allclose(theta, [L[r, c] for c in range(q) for r in range(c, q)], atol=1e-10)


@pytest.mark.parametrize("which", ["cs", "ar1"])
def test_standard_errors_lme4_form_and_glmmtmb_joint_form(which, cs_fit, ar1_fit):
    """jaxmlm's SEs are lme4's σ²(XᵀV⁻¹X)⁻¹; glmmTMB's the inverse joint Hessian of the dense likelihood in
    (β, ψ, log σ) at the same estimates."""
    fit = cs_fit if which == "cs" else ar1_fit
    ref = REF[f"{which}_gaussian"]
    design = fit.model.design
    q = design.terms[0].q
    beta, psi, sigma = fit.fixef.to_numpy(), fit.extra["psi"], fit.sigma
    Sigma_rel = _sigma_rel(which, psi, q)
    Z = _dense_z(design.terms[0], design.n)
    V = Z @ np.kron(np.eye(design.terms[0].n_levels), Sigma_rel) @ Z.T + np.eye(design.n)
    conditional = sigma**2 * np.linalg.inv(design.X.T @ np.linalg.solve(V, design.X))
    np.testing.assert_allclose(fit.vcov, conditional, rtol=1e-6)

    p = beta.size

    def deviance(x):
        return _dense_ml(design, _sigma_rel_jax(which, x[p:-1], q), x[:p], jnp.exp(x[-1]))

    with jax.enable_x64(True):
        x = jnp.concatenate([jnp.asarray(beta), jnp.asarray(psi), jnp.asarray([np.log(sigma)])])
        H = np.asarray(jax.jit(jax.hessian(deviance))(x))
    joint = 2.0 * np.linalg.inv(H)[:p, :p]
    np.testing.assert_allclose(np.sqrt(np.diag(joint)), list(ref["se"].values()), rtol=1e-3)


def _sigma_rel_jax(kind, psi, q):
    if kind == "cs":
        s = jnp.exp(psi[:q])
        a = 1.0 / (q - 1)
        rho = jax.nn.sigmoid(psi[q]) * (1 + a) - a
        return jnp.outer(s, s) * ((1 - rho) * jnp.eye(q) + rho)
    s, phi = jnp.exp(psi[0]), psi[1] / jnp.sqrt(1 + psi[1] ** 2)
    lags = np.abs(np.subtract.outer(np.arange(q), np.arange(q)))
    return s**2 * phi ** jnp.asarray(lags)


# ------------------------------------------------------------------ the maps and bad input
@pytest.mark.parametrize("kind, q", [("cs", 2), ("cs", 4), ("ar1", 5), ("us", 3)])
def test_structure_maps_are_valid_factors(kind, q):
    s = Structure(kind, q)
    rng = np.random.default_rng(q)
    psi = rng.normal(size=s.n_params)
    with jax.enable_x64(True):
        theta = np.asarray(s.psi_to_theta(jnp.asarray(psi)))
        grad = np.asarray(jax.grad(lambda x: jnp.sum(s.psi_to_theta(x) ** 2))(jnp.asarray(psi)))
    assert theta.shape == (q * (q + 1) // 2,)
    assert np.all(np.isfinite(grad))
    assert s.start().shape == s.lower().shape == (s.n_params,)
    if kind != "us":
        T = theta_to_matrices(theta, [q])[0]
        np.testing.assert_allclose(T @ T.T, _sigma_rel(kind, psi, q), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("formula, words", [
    ("y ~ x + ar1(0 + x | g)", ["ar1()", "'x'", "needs a factor"]),
    ("y ~ x + ar1(0 + f + x | g)", ["ar1()", "one factor"]),
    ("y ~ x + ar1(f | g)", ["ar1()", "intercept", "ar1(0 + f | g)"]),
])
def test_bad_ar1_terms_are_refused_before_compiling(formula, words):
    with pytest.raises(jm.FormulaError) as info:
        jm.Model(formula, _cs_data())
    for word in words:
        assert word in str(info.value), (word, str(info.value))


def test_paths_not_offered_are_refused_naming_what_to_use(cs_fit):
    """Kenward–Roger's df, NUTS and the iterative solver would leave the structure: each says so, and what to use
    instead, rather than answering for an unstructured model; Wald intervals and summary work."""
    model = cs_fit.model
    for call, what, instead in [
            (lambda: cs_fit.t_tests("kenward-roger"), "t_tests(ddf='kenward-roger')", "ddf='satterthwaite'"),
            (lambda: model.sample(chains=1, draws=2, warmup=2), "Model.sample()", "bootstrap()"),
            (lambda: model.fit(method="ml", solver="iterative"), "solver='iterative'", "solver='direct'")]:
        with pytest.raises(jm.JaxmlmError, match="cs\\(\\) terms") as info:
            call()
        assert what in str(info.value) and instead in str(info.value), str(info.value)
    wald = cs_fit.confint(method="wald")
    np.testing.assert_allclose(wald.loc["x"].to_numpy(), cs_fit.fixef["x"] + np.array([-1, 1]) * 1.959964
                               * np.sqrt(np.asarray(cs_fit.vcov)[1, 1]), rtol=1e-5)
    assert "Random effects" in str(cs_fit.summary())


@pytest.mark.slow  # one more fit (the unstructured model's programs)
def test_anova_against_the_unstructured_model_counts_psi(cs_fit):
    """cs is nested in us: the likelihood-ratio test has 6 − 4 = 2 degrees of freedom and us fits at least as well."""
    us = jm.Model("y ~ x + (0 + f | g)", _cs_data()).fit(method="ml")
    table = cs_fit.anova(us)
    assert list(table["npar"]) == [7, 9]
    assert table["Df"].iloc[1] == 2
    assert us.loglik >= cs_fit.loglik - 1e-8
    assert table["Chisq"].iloc[1] == pytest.approx(2 * (us.loglik - cs_fit.loglik), abs=1e-8)
