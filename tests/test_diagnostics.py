"""Convergence diagnostics as lme4 has them, each triggered by data built to trigger it."""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.optim._optimize import OptimResult

DYE = "Yield ~ 1 + (1 | Batch)"
SLEEP = "Reaction ~ Days + (Days | Subject)"


def _fit_recording(formula, data, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jm.lmer(formula, data, **kwargs)
    return fit, caught


def _categories(caught):
    return [w.category for w in caught]


@pytest.fixture(scope="module")
def dyestuff():
    return jm.datasets.load("Dyestuff")


@pytest.fixture(scope="module")
def dye_fit(dyestuff):
    return _fit_recording(DYE, dyestuff)


def test_clean_fit_reports_gradient_and_hessian(dye_fit):
    fit, caught = dye_fit
    assert fit.converged and not caught
    assert fit.optinfo.grad_max < 1e-6
    assert fit.optinfo.hessian_eigenvalues is not None and np.all(fit.optinfo.hessian_eigenvalues > 0)
    assert fit.optinfo.messages == ()


def test_stopping_early_is_reported_with_the_gradient(dyestuff):
    fit, caught = _fit_recording(DYE, dyestuff, max_iter=1)
    assert not fit.converged
    assert fit.optinfo.grad_max > 2e-3
    messages = [str(w.message) for w in caught if issubclass(w.category, jm.ConvergenceWarning)]
    assert any("failed to converge" in m and "max|grad|" in m for m in messages), messages


def test_unidentifiable_model_is_flagged_by_the_hessian(dyestuff):
    """The same grouping factor twice: only θ₁² + θ₂² is identified, so the Hessian has a zero eigenvalue. Its
    computed value is rounding noise of either sign (|λ| ~ 1e-8 to 1e-7), so lme4's absolute rule names it."""
    fit, caught = _fit_recording("Yield ~ 1 + (1 | Batch) + (1 | Batch2)", dyestuff.assign(Batch2=dyestuff["Batch"]))
    eig = np.sort(fit.optinfo.hessian_eigenvalues)
    assert abs(eig[0]) < 1e-6 * eig[-1]
    assert "Hessian is numerically singular: parameters are not uniquely determined" in fit.optinfo.messages
    assert jm.ConvergenceWarning in _categories(caught)
    # the identified combination is still right
    dye, _ = _fit_recording(DYE, dyestuff)
    assert np.hypot(*fit.theta) == pytest.approx(dye.theta[0], rel=1e-5)
    assert fit.objective == pytest.approx(dye.objective, rel=1e-10)


def test_negative_hessian_eigenvalue_is_a_degenerate_hessian(dyestuff):
    """lme4's 'degenerate Hessian' rule, on a Hessian with a negative eigenvalue at an interior θ."""
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    theta = np.array([0.9, 0.1, 0.2])
    res = OptimResult(x=theta, value=np.asarray(1.0), grad=np.zeros(3), n_iter=np.asarray(5), n_eval=np.asarray(7),
                      converged=np.asarray(True))
    kwargs = dict(initial=model.theta_start(), fmin=1.0, method="reml", max_iter=1000)
    info = model._diagnose("BFGS", theta, np.zeros(3), np.diag([4.0, -1.0, 2.0]), res, [], **kwargs)
    assert any("degenerate Hessian" in m for m in info.messages) and not info.converged
    info = model._diagnose("BFGS", theta, np.zeros(3), np.diag([4.0, 1.0, 2.0]), res, [], **kwargs)
    assert info.messages == () and info.converged


def test_singular_fit_lands_on_the_boundary():
    rng = np.random.default_rng(5)
    data = pd.DataFrame({"y": rng.normal(size=40), "g": np.tile(list("abcde"), 8)})
    data.loc[:, "y"] -= data.groupby("g")["y"].transform("mean")  # no variation between groups at all
    fit, caught = _fit_recording("y ~ 1 + (1 | g)", data)
    assert fit.is_singular and fit.theta[0] == 0.0
    assert jm.SingularFitWarning in _categories(caught)
    assert "isSingular" in str(caught[_categories(caught).index(jm.SingularFitWarning)].message)
    assert fit.converged


def test_rank_deficient_columns_are_dropped_as_lme4_does():
    sleep = jm.datasets.load("sleepstudy")
    data = sleep.assign(D2=2 * sleep["Days"], D3=sleep["Days"] + 1)
    fit, caught = _fit_recording("Reaction ~ Days + D2 + D3 + (Days | Subject)", data)
    messages = [str(w.message) for w in caught if issubclass(w.category, jm.RankDeficiencyWarning)]
    assert messages and messages[0].startswith(
        "fixed-effect model matrix is rank deficient so dropping 2 columns / coefficients"
    )
    assert list(fit.fixef.index) == ["(Intercept)", "Days", "D2", "D3"]
    assert np.isnan(fit.fixef["D2"]) and np.isnan(fit.fixef["D3"]) and np.isnan(fit.se["D3"])
    assert "rank deficient" in str(fit.summary())
    full, _ = _fit_recording(SLEEP, sleep)
    np.testing.assert_allclose(fit.fixef[["(Intercept)", "Days"]].to_numpy(), full.fixef.to_numpy(), rtol=1e-8)
    assert fit.objective == pytest.approx(full.objective, rel=1e-12)


def test_non_finite_evaluation_restarts_instead_of_returning_nan(dyestuff, dye_fit):
    fit, caught = _fit_recording(DYE, dyestuff, start=[1e200])  # Λ overflows at this start
    assert np.isfinite(fit.objective)
    assert any("non-finite" in m for m in fit.optinfo.messages)
    np.testing.assert_allclose(fit.theta, dye_fit[0].theta, rtol=1e-8)
    assert fit.objective == pytest.approx(dye_fit[0].objective, rel=1e-12)


def test_no_finite_start_is_an_error_not_nan(dyestuff):
    with pytest.raises(jm.DataError, match="not finite"):
        _fit_recording(DYE, dyestuff.assign(Yield=dyestuff["Yield"] * 1e160))


@pytest.mark.parametrize("start", [[0.0], [1e-9]])
def test_start_on_a_zero_variance_is_not_mistaken_for_a_singular_fit(dyestuff, dye_fit, start):
    """θ = 0 is stationary for any data (the deviance is even in θ); from there the fit must still find the optimum."""
    fit, _ = _fit_recording(DYE, dyestuff, start=start)
    assert not fit.is_singular
    assert fit.objective == pytest.approx(dye_fit[0].objective, rel=1e-10)
    np.testing.assert_allclose(fit.theta, dye_fit[0].theta, rtol=1e-5)


def test_start_with_a_zero_slope_variance_reaches_the_optimum():
    sleep = jm.datasets.load("sleepstudy")
    fit, _ = _fit_recording(SLEEP, sleep, start=[1.0, 0.0, 0.0])
    ref, _ = _fit_recording(SLEEP, sleep)
    assert not fit.is_singular
    assert fit.objective == pytest.approx(ref.objective, rel=1e-10)
