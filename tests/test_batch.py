"""fit_batch: every column equals its own single fit; missing values per column; bad input."""

import logging
import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm

CHUNK = 8  # one chunk size for every batch here: one compiled program per design


def _single(formula, data, response, y, reml):
    frame = data.copy()
    frame[response] = y
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jm.lmer(formula, frame.dropna(subset=[response]), reml=reml)


def _check_columns(batch, formula, data, response, Y, reml, columns):
    for j in columns:
        fit = _single(formula, data, response, Y[:, j], reml)
        assert batch.objective[j] == pytest.approx(fit.objective, rel=1e-6)
        np.testing.assert_allclose(batch.theta[j], fit.theta, atol=1e-4)
        np.testing.assert_allclose(batch.fixef.iloc[j].to_numpy(), fit.fixef.to_numpy(), rtol=1e-5)
        np.testing.assert_allclose(batch.se.iloc[j].to_numpy(), fit.se.to_numpy(), rtol=1e-4)
        assert batch.sigma[j] == pytest.approx(fit.sigma, rel=1e-5)
        assert batch.nobs[j] == fit.nobs
        assert batch.converged[j]


@pytest.fixture(scope="module")
def sleep():
    data = jm.datasets.load("sleepstudy")
    formula = "Reaction ~ Days + (Days | Subject)"
    model = jm.Model(formula, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit("reml")
    Y = fit.simulate(5, seed=3).to_numpy().copy()
    Y[[4, 50, 51, 52], 3] = np.nan  # one response with missing values
    batch = model.fit_batch(Y, method="reml", chunk_size=CHUNK, progress=False)
    return data, formula, model, Y, batch


def test_sleepstudy_columns_equal_single_fits(sleep):
    data, formula, model, Y, batch = sleep
    assert batch.fixef.shape == (5, 2) and list(batch.fixef.columns) == ["(Intercept)", "Days"]
    assert batch.theta.shape == (5, 3)
    assert batch.objective.shape == batch.sigma.shape == batch.converged.shape == (5,)
    assert list(batch.nobs) == [180, 180, 180, 176, 180]
    _check_columns(batch, formula, data, "Reaction", Y, True, [0, 3])
    too_few = np.full((180, 1), np.nan)
    too_few[:2, 0] = 1.0
    with pytest.warns(jm.ConvergenceWarning, match="too few observed rows"):
        out = model.fit_batch(too_few, chunk_size=CHUNK)  # nothing to fit: NaN and not converged, no error
    assert not out.converged[0] and np.isnan(out.objective[0])


def test_the_data_response_reproduces_the_fit(sleep):
    data, formula, model, Y, _ = sleep
    batch = model.fit_batch(pd.DataFrame({"a": data["Reaction"].to_numpy()}), method="reml", chunk_size=CHUNK)
    fit = model.fit("reml")
    assert list(batch.fixef.index) == ["a"]
    assert batch.objective[0] == pytest.approx(fit.objective, rel=1e-10)
    np.testing.assert_allclose(batch.theta[0], fit.theta, atol=1e-6)


def test_a_linear_batch_compiles_each_program_once(caplog):
    """A batch of complete columns and columns with missing values, in several chunks each, compiles three
    programs per kind of column (the columns' statistics, the search's pass, the estimates) once; the search,
    its start, the boundary snap and the saddle probes all run the pass. A second batch compiles nothing."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(7), 5)[:33]  # a design of its own: nothing compiled for it yet
    data = pd.DataFrame({"y": rng.normal(size=33), "x": rng.normal(size=33), "g": g.astype(str)})
    model = jm.Model("y ~ x + (1 | g)", data)
    Y = 1.0 + data["x"].to_numpy()[:, None] + rng.normal(size=(7, 10))[g] + rng.normal(size=(33, 10))
    Y[:3, 8:] = np.nan  # two columns with missing values
    caplog.set_level(logging.DEBUG, logger="jax")
    jax.config.update("jax_log_compiles", True)  # global: the chunks run on worker threads
    try:
        first = model.fit_batch(Y, chunk_size=4, progress=False)
        compiled = [r.getMessage() for r in caplog.records if "XLA compilation of jit(" in r.getMessage()]
        caplog.clear()
        again = model.fit_batch(Y, chunk_size=4, progress=False)
        recompiled = [r.getMessage() for r in caplog.records if "XLA compilation of jit(" in r.getMessage()]
    finally:
        jax.config.update("jax_log_compiles", False)
    for name in ("_chunk_data", "_chunk_pass", "_chunk_estimates"):
        assert sum(f"jit({name})" in m for m in compiled) == 2, (name, compiled)  # complete, and missing values
    assert not any("while" in m for m in compiled)
    assert recompiled == []
    np.testing.assert_array_equal(again.objective, first.objective)
    assert first.converged.all() and list(first.nobs) == [33] * 8 + [30] * 2
    _check_columns(first, "y ~ x + (1 | g)", data, "y", Y, True, [0, 9])


def test_penicillin_crossed_columns_equal_single_fits():
    data = jm.datasets.load("Penicillin")
    formula = "diameter ~ 1 + (1 | plate) + (1 | sample)"
    model = jm.Model(formula, data)
    fit = model.fit("reml")
    Y = fit.simulate(2, seed=5).to_numpy()
    batch = model.fit_batch(Y, chunk_size=CHUNK)
    _check_columns(batch, formula, data, "diameter", Y, True, [0, 1])


def test_bad_input_is_refused_clearly():
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    Y = np.zeros((180, 2))
    with pytest.raises(jm.DataError, match="180 rows"):
        model.fit_batch(Y[:-1])
    with pytest.raises(jm.DataTypeError):
        model.fit_batch(pd.DataFrame({"a": ["x"] * 180}))
    with pytest.raises(ValueError, match="method"):
        model.fit_batch(Y, method="laplace")
    with pytest.raises(ValueError, match="chunk_size"):
        model.fit_batch(Y, chunk_size=0)


def test_cbind_batches_take_proportions_of_the_model_trials():
    """A cbind() model's batch columns are proportions of successes (as simulate() returns them), on the model's
    trials: the data's own proportions refit to the single fit."""
    data = jm.datasets.load("cbpp")
    formula = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
    model = jm.Model(formula, data, family="binomial")
    fit = model.fit(method="laplace")
    Y = np.column_stack([data.incidence / data["size"], fit.simulate(1, seed=2).iloc[:, 0]])
    batch = model.fit_batch(Y)
    assert batch.objective[0] == pytest.approx(fit.objective, rel=1e-8)
    np.testing.assert_allclose(batch.theta[0], fit.theta, atol=1e-4)
    again = jm.glmer(formula, data.assign(incidence=np.round(Y[:, 1] * data["size"])), family="binomial")
    assert batch.objective[1] == pytest.approx(again.objective, rel=1e-8)
    weighted = jm.Model(formula, data.assign(w=2.0), family="binomial", weights="w")
    with pytest.raises(jm.DataError, match="prior weights"):
        weighted.fit_batch(Y)
