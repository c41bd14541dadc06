"""Power by simulation (power_sim, power_curve): the batch against single fits, a balanced design's analytic power
(noncentral t), the Clopper-Pearson interval, simr's extend()."""

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm._errors import DataError
from jaxmlm.inference._power import clopper_pearson, extend_data, simulate_responses


def _between_group_design(groups=12, per_group=5, seed=0):
    """A balanced one-way design with a group-level covariate x (centred, evenly spaced)."""
    rng = np.random.default_rng(seed)
    g = np.repeat([f"g{i:02d}" for i in range(groups)], per_group)
    x = np.repeat(np.linspace(-1.0, 1.0, groups), per_group)
    return pd.DataFrame({"y": rng.standard_normal(groups * per_group), "x": x, "g": g})


def test_batch_equals_single_fits():
    """The likelihood-ratio p-values of the batch are those of lmer fits of each simulated response, one by one."""
    data = _between_group_design(groups=8, per_group=4)
    data["w"] = np.tile(np.arange(4.0), 8)  # a within-group covariate
    model = jm.Model("y ~ x + w + (1 | g)", data)
    params = dict(beta={"(Intercept)": 1.0, "x": 0.5, "w": 0.3}, theta=[0.8], sigma=1.2)
    result = jm.power_sim(model, "w", n_sim=4, seed=7, params=params)
    Y = simulate_responses(model, np.array([1.0, 0.5, 0.3]), np.array([0.8]), 1.2, 4, 7)
    for i in range(4):
        one = data.assign(y=Y[:, i])
        full = jm.lmer("y ~ x + w + (1 | g)", one, reml=False, warn=False)
        reduced = jm.lmer("y ~ x + (1 | g)", one, reml=False, warn=False)
        p = stats.chi2.sf(2 * (full.loglik - reduced.loglik), 1)
        np.testing.assert_allclose(result.p_values[i], p, rtol=1e-5)
    assert result.n_sim == 4 and result.successes == int(np.sum(result.p_values < 0.05))


def test_likelihood_ratio_p_values_match_lme4_refits():
    """lme4's simulate() of sleepstudy's ML fit (Days effect 3) and the loop simr runs (refit() of both models,
    anova()): the batch's p-values on the same 50 responses (reference/power.R)."""
    ref = json.loads((REFERENCE_DIR / "power.json").read_text())
    fit = jm.lmer(ref["formula"], jm.datasets.load(ref["dataset"]), reml=False, warn=False)
    Y = np.asarray(ref["y"])
    result = jm.power_sim(fit, "Days", responses=Y)
    reduced = fit.model.update(". ~ . - Days").fit_batch(Y, method="ml", progress=False)
    # where lme4 stopped short of the reduced model's optimum (1 of the 50, by 0.42 in log-likelihood) jaxmlm's
    # fit is the better one, and so its p-value the larger; everywhere else they agree
    short = reduced.loglik > np.asarray(ref["loglik_reduced"]) + 1e-4
    assert short.sum() <= 2
    np.testing.assert_allclose(result.p_values[~short], np.asarray(ref["p"])[~short], rtol=1e-3, atol=1e-9)
    assert np.all(result.p_values[short] > np.asarray(ref["p"])[short])


@pytest.mark.slow  # two batch compiles and a Satterthwaite fit
def test_balanced_design_matches_the_noncentral_t():
    """y = β₀ + β₁x_g + b_g + ε, 12 groups of 5, σ_b = σ = 1: β̂₁ is the regression on the group means, so
    β̂₁/se ~ noncentral t on 10 df with δ = β₁ √Sxx / √(σ_b² + σ²/m) (while the REML σ_b² stays positive, which
    fails with probability ~1e-3 here). 1000 simulations: Monte Carlo sd ≈ 1.6 points."""
    data = _between_group_design()
    groups, m, beta1 = 12, 5, 0.9
    fit = jm.lmer("y ~ x + (1 | g)", data.assign(y=data["y"] + beta1 * data["x"]), warn=False)
    result = jm.power_sim(fit, "x", n_sim=1000, seed=3, method="t",
                          effect={"x": beta1, "(Intercept)": 0.0})
    x_groups = np.linspace(-1.0, 1.0, groups)
    sxx = np.sum((x_groups - x_groups.mean()) ** 2)
    # the simulation is at the fit's θ and σ: the analytic power at those values
    tau = (fit.theta[0] ** 2 + 1.0 / m) * fit.sigma**2
    delta = beta1 * np.sqrt(sxx / tau)
    df = groups - 2
    crit = stats.t.ppf(0.975, df)
    analytic = stats.nct.sf(crit, df, delta) + stats.nct.cdf(-crit, df, delta)
    np.testing.assert_allclose(fit.t_tests().loc["x", "df"], df, rtol=1e-6)
    mc_sd = np.sqrt(analytic * (1 - analytic) / result.n_sim)
    assert abs(result.power - analytic) < 3.5 * mc_sd, (result.power, analytic)
    assert result.lower < result.power < result.upper


def test_clopper_pearson_interval():
    for k, n in ((0, 20), (7, 20), (20, 20), (523, 1000)):
        ci = stats.binomtest(k, n).proportion_ci(0.95, method="exact")
        np.testing.assert_allclose(clopper_pearson(k, n), (ci.low, ci.high), rtol=1e-10, atol=1e-14)


def test_extend_data_as_simr():
    data = _between_group_design(groups=3, per_group=2)
    more = extend_data(data, along="g", within=None, size=7)
    assert more["g"].nunique() == 7 and len(more) == 14
    assert list(dict.fromkeys(more["g"])) == ["g00", "g01", "g02", "g00_2", "g01_2", "g02_2", "g00_3"]
    fewer = extend_data(data, along="g", within=None, size=2)
    assert list(fewer["g"].unique()) == ["g00", "g01"]
    rows = extend_data(data, along=None, within="g", size=5)
    assert rows.groupby("g").size().tolist() == [5, 5, 5]
    np.testing.assert_array_equal(rows[rows["g"] == "g01"]["y"], data["y"].to_numpy()[[2, 3, 2, 3, 2]])


@pytest.mark.slow  # a batch compile per design
def test_power_curve_grows_the_groups():
    data = _between_group_design(groups=6, per_group=4)
    fit = jm.lmer("y ~ x + (1 | g)", data.assign(y=data["y"] + 0.5 * data["x"]), warn=False)
    curve = jm.power_curve(fit, "x", along="g", breaks=[4, 12], n_sim=40, effect=1.0)
    assert list(curve.columns) == ["break", "nobs", "power", "lower", "upper", "successes", "n_sim"]
    assert curve["nobs"].tolist() == [16, 48]
    assert np.all((curve["lower"] <= curve["power"]) & (curve["power"] <= curve["upper"]))


def test_refusals():
    data = _between_group_design(groups=4, per_group=3)
    fit = jm.lmer("y ~ x + (1 | g)", data, warn=False)
    with pytest.raises(DataError, match="'z' is not a fixed-effect term"):
        jm.power_sim(fit, "z", n_sim=2)
    with pytest.raises(ValueError, match="method must be"):
        jm.power_sim(fit, "x", n_sim=2, method="kr")
    with pytest.raises(ValueError, match="needs params"):
        jm.power_sim(fit.model, "x", n_sim=2)
    with pytest.raises(ValueError, match="one of along"):
        jm.power_curve(fit, "x", breaks=[3])


@pytest.mark.slow  # GLMM batch compiles and four glmer fits
def test_glmm_batch_equals_single_fits(cbpp_fit):
    """cbpp's binomial GLMM: simulated counts out of each herd-period's trials, the Laplace likelihood-ratio test of
    period in one batch against glmer fits of each simulation."""
    cbpp = jm.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    fit = cbpp_fit
    result = jm.power_sim(fit, "period", n_sim=2, seed=5, effect={"period4": -0.5})
    beta = fit.fixef.to_numpy().copy()
    beta[3] = -0.5
    Y = simulate_responses(fit.model, beta, fit.theta, None, 2, 5)
    for i in range(2):
        one = cbpp.assign(incidence=np.round(Y[:, i] * cbpp["size"]))
        full = jm.glmer(formula, one, family="binomial")
        reduced = jm.glmer("cbind(incidence, size - incidence) ~ 1 + (1 | herd)", one, family="binomial")
        p = stats.chi2.sf(2 * (full.loglik - reduced.loglik), 3)
        np.testing.assert_allclose(result.p_values[i], p, rtol=1e-4)
    assert result.test == "likelihood ratio"
