"""GLMM batches: each column of a vmapped binomial / Poisson batch equals its own single Laplace fit."""

import logging
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm


@pytest.fixture(scope="module")
def contraception_like():
    rng = np.random.default_rng(7)
    groups = np.repeat(np.arange(20), 15)
    x = rng.normal(size=groups.size)
    b = rng.normal(scale=0.8, size=20)[groups]
    eta = -0.3 + 0.7 * x + b
    frame = pd.DataFrame({"x": x, "g": groups.astype(str)})
    Y = np.stack([rng.binomial(1, 1 / (1 + np.exp(-eta))) for _ in range(3)], axis=1).astype(float)
    counts = np.stack([rng.poisson(np.exp(0.2 + 0.3 * x + 0.5 * b)) for _ in range(2)], axis=1).astype(float)
    frame["y"] = Y[:, 0]
    frame["k"] = counts[:, 0]
    return frame, Y, counts


def single(formula, frame, family, column):
    """The single fit of one column; missing values become zero prior weights (the same rows, so one compile)."""
    data = frame.copy()
    observed = ~np.isnan(column)
    data[formula.split("~")[0].strip()] = np.where(observed, column, 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jm.glmer(formula, data, family=family, weights=observed.astype(float))


@pytest.mark.slow  # a GLMM batch compile
def test_binomial_columns_equal_single_fits(contraception_like, caplog):
    """... and the batch compiles two programs, the start and the search's value and gradient, each once (the
    search, the boundary snap and the Hessian's differences all call the second)."""
    frame, Y, _ = contraception_like
    model = jm.Model("y ~ x + (1 | g)", frame, family="binomial")
    Y = Y.copy()
    Y[:5, 2] = np.nan  # this response drops five rows
    caplog.set_level(logging.DEBUG, logger="jax")
    with jax.log_compiles(True):
        batch = model.fit_batch(Y)
    compiled = [r.getMessage() for r in caplog.records if "XLA compilation of jit(" in r.getMessage()]
    for name in ("_chunk_starts", "chunk_value_and_grad"):
        assert sum(f"jit({name})" in m for m in compiled) == 1
    assert batch.method == "laplace" and batch.converged.all()
    for j in range(Y.shape[1]):
        keep = ~np.isnan(Y[:, j])
        fit = single("y ~ x + (1 | g)", frame, "binomial", Y[:, j])
        assert batch.objective[j] == pytest.approx(fit.objective, rel=1e-6)
        np.testing.assert_allclose(batch.fixef.iloc[j], fit.fixef, rtol=2e-3, atol=1e-4)
        np.testing.assert_allclose(batch.se.iloc[j], fit.se, rtol=1e-2)
        assert batch.nobs[j] == keep.sum()


@pytest.mark.slow  # a GLMM batch compile
def test_poisson_columns_equal_single_fits(contraception_like):
    """Including a column of non-integer counts: it warns, as its single fit does, and its logLik is -inf."""
    frame, _, counts = contraception_like
    model = jm.Model("k ~ x + (1 | g)", frame, family="poisson")
    counts = np.column_stack([counts, counts[:, 0] + 0.5 * (np.arange(len(counts)) % 4 == 0)])
    with pytest.warns(UserWarning, match="non-integer counts"):
        batch = model.fit_batch(counts)
    for j in range(counts.shape[1]):
        fit = single("k ~ x + (1 | g)", frame, "poisson", counts[:, j])
        assert batch.objective[j] == pytest.approx(fit.objective, rel=1e-6)
        np.testing.assert_allclose(batch.theta[j], fit.theta, atol=1e-3)
        assert batch.loglik[j] == pytest.approx(fit.loglik, rel=1e-6)
    assert np.isfinite(batch.loglik[:2]).all() and batch.loglik[2] == -np.inf


def test_glmm_batch_checks_each_column(contraception_like):
    frame, Y, counts = contraception_like
    model = jm.Model("y ~ x + (1 | g)", frame, family="binomial")
    bad = Y.copy()
    bad[0, 1] = 2.0
    with pytest.raises(jm.ResponseError):
        model.fit_batch(bad)
    with pytest.raises(ValueError, match="method"):
        model.fit_batch(Y, method="reml")
