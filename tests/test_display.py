"""The summary's numbers are laid out as R lays them out (tests/reference/summary_text.R wrote R's output for
the same inputs into lme4_summary_text.json)."""

import json
import re
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


# ---------------------------------------------------------------------------------------------- print(fit)
_NUMBER = re.compile(r"-?\d+\.?\d*(?:e[-+]\d+)?")


def _same_layout(ours: str, theirs: str, rtol: float = 2e-3) -> bool:
    """Equal lines but for the last digits of numbers: the same text between numbers, the same number widths
    (so the same columns), the numbers within rtol (jaxmlm's optimum can differ from lme4's in the 4th digit)."""
    if _NUMBER.sub("#", ours) != _NUMBER.sub("#", theirs):
        return False
    pairs = list(zip(_NUMBER.findall(ours), _NUMBER.findall(theirs)))
    return all(len(a) == len(b) and abs(float(a) - float(b)) <= rtol * max(abs(float(b)), 1e-3) for a, b in pairs)


_PRINT_FITS = {
    "sleepstudy_reml": lambda: jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy")),
    "sleepstudy_ml": lambda: jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"),
                                     reml=False),
    "pastes_reml": lambda: jm.lmer("strength ~ 1 + (1 | batch/cask)", jm.datasets.load("Pastes")),
    "cbpp_laplace": lambda: jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)",
                                     jm.datasets.load("cbpp"), family="binomial"),
}


@pytest.mark.parametrize("case", list(_PRINT_FITS))
def test_print_fit_is_lme4s_print(case):
    fit = _PRINT_FITS[case]()
    assert repr(fit) == str(fit)
    ours = str(fit).splitlines()
    theirs = R["print_fits"][case]
    assert len(ours) == len(theirs), "\n".join(ours)
    for a, b in zip(ours, theirs):
        assert _same_layout(a, b), (a, b)


def test_fixed_effects_of_print_wrap_at_80_columns():
    from jaxmlm.results._display import _named_vector_lines

    names = [f"coefficient{k}" for k in range(8)]
    text = _named_vector_lines(names, ["1.25"] * 8)
    lines = text.splitlines()
    assert len(lines) == 4 and all(len(line) <= 80 for line in lines)  # 5 fields of 13 + 2 to a line
    assert lines[0].split() == names[:5] and lines[3].split() == ["1.25"] * 3


def test_model_repr_names_formula_family_and_sizes():
    model = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                     family="binomial", data_name="cbpp")
    assert repr(model) == ("<jaxmlm.Model cbind(incidence, size - incidence) ~ period + (1 | herd): binomial (logit); "
                           "56 rows of cbpp; groups herd (15 levels); 4 fixed effects, 1 theta>")


def test_varcorr_missing_names_are_nan_for_every_model():
    """var2 of a variance and var1/var2 of the residual are NaN (R's NA), with or without correlations."""
    import numpy as np

    for formula in ("strength ~ 1 + (1 | batch/cask)",):
        vc = jm.lmer(formula, jm.datasets.load("Pastes")).varcorr()
        assert vc["var2"].map(lambda v: isinstance(v, float) and np.isnan(v)).all()
        assert np.isnan(vc["var1"].iloc[-1])
    vc = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy")).varcorr()
    missing = vc["var2"].map(lambda v: isinstance(v, float) and np.isnan(v))
    assert list(missing) == [True, True, False, True]
