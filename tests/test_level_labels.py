"""Grouping factors read from numeric and logical columns are labelled as R's factor() labels them (as.character
of each value: "2", not "2.0"; "1e+05"; "TRUE"), so ranef() rows, predictions on new data and poststratification
frames use lme4's level names. Reference: tests/reference/level_labels.R."""

import json
import os

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.formula._design import level_labels, row_labels

REF = json.load(open(os.path.join(os.path.dirname(__file__), "reference", "level_labels.json")))


@pytest.fixture(scope="module")
def sleep():
    d = jm.datasets.load("sleepstudy").copy()
    subj = pd.Series(pd.Categorical(d["Subject"]).codes + 1.0, index=d.index)
    d["subj_double"] = subj
    d["subj_scaled"] = subj * 1e5
    d["subj_frac"] = subj / 4
    d["late"] = d["Days"] > 4
    return d


def test_labels_are_r_as_character():
    assert level_labels(np.asarray(REF["values"], dtype=np.float64)) == REF["labels"]
    assert level_labels(np.array([False, True])) == ["FALSE", "TRUE"]
    assert level_labels(np.array([3, 10], dtype=np.int64)) == ["3", "10"]


@pytest.mark.filterwarnings("ignore::jaxmlm.SingularFitWarning")
@pytest.mark.parametrize("case", REF["fits"], ids=[c["group"] for c in REF["fits"]])
def test_ranef_rows_and_values_match_lme4(sleep, case):
    g = case["group"]
    fit = jm.lmer(f"Reaction ~ Days + (1 | {g})", sleep, REML=False)
    ranef = fit.ranef()[g]
    assert list(ranef.index.astype(str)) == case["levels"]
    np.testing.assert_allclose(fit.deviance, case["deviance"], rtol=1e-6)
    # lme4's conditional modes, by name; the singular fit (two levels) has them all at zero
    np.testing.assert_allclose(ranef.iloc[:, 0].to_numpy(), case["ranef"], rtol=2e-3, atol=1e-3)


def test_new_data_matches_levels_by_r_label(sleep):
    fit = jm.lmer("Reaction ~ Days + (1 | subj_scaled)", sleep, REML=False)
    rows = sleep.iloc[[0, 10, 20]]
    np.testing.assert_allclose(np.asarray(fit.predict(rows)), np.asarray(fit.fitted())[[0, 10, 20]], rtol=1e-10)
    # rows 0, 10, 20 are the first three subjects: their keys are the fit's first three level names
    keys = row_labels(rows, ["subj_scaled"]).tolist()
    assert keys == [fit.ranef()["subj_scaled"].index[i] for i in (0, 1, 2)]
