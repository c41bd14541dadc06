"""fit_batch for NB1 (glmmTMB's nbinom1) and the inverse Gaussian (log link): each batch column equals its own
single fit, d included, with a column that drops rows (test_families_batch.py does NB2, Gamma and beta)."""

import warnings

import numpy as np
import pytest

import jaxmlm as jm
from tests.test_families_batch import N_COLUMNS, _frame, single


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


CASES = {"nbinom1": _nbinom1, "inverse_gaussian": _inverse_gaussian}


@pytest.mark.parametrize("case", sorted(CASES))
def test_batch_columns_equal_single_fits(case):
    frame, Y, family = CASES[case]()
    Y = Y.astype(float)
    Y[:4, 2] = np.nan  # this response drops four rows
    model = jm.Model("y ~ x + (1 | g)", frame.assign(y=Y[:, 0]), family=family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = model.fit_batch(Y)
    assert batch.converged.all()
    assert batch.dispersion is not None and np.all(batch.dispersion > 0)
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
