"""Fits that must not change (or must change in a known way) when the input is rearranged.

The models reuse the shapes of the lme4 reference tests (sleepstudy REML, Penicillin crossed REML, Pastes nested
REML), so the compiled programs are shared.
"""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm

SLEEP = "Reaction ~ Days + (Days | Subject)"
PEN = "diameter ~ 1 + (1 | plate) + (1 | sample)"


def _fit(formula, data, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jm.lmer(formula, data, **kwargs)


def _covariances(fit):
    """Σ per grouping factor, from varcorr (variances and covariances)."""
    vc = fit.varcorr()
    return vc[vc["grp"] != "Residual"]


def assert_same_fit(a, b, *, theta_atol=2e-5, rtol=1e-6):
    assert a.objective == pytest.approx(b.objective, rel=1e-10)
    np.testing.assert_allclose(a.theta, b.theta, atol=theta_atol, rtol=0)
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.se.to_numpy(), b.se.to_numpy(), rtol=1e-4)
    assert a.sigma == pytest.approx(b.sigma, rel=rtol)


@pytest.fixture(scope="module")
def sleep():
    return jm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleep):
    return _fit(SLEEP, sleep)


@pytest.fixture(scope="module")
def pen():
    return jm.datasets.load("Penicillin")


@pytest.fixture(scope="module")
def pen_fit(pen):
    return _fit(PEN, pen)


# ---------------------------------------------------------------------------------------------- formula and labels
def test_term_order_in_the_formula(pen, pen_fit):
    swapped = _fit("diameter ~ 1 + (1 | sample) + (1 | plate)", pen)
    assert_same_fit(pen_fit, swapped, theta_atol=1e-8, rtol=1e-10)
    assert list(swapped.varcorr()["grp"]) == list(pen_fit.varcorr()["grp"])


def test_nesting_slash_equals_explicit_interaction():
    pastes = jm.datasets.load("Pastes")
    slash = _fit("strength ~ 1 + (1 | batch/cask)", pastes)
    explicit = _fit("strength ~ 1 + (1 | batch) + (1 | batch:cask)", pastes)
    assert_same_fit(slash, explicit, theta_atol=1e-6)


def test_level_relabelling_and_permutation(pen, pen_fit):
    rng = np.random.default_rng(7)
    plates = list(pen["plate"].cat.categories)
    new_names = {p: f"P{k:02d}" for p, k in zip(plates, rng.permutation(len(plates)))}
    relabelled = pen.assign(
        plate=pen["plate"].astype(str).map(new_names),  # strings in a new order
        sample=pd.Categorical(pen["sample"].astype(str), categories=list(reversed(pen["sample"].cat.categories))),
    )
    fit = _fit(PEN, relabelled)
    assert_same_fit(pen_fit, fit)
    ours, theirs = fit.ranef(condvar=False)["plate"], pen_fit.ranef(condvar=False)["plate"]
    theirs = theirs.rename(index=new_names).loc[ours.index]
    np.testing.assert_allclose(ours.to_numpy(), theirs.to_numpy(), rtol=1e-5, atol=1e-8)


def test_row_order(sleep, sleep_fit):
    shuffled = sleep.sample(frac=1.0, random_state=3)
    fit = _fit(SLEEP, shuffled)
    assert_same_fit(sleep_fit, fit)
    # fitted values follow their rows
    np.testing.assert_allclose(
        np.asarray(fit.fitted()), np.asarray(sleep_fit.fitted())[shuffled.index.to_numpy()], rtol=1e-7
    )


# ---------------------------------------------------------------------------------------------- affine changes
@pytest.mark.parametrize("shift,scale", [(1000.0, 1.0), (0.0, 0.01), (-50.0, -3.0)])
def test_location_and_scale_of_the_response(sleep, sleep_fit, shift, scale):
    fit = _fit(SLEEP, sleep.assign(Reaction=shift + scale * sleep["Reaction"]))
    np.testing.assert_allclose(fit.theta, sleep_fit.theta, atol=2e-5)  # θ is relative to σ: unchanged
    assert fit.sigma == pytest.approx(abs(scale) * sleep_fit.sigma, rel=1e-6)
    want = scale * sleep_fit.fixef.to_numpy() + np.array([shift, 0.0])
    np.testing.assert_allclose(fit.fixef.to_numpy(), want, rtol=1e-6, atol=1e-6 * abs(shift))
    np.testing.assert_allclose(fit.se.to_numpy(), abs(scale) * sleep_fit.se.to_numpy(), rtol=1e-4)
    # the REML criterion moves by (n - p) log(scale²): the Jacobian of the change
    n_minus_p = fit.nobs - 2
    assert fit.objective == pytest.approx(sleep_fit.objective + n_minus_p * np.log(scale**2), rel=1e-9)


@pytest.mark.parametrize("shift,scale", [(3.0, 1.0), (0.0, 24.0), (-4.5, 0.5)])
def test_location_and_scale_of_a_covariate(sleep, sleep_fit, shift, scale):
    """x' = shift + scale·x reparameterizes (Days | Subject): the likelihood is unchanged, β and Σ transform.

    The REML criterion holds log|XᵀV⁻¹X|, which moves by log(scale²) (as lme4's does); ML would not move."""
    fit = _fit(SLEEP, sleep.assign(Days=shift + scale * sleep["Days"]))
    assert fit.objective == pytest.approx(sleep_fit.objective + np.log(scale**2), rel=1e-10)
    b0, b1 = sleep_fit.fixef.to_numpy()
    np.testing.assert_allclose(fit.fixef.to_numpy(), [b0 - b1 * shift / scale, b1 / scale], rtol=1e-6)
    assert fit.sigma == pytest.approx(sleep_fit.sigma, rel=1e-6)
    # b0 + b1·x = (b0 − b1·shift/scale) + (b1/scale)·x'  ⇒  Σ' = A Σ Aᵀ
    A = np.array([[1.0, -shift / scale], [0.0, 1.0 / scale]])
    cov = lambda f: f.sigma**2 * (lambda T: T @ T.T)(np.array([[f.theta[0], 0.0], [f.theta[1], f.theta[2]]]))
    np.testing.assert_allclose(cov(fit), A @ cov(sleep_fit) @ A.T, rtol=1e-4, atol=1e-4 * np.abs(cov(fit)).max())


# ---------------------------------------------------------------------------------------------- entry points and input types
def test_glmer_gaussian_is_lmer(sleep, sleep_fit):
    """lme4's glmer(family = gaussian) warns and calls lmer (REML by default); so does jaxmlm."""
    with pytest.warns(FutureWarning, match="lmer"):
        fit = jm.glmer(SLEEP, sleep, family="gaussian")
    assert fit.method == "reml"
    np.testing.assert_array_equal(fit.theta, sleep_fit.theta)
    np.testing.assert_array_equal(fit.fixef.to_numpy(), sleep_fit.fixef.to_numpy())
    assert fit.objective == sleep_fit.objective


def test_polars_input_gives_the_pandas_fit(sleep, sleep_fit):
    pl = pytest.importorskip("polars")
    fit = _fit(SLEEP, pl.from_pandas(sleep))
    assert_same_fit(sleep_fit, fit, theta_atol=1e-8, rtol=1e-10)
    assert fit.ngroups == sleep_fit.ngroups
    assert sorted(fit.ranef(condvar=False)["Subject"].index) == sorted(sleep_fit.ranef(condvar=False)["Subject"].index)


def test_numeric_grouping_factor_is_categorical(sleep, sleep_fit):
    fit = _fit(SLEEP, sleep.assign(Subject=sleep["Subject"].astype(int)))
    assert_same_fit(sleep_fit, fit, theta_atol=1e-8, rtol=1e-10)


# ---------------------------------------------------------------------------------------------- determinism
def test_repeated_fits_are_bit_identical(sleep, sleep_fit):
    again = _fit(SLEEP, sleep)
    rebuilt = _fit(SLEEP, sleep.copy())
    for fit in (again, rebuilt):
        np.testing.assert_array_equal(fit.theta, sleep_fit.theta)
        np.testing.assert_array_equal(fit.fixef.to_numpy(), sleep_fit.fixef.to_numpy())
        np.testing.assert_array_equal(fit.se.to_numpy(), sleep_fit.se.to_numpy())
        assert fit.sigma == sleep_fit.sigma and fit.objective == sleep_fit.objective
        np.testing.assert_array_equal(
            fit.ranef(condvar=False)["Subject"].to_numpy(), sleep_fit.ranef(condvar=False)["Subject"].to_numpy()
        )
    s1 = np.asarray(sleep_fit.simulate(3, seed=11))
    s2 = np.asarray(again.simulate(3, seed=11))
    np.testing.assert_array_equal(s1, s2)
