"""confint (Wald, profile, bootstrap) against lme4's intervals; the bootstrap's draws against single refits."""

import json
import warnings

import numpy as np
import pytest
from scipy import stats

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm.inference._confint import interval_columns

FORMULA = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def fits():
    data = jm.datasets.load("sleepstudy")
    return data, jm.lmer(FORMULA, data, reml=True), jm.lmer(FORMULA, data, reml=False)


def _compare(frame, ref, rtol):
    assert list(frame.index) == ref["rows"]
    assert list(frame.columns) == ["2.5 %", "97.5 %"]
    for col, key in zip(frame.columns, ("lower", "upper")):
        want = np.array([np.nan if v is None else v for v in ref[key]], dtype=float)
        got = frame[col].to_numpy()
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        ok = ~np.isnan(want)
        np.testing.assert_allclose(got[ok], want[ok], rtol=rtol)


def test_wald_intervals(fits, lme4_confint, lme4_reference):
    _, reml, _ = fits
    ref = lme4_confint["sleepstudy_reml_wald"]
    # our optimum differs from lme4's in the 7th digit; the interval itself is β ± z·se exactly
    _compare(reml.confint("wald"), ref, rtol=1e-6)
    z = stats.norm.ppf(0.975)
    pub = lme4_reference["sleepstudy_reml"]
    for j, name in enumerate(["(Intercept)", "Days"]):
        assert pub["fixef"][name] - z * pub["se"][name] == pytest.approx(ref["lower"][4 + j], rel=1e-12)
    w = reml.confint("wald", level=0.9)
    assert list(w.columns) == ["5 %", "95 %"]
    np.testing.assert_allclose(w.iloc[4:, 1] - reml.fixef, stats.norm.ppf(0.95) * reml.se, rtol=1e-12)


def test_profile_intervals_match_lme4(fits, lme4_confint):
    _, reml, ml = fits
    _compare(ml.confint("profile"), lme4_confint["sleepstudy_ml_profile"], rtol=1e-3)
    # lme4 profiles REML fits on the ML deviance as well
    _compare(reml.confint(parm="theta_"), dict(lme4_confint["sleepstudy_reml_profile"], rows=None) | {
        "rows": lme4_confint["sleepstudy_reml_profile"]["rows"][:4],
        "lower": lme4_confint["sleepstudy_reml_profile"]["lower"][:4],
        "upper": lme4_confint["sleepstudy_reml_profile"]["upper"][:4]}, rtol=1e-3)


def test_bootstrap_draws_are_refits(fits):
    data, ml, _ = fits  # the REML fit: the batch program the batch tests compile too
    boot = ml.bootstrap(8, seed=11, chunk_size=8)
    assert list(boot.draws.columns) == list(ml.confint("wald").index)
    assert boot.draws.shape == (8, 6) and boot.converged.all()
    y = ml.simulate(8, seed=11).iloc[:, 2].to_numpy()
    frame = data.copy()
    frame["Reaction"] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = jm.lmer(FORMULA, frame, reml=True)
    row = boot.draws.iloc[2]
    assert row["sigma"] == pytest.approx(refit.sigma, rel=1e-5)
    np.testing.assert_allclose(row[["(Intercept)", "Days"]], refit.fixef, rtol=1e-6)
    vc = refit.varcorr()
    np.testing.assert_allclose(row.iloc[:3], vc["sdcor"].to_numpy()[[0, 2, 1]], rtol=1e-4, atol=1e-4)
    ci = boot.confint(0.8)
    assert list(ci.columns) == ["10 %", "90 %"]
    np.testing.assert_allclose(ci["10 %"], boot.draws.quantile(0.1), rtol=1e-12)
    assert (ci["10 %"] <= ci["90 %"]).all()


@pytest.mark.parametrize("case", ["cbpp_laplace", "cbpp_agq9", "grouseticks_poisson"])
def test_glmm_profile_intervals_match_lme4(case):
    """reference/confint_glmm.R: lme4's default confint of a glmer fit (rows in the same order: variance
    parameters in θ's order, then the fixed effects; lme4 names them .sig01, ...). lme4 interpolates its profile
    with splines (~1e-4 relative); a variance whose profile never rises enough is bounded by 0, as lme4's."""
    ref = json.loads((REFERENCE_DIR / "lme4_confint_glmm.json").read_text())[case]
    fit = jm.glmer(ref["formula"], jm.datasets.load(ref["dataset"]), family=ref["family"], nagq=ref["nagq"])
    ci = fit.confint()
    assert len(ci) == len(ref["rows"]) and list(ci.index[-len(fit.fixef):]) == ref["rows"][-len(fit.fixef):]
    np.testing.assert_allclose(ci.iloc[:, 0], ref["lower"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ci.iloc[:, 1], ref["upper"], rtol=1e-3, atol=1e-4)


def test_glmm_bootstrap_draws_are_refits(cbpp_fit):
    """A binomial cbind() model: each sample (proportions on the model's trials) refitted in the batch as a single
    glmer fit of the simulated counts would be; no σ among the parameters."""
    data = jm.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    fit = cbpp_fit
    boot = fit.bootstrap(4, seed=5, chunk_size=4)
    assert list(boot.draws.columns) == ["sd_(Intercept)|herd", "(Intercept)", "period2", "period3", "period4"]
    assert boot.converged.all()
    counts = np.round(fit.simulate(4, seed=5).iloc[:, 1].to_numpy() * data["size"].to_numpy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        refit = jm.glmer(formula, data.assign(incidence=counts), family="binomial")
    row = boot.draws.iloc[1]
    np.testing.assert_allclose(row.iloc[1:], refit.fixef, rtol=1e-4, atol=1e-5)
    assert row.iloc[0] == pytest.approx(refit.varcorr()["sdcor"].iloc[0], rel=1e-3, abs=1e-4)
    assert list(fit.confint("boot", nsim=4, seed=5, chunk_size=4).index) == list(boot.draws.columns)


def test_interval_labels_and_bad_input(fits):
    _, reml, _ = fits
    assert interval_columns(0.95) == ["2.5 %", "97.5 %"]
    assert interval_columns(0.99) == ["0.5 %", "99.5 %"]
    with pytest.raises(ValueError, match="level"):
        reml.confint("wald", level=1.5)
    with pytest.raises(ValueError, match="method"):
        reml.confint("bogus")
    with pytest.raises(ValueError, match="unknown parameter"):
        reml.confint("wald", parm="nope")


def test_profile_of_a_singular_fit():
    """A variance estimated at 0 (Dyestuff2): its interval is [0, upper] as lme4's, and a fixed effect's profile
    leaves the boundary where holding the effect makes a positive variance better. lme4 interpolates its profile
    by splines (~1e-4 relative), so the endpoints are also checked exactly: at each, the ML deviance of the model
    with the effect held (an offset), refitted, lies 1.96² above the optimum."""
    data = jm.datasets.load("Dyestuff2")
    ref = json.loads((REFERENCE_DIR / "lme4_profile_singular.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the singular fits warn
        ml = jm.lmer("Yield ~ 1 + (1 | Batch)", data, reml=False)
        reml = jm.lmer("Yield ~ 1 + (1 | Batch)", data)
        assert ml.theta[0] == reml.theta[0] == ref["dyestuff2_reml"]["theta"] == 0
        ci = reml.confint()  # profiled on the ML deviance, as lme4 (its ML intervals are the same numbers)
        _compare(ci, dict(ref["dyestuff2_reml"], rows=list(ci.index)), rtol=1e-3)
        assert ci.iloc[0, 0] == 0.0
        target = stats.norm.ppf(0.975) ** 2
        for end in ci.loc["(Intercept)"]:
            held = jm.lmer("Yield ~ 0 + (1 | Batch)", data, reml=False, offset=np.full(len(data), end))
            assert held.objective - ml.objective == pytest.approx(target, rel=1e-6)
            assert held.theta[0] > 0  # the variance left the boundary there
