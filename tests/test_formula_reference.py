"""The formula language against the model matrices R builds (tests/reference/formula_matrices.R → .json): for each
formula, lme4's X (after it drops dependent columns), R's model.matrix of the fixed part, lme4's Z (matched column
by column through its grouping level and coefficient name), the grouping levels and the response; then the
ChickWeight regression case (a quadratic random slope on an integer column) against lme4's ML deviance, and
glmmTMB's us()/diag() spellings against lme4's (x | g) and (x || g) fits."""

import json
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR

REFERENCE = json.loads((REFERENCE_DIR / "formula_matrices.json").read_text())
CASES = {case["formula"]: case for case in REFERENCE["cases"]}


def _frame(columns: dict) -> pd.DataFrame:
    out = {}
    for name, col in columns.items():
        if col["kind"] == "factor":
            out[name] = pd.Categorical(col["values"], categories=col["levels"], ordered=col["ordered"])
        elif col["kind"] == "integer":
            out[name] = np.asarray(col["values"], dtype=np.int64)
        else:
            out[name] = np.asarray(col["values"], dtype=np.float64)
    return pd.DataFrame(out)


DATA = _frame(REFERENCE["data"])


def _names(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def _matrix(value, n: int) -> np.ndarray:
    return np.asarray(value, dtype=np.float64).reshape(n, -1)


def _design(case):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.RankDeficiencyWarning)
        return jm.Model(case["jaxmlm_formula"], DATA).design


def _lme4_group(name: str, case) -> str:
    """lme4 cannot read factor() around a grouping factor; the R formula names the column alone."""
    return name.replace("factor(k)", "k") if case["jaxmlm_formula"] != case["formula"] else name


def _z_columns(design, case) -> dict[str, np.ndarray]:
    """Z's columns keyed as the R script keys lme4's: term (lme4's order) | group | level | coefficient."""
    out = {}
    for k, term in enumerate(design.terms):
        group = _lme4_group(term.group_name, case)
        for level_index, level in enumerate(term.levels):
            rows = term.codes == level_index
            for j, coef in enumerate(term.column_names):
                out[f"{k + 1}|{group}|{level}|{coef}"] = np.where(rows, term.z[:, j], 0.0)
    return out


@pytest.mark.parametrize("formula", list(CASES))
def test_fixed_effects_matrix_matches_lme4(formula):
    case = CASES[formula]
    design = _design(case)
    assert design.x_names == _names(case["x_names"])
    np.testing.assert_allclose(design.X, _matrix(case["X"], len(DATA)), rtol=1e-12, atol=1e-12)
    # before lme4 drops dependent columns: R's model.matrix itself, and the same columns again on "new" data
    assert design.x_names_all == _names(case["mm_names"])
    np.testing.assert_allclose(design.x_spec.get_model_matrix(DATA).to_numpy(), _matrix(case["mm"], len(DATA)),
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("formula", list(CASES))
def test_random_effects_matrix_and_levels_match_lme4(formula):
    case = CASES[formula]
    design = _design(case)
    lme4_groups = _names(case["groups"])
    assert [_lme4_group(t.group_name, case) for t in design.terms] == lme4_groups
    assert [t.column_names for t in design.terms] == [_names(c) for c in case["cnms"]]
    for term in design.terms:
        assert list(term.levels) == _names(case["flist_levels"][_lme4_group(term.group_name, case)])
    ours = _z_columns(design, case)
    lme4_z = _matrix(case["Z"], len(DATA))
    assert sorted(ours) == sorted(case["z_keys"])
    for j, key in enumerate(case["z_keys"]):
        np.testing.assert_allclose(ours[key], lme4_z[:, j], rtol=1e-12, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("formula", list(CASES))
def test_response_and_offset_match_lme4(formula):
    case = CASES[formula]
    design = _design(case)
    np.testing.assert_allclose(design.y, case["y"], rtol=1e-14)
    expected_offset = np.zeros(len(DATA)) if case["offset"] is None else np.asarray(case["offset"])
    np.testing.assert_allclose(design.offset, expected_offset, rtol=1e-14)


def _chickweight_model():
    data = pd.read_csv(REFERENCE_DIR / "formula_chickweight.csv.gz")
    assert data["Time"].dtype.kind == "i"
    return jm.Model(REFERENCE["chickweight"]["formula"], data), data


def test_quadratic_random_slope_on_an_integer_column_matches_lme4s_deviance_function():
    """ChickWeight: `I(Time^2)` inside the random term is a power (R's ^), not Python's XOR on integers."""
    ref = REFERENCE["chickweight"]
    model, data = _chickweight_model()
    quadratic = model.design.terms[0]
    assert quadratic.column_names == ["(Intercept)", "Time", "I(Time^2)"]
    np.testing.assert_array_equal(quadratic.z[:, 2], data["Time"].to_numpy() ** 2)
    assert float(model.deviance(np.asarray(ref["devfun_theta"]), reml=False)) == pytest.approx(
        ref["devfun_value"], rel=1e-10)


@pytest.mark.slow
def test_quadratic_random_slope_fit_reaches_lme4s_optimum():
    ref = REFERENCE["chickweight"]
    model, _ = _chickweight_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.SingularFitWarning)
        fit = model.fit(method="ml")
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-7)
    assert fit.deviance <= ref["deviance"] + 1e-6
    np.testing.assert_allclose(fit.fixef.to_numpy(), list(ref["fixef"].values()), rtol=1e-4)


@pytest.mark.parametrize("spelling, lme4_name", [("us(Days | Subject)", "us"), ("diag(Days | Subject)", "diag")])
def test_covariance_spellings_fit_as_lme4s_bars(spelling, lme4_name):
    ref = REFERENCE["spellings"][lme4_name]
    fit = jm.lmer(f"Reaction ~ Days + {spelling}", jm.datasets.load("sleepstudy"), reml=False)
    assert fit.deviance == pytest.approx(ref["deviance"], rel=1e-7)
    np.testing.assert_allclose(fit.theta, ref["theta"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref["fixef"], rtol=1e-6)
