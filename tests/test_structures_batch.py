"""fit_batch for models with cs() / ar1() terms: the batched search on ψ, each column equal to its single fit."""

from __future__ import annotations

import numpy as np
import pytest

import jaxmlm as jm
from tests.test_covariance_structures import _ar1_data
from tests.test_structures_problem import _cs2_data


def _compare_with_single_fits(model, Y, batch, method, formula, data, family="gaussian", psi_atol=2e-4):
    assert batch.psi is not None and batch.psi.shape == (Y.shape[1], len(model.psi_names))
    assert batch.converged.all()
    for j in range(Y.shape[1]):
        single = jm.Model(formula, data.assign(y_col=Y[:, j]), family=family).fit(method=method)
        assert batch.objective[j] == pytest.approx(single.objective, rel=1e-8)
        np.testing.assert_allclose(batch.psi[j], single.extra["psi"], atol=psi_atol)
        np.testing.assert_allclose(batch.theta[j], single.theta, atol=psi_atol)
        np.testing.assert_allclose(batch.beta[j], single.fixef.to_numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(batch.se_beta[j], single.se.to_numpy(), rtol=1e-3)
        if family == "gaussian":
            assert batch.sigma[j] == pytest.approx(single.sigma, rel=1e-4)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_ar1_batch_columns_equal_single_fits(method):
    data = _ar1_data()
    model = jm.Model("y ~ time + ar1(0 + ftime | g)", data)
    fit = model.fit(method=method)
    Y = np.column_stack([model.design.y, fit.simulate(2, seed=4).to_numpy()])
    batch = model.fit_batch(Y, method=method)
    assert batch.objective[0] == pytest.approx(fit.objective, rel=1e-8)
    _compare_with_single_fits(model, Y, batch, method, "y_col ~ time + ar1(0 + ftime | g)", data)


def test_ar1_batch_with_missing_values_and_start():
    """A column with missing rows gets its own statistics; start= is ψ."""
    data = _ar1_data()
    model = jm.Model("y ~ time + ar1(0 + ftime | g)", data)
    Y = np.column_stack([model.design.y, model.design.y])
    Y[:7, 1] = np.nan
    batch = model.fit_batch(Y, method="ml", start=[0.1, 0.5])
    single = jm.Model("y ~ time + ar1(0 + ftime | g)", data.iloc[7:]).fit(method="ml")
    assert batch.objective[1] == pytest.approx(single.objective, rel=1e-8)
    np.testing.assert_allclose(batch.psi[1], single.extra["psi"], atol=2e-4)
    with pytest.raises(ValueError, match="g.log_sd, g.cor_transf"):
        model.fit_batch(Y, method="ml", start=[0.0, 0.0, 0.0])


@pytest.mark.slow  # the batched Laplace program for a 2 × 2 term
def test_cs_poisson_batch_columns_equal_single_fits():
    data = _cs2_data()
    model = jm.Model("count ~ x + cs(0 + f | g)", data, family="poisson")
    fit = model.fit()
    Y = np.column_stack([model.design.y, fit.simulate(1, seed=2).to_numpy()])
    batch = model.fit_batch(Y)
    _compare_with_single_fits(model, Y, batch, "laplace", "y_col ~ x + cs(0 + f | g)", data, family="poisson",
                              psi_atol=1e-3)
    with pytest.raises(ValueError, match="Laplace"):
        model.fit_batch(Y, method="agq", nagq=3)
