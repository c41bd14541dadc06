"""Level-minor small-matrix arithmetic (`_levelwise`) against NumPy, level by level, on both sides of the
unrolling limit (unrolled formulas up to UNROLL_MAX, batched LAPACK beyond)."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core import _levelwise as lw

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")


def _spd_blocks(rng, l, q):
    A = rng.standard_normal((l, q, q))
    return A @ np.swapaxes(A, 1, 2) + q * np.eye(q)


@pytest.mark.parametrize("q", [1, 3, lw.UNROLL_MAX + 2])
def test_cholesky_and_solve_match_numpy(q):
    rng = np.random.default_rng(q)
    l, f = 7, 4
    S = _spd_blocks(rng, l, q)
    M = rng.standard_normal((l, f, q))
    L = lw.cholesky(lw.unpack(jnp.asarray(np.moveaxis(S, 0, -1))))
    L_packed = np.asarray(lw.pack(L))
    np.testing.assert_allclose(L_packed, np.linalg.cholesky(S), rtol=1e-12, atol=1e-12)
    X = lw.solve_right_lower_t(lw.unpack_rows(jnp.asarray(np.moveaxis(M, 0, -1))), L)
    expected = np.linalg.solve(np.linalg.cholesky(S), np.swapaxes(M, 1, 2)).swapaxes(1, 2)  # X Lᵀ = M
    np.testing.assert_allclose(np.asarray(lw.pack_rows(X)), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(float(lw.log_diagonal_sum(L)), 0.5 * np.linalg.slogdet(S)[1].sum(), rtol=1e-12)


@pytest.mark.parametrize("r, c", [(2, 3), (3, lw.UNROLL_MAX + 2), (lw.UNROLL_MAX + 2, lw.UNROLL_MAX + 2)])
def test_sandwich_times_outer_sum_and_segment_sum(r, c):
    """Unrolled up to UNROLL_MAX, one batched product beyond: the same numbers, level by level."""
    rng = np.random.default_rng(r * 100 + c)
    l = 6
    B = rng.standard_normal((l, r, c))
    Ta, Tb = np.tril(rng.standard_normal((r, r))), np.tril(rng.standard_normal((c, c)))
    got = np.asarray(lw.pack(lw.sandwich(jnp.asarray(Ta), lw.unpack(jnp.asarray(np.moveaxis(B, 0, -1))),
                                          jnp.asarray(Tb))))
    np.testing.assert_allclose(got, Ta.T @ B @ Tb, rtol=1e-12, atol=1e-12)
    got = np.asarray(lw.pack(lw.times(lw.unpack(jnp.asarray(np.moveaxis(B, 0, -1))), jnp.asarray(Tb))))
    np.testing.assert_allclose(got, B @ Tb, rtol=1e-12, atol=1e-12)
    Y = rng.standard_normal((l, 4, c))
    outer = lw.outer_sum(lw.unpack(jnp.asarray(np.moveaxis(B, 0, -1))), lw.unpack(jnp.asarray(np.moveaxis(Y, 0, -1))))
    np.testing.assert_allclose(np.asarray(lw.pack(outer)), B @ np.swapaxes(Y, 1, 2), rtol=1e-12, atol=1e-12)
    ids = np.array([2, 0, 2, 1, 0, 2])
    summed = np.asarray(lw.pack(lw.segment_sum(outer, jnp.asarray(ids), 3)))
    expected = np.stack([(B @ np.swapaxes(Y, 1, 2))[ids == g].sum(0) for g in range(3)])
    np.testing.assert_allclose(summed, expected, rtol=1e-12, atol=1e-12)
    # a term's F rows: one row of c arrays (f, l), against a term's c × c block of (l,) arrays
    F = rng.standard_normal((l, 5, c))
    rows = lw.unpack_rows(jnp.asarray(np.moveaxis(F, 0, -1)))
    np.testing.assert_allclose(np.asarray(lw.pack_rows(lw.times(rows, jnp.asarray(Tb)))), F @ Tb, rtol=1e-12,
                               atol=1e-12)
    G = rng.standard_normal((l, c, c))
    cross = lw.outer_sum(rows, lw.unpack(jnp.asarray(np.moveaxis(G, 0, -1))))  # (f, l) elements: F Gᵀ per level
    np.testing.assert_allclose(np.asarray(lw.pack_rows(cross)), F @ np.swapaxes(G, 1, 2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dataset, formula", [
    ("sleepstudy", "Reaction ~ Days + (Days | Subject)"),  # q = 2: a 2 × 2 block and two F rows per level
    ("Pastes", "strength ~ 1 + (1 | batch/cask)"),  # nested prefix terms: off-diagonal blocks
    ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),  # crossed: entries and a dense tail
])
def test_split_blocks_give_the_stacked_blocks_objective_and_gradient(dataset, formula):
    """The optimizer's programs take the blocks split element by element (`split_problem`); the objective and its
    gradient are the stacked blocks' to rounding, for ML and REML."""
    import jax

    from jaxmlm.core._lmm import deviance_and_gradient, split_problem

    model = jm.Model(formula, jm.datasets.load(dataset))
    stacked = model.linear_problem
    split = split_problem(stacked)
    assert isinstance(split.blocks.diag[0], tuple)
    theta = np.linspace(0.4, 1.3, model.n_theta)
    for reml in (False, True):
        v0, g0 = deviance_and_gradient(theta, stacked, reml)
        v1, g1 = deviance_and_gradient(theta, split, reml)
        np.testing.assert_allclose(float(v1), float(v0), rtol=1e-14)
        np.testing.assert_allclose(np.asarray(g1), np.asarray(g0), rtol=1e-11, atol=1e-11)
    assert jax.tree.structure(split) != jax.tree.structure(stacked)


@pytest.mark.parametrize("formula", [
    "y ~ t + (0 + factor(t) | g)",  # q = 10 > UNROLL_MAX: batched products and LAPACK
    "y ~ t + (0 + factor(t) | g) + (1 | h)",  # and a crossed tail term below it
])
def test_a_wide_term_gives_the_dense_criterion(formula):
    """A term wider than UNROLL_MAX (as lme4's `(0 + factor(Days) | Subject)`, 55 θ) against V formed directly."""
    import pandas as pd

    from brute_force import dense_criterion

    rng = np.random.default_rng(1)
    g, t = np.repeat(np.arange(12), 20), np.tile(np.arange(10), 24)
    data = pd.DataFrame({"g": g.astype(str), "t": t, "h": (np.arange(240) % 5).astype(str),
                         "y": rng.normal(size=240) + 0.3 * t + rng.normal(size=12)[g]})
    model = jm.Model(formula, data)
    theta = rng.uniform(-0.3, 0.3, model.n_theta)
    diagonal = model.theta_lower() == 0
    theta[diagonal] = rng.uniform(0.5, 1.5, int(diagonal.sum()))
    for reml in (False, True):
        np.testing.assert_allclose(model.deviance(theta, reml), dense_criterion(model.design, theta, reml),
                                   rtol=1e-10)
