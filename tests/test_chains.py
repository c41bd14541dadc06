"""The NUTS chain driver (jaxmlm/bayes/_chains.py): one compiled chain program, chains vectorized, one after
another or side by side; its draws against a posterior known in closed form; the Laplace sampler's PIRLS
tolerance against the fits'."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm._config import float64
from jaxmlm.bayes._chains import CHAIN_METHODS, run_nuts


def _normal_mean_model(y, prior_sd):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, prior_sd))
    numpyro.deterministic("mu_twice", 2.0 * mu)
    numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def _data():
    y = jnp.asarray(np.random.default_rng(0).normal(1.5, 1.0, 20))
    prior_sd = jnp.asarray(3.0)
    precision = 1.0 / 9.0 + y.shape[0]
    return y, prior_sd, float(jnp.sum(y)) / precision, float(np.sqrt(1.0 / precision))


@float64
def _run(method, chains=4, draws=400, warmup=300, seed=0):
    y, prior_sd, _, _ = _data()
    return run_nuts(_normal_mean_model, (y, prior_sd), jax.random.PRNGKey(seed), chains=chains, warmup=warmup,
                    draws=draws, chain_method=method)


@pytest.fixture(scope="module")
def runs():
    return {method: _run(method) for method in CHAIN_METHODS}


def test_draws_follow_the_conjugate_posterior(runs):
    """mu | y ~ N(Σy / (1/9 + n), 1 / (1/9 + n)): every chain method's mean and sd within Monte Carlo error."""
    _, _, mean, sd = _data()
    for method, run in runs.items():
        mu = run.samples["mu"]
        assert mu.shape == (4, 400), method
        assert run.diverging.shape == run.num_steps.shape == (4, 400)
        assert not run.diverging.any()
        se = sd / np.sqrt(mu.size / 4)  # a generous effective size: a quarter of the draws
        assert abs(mu.mean() - mean) < 4 * se, method
        assert abs(mu.std() / sd - 1) < 0.15, method
        np.testing.assert_allclose(run.samples["mu_twice"], 2 * mu)
        assert len({float(mu[c, 0]) for c in range(4)}) == 4  # each chain its own start and key


def test_chains_side_by_side_give_the_draws_of_chains_one_after_another(runs):
    """The same program on the same keys: parallel and sequential draws are the same numbers."""
    np.testing.assert_array_equal(runs["parallel"].samples["mu"], runs["sequential"].samples["mu"])
    np.testing.assert_array_equal(runs["parallel"].num_steps, runs["sequential"].num_steps)


def test_the_chain_program_compiles_once_whatever_the_number_of_chains(caplog):
    """Four chains side by side compile the chain program once (before any chain starts), as two do."""
    caplog.set_level(logging.DEBUG, logger="jax")
    jax.config.update("jax_log_compiles", True)  # global: the chains run on worker threads
    counts = {}
    try:
        for chains in (2, 4):
            caplog.clear()
            _run("parallel", chains=chains, draws=20, warmup=20, seed=chains)
            # lowered once: a compile, or a read from a compilation cache, starts there
            counts[chains] = sum(r.getMessage().startswith("Compiling jit(one_chain)")
                                 for r in caplog.records)
    finally:
        jax.config.update("jax_log_compiles", False)
    assert counts == {2: 1, 4: 1}


def test_get_samples_reads_like_numpyro(runs):
    run = runs["parallel"]
    assert run.get_samples()["mu"].shape == (1600,)
    assert run.get_samples(group_by_chain=True)["mu"].shape == (4, 400)
    assert run.get_extra_fields()["num_steps"].shape == (1600,)


def test_unknown_chain_method_is_refused():
    with pytest.raises(ValueError, match="chain_method"):
        _run("threads")


@float64
def test_sampler_pirls_tolerance_gives_the_fits_deviance_and_gradient():
    """The Laplace sampler stops PIRLS at 1e-6 where the fits stop at 1e-11; after the Newton step the deviance
    agrees to 1e-12 and its gradient to 1e-7 (cbpp, and a crossed binomial with a slope in X), PIRLS started from 0
    and from the modes the sampler predicts."""
    from jaxmlm.bayes._laplace import SAMPLER_PIRLS_TOL, pirls_start
    from jaxmlm.core._mode_prediction import predict_modes
    from jaxmlm.core._laplace_grad import laplace_deviance_fast
    from jaxmlm.fit._glmm import _n_modes, glmm_problem

    cbpp = jm.datasets.load("cbpp")
    rng = np.random.default_rng(3)
    n = 600
    crossed = dict(g=rng.integers(0, 30, n).astype(str), h=rng.integers(0, 12, n).astype(str), x=rng.normal(size=n))
    eta = 0.3 * crossed["x"] + rng.normal(0, 0.8, 30)[crossed["g"].astype(int)] + rng.normal(0, 0.5, 12)[
        crossed["h"].astype(int)]
    crossed["y"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    import pandas as pd

    cases = [("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, [0.6, -1.4, -1.0, -1.1, -1.6]),
             ("y ~ x + (1 | g) + (1 | h)", pd.DataFrame(crossed), [0.8, 0.5, 0.1, 0.3])]
    # PIRLS "from 0" is a start of zeros, so that both starts run one compiled program per tolerance
    value_and_grad = jax.jit(lambda z, problem, start: jax.value_and_grad(
        lambda zz: laplace_deviance_fast(zz, problem, start, 1))(z))
    predicted = jax.jit(predict_modes)
    for formula, frame, x in cases:
        model = jm.Model(formula, frame, family="binomial")
        problem = glmm_problem(model)
        loose = dataclasses.replace(problem, pirls_tol=SAMPLER_PIRLS_TOL)
        prediction = pirls_start(model, "fit", problem)
        zeros = jnp.zeros(_n_modes(problem.structure))
        x = jnp.asarray(x, dtype=jnp.float64)
        for scale in (0.5, 1.7):
            point = x * jnp.asarray([scale] * problem.structure.n_theta + [1.0] * problem.p)
            strict = value_and_grad(point, problem, zeros)
            for start in (zeros, predicted(prediction, point, problem)):
                sampler = value_and_grad(point, loose, start)
                np.testing.assert_allclose(float(sampler[0]), float(strict[0]), rtol=1e-12)
                np.testing.assert_allclose(np.asarray(sampler[1]), np.asarray(strict[1]), rtol=1e-7, atol=1e-7)


def _impossible_model(y, prior_sd, likelihood=True):
    import numpyro
    import numpyro.distributions as dist

    mu = numpyro.sample("mu", dist.Normal(0.0, prior_sd))
    if likelihood:
        numpyro.factor("nowhere", jnp.where(mu > 100.0, 0.0, -jnp.inf))


@float64
def test_a_start_of_non_finite_density_is_an_error_not_a_stuck_chain():
    """With the starts taken from a cheaper model (`sites_model`), the chain program's own start is checked."""
    y, prior_sd, _, _ = _data()
    with pytest.raises(FloatingPointError, match="not finite"):
        run_nuts(_impossible_model, (y, prior_sd), jax.random.PRNGKey(0), chains=2, warmup=5, draws=5,
                 chain_method="sequential",
                 sites_model=lambda y, s: _impossible_model(y, s, likelihood=False))


def test_an_interrupt_returns_at_once_and_cancels_the_chains_not_started(monkeypatch):
    """Ctrl-C while chains run side by side: the call raises at once, without waiting for the chains running in
    their compiled program (here: blocked until released), cancels the chains not yet started, and the next run
    works."""
    import threading

    from jaxmlm.bayes import _chains

    monkeypatch.setattr(_chains, "_workers", lambda chains: 2)
    release, started = threading.Event(), []

    def chain(c):
        started.append(c)
        if c == 0:
            raise KeyboardInterrupt
        release.wait(60)
        return c

    with pytest.raises(KeyboardInterrupt):
        _chains._side_by_side(chain, 6)
    returned_while_running = not release.is_set()
    release.set()
    assert returned_while_running
    assert len(started) <= 3  # chain 0, the one running beside it, and at most one picked up meanwhile
    assert _chains._side_by_side(lambda c: c * c, 4) == [0, 1, 4, 9]
