"""Small dense matrices (a tail of at most `_linalg.SMALL_DENSE` columns: the fixed effects and the response of a
model without crossed terms) are factored and inverted by unrolled formulas, not by LAPACK: the same numbers as
LAPACK's to rounding, NaN where the matrix is not positive definite, derivatives as the dense path's, and programs
without custom calls (so that a fit of such a model never loads LAPACK's kernels)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core import _linalg, _lmm


def _spd(n, seed=0):
    A = np.random.default_rng(seed).standard_normal((n, n))
    return A @ A.T + n * np.eye(n)


@pytest.mark.parametrize("n", [1, 2, 3, 5, _linalg.SMALL_DENSE])
def test_unrolled_factor_and_inverse_equal_lapacks(n):
    S = _spd(n, n)
    with jax.enable_x64(True):
        L = np.asarray(jax.jit(_linalg.cholesky_of_lower)(jnp.asarray(np.tril(S))))  # the lower triangle only
        np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(L, np.tril(L))
        inv = np.asarray(jax.jit(_linalg.lower_inverse)(jnp.asarray(L)))
        np.testing.assert_allclose(inv, np.linalg.inv(L), rtol=1e-12, atol=1e-13)
        full = np.asarray(_linalg.inverse_from_cholesky(jnp.asarray(L), False))
        np.testing.assert_allclose(full, np.tril(np.linalg.inv(S)), rtol=1e-12, atol=1e-13)
        # derivatives through the unrolled factor: those of the dense path's log-determinant
        logdet = lambda M: 2.0 * jnp.sum(jnp.log(jnp.diagonal(_linalg.cholesky_of_lower(M))))  # noqa: E731
        g = np.asarray(jax.grad(logdet)(jnp.asarray(np.tril(S))))
        np.testing.assert_allclose(g, np.asarray(_linalg.lower_weights(jnp.asarray(np.linalg.inv(S)))),
                                   rtol=1e-10, atol=1e-12)
        # not positive definite: NaN everywhere, as LAPACK's factor in jax
        bad = S.copy()
        bad[-1, -1] = -1.0
        assert np.isnan(np.asarray(_linalg.cholesky_of_lower(jnp.asarray(np.tril(bad))))).all()


def test_a_model_without_crossed_terms_compiles_no_custom_call():
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    theta = np.array([0.9, 0.1, 0.3])
    with jax.enable_x64(True):
        model.linear_problem  # noqa: B018
        for program, args in ((_lmm.deviance_and_gradient, (theta, model._evaluation_problem, False)),
                              (_lmm.linear_estimates, (theta, model.linear_problem, True))):
            text = program.variants["fast"].lower(*args).as_text()
            assert not re.findall(r"custom_call @(lapack\w*)", text)
    # a tail larger than the unrolled size still factors through LAPACK
    with jax.enable_x64(True):
        n = _linalg.SMALL_DENSE + 1
        text = jax.jit(_linalg.cholesky_of_lower).lower(jnp.asarray(_spd(n))).as_text()
    assert "lapack" in text
