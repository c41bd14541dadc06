"""Compile effort: XLA's optimization level for jaxmlm's own programs, which changes time and never numbers."""

import concurrent.futures
import os

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm._compile import carry_effort, current_effort


def _estimates(effort):
    with jm.compile_effort(effort):
        lmm = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                        family="binomial")
    return [np.r_[fit.objective, fit.theta, fit.fixef.to_numpy(), fit.se.to_numpy()] for fit in (lmm, glmm)]


def test_both_efforts_give_the_same_estimates():
    """And the process's XLA_FLAGS stay as they were: the level is each program's own compile option."""
    flags = os.environ.get("XLA_FLAGS")
    for fast, default in zip(_estimates("fast"), _estimates("default")):
        np.testing.assert_allclose(fast, default, rtol=1e-10)
    assert os.environ.get("XLA_FLAGS") == flags


def test_effort_is_scoped_and_reaches_worker_threads(monkeypatch):
    monkeypatch.setenv("JAXMLM_COMPILE", "default")
    assert current_effort() == "default"
    with jm.compile_effort("fast"):
        assert current_effort() == "fast"
        with jm.compile_effort("default"):
            assert current_effort() == "default"
        assert current_effort() == "fast"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(lambda _: current_effort(), range(2))) == ["default"] * 2  # threads start afresh
            assert list(pool.map(carry_effort(lambda _: current_effort()), range(2))) == ["fast"] * 2
    assert current_effort() == "default"


def test_unknown_effort_is_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match="compile effort must be one of"):
        with jm.compile_effort("turbo"):
            pass
    monkeypatch.setenv("JAXMLM_COMPILE", "O3")
    with pytest.raises(ValueError, match="JAXMLM_COMPILE"):
        current_effort()
