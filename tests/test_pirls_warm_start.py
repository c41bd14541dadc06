"""PIRLS started from modes other than 0 (a fit's evaluations start from those at the search's current point), and
ZΛu with the tail summed per combination of tail levels: each gives what the plain computation gives."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
import jaxmlm.fit._glmm as glmm
from jaxmlm._config import float64
from jaxmlm.core import _pirls


def _crossed_cells(seed=0, n=600):
    """Binomial cells with one 30-level term crossed with two small ones: the tail's rows come in combinations."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.integers(0, 30, n), "b": rng.integers(0, 4, n), "c": rng.integers(0, 3, n),
                          "x": rng.normal(size=n)})
    eta = (0.4 * frame.x + 0.7 * rng.normal(size=30)[frame.a] + rng.normal(size=4)[frame.b]
           + 0.5 * rng.normal(size=3)[frame.c])
    frame["k"] = (rng.random(n) < 1 / (1 + np.exp(-eta))).astype(float)
    for g in "abc":
        frame[g] = frame[g].astype(str)
    return frame


CROSSED = "k ~ x + (1 | a) + (1 | b) + (1 | c)"


@pytest.fixture(scope="module")
def crossed_fit():
    return jm.glmer(CROSSED, _crossed_cells(), family="binomial")


def _fits(case, cbpp_fit, crossed_fit):
    return cbpp_fit if case == "cbpp" else crossed_fit


def _x(fit):
    return np.concatenate([fit.theta, np.asarray(fit.fixef)])


@float64
def test_grouped_random_part_is_the_rows_sum(crossed_fit):
    """ZΛu with the tail summed once per combination of tail levels equals the per-row sum over every term."""
    problem = crossed_fit.model.glmm_problem
    structure, rows = problem.structure, problem.rows
    assert rows.tail_group is not None and structure.tail_groups is not None
    gather = _pirls.row_gather(structure, rows)
    assert len(gather) == 4  # the grouped form
    plain = _pirls.row_gather(structure, dataclasses.replace(rows, tail_group=None))
    assert len(plain) == 2
    u = jnp.asarray(np.random.default_rng(1).normal(size=sum(structure.n_levels)))
    theta = jnp.asarray([0.7, 1.3, 0.4])
    got = _pirls._zlu(structure, gather, theta, u)
    # brute force: Σ_k θ_k u_k[code_k] per row
    pieces, pos = [], 0
    for k, l in enumerate(structure.n_levels):
        pieces.append(theta[k] * u[pos:pos + l][np.asarray(rows.codes[k])])
        pos += l
    np.testing.assert_allclose(np.asarray(got), np.asarray(sum(pieces)), rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(np.asarray(got), np.asarray(_pirls._zlu(structure, plain, theta, u)), rtol=1e-14,
                               atol=1e-14)


@float64
@pytest.mark.parametrize("case", ["cbpp", "crossed"])
def test_pirls_from_nearby_modes_finds_the_same_mode(case, cbpp_fit, crossed_fit):
    """From the modes at a nearby (θ, β) PIRLS takes fewer iterations to the mode it finds from 0; the Laplace
    value and gradient are the same to PIRLS's tolerance."""
    fit = _fits(case, cbpp_fit, crossed_fit)
    problem = fit.model.glmm_problem
    x = _x(fit)
    cold = glmm._value_and_grad(x, problem, None, None)
    near = glmm._value_and_grad(x + 0.01, problem, None, None)[2][0]
    warm = glmm._value_and_grad(x, problem, None, None, near)
    assert bool(warm[2][1]) and bool(cold[2][1])
    assert int(warm[2][2]) < int(cold[2][2])
    np.testing.assert_allclose(np.asarray(warm[2][0]), np.asarray(cold[2][0]), atol=1e-6)
    assert float(warm[0]) == pytest.approx(float(cold[0]), rel=1e-13)
    np.testing.assert_allclose(np.asarray(warm[1]), np.asarray(cold[1]), rtol=1e-6, atol=1e-7)
    # laplace_deviance_from with no start is laplace_deviance
    value = jax.jit(lambda x: _pirls.laplace_deviance_from(x, problem, None))(x)
    assert float(value) == float(jax.jit(lambda x: _pirls.laplace_deviance(x, problem))(x))


@float64
def test_pirls_from_a_bad_start_starts_again_from_zero(crossed_fit):
    """From modes far from this (θ, β)'s (the logits saturated) PIRLS still finds the mode it finds from 0 (should
    it get stuck there, it starts again from 0), in more iterations."""
    problem = crossed_fit.model.glmm_problem
    x = _x(crossed_fit)
    theta, beta, _ = _pirls.split_x(jnp.asarray(x), problem)
    gather = _pirls.row_gather(problem.structure, problem.rows)
    bad = jnp.full((sum(problem.structure.n_levels),), 80.0)
    _, u_bad, _, ok_bad, it_bad = _pirls._pirls_flat(theta, beta, problem, gather, u_start=bad)
    _, u_zero, _, ok_zero, it_zero = _pirls._pirls_flat(theta, beta, problem, gather)
    assert bool(ok_bad) and bool(ok_zero)
    assert int(it_bad) > int(it_zero)  # the stuck start's iterations, then those from 0
    np.testing.assert_allclose(np.asarray(u_bad), np.asarray(u_zero), atol=1e-8)


@pytest.mark.parametrize("case", ["cbpp", "crossed"])
def test_warm_started_fit_is_the_cold_one(case, cbpp_fit, crossed_fit, monkeypatch):
    """A fit whose evaluations all start PIRLS from 0 reaches the same optimum, deviance and standard errors."""
    warm = _fits(case, cbpp_fit, crossed_fit)
    monkeypatch.setattr(glmm.Modes, "keep", lambda self, value, pirls_state: None)
    if case == "cbpp":
        cold = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                        family="binomial")
    else:
        cold = jm.glmer(CROSSED, _crossed_cells(), family="binomial")
    assert warm.objective == pytest.approx(cold.objective, rel=1e-10)
    np.testing.assert_allclose(_x(warm), _x(cold), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sqrt(np.diag(warm.vcov)), np.sqrt(np.diag(cold.vcov)), rtol=1e-5)


@pytest.mark.parametrize("family, enabled", [("binomial", True), (jm.families.binomial(link="probit"), False),
                                             ("poisson", True), (jm.families.Gamma(link="log"), False)])
def test_modes_carried_only_where_pirls_is_newton(family, enabled):
    """Evaluations start from earlier modes only for a canonical link without a dispersion parameter (PIRLS is
    Newton's method there); elsewhere each starts from 0, as before."""
    frame = _crossed_cells()
    frame["count"] = frame["k"] + 1.0
    response = "k" if family in ("binomial",) or getattr(family, "name", "") == "binomial" else "count"
    model = jm.Model(f"{response} ~ x + (1 | a)", frame, family=family)
    modes = glmm.Modes(model.glmm_problem)
    assert modes.enabled == enabled
    before = modes.u
    modes.keep(1.0, (np.ones_like(before), True, 3))
    assert (modes.u is not before) == enabled
