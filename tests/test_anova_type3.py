"""lmerTest's Type III and Type I F tables (anova(fit, type=..., ddf=...)) against lmerTest 3.1-3 with pbkrtest 0.5.2
(reference/anova_type3.R), and the coding invariance of Type III hypotheses."""

import json

import numpy as np
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm._errors import DataError

CASES = json.loads((REFERENCE_DIR / "anova_type3.json").read_text())


@pytest.fixture
def case_fit(lmer_fit):
    """The session's REML fit of a reference case (conftest.lmer_fit, shared with the other reference files)."""
    return lambda case: lmer_fit(CASES[case]["formula"], CASES[case]["dataset"])


def _params():
    out = []
    for case, ref in CASES.items():
        for i, table in enumerate(ref["tables"]):
            # one Contraception table in the quick run: its KR tables work on a 1934 × 1934 V
            slow = case == "contraception" and (table["ddf"] == "Kenward-Roger" or table["type"] == 1)
            out.append(pytest.param(case, i, id=f"{case}-type{table['type']}-{table['ddf']}",
                                    marks=[pytest.mark.slow] if slow else []))
    return out


@pytest.mark.parametrize("case,i", _params())
def test_f_table_matches_lmertest(case, i, case_fit):
    want = CASES[case]["tables"][i]
    table = case_fit(case).anova(type=want["type"], ddf=want["ddf"])
    assert list(table.columns) == ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]
    assert list(table.index) == list(np.atleast_1d(want["rows"]))
    np.testing.assert_array_equal(table["NumDF"], np.atleast_1d(want["num_df"]))
    for column, key in (("Sum Sq", "sum_sq"), ("Mean Sq", "mean_sq"), ("DenDF", "den_df"), ("F value", "f")):
        np.testing.assert_allclose(table[column], np.atleast_1d(want[key]), rtol=1e-5)
    np.testing.assert_allclose(table["Pr(>F)"], np.atleast_1d(want["p"]), rtol=1e-4)
    method = "Satterthwaite's" if want["ddf"] == "Satterthwaite" else "Kenward-Roger's"
    assert table.attrs["heading"] == f"Type {'I' * want['type']} Analysis of Variance Table with {method} method"


@pytest.mark.slow
def test_type3_does_not_depend_on_the_reference_levels(case_fit):
    """Type III hypotheses are those of the cell means: another reference level (treatment coding) changes the
    coefficients but not one F test; the sequential Type I table of the interaction is unchanged as well."""
    data = jm.datasets.load("Contraception")
    data["urban"] = data["urban"].cat.reorder_categories(["Y", "N"])
    data["livch"] = data["livch"].cat.reorder_categories(["3+", "2", "1", "0"])
    releveled = jm.lmer(CASES["contraception"]["formula"], data, warn=False)
    original = case_fit("contraception")
    np.testing.assert_allclose(releveled.anova(type=3)["F value"], original.anova(type=3)["F value"], rtol=1e-6)
    # the df come from an eigendecomposition of LVLᵀ, which depends on the basis of L's rows: close, not equal
    np.testing.assert_allclose(releveled.anova(type=3)["DenDF"], original.anova(type=3)["DenDF"], rtol=1e-3)


def test_without_interactions_type3_tests_each_terms_coefficients():
    """No term contains another: each hypothesis is its own coefficients = 0 (Wald F with σ² from the fit)."""
    fit = jm.lmer("log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)", jm.datasets.load("grouseticks"),
                  warn=False)
    table = fit.anova(type=3)
    beta, V = fit.fixef.to_numpy(), fit.vcov.to_numpy()
    year = [1, 2]
    wald = beta[year] @ np.linalg.solve(V[np.ix_(year, year)], beta[year]) / 2
    np.testing.assert_allclose(table.loc["YEAR", "F value"], wald, rtol=1e-8)
    np.testing.assert_allclose(table.loc["cHEIGHT", "F value"], beta[3] ** 2 / V[3, 3], rtol=1e-8)
    np.testing.assert_allclose(table.loc["cHEIGHT", "DenDF"], fit.t_tests().loc["cHEIGHT", "df"], rtol=1e-10)


def test_refusals(case_fit):
    fit = case_fit("sleepstudy")
    with pytest.raises(ValueError, match="type must be 1 or 3"):
        fit.anova(type=2)
    with pytest.raises(ValueError, match="ddf must be"):
        fit.anova(type=3, ddf="residual")
    with pytest.raises(ValueError, match="one model's terms"):
        fit.anova(fit, type=3)
    cbpp = jm.datasets.load("cbpp")
    glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    with pytest.raises(DataError, match="linear mixed models"):
        glmm.anova(type=3)
