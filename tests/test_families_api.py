"""The dispersion families' public surface: family objects and strings, lme4's argument spellings, bad input
(each caught before anything compiles, naming the column), and what a fitted model of such a family offers."""

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.formula._family import get_family


def _frame(y, n_groups=4):
    y = np.asarray(y, dtype=float)
    return pd.DataFrame({"resp": y, "x": np.linspace(-1, 1, y.size),
                         "g": [f"g{i % n_groups}" for i in range(y.size)]})


@pytest.mark.parametrize("family, values, what", [
    ("nbinom2", [0, 1, -2, 3, 4, 5, 6, 7], "non-negative counts"),
    ("nbinom1", [0, 1, 2.5, 3, 4, 5, 6, 7], "integer counts"),
    (jm.families.negative_binomial(theta=2.0), [0, 1, 2.5, 3, 4, 5, 6, 7], "integer counts"),
    ("Gamma", [1.0, 0.0, 2.0, 3.0, 1.5, 2.5, 0.5, 1.2], "positive"),
    (jm.families.Gamma(link="log"), [1.0, -1.0, 2.0, 3.0, 1.5, 2.5, 0.5, 1.2], "positive"),
    ("inverse_gaussian", [1.0, 0.0, 2.0, 3.0, 1.5, 2.5, 0.5, 1.2], "positive"),
    ("beta", [0.2, 0.5, 1.0, 0.3, 0.4, 0.6, 0.7, 0.1], "strictly between 0 and 1"),
    ("beta", [0.2, 0.5, 0.0, 0.3, 0.4, 0.6, 0.7, 0.1], "strictly between 0 and 1"),
])
def test_bad_response_names_the_column(family, values, what):
    with pytest.raises(jm.ResponseError, match=rf"'resp'.*{what}"):
        jm.Model("resp ~ x + (1 | g)", _frame(values), family=family)


def test_family_objects_and_strings_agree():
    assert jm.families.binomial(link="probit") == get_family("binomial", "probit")
    assert jm.families.poisson() == get_family("poisson")
    assert jm.families.Gamma(link="log") == get_family("Gamma", "log")
    assert jm.families.Gamma().link == "inverse"  # R's default
    assert jm.families.inverse_gaussian().link == "1/mu^2"
    assert jm.families.negative_binomial() == get_family("nbinom2")
    assert jm.families.negative_binomial(theta=2).dispersion == 2.0
    assert jm.families.beta_family() == get_family("beta")
    assert jm.families.nbinom1() == get_family("nbinom1")
    with pytest.raises(jm.FamilyError, match="links inverse, log, identity"):
        jm.families.Gamma(link="logit")
    with pytest.raises(jm.FamilyError, match="theta must be a positive number"):
        jm.families.negative_binomial(theta=0.0)
    with pytest.raises(jm.FamilyError, match="does not support link"):
        get_family("beta", "log")


@pytest.mark.parametrize("argument, names", [
    ("control", "max_iter="), ("verbose", "fit.optinfo"), ("devFunOnly", "deviance"), ("subset", "rows"),
])
def test_lme4_arguments_without_counterpart(argument, names):
    data = jm.datasets.load("cbpp")
    for fit in (jm.lmer, jm.glmer):
        with pytest.raises(TypeError, match=names):
            fit("incidence ~ period + (1 | herd)", data, **{argument: None})


def test_lme4_aliases_conflict_before_fitting():
    data = jm.datasets.load("cbpp")
    with pytest.raises(TypeError, match="nAGQ"):
        jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", data, nagq=3, nAGQ=5)
    with pytest.raises(TypeError, match="REML"):
        jm.lmer("incidence ~ period + (1 | herd)", data, reml=False, REML=True)


def test_reml_spelling_and_lme4_start():
    data = jm.datasets.load("Dyestuff")
    ml = jm.lmer("Yield ~ 1 + (1 | Batch)", data, REML=False)
    assert ml.method == "ml"
    again = jm.lmer("Yield ~ 1 + (1 | Batch)", data, reml=False, start={"theta": [0.5]})
    assert again.objective == pytest.approx(ml.objective, rel=1e-10)


def test_batch_of_a_dispersion_family_checks_each_column():
    """fit_batch takes a dispersion family (tests/test_families_batch.py); a bad value is refused naming its
    column before anything compiles."""
    model = jm.Model("y ~ 1 + (1 | g)", pd.DataFrame({"y": [1.0, 2.0, 0.5, 3.0] * 3, "g": list("aabb") * 3}),
                     family="Gamma")
    Y = np.ones((12, 2))
    Y[3, 1] = 0.0
    with pytest.raises(jm.ResponseError, match="response '1' must be positive"):
        model.fit_batch(Y)


@pytest.mark.slow
def test_fixed_theta_negative_binomial():
    """negative_binomial(theta=...) holds θ: one parameter fewer, no SE for θ; a batch holds it too, and
    intervals have no row for it."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 6)
    mu = np.exp(0.5 + rng.normal(scale=0.5, size=8)[g])
    data = pd.DataFrame({"y": rng.negative_binomial(2.0, 2.0 / (2.0 + mu)), "g": g})
    fit = jm.glmer("y ~ 1 + (1 | g)", data, family=jm.families.negative_binomial(theta=2.0))
    assert fit.dispersion == 2.0 and np.isnan(fit.dispersion_se)
    assert fit.n_params == 2
    assert "(fixed)" in str(fit.summary())
    batch = fit.model.fit_batch(np.column_stack([data["y"], data["y"]]).astype(float))
    np.testing.assert_allclose(batch.objective, fit.objective, rtol=1e-6)
    np.testing.assert_array_equal(batch.dispersion, 2.0)
    assert np.isnan(batch.dispersion_se).all()
    assert list(fit.confint(method="wald").index) == ["sd_(Intercept)|g", "(Intercept)"]
