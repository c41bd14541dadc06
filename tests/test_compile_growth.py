"""The GLMM programs' size does not grow with the number of same-shaped terms (docs/scale.md, "Compile time of
GLMMs with many scalar terms"): terms of one q are handled as one stacked operation. Sizes are characters of the
lowered StableHLO text (what XLA compiles), never times. Also the stacked Λθ helpers against dense matrices."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxmlm as jm
from jaxmlm._compile import current_effort
from jaxmlm.core._covariance import theta_start, theta_to_matrices
from jaxmlm.core._linalg import column_scale, scale_columns, scale_modes
from jaxmlm.core._pirls import flat_modes, split_modes
from jaxmlm.datasets.simulate import XBOX_FACTORS, xbox_formula, xbox_poll
from jaxmlm.fit import _glmm


def _sizes(formula: str, cells) -> dict:
    model = jm.Model(formula, cells, family="binomial")
    with jax.enable_x64(True):
        problem = _glmm.glmm_problem(model)
        theta = jnp.asarray(theta_start(model.qs))
        x = jnp.concatenate([theta, jnp.zeros(problem.p)])

        def size(program, *args):
            return len(program.variants[current_effort()].lower(*args).as_text())

        return dict(
            start_beta=size(_glmm._start_beta, theta, problem, None),
            value_and_grad=size(_glmm._value_and_grad, x, problem, None, None),
            state_at=size(_glmm._state_at, x, problem),
        ), model


@pytest.fixture(scope="module")
def cells():
    return xbox_poll(n=800, seed=3).cells


def test_same_shaped_tail_terms_add_little(cells):
    """One prefix term (state) and 1 or 7 crossed scalar terms: the programs grow by well under the 7× that
    per-term code would give (before stacking, 4.8-5.6× from 2 to 10 terms)."""
    names = list(XBOX_FACTORS)
    two, m2 = _sizes("cbind(yes, no) ~ 1 + (1 | state) + (1 | age)", cells)
    eight, m8 = _sizes("cbind(yes, no) ~ 1 + " + " + ".join(f"(1 | {n})" for n in names), cells)
    assert m2.structure.n_prefix == m8.structure.n_prefix == 1
    assert len(m8.qs) == 8
    for name in two:
        assert eight[name] < 1.25 * two[name], (name, eight[name], two[name])


def test_xbox_model_within_twice_two_terms(cells):
    """The Xbox-shaped model (10 terms, two of them in the block-diagonal prefix) against 2 terms."""
    two, _ = _sizes("cbind(yes, no) ~ 1 + (1 | state) + (1 | age)", cells)
    ten, m10 = _sizes(xbox_formula(), cells)
    assert len(m10.qs) == 10
    for name in two:
        assert ten[name] < 2.0 * two[name], (name, ten[name], two[name])


def _dense_lambda(theta, qs, n_levels):
    blocks = [np.kron(np.eye(l), T) for T, l in zip(theta_to_matrices(theta, qs), n_levels)]
    return scipy.linalg.block_diag(*blocks)


@pytest.mark.parametrize("qs,n_levels", [((2, 2, 1, 1, 3, 2), (5, 3, 4, 2, 3, 6)), ((1, 1, 1), (7, 2, 3)),
                                         ((2,), (4,))])
def test_stacked_lambda_matches_dense(qs, n_levels):
    rng = np.random.default_rng(0)
    theta = rng.normal(size=sum(q * (q + 1) // 2 for q in qs))
    m = sum(q * l for q, l in zip(qs, n_levels))
    u = rng.normal(size=m)
    M = rng.normal(size=(3, m))
    lam = _dense_lambda(theta, qs, n_levels)
    with jax.enable_x64(True):
        t = jnp.asarray(theta)
        np.testing.assert_allclose(np.asarray(scale_modes(t, qs, n_levels, jnp.asarray(u))), lam @ u, rtol=1e-13)
        np.testing.assert_allclose(np.asarray(scale_columns(jnp.asarray(M), t, qs, n_levels)), M @ lam, rtol=1e-13)
        if len(qs) > 2:  # terms 2.. only (as for the tail's columns)
            start = sum(q * l for q, l in zip(qs[:2], n_levels[:2]))
            np.testing.assert_allclose(np.asarray(scale_modes(t, qs, n_levels, jnp.asarray(u[start:]), 2)),
                                       lam[start:, start:] @ u[start:], rtol=1e-13)
        scale = column_scale(t, qs, n_levels)
        if all(q == 1 for q in qs):
            np.testing.assert_allclose(np.asarray(scale), np.diag(lam), rtol=1e-15)
        else:
            assert scale is None


def test_flat_modes_round_trip(cells):
    model = jm.Model(xbox_formula(), cells, family="binomial")
    structure = model.structure
    rng = np.random.default_rng(1)
    with jax.enable_x64(True):
        terms = tuple(jnp.asarray(rng.normal(size=(l, q))) for l, q in zip(structure.n_levels, structure.qs))
        flat = flat_modes(terms)
        assert flat.shape == (sum(l * q for l, q in zip(structure.n_levels, structure.qs)),)
        for a, b in zip(split_modes(flat, structure), terms):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
