"""Rows summed within combinations of tail levels (`_blocks._tail_groups`): the tail's ZᵀWZ and FᵀWZ equal the
row-by-row sums, the grouping is used only where it is exact (scalar intercept tail terms, z ≡ 1), and the
grouped statistics give the same fit as the dense brute force."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm._config import float64
from jaxmlm.core._blocks import cross_products
from jaxmlm.core._pirls import laplace_deviance
from tests.brute_force import dense_criterion


def _cells(seed=0, n=600):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.integers(0, 30, n), "b": rng.integers(0, 4, n), "c": rng.integers(0, 3, n),
                          "x": rng.normal(size=n)})
    eta = 0.4 * frame.x + rng.normal(size=30)[frame.a] * 0.7 + rng.normal(size=4)[frame.b] + 0.5 * rng.normal(size=3)[frame.c]
    frame["y"] = eta + rng.normal(size=n)
    frame["k"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    for g in "abc":
        frame[g] = frame[g].astype(str)
    return frame


@float64
def _both(model, F_cols=2, seed=1):
    s, r = model.structure, model.rows
    n = r.codes[0].shape[0]
    rng = np.random.default_rng(seed)
    w, F = jnp.asarray(rng.random(n)), jnp.asarray(rng.normal(size=(n, F_cols)))
    return cross_products(s, r, w, F), cross_products(s, eqx.tree_at(lambda x: x.tail_group, r, None), w, F)


@pytest.mark.parametrize("formula", ["y ~ x + (1 | a) + (1 | b) + (1 | c)", "y ~ x + (1 | a) + (1 | b:c)",
                                     "y ~ x + (1 | a) + (1 | b)"])
def test_grouped_tail_equals_row_sums(formula):
    model = jm.Model(formula, _cells())
    assert model.structure.tail_groups is not None and model.rows.tail_group is not None
    assert model.structure.tail_groups.shape[0] <= model.design.n // 2
    grouped, rows = _both(model)
    for name in ("tail_zz", "tail_fz", "tail_ff"):
        np.testing.assert_allclose(np.asarray(getattr(grouped, name)), np.asarray(getattr(rows, name)),
                                   rtol=1e-12, atol=1e-10)


def test_no_grouping_where_it_would_not_be_exact():
    frame = _cells()
    slope = jm.Model("y ~ x + (1 | a) + (x | b)", frame)  # a slope in the tail: z is not 1
    assert slope.structure.tail_groups is None and slope.rows.tail_group is None
    frame["u"] = np.arange(len(frame)).astype(str)  # as many combinations as rows: nothing to gain
    many = jm.Model("k ~ x + (1 | a) + (1 | u)", frame, family="binomial")
    assert many.structure.tail_groups is None


def test_grouped_fit_matches_the_dense_criterion():
    frame = _cells(seed=3)
    fit = jm.lmer("y ~ x + (1 | a) + (1 | b) + (1 | c)", frame, REML=False)
    assert fit.model.rows.tail_group is not None
    theta = np.asarray(fit.theta)
    assert fit.objective == pytest.approx(dense_criterion(fit.model.design, theta, reml=False), rel=1e-9)


@float64
def test_grouped_laplace_deviance_equals_row_by_row():
    model = jm.Model("k ~ x + (1 | a) + (1 | b) + (1 | c)", _cells(seed=4), family="binomial")
    problem = model.glmm_problem
    ungrouped = eqx.tree_at(lambda p: p.rows.tail_group, problem, None)
    x = jnp.asarray([0.8, 0.5, 0.3, 0.1, 0.2])
    deviance = jax.jit(laplace_deviance)  # one program per problem (eagerly, PIRLS's operations one by one)
    assert float(deviance(x, problem)) == pytest.approx(float(deviance(x, ungrouped)), rel=1e-12)
