"""Kenward-Roger's adjusted covariance and df against pbkrtest 0.5.2 / lmerTest 3.1-3 (reference/kenward_roger.R)."""

import json

import numpy as np
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm._errors import DataError
from jaxmlm.inference import _kenward_roger

CASES = json.loads((REFERENCE_DIR / "kenward_roger.json").read_text())


@pytest.fixture
def case_fit(lmer_fit):
    """The session's REML fit of a reference case (conftest.lmer_fit, shared with the other reference files)."""
    return lambda case: lmer_fit(CASES[case]["formula"], CASES[case]["dataset"])


@pytest.mark.parametrize("case", [
    "sleepstudy", "grouseticks", pytest.param("contraception", marks=pytest.mark.slow)])
def test_t_tests_and_adjusted_covariance_match_pbkrtest(case, case_fit):
    """Differences come from the fits' optima (θ agrees with lme4's to ~1e-5), not from the method."""
    ref = CASES[case]
    fit = case_fit(case)
    table = fit.t_tests(ddf="kenward-roger")
    assert list(table.index) == ref["rows"]
    np.testing.assert_allclose(table["Estimate"], ref["estimate"], rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(table["Std. Error"], ref["se"], rtol=1e-4)
    np.testing.assert_allclose(table["df"], ref["df"], rtol=1e-4)
    np.testing.assert_allclose(table["t value"], ref["t"], rtol=1e-4)
    np.testing.assert_allclose(table["Pr(>|t|)"], ref["p"], rtol=2e-3)
    adjusted = np.asarray(ref["vcov_adjusted"])
    np.testing.assert_allclose(_kenward_roger.kr_vcov(fit), adjusted, rtol=0, atol=5e-5 * np.abs(adjusted).max())


def test_balanced_design_gets_the_exact_degrees_of_freedom(case_fit):
    """sleepstudy is balanced: Kenward-Roger's df, as Satterthwaite's, are the subjects less one."""
    np.testing.assert_allclose(case_fit("sleepstudy").t_tests(ddf="kenward-roger")["df"], 17.0, atol=1e-4)


def test_summary_names_the_method(case_fit):
    text = str(case_fit("sleepstudy").summary(ddf="Kenward-Roger"))
    assert "t-tests use Kenward-Roger's method" in text
    assert "Pr(>|t|)" in text


def test_refusals(case_fit):
    sleep = jm.datasets.load("sleepstudy")
    ml = jm.lmer("Reaction ~ Days + (1 | Subject)", sleep, reml=False, warn=False)
    with pytest.raises(DataError, match="only available for REML"):
        ml.t_tests(ddf="kenward-roger")
    with pytest.raises(ValueError, match="ddf must be"):
        case_fit("sleepstudy").t_tests(ddf="containment")


def test_size_limit_is_checked_before_any_work(monkeypatch):
    monkeypatch.setattr(_kenward_roger, "MAX_ROWS", 100)
    fit = jm.lmer("Reaction ~ Days + (1 | Subject)", jm.datasets.load("sleepstudy"), warn=False)
    with pytest.raises(DataError, match="limited to 100 rows"):
        fit.t_tests(ddf="kenward-roger")
