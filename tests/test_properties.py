"""Property tests on random small designs against the dense likelihood of ``brute_force.py``.

Designs come in three fixed shapes (crossed, nested with a slope on the outer factor, a correlated slope) so that
each compiles once; hypothesis draws the data (response, covariate, weights, row order, effect sizes) and θ. The
budget is fixed and the examples are derandomized, so CI runs the same cases every time.
"""

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import jaxmlm as jm
from brute_force import dense_criterion, dense_estimates, dense_optimum

PROPERTY_SETTINGS = settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)

# kind → (formula, grouping columns for 24 rows)
KINDS = {
    "crossed": "y ~ x + (1 | a) + (1 | b)",
    "nested_slope": "y ~ x + (x | a) + (1 | a:b)",
    "slope": "y ~ x + (x | g)",
}


def random_frame(kind: str, seed: int, effect: float, use_weights: bool) -> tuple[pd.DataFrame, np.ndarray | None]:
    rng = np.random.default_rng(seed)
    n = 24
    if kind == "crossed":  # 4 × 3 fully crossed, 2 replicates
        a = np.repeat(np.arange(4), 6)
        b = np.tile(np.repeat(np.arange(3), 2), 4)
    elif kind == "nested_slope":  # 4 outer levels, 2 inner levels within each, 3 rows per cell
        a = np.repeat(np.arange(4), 6)
        b = np.tile(np.repeat(np.arange(2), 3), 4)
    else:  # 6 groups of 4
        a = np.repeat(np.arange(6), 4)
        b = np.zeros(n, dtype=int)
    x = rng.normal(size=n) * rng.uniform(0.5, 3.0) + rng.normal()
    y = 1.0 + 0.5 * x + rng.normal(size=n)
    y += effect * rng.normal(size=a.max() + 1)[a]
    y += effect * rng.normal(size=(a.max() + 1, b.max() + 1))[a, b]
    if kind != "crossed":
        y += 0.5 * effect * rng.normal(size=a.max() + 1)[a] * x
    frame = pd.DataFrame(
        {"y": y, "x": x, "a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b], "g": [f"g{i}" for i in a]}
    )
    order = rng.permutation(n)
    frame = frame.iloc[order].reset_index(drop=True)
    weights = rng.uniform(0.3, 3.0, size=n) if use_weights else None
    return frame, weights


def _model(kind, seed, effect, use_weights):
    frame, weights = random_frame(kind, seed, effect, use_weights)
    return jm.Model(KINDS[kind], frame, weights=weights)


design_args = dict(
    seed=st.integers(0, 2**31 - 1),
    effect=st.sampled_from([0.0, 0.3, 1.0, 3.0]),
    use_weights=st.booleans(),
)


@pytest.mark.parametrize("kind", sorted(KINDS))
@PROPERTY_SETTINGS
@given(**design_args, reml=st.booleans(), raw_theta=st.lists(st.floats(-2.0, 2.0), min_size=6, max_size=6))
def test_deviance_equals_dense_likelihood(kind, seed, effect, use_weights, reml, raw_theta):
    model = _model(kind, seed, effect, use_weights)
    theta = np.asarray(raw_theta[: model.n_theta])
    got = model.deviance(theta, reml=reml)
    want = dense_criterion(model.design, theta, reml)
    assert got == pytest.approx(want, rel=1e-9, abs=1e-9)


# one criterion per shape: each (shape, criterion) pair is a separate compile of the whole fit, so the fit is
# checked on two shapes (crossed; nested with a correlated slope), the deviance above on all three
@pytest.mark.parametrize("kind,reml", [("crossed", True), ("nested_slope", False)])
@PROPERTY_SETTINGS
@given(**design_args)
def test_optimum_is_never_worse_than_dense_optimization(kind, reml, seed, effect, use_weights):
    model = _model(kind, seed, effect, use_weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit(method="reml" if reml else "ml")
    # the reported objective is the dense criterion at the reported θ ...
    at_fit = dense_criterion(model.design, fit.theta, reml)
    assert fit.objective == pytest.approx(at_fit, rel=1e-9, abs=1e-9)
    # ... β and σ are its generalized least squares estimates ...
    est = dense_estimates(model.design, fit.theta, reml)
    np.testing.assert_allclose(fit.fixef.to_numpy(), est["beta"], rtol=1e-7, atol=1e-9)
    assert fit.sigma == pytest.approx(est["sigma"], rel=1e-7)
    # ... and SciPy on the dense criterion, from lme4's start and from the engine's answer, finds nothing lower
    best, _ = dense_optimum(model.design, reml, starts=[model.theta_start(), fit.theta])
    assert fit.objective <= best + 1e-7 * abs(best) + 1e-8, (fit.objective, best)
