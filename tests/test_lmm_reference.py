"""Every linear case of the lme4 reference meets the reference README's tolerances."""

import warnings

import pytest

import jaxmlm as jm
from conftest import check_against_lme4

LINEAR_CASES = {
    "sleepstudy_reml": "sleepstudy",
    "sleepstudy_ml": "sleepstudy",
    "sleepstudy_uncorr_reml": "sleepstudy",
    "sleepstudy_intercept_ml": "sleepstudy",
    "dyestuff_reml": "Dyestuff",
    "dyestuff2_reml_singular": "Dyestuff2",
    "penicillin_crossed_reml": "Penicillin",
    "pastes_nested_reml": "Pastes",
    "insteval_crossed_ml": "InstEval",
}


@pytest.mark.parametrize("case", sorted(LINEAR_CASES))
def test_linear_case_matches_lme4(case, lme4_reference):
    ref = lme4_reference[case]
    data = jm.datasets.load(LINEAR_CASES[case])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jm.lmer(ref["formula"], data, reml=ref["reml"])
    check_against_lme4(fit, ref)
    assert fit.converged
    singular_warned = any(issubclass(w.category, jm.SingularFitWarning) for w in caught)
    assert singular_warned == ref["singular"]
    # the objective is the REML criterion for REML fits and -2 logLik for ML fits
    assert fit.objective == pytest.approx(-2 * fit.loglik, rel=1e-12)


def test_block_kinds_follow_the_design():
    """Nested terms stay block-diagonal; crossed terms go to the dense tail."""
    pastes = jm.Model("strength ~ 1 + (1 | batch/cask)", jm.datasets.load("Pastes"))
    assert pastes.structure.n_prefix == 2 and pastes.structure.m_z == 0
    pen = jm.Model("diameter ~ 1 + (1 | plate) + (1 | sample)", jm.datasets.load("Penicillin"))
    assert pen.structure.n_prefix == 1 and pen.structure.m_z == 6
    uncorr = jm.Model("Reaction ~ Days + (Days || Subject)", jm.datasets.load("sleepstudy"))
    assert uncorr.structure.n_prefix == 2
