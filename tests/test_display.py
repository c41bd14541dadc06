"""The summary's numbers are laid out as R lays them out (tests/reference/summary_text.R wrote R's output for
the same inputs into lme4_summary_text.json)."""

import json
import warnings

import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR
from jaxmlm.results._display import _coefficient_columns, _format_pvalues, _method_title, r_format

R = json.loads((REFERENCE_DIR / "lme4_summary_text.json").read_text())


@pytest.mark.parametrize("case", R["format"], ids=lambda c: str(c["x"][0]))
def test_format_matches_r(case):
    for digits in (3, 4):
        assert r_format(case["x"], digits) == [s.strip() for s in case[f"digits{digits}"]]


@pytest.mark.parametrize("case", R["format_pval"], ids=lambda c: str(c["p"][0]))
def test_format_pval_matches_r(case):
    assert _format_pvalues(case["p"]) == case["text"]


@pytest.mark.parametrize("case", R["coefmat"], ids=lambda c: str(c["est"][0]))
def test_coefficient_table_matches_printcoefmat(case):
    est, se, stat = _coefficient_columns(case["est"], case["se"], [e / s for e, s in zip(case["est"], case["se"])])
    rows = [line.split()[1:] for line in case["lines"][1:]]  # drop R's row labels
    assert [[e, s, t] for e, s, t in zip(est, se, stat)] == rows


def test_sleepstudy_summary_prints_lme4s_fixed_effects_block():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    text = str(fit.summary())
    block = text[text.index("Fixed effects:") :].splitlines()[1:4]
    assert block == R["sleepstudy_fixed"]


def test_random_effects_block_matches_lme4():
    fit = jm.lmer("strength ~ 1 + (1 | batch/cask)", jm.datasets.load("Pastes"))
    text = str(fit.summary())
    lines = text[text.index("Random effects:") :].splitlines()
    assert lines[: len(R["pastes_random"])] == R["pastes_random"]


def test_title_criteria_and_residuals_match_lme4():
    fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"), reml=False)
    lines = str(fit.summary()).splitlines()
    assert lines[: len(R["sleepstudy_ml_head"])] == R["sleepstudy_ml_head"]


@pytest.mark.parametrize("nagq", [1, 9])
def test_glmm_title_wraps_as_lme4(nagq):
    """The title lines of glmer's summary (the fit's own title is built by the same function; cbpp's fit is
    checked against this layout in test_glmm_reference)."""
    approx = "Laplace Approximation" if nagq == 1 else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {nagq}"
    title = _method_title(f"Generalized linear mixed model fit by maximum likelihood ({approx})", "glmerMod")
    assert title.splitlines() == R["glmm_titles"][0 if nagq == 1 else 1][:2]
