"""NUTS on binomial cells models (the MRP shape): rows merged into cells, the reparameterized scalar terms, the
posterior against the point fit, and the prior options."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import stats

import jaxmlm as jm
from jaxmlm.bayes import _bayes
from jaxmlm.datasets.simulate import xbox_poll

pytestmark = pytest.mark.usefixtures("x64")

FORMULA = "cbind(yes, no) ~ 1 + sex + (1 | state) + (1 | age) + (1 | race) + (1 | state:age)"


@pytest.fixture(scope="module")
def poll():
    return xbox_poll(3000, seed=4).cells


@pytest.fixture(scope="module")
def model(poll):
    return jm.Model(FORMULA, poll, family="binomial")


@pytest.fixture(scope="module")
def fit(model):
    return model.fit(warn=False)


def _log_density(model, hyper, params):
    from numpyro.infer.util import log_density

    family, link = _bayes._glmm_spec(model)
    data = _bayes._cells_reparam(model, hyper, family)
    return float(log_density(_bayes._glmm_model, (data, hyper, model.qs, family, link), {}, params)[0])


def _params(model, rng, hyper):
    data = _bayes._cells_reparam(model, hyper, "binomial")
    return {"beta_z": jnp.asarray(rng.normal(size=model.design.p - 1)), "alpha_z": jnp.asarray(rng.normal()),
            "sd_z": jnp.asarray(rng.uniform(0.2, 1.5, size=len(data.scalar))),
            "w": jnp.asarray(rng.normal(size=data.power.shape)), "m": jnp.asarray(rng.normal(size=len(data.split)))}


def test_interviews_merge_into_cells_with_the_same_density(poll, model):
    """One row per interview (0/1) and one binomial row per poll cell give one kernel: the cells of the
    model's own factors, the same log density."""
    rows = poll.loc[poll.index.repeat(poll["n"].astype(int))].reset_index(drop=True)
    rank = rows.groupby(list(poll.columns[:8]), observed=True).cumcount()
    rows["yes"] = (rank < rows["yes"]).astype(float)
    rows["no"] = 1.0 - rows["yes"]
    per_interview = jm.Model(FORMULA, rows, family="binomial")
    hyper = _bayes.default_hyper(model)
    cells = _bayes._cells_reparam(per_interview, hyper, "binomial")
    distinct = len(poll.groupby(["sex", "state", "age", "race"], observed=True))
    assert cells.X.shape[0] == distinct == _bayes._cells_reparam(model, hyper, "binomial").X.shape[0] < len(poll)
    params = _params(model, np.random.default_rng(0), hyper)
    assert _log_density(per_interview, hyper, params) == pytest.approx(_log_density(model, hyper, params), rel=1e-10)


def _effects(data, sd, params=None, seed=0):
    from numpyro import handlers

    with handlers.seed(rng_seed=seed), handlers.substitute(data=params or {}):
        return _bayes._scalar_effects(data, sd)


def test_split_terms_are_a_mean_plus_an_orthonormal_contrast(model):
    """A term whose mean is split off: b = sd·(m/√L·1 + H v) with H orthonormal, Hᵀ1 = 0; the others b = sd·v."""
    hyper = _bayes.default_hyper(model)
    data = _bayes._cells_reparam(model, hyper, "binomial")
    params = _params(model, np.random.default_rng(2), hyper)
    sd = jnp.asarray(np.linspace(0.3, 1.2, len(data.scalar)))
    b, absorbed = _effects(data, sd, params)
    b, w, power = np.asarray(b), np.asarray(params["w"]), np.asarray(data.power)
    term, pos = np.asarray(data.coord_term), np.asarray(data.pos_term)
    means = []
    for i, k in enumerate(data.scalar):
        L, s = model.design.terms[k].n_levels, float(sd[i])
        v = w[term == i] * s ** (1 - power[term == i]) / s  # u's coordinates
        assert i in data.split  # every term here has z = 1 and X an intercept
        m = float(params["m"][data.split.index(i)])
        u = b[pos == i] / s
        assert u.mean() == pytest.approx(m / np.sqrt(L), rel=1e-10)
        assert np.sum((u - u.mean()) ** 2) == pytest.approx(np.sum(v**2), rel=1e-10)
        means.append(s * m / np.sqrt(L))
    assert float(absorbed) == pytest.approx(sum(means), rel=1e-10)


def test_reparameterized_effects_have_the_prior_of_sd_times_standard_normal(model):
    """Whatever the centring powers, the sampled coordinates imply b_k = sd_k·u, u ~ N(0, I)."""
    hyper = _bayes.default_hyper(model)
    data = _bayes._cells_reparam(model, hyper, "binomial")
    power = np.asarray(data.power)[np.asarray(data.coord_term) == 1]  # state: 51 levels, mixed centring powers
    assert 0 < power.min() < power.max() < 1
    sd = jnp.asarray(np.linspace(0.4, 1.3, len(data.scalar)))
    b = jax.vmap(lambda key: _effects(data, sd, seed=key)[0])(jax.random.split(jax.random.PRNGKey(0), 20000))
    u = np.asarray(b) / np.asarray(sd)[np.asarray(data.pos_term)]
    cov = np.cov(u.T)
    assert np.abs(np.diag(cov) - 1).max() < 0.08
    assert np.abs(cov - np.diag(np.diag(cov))).max() < 0.06


def test_centring_follows_the_point_fit(model, fit):
    """Each coordinate's power is I s²/(1 + I s²) with s its term's sd in the point fit: a term the fit puts near
    zero is non-centred, one with a large sd centred wherever the data are informative."""
    hyper = _bayes.default_hyper(model)
    prior = _bayes._cells_reparam(model, hyper, "binomial")
    s0 = np.array([0.5 * float(np.asarray(hyper.sd_scale[k])[0]) for k in prior.scalar])
    term, c0 = np.asarray(prior.coord_term), np.asarray(prior.power)
    info = c0 / (1.0 - c0) / s0[term] ** 2  # each coordinate's information, recovered from the prior's powers
    typical = _bayes._typical_sds(model, fit)
    np.testing.assert_allclose(typical, fit.theta)  # four scalar terms: θ is their sds in term order
    theta = np.array([1e-3, 2.0, 1e-3, 2.0])
    given = type("Fit", (), {"theta": theta})()
    for sds in (typical, theta):
        data = _bayes._cells_reparam(model, hyper, "binomial", _bayes._typical_sds(model, given) if sds is theta
                                     else sds)
        s = np.asarray(sds)[term]
        np.testing.assert_allclose(np.asarray(data.power), info * s**2 / (1 + info * s**2), rtol=1e-10)
    small, power = np.isin(term, np.flatnonzero(theta < 0.01)), np.asarray(data.power)
    assert power[small].max() < 0.05 and (power[small] < c0[small]).all()  # non-centred
    assert (power[~small] > c0[~small]).all() and np.median(power[~small]) > 0.9  # centred where data inform


def test_bad_centring_refused_before_compiling(model):
    for bad in ("centred", None, type("Fit", (), {"theta": np.ones(2)})()):
        with pytest.raises(ValueError, match="centring"):
            model.sample(chains=1, draws=5, warmup=5, centring=bad)


def test_rstanarm_prior_changes_only_the_sd_prior(model):
    default, rstan = _bayes.default_hyper(model), _bayes.default_hyper(model, kind="rstanarm")
    assert rstan.kind == "rstanarm" and default.kind == "default"
    np.testing.assert_allclose(rstan.beta_loc, default.beta_loc)
    np.testing.assert_allclose(rstan.beta_scale, default.beta_scale)
    params = _params(model, np.random.default_rng(1), rstan)
    sd = np.asarray(params["sd_z"])  # binomial, z = 1: the default half-normal scale is 1, like decov's
    want = np.sum(stats.expon.logpdf(sd) - stats.halfnorm.logpdf(sd))
    got = _log_density(model, rstan, params) - _log_density(model, default, params)
    assert got == pytest.approx(want, rel=1e-10)


def test_bad_prior_names_refused_before_compiling(model):
    for bad in ("stan", None, "RSTANARM"):
        with pytest.raises(ValueError, match="unknown prior"):
            model.sample(chains=1, draws=5, warmup=5, prior=bad)


@pytest.mark.slow  # compiling the sampler
def test_cells_posterior_near_glmer(model, fit):
    # Trees of at most 2⁷ steps: the sampling phase's take ~31, but warmup iterations before the step size adapts
    # built deeper ones (the default allows 2¹⁰), most of this call's cost (23-30 -> 9-10 CPU s). Any depth leaves
    # NUTS's target, the posterior checked below, as it is; the diagnostics stay as good (ESS of the fixed effects
    # ~350-900, every r_hat < 1.05 where the sds' need only be below 1.25).
    post = model.sample(chains=2, draws=200, warmup=200, seed=2, centring=fit, max_tree_depth=7)
    table = post.summary()
    assert np.isfinite(table["r_hat"]).all(), table
    # 2 × 200 draws: the intercept and slope mix fast; the sds of the 51- and 169-level terms slowest
    assert (table.loc[list(fit.fixef.index), "r_hat"] < 1.05).all() and (table["r_hat"] < 1.25).all(), table
    for name in fit.fixef.index:
        assert abs(table.loc[name, "mean"] - fit.fixef[name]) < table.loc[name, "sd"], name
    b = post.draws["b_state"]
    assert b.shape == (2, 200, 51, 1)
    # the state effects' posterior means follow the conditional modes
    modes = fit.ranef()["state"].to_numpy()[:, 0]
    assert np.corrcoef(b.mean(axis=(0, 1))[:, 0], modes)[0, 1] > 0.95
