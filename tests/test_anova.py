"""anova(): likelihood-ratio tables and sequential F tables against lme4 (reference/anova.R), the F table's sums of
squares against dense generalized least squares, and the checks that refuse incomparable models."""

import json

import numpy as np
import pandas as pd
import pytest
import scipy.linalg

import jaxmlm as jm
from brute_force import dense_z_lambda
from conftest import REFERENCE_DIR


@pytest.fixture(scope="module")
def reference():
    return json.loads((REFERENCE_DIR / "lme4_anova.json").read_text())


@pytest.fixture(scope="module")
def sleep_fits():
    data = jm.datasets.load("sleepstudy")
    forms = ["Reaction ~ Days + (1 | Subject)", "Reaction ~ Days + (Days | Subject)", "Reaction ~ 1 + (Days | Subject)"]
    return [jm.lmer(f, data) for f in forms]


def _rows(ref_table):
    return [ref_table["rows"]] if isinstance(ref_table["rows"], str) else ref_table["rows"]


def _column(ref_table, name):
    return np.array([np.nan if v is None else v for v in np.atleast_1d(ref_table[name])], dtype=float)


def _check_lrt(table, ref_table, rtol, likelihood_rtol=1e-8):
    assert list(table.index) == _rows(ref_table)
    np.testing.assert_array_equal(table["npar"].to_numpy(), _column(ref_table, "npar"))
    for name in ["AIC", "BIC", "logLik", "deviance"]:
        np.testing.assert_allclose(table[name].to_numpy(), _column(ref_table, name), rtol=likelihood_rtol)
    np.testing.assert_allclose(table["Chisq"].to_numpy(), _column(ref_table, "Chisq"), rtol=rtol)
    np.testing.assert_allclose(table["Df"].to_numpy(), _column(ref_table, "Df"))
    np.testing.assert_allclose(table["Pr(>Chisq)"].to_numpy(), _column(ref_table, "Pr(>Chisq)"), rtol=10 * rtol)


def test_lrt_refits_reml_by_ml_and_orders_by_npar(sleep_fits, reference):
    case = reference["sleepstudy_lrt"]
    table = jm.anova(*sleep_fits, names=case["names"])
    _check_lrt(table, case["table"], rtol=1e-6)
    assert table.attrs["heading"].splitlines()[0] == "refitting model(s) with ML (instead of REML)"
    lines = repr(table).splitlines()  # printed as R prints it: heading, models in the table's order, all columns
    assert lines[1:5] == ["Models:", "fm0: Reaction ~ Days + (1 | Subject)", "fm2: Reaction ~ 1 + (Days | Subject)",
                          "fm1: Reaction ~ Days + (Days | Subject)"]
    assert lines[5].split() == ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]
    assert lines[7].split()[-2:] == ["1", "1.61e-05"]
    assert all(f.reml for f in sleep_fits)  # the caller's fits are left as they were


def test_lrt_without_refit_compares_reml_criteria(sleep_fits, reference):
    case = reference["sleepstudy_lrt_no_refit"]
    table = sleep_fits[0].anova(sleep_fits[1], names=case["names"], refit=False)
    _check_lrt(table, case["table"], rtol=1e-6)
    with pytest.warns(UserWarning, match="different fixed effects are not comparable"):
        jm.anova(sleep_fits[0], sleep_fits[2], refit=False)


def test_glmm_lrt(reference):
    """lme4's glmer stops PIRLS at tolPwrss = 1e-7, which leaves its deviance ~3e-6 relative above the exact Laplace
    optimum that jaxmlm reaches: likelihoods to 5e-6 (ours higher), χ² to 2e-5."""
    case = reference["cbpp_lrt"]
    data = jm.datasets.load("cbpp")
    fits = [jm.glmer(f, data, family="binomial") for f in case["formulas"]]
    table = jm.anova(fits[1], fits[0], names=case["names"][::-1])
    _check_lrt(table, case["table"], rtol=2e-5, likelihood_rtol=5e-6)
    assert (table["logLik"].to_numpy() >= _column(case["table"], "logLik")).all()


def test_f_table_matches_lme4(reference):
    case = reference["grouseticks_f"]
    fit = jm.lmer(case["formula"], jm.datasets.load("grouseticks"))
    table = jm.anova(fit)
    assert list(table.index) == _rows(case["table"]) and table.attrs["heading"] == "Analysis of Variance Table"
    np.testing.assert_array_equal(table["npar"].to_numpy(), _column(case["table"], "npar"))
    for name in ["Sum Sq", "Mean Sq", "F value"]:
        np.testing.assert_allclose(table[name].to_numpy(), _column(case["table"], name), rtol=1e-5)


def test_glmm_f_table_matches_lme4(reference, cbpp_fit):
    """From the PIRLS factor at the optimum, as lme4's RX; lme4's looser PIRLS moves it by ~5e-4."""
    case = reference["cbpp_f"]
    fit = cbpp_fit
    assert fit.model.formula == case["formula"]
    table = fit.anova()
    assert list(table.index) == _rows(case["table"])
    for name in ["Sum Sq", "Mean Sq", "F value"]:
        np.testing.assert_allclose(table[name].to_numpy(), _column(case["table"], name), rtol=2e-3)


def test_glmm_rx_factor_is_finite_and_matches_dense_schur_complement(cbpp_fit):
    """lme4's RX at a GLMM optimum: (R_Xᵀ R_X)⁻¹ with R_Xᵀ R_X = XᵀWX − XᵀWZΛ(ΛᵀZᵀWZΛ + I)⁻¹ΛᵀZᵀWX at the Fisher
    weights W. Formed from X alone, so no column duplicates the intercept and the factor cannot fail by rounding."""
    fit = cbpp_fit
    got = fit.extra["vcov_rx"]
    assert np.all(np.isfinite(got))
    X = fit.design.X
    w = fit.extra["working_weights"]
    ZL = dense_z_lambda(fit.design, fit.theta)
    XtW, ZLtW = X.T * w, ZL.T * w
    schur = XtW @ X - XtW @ ZL @ np.linalg.solve(ZLtW @ ZL + np.eye(ZL.shape[1]), ZLtW @ X)
    np.testing.assert_allclose(got, np.linalg.inv(schur), rtol=1e-9, atol=1e-12)


def test_f_table_sums_of_squares_are_sequential_gls_reductions():
    """Dense check: at the fit's θ, with V = ZΛΛᵀZᵀ + I (relative to σ²), a term's sum of squares is the drop in
    the generalized residual sum of squares min_β (y − Xβ)ᵀV⁻¹(y − Xβ) when its columns join those of the terms
    before it; F divides its mean square by σ²."""
    rng = np.random.default_rng(4)
    n = 120
    data = pd.DataFrame({"g": np.repeat(np.arange(12), 10), "a": rng.choice(["p", "q", "r"], n),
                         "x": rng.normal(size=n)})
    data["y"] = (1.0 + 0.5 * data.x + (data.a == "q") * 0.8 + rng.normal(0, 0.7, 12)[data.g]
                 + 0.3 * data.x * (data.a == "r") + rng.normal(size=n))
    fit = jm.lmer("y ~ x * a + I(x^2) + (1 | g)", data)
    table = fit.anova()
    assert list(table.index) == ["x", "a", "I(x^2)", "x:a"]  # formula terms, main effects before interactions
    d = fit.design
    ZL = dense_z_lambda(d, fit.theta)
    V = ZL @ ZL.T + np.eye(n)
    W = scipy.linalg.inv(scipy.linalg.cholesky(V, lower=True))  # whitening: W V Wᵀ = I
    Xw, yw = W @ d.X, W @ d.y

    def rss(cols):
        beta, *_ = np.linalg.lstsq(Xw[:, cols], yw, rcond=None)
        return float(np.sum((yw - Xw[:, cols] @ beta) ** 2))

    names = d.x_names
    groups = {"x": ["x"], "a": ["aq", "ar"], "I(x^2)": ["I(x^2)"], "x:a": ["x:aq", "x:ar"]}
    cols = [names.index("(Intercept)")]
    for label, members in groups.items():
        before = rss(cols)
        cols = cols + [names.index(m) for m in members]
        assert table.loc[label, "Sum Sq"] == pytest.approx(before - rss(cols), rel=1e-8)
        assert table.loc[label, "npar"] == len(members)
    np.testing.assert_allclose(table["F value"], table["Mean Sq"] / fit.sigma**2, rtol=1e-12)


def test_incomparable_models_are_refused(sleep_fits):
    data = jm.datasets.load("sleepstudy")
    fewer = jm.lmer("Reaction ~ Days + (1 | Subject)", data.iloc[:170])
    with pytest.raises(jm.DataError, match="same size of dataset"):
        jm.anova(sleep_fits[0], fewer)
    other = jm.lmer("log(Reaction) ~ Days + (1 | Subject)", data)
    with pytest.raises(jm.DataError, match="different response"):
        jm.anova(sleep_fits[0], other)
    ml = sleep_fits[1].model.fit(method="ml")
    with pytest.raises(jm.DataError, match="cannot compare REML criteria with ML"):
        jm.anova(sleep_fits[0], ml, refit=False)
    with pytest.raises(TypeError, match="argument 2"):
        jm.anova(sleep_fits[0], "fm1")
    with pytest.raises(ValueError, match="distinct labels"):
        jm.anova(*sleep_fits[:2], names=["a", "a"])
    with pytest.raises(ValueError, match="at least one"):
        jm.anova()


@pytest.mark.parametrize("case,rtol", [("sleepstudy_drop1", 1e-8), ("grouseticks_drop1", 1e-8), ("cbpp_drop1", 5e-6)])
def test_drop1_matches_lme4(case, rtol, reference):
    """Single-term deletions refitted by ML; 'YEAR * cHEIGHT' offers only its interaction (marginality). The GLMM
    case carries lme4's PIRLS tolerance (its likelihoods ~3e-6 below the exact Laplace optimum)."""
    ref = reference[case]
    data = jm.datasets.load(ref["dataset"])
    fit = (jm.glmer(ref["formula"], data, family=ref["family"]) if "family" in ref
           else jm.lmer(ref["formula"], data, reml=ref["reml"]))
    table = fit.drop1(test="Chisq")
    assert list(table.index) == ref["table"]["rows"]
    assert table.attrs["heading"] == f"Single term deletions\n\nModel:\n{ref['formula']}"
    np.testing.assert_allclose(table["npar"].to_numpy(), _column(ref["table"], "npar"))
    np.testing.assert_allclose(table["AIC"].to_numpy(), _column(ref["table"], "AIC"), rtol=rtol)
    np.testing.assert_allclose(table["LRT"].to_numpy(), _column(ref["table"], "LRT"), rtol=max(rtol, 2e-5))
    np.testing.assert_allclose(table["Pr(Chi)"].to_numpy(), _column(ref["table"], "Pr(Chi)"), rtol=max(rtol, 2e-4))
    assert list(jm.drop1(fit).columns) == ["npar", "AIC"]


def test_update_builds_the_model_of_another_formula_on_the_same_data(sleep_fits):
    model = sleep_fits[1].model
    assert model.update(". ~ . - Days").formula == "Reaction ~ Days + (Days | Subject) - Days"
    assert model.update("log(Reaction) ~ .").design.response_name == "log(Reaction)"
    smaller = model.update(". ~ 1 + (1 | Subject)")
    assert smaller.design.x_names == ["(Intercept)"] and smaller.design.n == model.design.n
    with pytest.raises(jm.FormulaError, match="bare '.'"):
        model.update(". ~ Days + .")
    with pytest.raises(jm.FormulaError, match="one '~'"):
        model.update("Days")
