"""Estimated marginal means and pairwise contrasts against emmeans 1.8.4-1 (reference/emmeans.R), and the
reference grid against predictions averaged by hand."""

import json

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm._errors import DataError
from jaxmlm.inference._emmeans import _adjusted

CASES = json.loads((REFERENCE_DIR / "emmeans.json").read_text())
_FITS: dict = {}
_ADJUSTS = ("tukey", "bonferroni", "holm", "none")


def _fit(case):
    ref = CASES[case]
    if ref["formula"] not in _FITS:
        data = jm.datasets.load(ref["dataset"])
        _FITS[ref["formula"]] = (jm.lmer(ref["formula"], data, warn=False) if ref["family"] == "gaussian"
                                 else jm.glmer(ref["formula"], data, family=ref["family"]))
    return _FITS[ref["formula"]]


def _call(case, adjust="tukey"):
    ref = CASES[case]
    return _fit(case).emmeans(ref["specs"], by=ref["by"] or None, type=ref["type"], pairwise=True, adjust=adjust,
                              lmer_df=ref["lmer_df"] or "satterthwaite")


@pytest.mark.parametrize("case", [
    "contraception_livch_sat", "contraception_livch_by_urban", "grouseticks_year_sat",
    pytest.param("contraception_livch_kr", marks=pytest.mark.slow)])
def test_linear_model_means_and_contrasts_match_emmeans(case):
    ref = CASES[case]
    names = [ref["specs"]] + ([ref["by"]] if ref["by"] else [])
    want = pd.DataFrame(ref["emmeans"])
    got = _call(case).emmeans
    assert list(got.columns) == names + ["emmean", "se", "df", "lower", "upper"]
    for n in names:
        assert list(got[n].astype(str)) == list(want[n])
    for column, key in (("emmean", "emmean"), ("se", "SE"), ("df", "df"), ("lower", "lower.CL"),
                        ("upper", "upper.CL")):
        np.testing.assert_allclose(got[column], want[key], rtol=1e-5)
    for adjust in _ADJUSTS:
        want = pd.DataFrame(ref["contrasts"][adjust])
        got = _call(case, adjust).contrasts
        assert list(got["contrast"]) == list(want["contrast"])
        for column, key in (("estimate", "estimate"), ("se", "SE"), ("df", "df"), ("t_ratio", "t.ratio")):
            np.testing.assert_allclose(got[column], want[key], rtol=1e-5)
        # R's ptukey is accurate to ~1e-8 absolute (it reports 3e-11 for p-values far below)
        np.testing.assert_allclose(got["p_value"], want["p.value"], rtol=2e-3, atol=1e-8)


def test_glmm_means_on_both_scales():
    """cbpp: jaxmlm's Laplace optimum is slightly better than lme4's (objective lower by 6e-4) and its β and SEs
    differ from lme4's by up to 6e-4 and 1.2%; the tolerances against emmeans allow that, and the relations
    between the scales are checked exactly."""
    link = _call("cbpp_period_link")
    response = _call("cbpp_period_response")
    ref_link, ref_resp = (pd.DataFrame(CASES[c]["emmeans"]) for c in ("cbpp_period_link", "cbpp_period_response"))
    np.testing.assert_allclose(link.emmeans["emmean"], ref_link["emmean"], atol=2e-3)
    np.testing.assert_allclose(link.emmeans["se"], ref_link["SE"], rtol=2e-2)
    assert np.all(np.isinf(link.emmeans["df"]))
    assert list(response.emmeans.columns) == ["period", "prob", "se", "df", "lower", "upper"]
    np.testing.assert_allclose(response.emmeans["prob"], ref_resp["prob"], rtol=2e-3)
    np.testing.assert_allclose(response.emmeans["lower"], ref_resp["asymp.LCL"], rtol=2e-2)
    expit = lambda x: 1.0 / (1.0 + np.exp(-x))  # noqa: E731
    np.testing.assert_allclose(response.emmeans["lower"], expit(link.emmeans["lower"]), rtol=1e-12)
    p = response.emmeans["prob"]
    np.testing.assert_allclose(response.emmeans["se"], link.emmeans["se"] * p * (1 - p), rtol=1e-12)
    assert list(response.contrasts["contrast"]) == [r["contrast"] for r in CASES["cbpp_period_response"]["contrasts"]["tukey"]]
    assert list(link.contrasts["contrast"]) == [r["contrast"] for r in CASES["cbpp_period_link"]["contrasts"]["tukey"]]
    np.testing.assert_allclose(response.contrasts["odds_ratio"], np.exp(link.contrasts["estimate"]), rtol=1e-12)
    np.testing.assert_allclose(response.contrasts["z_ratio"], link.contrasts["z_ratio"], rtol=1e-12)
    text = repr(response).splitlines()
    assert text[0] == "$emmeans" and "$contrasts" in text and "period1 / period2" in repr(response)


@pytest.mark.parametrize("adjust", _ADJUSTS)
def test_adjusted_p_values_from_emmeans_own_statistics(adjust):
    """Given emmeans' z ratios (df = ∞, 4 means), the adjustments reproduce its p-values."""
    rows = CASES["cbpp_period_link"]["contrasts"][adjust]
    z = np.array([r["z.ratio"] for r in rows])
    np.testing.assert_allclose(_adjusted(z, np.full(len(z), np.inf), 4, adjust), [r["p.value"] for r in rows],
                               rtol=5e-4)


def test_reference_grid_is_the_equal_weight_average_of_predictions():
    """The marginal mean of livch in urban * livch: population-level predictions at each (urban, livch) cell,
    averaged over urban with equal weights."""
    fit = _fit("contraception_livch_sat")
    data = jm.datasets.load("Contraception")
    cells = pd.DataFrame([(u, l) for l in data["livch"].cat.categories for u in data["urban"].cat.categories],
                         columns=["urban", "livch"])
    cells = cells.assign(urban=pd.Categorical(cells["urban"], data["urban"].cat.categories),
                         livch=pd.Categorical(cells["livch"], data["livch"].cat.categories), district="1")
    cells["prediction"] = fit.predict(cells, re_form="~0").to_numpy()
    by_hand = cells.groupby("livch", observed=True)["prediction"].mean()
    np.testing.assert_allclose(fit.emmeans("livch")["emmean"], by_hand.to_numpy(), rtol=1e-12)


def test_refusals():
    fit = _fit("grouseticks_year_sat")
    with pytest.raises(DataError, match="'cHEIGHT' is a numeric variable"):
        fit.emmeans("cHEIGHT")
    with pytest.raises(DataError, match="'LOCATION' is not a variable of the fixed effects"):
        fit.emmeans("LOCATION")
    with pytest.raises(ValueError, match="adjust must be"):
        fit.emmeans("YEAR", pairwise=True, adjust="scheffe")
    with pytest.raises(ValueError, match="type must be"):
        fit.emmeans("YEAR", type="probability")
