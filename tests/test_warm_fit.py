"""What a GLMM fit reuses instead of computing again: the search's last value and gradient, the Hessian's gradient
programs dispatched together, the state taken once; and the tail combinations found from one number per row
(`_blocks._unique_rows`). Each gives what the plain computation gives."""

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm._config import float64
from jaxmlm.core._blocks import _unique_rows
from jaxmlm.fit._glmm import _value_and_grad
from jaxmlm.optim._optimize import central_difference_hessian


@pytest.mark.parametrize("spans", [(51, 4, 2, 4, 4, 3, 3, 3), (7,), (2**40, 2**30)])
def test_unique_rows_is_numpys(spans):
    rng = np.random.default_rng(0)
    dtype = np.int64 if max(spans) > 2**30 else np.int32
    cols = np.stack([rng.integers(5, 5 + s, 3000) for s in spans], axis=1).astype(dtype)
    cols[:100] = cols[100:200]  # repeated rows
    groups, inverse = _unique_rows(cols)
    want, want_inverse = np.unique(cols, axis=0, return_inverse=True)
    assert groups.dtype == cols.dtype
    np.testing.assert_array_equal(groups, want)
    np.testing.assert_array_equal(inverse.reshape(-1), want_inverse.reshape(-1))
    np.testing.assert_array_equal(groups[inverse.reshape(-1)], cols)


def _crossed_cells(seed=0, n=600):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.integers(0, 30, n), "b": rng.integers(0, 4, n), "c": rng.integers(0, 3, n),
                          "x": rng.normal(size=n)})
    eta = 0.4 * frame.x + 0.7 * rng.normal(size=30)[frame.a] + rng.normal(size=4)[frame.b] + 0.5 * rng.normal(size=3)[frame.c]
    frame["k"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    for g in "abc":
        frame[g] = frame[g].astype(str)
    return frame


@float64
def _fresh_derivatives(x, problem):
    value, grad, _ = _value_and_grad(x, problem, None, None)
    hess = central_difference_hessian(
        lambda points: np.stack([np.asarray(_value_and_grad(p, problem, None, None)[1]) for p in points]), x)
    return float(value), np.asarray(grad), hess


@pytest.mark.parametrize("case", ["cbpp", "crossed"])
def test_fit_derivatives_are_those_at_the_estimate(case, cbpp_fit):
    """The objective and gradient the fit reports are what evaluating them afresh at its (θ, β) gives; its
    Hessian (hence vcov) is the one from the gradients taken one at a time (at the search's optimum, which Newton's
    polish moves by ~1e-6, so to that order)."""
    if case == "cbpp":
        fit = cbpp_fit
    else:
        fit = jm.glmer("k ~ x + (1 | a) + (1 | b) + (1 | c)", _crossed_cells(), family="binomial")
    x = np.concatenate([fit.theta, np.asarray(fit.fixef)])
    value, grad, hess = _fresh_derivatives(x, fit.model.glmm_problem)
    assert fit.objective == pytest.approx(value, rel=1e-13)
    assert fit.optinfo.grad_max == pytest.approx(float(np.max(np.abs(np.asarray(grad)))), rel=1e-6, abs=1e-12)
    nt = fit.theta.size
    vcov = 2.0 * np.linalg.inv(hess)[nt:, nt:]
    np.testing.assert_allclose(np.asarray(fit.vcov), vcov, rtol=1e-5)
    np.testing.assert_allclose(fit.optinfo.hessian_eigenvalues, np.linalg.eigvalsh(hess), rtol=1e-5)


@pytest.mark.parametrize("offset", [0.0, 2e-3])
def test_newton_polish_hessian_is_central(offset, cbpp_fit):
    """From the estimate (steps of ~0) the polish's Hessian is the central one at its start, its forward half
    reused; from 2e-3 off (steps larger than 1e-4) the central one at the point it ends at. Its value and gradient
    are those at that end point."""
    from jaxmlm.fit._glmm import _newton_polish

    problem = cbpp_fit.model.glmm_problem
    start = np.concatenate([cbpp_fit.theta, np.asarray(cbpp_fit.fixef)]) + offset
    x, derivs = float64(_newton_polish)(start.copy(), problem, None, None)
    moved = np.any(np.abs(x - start) > 1e-4 * (1.0 + np.abs(start)))
    assert moved == (offset > 0)
    value, grad, hess = _fresh_derivatives(x if moved else start, problem)
    np.testing.assert_array_equal(derivs["hess"], hess)
    end_value, end_grad, _ = _fresh_derivatives(x, problem) if not moved else (value, grad, None)
    assert float(derivs["value"]) == end_value
    np.testing.assert_array_equal(np.asarray(derivs["grad"]), end_grad)
