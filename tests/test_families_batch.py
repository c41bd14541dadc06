"""fit_batch, bootstrap and confint for the families with a dispersion parameter: each batch column equals its own
single fit (d included), a bootstrap draw is the single fit of its simulated response, d's profile interval ends
where the deviance with d held there (a fit of the family with that d fixed) has risen by z², and bad input is
refused naming the column before anything is fitted."""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm

N_GROUPS, PER_GROUP, N_COLUMNS = 10, 6, 4


def _frame(seed):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    x = rng.normal(size=g.size)
    eta = 0.4 * x + rng.normal(scale=0.6, size=N_GROUPS)[g]
    return pd.DataFrame({"x": x, "g": [f"g{k}" for k in g]}), eta, rng


def _nbinom2(seed=11):
    frame, eta, rng = _frame(seed)
    mu = np.exp(1.0 + eta)
    return frame, np.stack([rng.negative_binomial(2.0, 2.0 / (2.0 + mu)) for _ in range(N_COLUMNS)], 1), "nbinom2"


def _gamma(seed=12):
    frame, eta, rng = _frame(seed)
    mu = np.exp(0.5 + eta)
    return frame, np.stack([rng.gamma(3.0, mu / 3.0) for _ in range(N_COLUMNS)], 1), jm.families.Gamma(link="log")


def _beta(seed=13):
    frame, eta, rng = _frame(seed)
    mu = 1.0 / (1.0 + np.exp(-eta))
    return frame, np.stack([rng.beta(mu * 8.0, (1.0 - mu) * 8.0) for _ in range(N_COLUMNS)], 1), "beta"


def _nbinom1(seed=21):
    frame, eta, rng = _frame(seed)
    mu, phi = np.exp(1.0 + eta), 1.5  # Var = μ(1 + φ): size μ/φ, probability 1/(1 + φ)
    return frame, np.stack([rng.negative_binomial(mu / phi, 1.0 / (1.0 + phi)) for _ in range(N_COLUMNS)], 1), \
        "nbinom1"


def _inverse_gaussian(seed=22):
    frame, eta, rng = _frame(seed)
    mu = np.exp(0.3 + 0.5 * eta)
    return frame, np.stack([rng.wald(mu, 6.0) for _ in range(N_COLUMNS)], 1), \
        jm.families.inverse_gaussian(link="log")


CASES = {"nbinom2": _nbinom2, "nbinom1": _nbinom1, "Gamma": _gamma, "inverse_gaussian": _inverse_gaussian,
         "beta": _beta}


def single(frame, family, column):
    """The single fit of one column; a missing row keeps the column's first observed value at prior weight 0 (the
    batch's own convention, the same likelihood)."""
    observed = ~np.isnan(column)
    data = frame.assign(y=np.where(observed, column, column[observed][0]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jm.glmer("y ~ x + (1 | g)", data, family=family, weights=observed.astype(float))


@pytest.mark.slow  # a batch compile and a single-fit compile per family
@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_columns_equal_single_fits(case):
    frame, Y, family = CASES[case]()
    Y = Y.astype(float)
    Y[:3, 1] = np.nan  # this response drops three rows
    model = jm.Model("y ~ x + (1 | g)", frame.assign(y=Y[:, 0]), family=family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = model.fit_batch(Y)
    assert batch.converged.all()
    for j in range(N_COLUMNS):
        fit = single(frame, family, Y[:, j])
        assert batch.objective[j] == pytest.approx(fit.objective, rel=1e-6)
        assert batch.loglik[j] == pytest.approx(fit.loglik, rel=1e-6)
        assert batch.dispersion[j] == pytest.approx(fit.dispersion, rel=1e-3)
        assert batch.dispersion_se[j] == pytest.approx(fit.dispersion_se, rel=1e-2)
        np.testing.assert_allclose(batch.fixef.iloc[j], fit.fixef, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(batch.se.iloc[j], fit.se, rtol=1e-2)
        np.testing.assert_allclose(batch.theta[j], fit.theta, atol=1e-3)
        assert batch.nobs[j] == np.sum(~np.isnan(Y[:, j]))


def test_bootstrap_draws_are_refits_and_d_has_intervals():
    frame, Y, family = _gamma()
    fit = single(frame, family, Y[:, 0])
    boot = fit.bootstrap(N_COLUMNS, seed=3)
    assert list(boot.draws.columns) == ["sd_(Intercept)|g", "sigma", "(Intercept)", "x"]
    assert boot.estimate["sigma"] == fit.dispersion
    sims = fit._simulate_draws(np.random.default_rng(3), N_COLUMNS)  # the bootstrap's own samples
    for j in (0, N_COLUMNS - 1):
        refit = single(frame, family, sims[:, j])
        draw = boot.draws.iloc[j]
        assert draw["sigma"] == pytest.approx(refit.dispersion, rel=1e-3)
        assert draw["sd_(Intercept)|g"] == pytest.approx(refit.theta[0], abs=1e-3)
        np.testing.assert_allclose(draw[["(Intercept)", "x"]], refit.fixef, rtol=1e-3, atol=1e-4)
    ci = boot.confint(0.9)
    assert list(ci.index) == list(boot.draws.columns)
    assert (ci.iloc[:, 0] <= ci.iloc[:, 1]).all() and np.isfinite(ci.to_numpy()).all()


def test_dispersion_profile_interval_ends_where_the_deviance_rises_by_z2():
    """The profile's lower end for NB2's θ: a fit with θ fixed there (negative_binomial(theta=...), its own
    objective) is z² above the fitted deviance; the Wald interval of θ is on the log scale."""
    frame, Y, family = _nbinom2()
    fit = single(frame, family, Y[:, 0].astype(float))
    ci = fit.confint(parm="theta", level=0.9)
    lower, upper = ci.iloc[0]
    assert lower < fit.dispersion < upper
    held = single(frame, jm.families.negative_binomial(theta=lower), Y[:, 0].astype(float))
    assert held.objective - fit.objective == pytest.approx(1.6448536269514722**2, rel=1e-4)
    wald = fit.confint(method="wald", parm="theta", level=0.9).iloc[0]
    se_log = fit.dispersion_se / fit.dispersion
    np.testing.assert_allclose(wald, fit.dispersion * np.exp([-1.6448536269514722 * se_log,
                                                               1.6448536269514722 * se_log]), rtol=1e-12)


def test_bad_column_refused_by_name():
    frame, Y, family = _nbinom2()
    model = jm.Model("y ~ x + (1 | g)", frame.assign(y=Y[:, 0]), family=family)
    bad = pd.DataFrame(Y.astype(float), columns=["a", "b", "c", "d"])
    bad.loc[4, "c"] = -1.0
    with pytest.raises(jm.ResponseError, match="'c'.*non-negative"):
        model.fit_batch(bad)
    gamma = jm.Model("y ~ x + (1 | g)", frame.assign(y=_gamma()[1][:, 0]), family=jm.families.Gamma(link="log"))
    with pytest.raises(jm.DataError, match="'b' has no observed values"):
        gamma.fit_batch(pd.DataFrame({"a": np.ones(len(frame)), "b": np.nan}))


def test_lme4_approximation_keeps_wald_intervals_only():
    """glmer's Gamma objective (plug-in σ) exists for single fits: profiles and refits of the proper Laplace
    likelihood would be intervals of another objective, so they are refused naming what to do instead."""
    frame, Y, family = _gamma()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jm.glmer("y ~ x + (1 | g)", frame.assign(y=Y[:, 0]), family=family, approximation="lme4")
    for call in (lambda: fit.bootstrap(4), lambda: fit.confint(), lambda: fit.confint(method="boot", nsim=4)):
        with pytest.raises(ValueError, match="approximation='laplace'.*method='wald'"):
            call()
    wald = fit.confint(method="wald")
    assert list(wald.index) == ["sd_(Intercept)|g", "sigma", "(Intercept)", "x"]
    assert np.isfinite(wald.loc[["(Intercept)", "x"]].to_numpy()).all()
