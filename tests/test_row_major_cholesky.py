"""`_linalg.cholesky_of_lower` on the CPU: LAPACK's potrf on the row-major memory of the tail matrix
(`_potrf_row_major`), against NumPy's Cholesky and jax's, and the profiled deviance it gives against the dense
criterion and the same program with jax's Cholesky."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core import _linalg
from jaxmlm.core._lmm import _deviance, deviance_value, profiled_deviance


def _spd(rng, n, batch=()):
    A = rng.standard_normal(batch + (n, n))
    return A @ np.swapaxes(A, -1, -2) + n * np.eye(n)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_reads_the_lower_triangle_only(dtype):
    rng = np.random.default_rng(0)
    S = _spd(rng, 9)
    garbage = np.where(np.triu(np.ones((9, 9)), 1) > 0, rng.standard_normal((9, 9)) * 100, S)
    with jax.enable_x64(dtype == np.float64):
        L = np.asarray(jax.jit(_linalg.cholesky_of_lower)(jnp.asarray(garbage, dtype=dtype)))
        L_jax = np.asarray(jax.jit(_linalg._lax_cholesky)(jnp.asarray(garbage, dtype=dtype)))
    assert L.dtype == dtype
    assert np.all(np.triu(L, 1) == 0)
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(L, np.linalg.cholesky(S), rtol=rtol, atol=rtol)
    np.testing.assert_allclose(L, L_jax, rtol=rtol, atol=rtol)


def test_batched_and_failed_factorizations():
    rng = np.random.default_rng(1)
    S = _spd(rng, 7, (2, 3))
    S[1, 0] = -S[1, 0]  # not positive definite: NaN, as jax's Cholesky gives
    with jax.enable_x64(True):
        L = np.asarray(jax.jit(jax.vmap(jax.vmap(_linalg.cholesky_of_lower)))(jnp.asarray(S)))
        direct = np.asarray(jax.jit(_linalg.cholesky_of_lower)(jnp.asarray(S)))  # batch dimensions without vmap
    assert np.isnan(L[1, 0]).all() and np.isnan(direct[1, 0]).all()
    for i, j in [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2)]:
        np.testing.assert_allclose(L[i, j], np.linalg.cholesky(S[i, j]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(direct[i, j], L[i, j], rtol=1e-14, atol=1e-14)


def _crossed_frame(seed: int = 2, n: int = 700) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a, b, c = rng.integers(0, 50, n), rng.integers(0, 20, n), rng.integers(0, 5, n)
    x = rng.standard_normal(n)
    y = 1.0 + 0.3 * x + rng.standard_normal(50)[a] + 0.6 * rng.standard_normal(20)[b] + rng.standard_normal(n)
    y = y + 0.4 * rng.standard_normal(5)[c]
    return pd.DataFrame({"y": y, "x": x, "a": pd.Categorical(a), "b": pd.Categorical(b), "c": pd.Categorical(c)})


@pytest.mark.parametrize("reml", [False, True])
def test_deviance_against_jax_cholesky_and_the_dense_criterion(reml):
    """The fit's value program (the row-major potrf) equals the same program with jax's Cholesky to 1e-12
    relative and the dense criterion computed from the full [Z X y] system (NumPy) to 1e-10."""
    data = _crossed_frame()
    model = jm.Model("y ~ x + (1 | a) + (1 | b) + (1 | c)", data)
    problem = model._for_evaluation()
    assert problem.structure.m_z > 0

    def with_jax_cholesky(theta, problem):
        prefix, S = _linalg.eliminate_prefix(theta, problem.blocks, problem.structure)
        terms = _linalg._tail_values(jnp.diagonal(_linalg._lax_cholesky(S)), problem.structure.m_z, problem.p)
        return _deviance(prefix.logdet_prefix() + terms[0], terms[1], terms[2], problem, reml)

    # each program compiled once for the three points (an eager jax.grad dispatched and compiled its hundreds of
    # operations one by one, at every point)
    reference_program = jax.jit(with_jax_cholesky)
    gradient = jax.jit(jax.grad(profiled_deviance), static_argnums=2)
    with jax.enable_x64(True):
        for theta in ([0.8, 0.5, 0.3], [1.3, 0.0, 0.7], [0.05, 2.0, 1.1]):
            theta = jnp.asarray(theta)
            value = float(deviance_value(theta, problem, reml))
            reference = float(reference_program(theta, problem))
            assert value == pytest.approx(reference, rel=1e-12)
            assert value == pytest.approx(_dense_criterion(data, np.asarray(theta), reml), rel=1e-10)
            # the public objective (pure XLA, no callbacks) and its gradient still run through the same factor
            grad = gradient(theta, problem, reml)
            assert np.isfinite(np.asarray(grad)).all()


def _dense_criterion(data: pd.DataFrame, theta: np.ndarray, reml: bool) -> float:
    """-2 log-likelihood (ML) or the REML criterion from the dense system Λᵀ ZᵀZ Λ + I (lme4's eqs. 34 and 41)."""
    Z = np.concatenate([pd.get_dummies(data[g]).to_numpy(float) * t for g, t in zip("abc", theta)], axis=1)
    X = np.column_stack([np.ones(len(data)), data["x"].to_numpy()])
    y = data["y"].to_numpy()
    n, p, q = len(y), X.shape[1], Z.shape[1]
    M = np.block([[Z.T @ Z + np.eye(q), Z.T @ X], [X.T @ Z, X.T @ X]])
    rhs = np.concatenate([Z.T @ y, X.T @ y])
    sol = np.linalg.solve(M, rhs)
    r2 = y @ y - rhs @ sol
    logdet_z = np.linalg.slogdet(Z.T @ Z + np.eye(q))[1]
    if reml:
        logdet_x = np.linalg.slogdet(M)[1] - logdet_z
        return logdet_z + logdet_x + (n - p) * (1 + np.log(2 * np.pi * r2 / (n - p)))
    return logdet_z + n * (1 + np.log(2 * np.pi * r2 / n))
