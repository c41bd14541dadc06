"""The formula language beyond the public reference cases, against lme4 (tests/reference/lmm_extra.R wrote the
numbers and the synthetic data sets into lme4_lmm_extra.json)."""

import json
import warnings

import pandas as pd
import pytest

import jaxmlm as jm
from conftest import REFERENCE_DIR, check_against_lme4

REFERENCE = json.loads((REFERENCE_DIR / "lme4_lmm_extra.json").read_text())
CASES = sorted(k for k in REFERENCE if not k.startswith("_"))


def _data(name):
    if name in REFERENCE["_data"]:
        frame = pd.DataFrame(REFERENCE["_data"][name])
        for column, levels in REFERENCE.get("_ordered", {}).get(name, {}).items():
            frame[column] = pd.Categorical(frame[column], categories=levels, ordered=True)
        return frame
    return jm.datasets.load(name)


@pytest.mark.parametrize("case", CASES)
def test_extra_linear_case_matches_lme4(case):
    ref = REFERENCE[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jm.lmer(ref["formula"], _data(ref["data"]), reml=ref["reml"], weights=ref["weights"])
    check_against_lme4(fit, ref)
    assert fit.converged
