"""fit.optsum: one record of what the optimizer did, the same for linear, generalized and iterative fits, and
consistent with the fit it belongs to (and with fit.optinfo, which it also gives)."""

import warnings

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.optim._summary import RETURN_CODES, OptSummary

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def sleep_model():
    return jm.Model(SLEEP, jm.datasets.load("sleepstudy"))


def _consistent(fit, x):
    s = fit.optsum
    assert isinstance(s, OptSummary) and s.return_code in RETURN_CODES
    np.testing.assert_array_equal(s.final, x)
    assert s.fmin == fit.objective
    assert s.converged == fit.converged
    info = fit.optinfo
    assert (info.n_eval, info.n_iter, info.method, info.messages) == (s.evaluations, s.iterations, s.optimizer,
                                                                     s.messages)
    assert info.grad_max == s.grad_max
    assert s.initial.shape == s.lower.shape == x.shape
    assert "fmin" in repr(s)


def test_linear_fit_optsum(sleep_model):
    fit = sleep_model.fit("reml")
    _consistent(fit, fit.theta)
    s = fit.optsum
    assert (s.optimizer, s.method, s.nagq, s.return_code) == ("BFGS", "reml", 1, "converged")
    np.testing.assert_array_equal(s.initial, sleep_model.theta_start())
    np.testing.assert_array_equal(s.lower, [0.0, -np.inf, 0.0])
    assert s.gtol == 1e-9 and s.max_evaluations == 1000 and 0 < s.iterations <= s.evaluations


def test_user_start_and_evaluation_limit_are_recorded(sleep_model):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", jm.ConvergenceWarning)
        fit = sleep_model.fit("ml", start=[0.5, 0.0, 0.5], max_iter=3)
    s = fit.optsum
    np.testing.assert_array_equal(s.initial, [0.5, 0.0, 0.5])
    assert (s.return_code, s.max_evaluations, s.evaluations, s.converged) == ("max_evaluations", 3, 3, False)
    _consistent(fit, fit.theta)


def test_glmm_fit_optsum():
    fit = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                   family="binomial", nagq=5)
    _consistent(fit, np.concatenate([fit.theta, fit.fixef.to_numpy()]))
    s = fit.optsum
    assert (s.method, s.nagq, s.optimizer) == ("agq", 5, "BFGS")
    assert s.lower[0] == 0.0 and np.isneginf(s.lower[1:]).all()


def test_iterative_fit_optsum(sleep_model):
    fit = sleep_model.fit("ml", solver="iterative", solver_options=dict(n_probes=8, lanczos_steps=10))
    _consistent(fit, fit.theta)
    s = fit.optsum
    assert s.optimizer == "COBYQA (iterative)" and s.xtol == 1e-6 and np.isnan(s.gtol)
