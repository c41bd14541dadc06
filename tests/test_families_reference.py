"""Families with a dispersion parameter against R (reference/families_reference.R): glmmTMB 1.1.5 for the proper
Laplace likelihood (NB2, NB1, Gamma, beta), lme4 1.1-31's glmer.nb for approximation="lme4"."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR

_FITS: dict = {}


@pytest.fixture(scope="module")
def reference():
    return json.loads((REFERENCE_DIR / "families_reference.json").read_text())


def simulated() -> pd.DataFrame:
    return pd.read_csv(REFERENCE_DIR / "families_sim.csv.gz")


def _data(name):
    return jm.datasets.load("grouseticks") if name == "grouseticks" else simulated()


def _fit(case, ref, family, **kwargs):
    if case not in _FITS:
        with warnings.catch_warnings():
            warnings.simplefilter("error", jm.ConvergenceWarning)
            _FITS[case] = jm.glmer(ref["formula"], _data(ref["dataset"]), family=family, **kwargs)
    return _FITS[case]


def check_against_r(fit, ref, *, loglik_rtol=1e-6):
    """The reference README's tolerances: log-likelihood no worse by 1e-6 relative (better allowed), fixef 1e-4,
    se 1e-3, standard deviations and the dispersion (and its SE) 1e-3 relative."""
    assert fit.converged
    assert fit.loglik >= ref["loglik"] - loglik_rtol * abs(ref["loglik"]), (fit.loglik, ref["loglik"])
    assert fit.loglik <= ref["loglik"] + 1e-4 * abs(ref["loglik"]), "far above R's optimum: a different model?"
    for name, value in ref["fixef"].items():
        assert abs(fit.fixef[name] - value) <= 1e-4 * max(abs(value), 1e-2), (name, fit.fixef[name], value)
    for name, value in ref["se"].items():
        assert abs(fit.se[name] - value) <= 1e-3 * abs(value), (name, fit.se[name], value)
    np.testing.assert_allclose(fit.dispersion, ref["dispersion"], rtol=1e-3)
    if ref.get("dispersion_se") is not None:
        np.testing.assert_allclose(fit.dispersion_se, ref["dispersion_se"], rtol=1e-3)


@pytest.mark.parametrize("case, family", [
    ("grouse_nbinom2_tmb", "nbinom2"),
    pytest.param("grouse_nbinom1_tmb", "nbinom1", marks=pytest.mark.slow),
    pytest.param("sim_gamma_log_tmb", jm.families.Gamma(link="log"), marks=pytest.mark.slow),
    pytest.param("sim_beta_tmb", "beta", marks=pytest.mark.slow),
])
def test_proper_laplace_against_glmmtmb(case, family, reference):
    ref = reference[case]
    fit = _fit(case, ref, family)
    check_against_r(fit, ref)
    vc = fit.varcorr()
    for grp, sds in ref["re_sd"].items():
        got = vc[(vc["grp"] == grp) & vc["var2"].isna()]["sdcor"].to_numpy()
        np.testing.assert_allclose(got, np.atleast_1d(sds), rtol=1e-3)
    assert fit.aic == pytest.approx(ref["aic"], rel=1e-6, abs=1e-4)


@pytest.mark.slow
def test_glmer_nb_lme4_approximation(reference):
    """approximation="lme4" is glmer.nb's objective (Fisher weights in the log-determinant); lme4 reaches θ by
    optimize() on log θ (its tol 5e-5), so the dispersion is compared at 1e-4 relative."""
    ref = reference["grouse_nbinom2_lme4"]
    fit = jm.glmer_nb(ref["formula"], jm.datasets.load("grouseticks"), approximation="lme4")
    check_against_r(fit, dict(ref, dispersion_se=None))
    np.testing.assert_allclose(fit.theta, ref["theta"], atol=1e-3)
    np.testing.assert_allclose(fit.dispersion, ref["dispersion"], rtol=1e-4)
    # the exact Laplace (glmmTMB's) and lme4's differ at their optima as the issue measured (0.02-0.3)
    proper = _fit("grouse_nbinom2_tmb", reference["grouse_nbinom2_tmb"], "nbinom2")
    assert 0.02 < fit.loglik - proper.loglik < 0.3


def test_glmer_nb_is_nbinom2(reference):
    """jm.glmer_nb fits the family 'nbinom2' (glmmTMB's numbers by default) and reports θ as lme4 does."""
    ref = reference["grouse_nbinom2_tmb"]
    fit = jm.glmer_nb(ref["formula"], jm.datasets.load("grouseticks"))
    np.testing.assert_allclose(fit.loglik, _fit("grouse_nbinom2_tmb", ref, "nbinom2").loglik, rtol=1e-9)
    assert fit.family.name == "nbinom2" and fit.family.dispersion == pytest.approx(fit.dispersion)
    tidy = fit.tidy().set_index("term")
    assert tidy.loc["theta", "estimate"] == pytest.approx(ref["dispersion"], rel=1e-3)
    assert tidy.loc["theta", "std.error"] == pytest.approx(ref["dispersion_se"], rel=1e-3)
    assert "Dispersion parameter for nbinom2 family (theta): 3.306" in str(fit.summary())


@pytest.mark.parametrize("case, family", [
    pytest.param("sim_gamma_log_lme4", jm.families.Gamma(link="log"), marks=pytest.mark.slow),
    pytest.param("sim_ig_log_lme4", jm.families.inverse_gaussian(link="log"), marks=pytest.mark.slow),
])
def test_gamma_inverse_gaussian_lme4_approximation(case, family, reference):
    """approximation="lme4" is glmer's own objective for these families (the modes and Fisher log-determinant at
    σ = 1, R's family AIC with σ² = deviance/n): lme4's logLik, fixef, SEs, θ and sigma(fit), and its VarCorr
    (standard deviations θσ and a Residual row), AIC counting σ."""
    ref = reference[case]
    fit = jm.glmer(ref["formula"], simulated(), family=family, approximation="lme4")
    check_against_r(fit, dict(ref, dispersion=ref["sigma"], dispersion_se=None))
    np.testing.assert_allclose(fit.theta, np.atleast_1d(ref["theta"]), atol=1e-3)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-4)
    assert fit.aic == pytest.approx(ref["aic"], rel=1e-6)
    vc = fit.varcorr()
    assert list(vc["grp"]) == ["g", "Residual"]
    assert vc["sdcor"].iloc[0] == pytest.approx(ref["theta"] * ref["sigma"], rel=1e-3)


@pytest.mark.slow
def test_gamma_lme4_loglik_is_not_the_likelihood(reference):
    """lme4's Gamma glmer ignores the dispersion inside its Laplace objective and plugs deviance/n into logLik
    afterwards: its logLik lies above the proper Laplace maximum (glmmTMB's, which we reproduce)."""
    lme4, tmb = reference["sim_gamma_log_lme4"], reference["sim_gamma_log_tmb"]
    fit = _fit("sim_gamma_log_tmb", tmb, jm.families.Gamma(link="log"))
    assert lme4["loglik"] - fit.loglik > 5.0
    # both estimate the same fixed effects to within a standard error
    for name, value in lme4["fixef"].items():
        assert abs(fit.fixef[name] - value) < fit.se[name]
