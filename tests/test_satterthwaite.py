"""Satterthwaite t-tests of the fixed effects against lmerTest 3.1-3 (reference/satterthwaite.R), against the
exact degrees of freedom of a balanced design, and lmerTest's printed table."""

import json

import numpy as np
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR

CASES = json.loads((REFERENCE_DIR / "lme4_satterthwaite.json").read_text())
_FITS: dict = {}


def _fit(case):
    if case not in _FITS:
        ref = CASES[case]
        _FITS[case] = jm.lmer(ref["formula"], jm.datasets.load(ref["dataset"]), reml=ref["reml"], warn=False)
    return _FITS[case]


@pytest.mark.parametrize("case", sorted(CASES))
def test_t_tests_match_lmertest(case):
    """lmerTest differentiates numerically (its df carry ~5e-5 relative error: 16.9997 where the exact value is
    17); jaxmlm's derivatives are exact."""
    ref = CASES[case]
    table = _fit(case).t_tests()
    assert list(table.index) == ref["rows"]
    assert list(table.columns) == ["Estimate", "Std. Error", "df", "t value", "Pr(>|t|)"]
    np.testing.assert_allclose(table["Estimate"], ref["estimate"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(table["Std. Error"], ref["se"], rtol=1e-4)
    np.testing.assert_allclose(table["df"], ref["df"], rtol=1e-4)
    np.testing.assert_allclose(table["t value"], ref["t"], rtol=1e-4)
    np.testing.assert_allclose(table["Pr(>|t|)"], ref["p"], rtol=5e-3)


@pytest.mark.parametrize("case,df", [("sleepstudy_reml", 17.0), ("sleepstudy_ml", 18.0)])
def test_balanced_design_gets_the_exact_degrees_of_freedom(case, df):
    """sleepstudy is balanced (18 subjects × 10 days): both coefficients' information comes from the subjects'
    own lines, so Satterthwaite's df are the subjects less one under REML, and the subjects under ML (whose
    variance estimates divide by n rather than n − 1)."""
    np.testing.assert_allclose(_fit(case).t_tests()["df"], df, rtol=0, atol=1e-5)


@pytest.mark.parametrize("case", ["sleepstudy_reml", "grouseticks_reml", "contraception_reml"])
def test_summary_prints_lmertest_table(case):
    """Header and rows as lmerTest prints them; the df digits past lmerTest's numerical error are not compared."""
    fit = _fit(case)
    text = str(fit.summary(ddf="satterthwaite")).splitlines()
    assert text[0].startswith("Linear mixed model fit by REML. t-tests use Satterthwaite's method")
    first = text.index("Fixed effects:") + 1
    ours, theirs = text[first : first + len(CASES[case]["table_text"])], CASES[case]["table_text"]
    assert ours[0] == theirs[0]
    df_at = theirs[0].index("df") + 2  # the df field ends where its header ends
    for mine, ref in zip(ours[1:], theirs[1:]):
        assert len(mine) == len(ref)
        start = ref.rfind(" ", 0, df_at - 1)
        assert mine[:start] == ref[:start] and mine[df_at:] == ref[df_at:], (mine, ref)
        assert abs(float(mine[start:df_at]) / float(ref[start:df_at]) - 1) < 1e-4


def test_t_tests_refuse_what_they_cannot_do():
    glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                    family="binomial")
    with pytest.raises(ValueError, match="linear mixed models"):
        glmm.t_tests()
    with pytest.raises(ValueError, match="linear mixed models"):
        glmm.summary(ddf="satterthwaite")
    with pytest.raises(ValueError, match="Kenward-Roger's method is for linear mixed models"):
        glmm.t_tests(ddf="kenward-roger")
    with pytest.raises(ValueError, match="only available for REML fits"):
        _fit("sleepstudy_ml").t_tests(ddf="kenward-roger")
    with pytest.raises(ValueError, match="unknown ddf|ddf"):
        _fit("sleepstudy_reml").t_tests(ddf="containment")
