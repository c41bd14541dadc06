"""Pieces of the scalable path checked against the plain computation: the closed-form derivative of the dense
tail's log-determinants against autodiff through a generic Cholesky, row-sharded statistics on one device, and
the benchmark workloads' synthetic data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core._blocks import cross_products
from jaxmlm.core._linalg import tail_log_terms
from jaxmlm.core._shard import pad_rows, row_mesh, sharded_cross_products

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")

M_Z, P = 5, 2


def _generic(S):
    L = jnp.linalg.cholesky(S)
    d = jnp.log(jnp.diagonal(L))
    return jnp.stack([2 * jnp.sum(d[:M_Z]), 2 * jnp.sum(d[M_Z : M_Z + P]), 2 * d[-1]])


@pytest.fixture(scope="module")
def spd():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((M_Z + P + 1, 12))
    with jax.enable_x64(True):  # a module fixture is set up before the tests' x64 fixture
        return jnp.asarray(A @ A.T + 0.5 * np.eye(M_Z + P + 1))


def test_tail_terms_value_gradient_and_hessian_match_a_generic_cholesky(spd):
    f = lambda S: tail_log_terms(S, M_Z, P)  # noqa: E731
    np.testing.assert_allclose(jax.jit(f)(spd), jax.jit(_generic)(spd), rtol=1e-13)
    w = jnp.array([1.0, 0.7, 30.0])  # weights like the ML/REML combination
    g = jax.jit(jax.grad(lambda S: w @ f(S)))(spd)  # compiled: eagerly each operation compiles on its own
    g0 = jax.jit(jax.grad(lambda S: w @ _generic(S)))(spd)
    # the generic rule returns a non-symmetric cotangent; both agree on symmetric directions
    sym = lambda G: 0.5 * (G + G.T)  # noqa: E731
    np.testing.assert_allclose(sym(g), sym(g0), rtol=1e-10, atol=1e-12)
    direction = jnp.asarray(np.random.default_rng(4).standard_normal(spd.shape))
    direction = direction + direction.T
    h = jax.jit(lambda S, d: jax.jvp(jax.grad(lambda S: w @ f(S)), (S,), (d,))[1])(spd, direction)
    h0 = jax.jit(lambda S, d: jax.jvp(jax.grad(lambda S: w @ _generic(S)), (S,), (d,))[1])(spd, direction)
    np.testing.assert_allclose(sym(h), sym(h0), rtol=1e-9, atol=1e-11)


def test_tail_terms_read_the_lower_triangle_only(spd):
    """The tail matrix is carried by its lower triangle: whatever sits above the diagonal changes neither the
    values nor their first and second derivatives along symmetric directions."""
    garbage = jnp.asarray(np.triu(np.random.default_rng(5).standard_normal(spd.shape), 1))
    w = jnp.array([1.0, 0.7, 30.0])
    f = jax.jit(lambda S: w @ tail_log_terms(S, M_Z, P))
    np.testing.assert_allclose(f(spd + garbage), f(spd), rtol=1e-14)
    grad = jax.jit(jax.grad(f))
    g, g_bad = grad(spd), grad(spd + garbage)
    np.testing.assert_allclose(g_bad, g, rtol=1e-12, atol=1e-14)
    assert np.all(np.triu(np.asarray(g), 1) == 0)  # the gradient lives on the lower triangle too
    direction = jnp.asarray(np.tril(np.random.default_rng(6).standard_normal(spd.shape)))
    hvp = jax.jit(lambda S, d: jax.jvp(jax.grad(f), (S,), (d,))[1])
    h, h_bad = hvp(spd, direction), hvp(spd + garbage, direction + garbage)
    np.testing.assert_allclose(h_bad, h, rtol=1e-10, atol=1e-12)


def test_tail_terms_without_random_tail_or_fixed_effects():
    S = jnp.asarray(np.array([[4.0, 1.0], [1.0, 3.0]]))
    out = tail_log_terms(S, 0, 1)
    L = np.linalg.cholesky(np.asarray(S))
    np.testing.assert_allclose(out, [0.0, 2 * np.log(L[0, 0]), 2 * np.log(L[1, 1])], rtol=1e-14)
    g = jax.grad(lambda S: jnp.sum(tail_log_terms(S, 0, 1)))(S)
    g0 = jax.grad(lambda S: jnp.sum(jnp.log(jnp.diagonal(jnp.linalg.cholesky(S))) * 2))(S)
    np.testing.assert_allclose(0.5 * (g + g.T), 0.5 * (g0 + g0.T), rtol=1e-12)


def test_padding_rows_with_zero_weight_changes_no_statistic():
    m = jm.Model("diameter ~ 1 + (1|plate) + (1|sample)", jm.datasets.load("Penicillin"))
    d = m.design
    F = jnp.asarray(np.concatenate([d.X, d.y[:, None]], axis=1))
    ref = cross_products(m.structure, m.rows, jnp.asarray(d.weights), F)
    rows, w, F2 = pad_rows(m.rows, d.weights, F, multiple=7 * d.n + 3)
    assert w.shape[0] == 7 * d.n + 3
    padded = cross_products(m.structure, rows, w, F2)
    for a, b in zip(jax.tree.leaves(padded), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-9)
    sharded = sharded_cross_products(m.structure, m.rows, jnp.asarray(d.weights), F, row_mesh())
    for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(ref)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-9)


def test_benchmark_workloads_are_deterministic_and_fit():
    from benchmarks.workloads import WORKLOADS, _synthetic

    a = _synthetic(2000, 50, slope=True, binary=False, seed=1)
    b = _synthetic(2000, 50, slope=True, binary=False, seed=1)
    assert a.equals(b)
    assert str(a["g"].dtype) == "category" and len(a) == 2000
    for w in WORKLOADS.values():
        assert "|" in w.formula and w.method in ("ml", "reml", "laplace")


@pytest.mark.parametrize("dataset,formula", [("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                                             ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)")])
def test_statistics_in_row_chunks_equal_one_pass(monkeypatch, dataset, formula):
    """Large data form the statistics in fixed-size row chunks (bounded temporaries) and add them up; forced to
    chunks of 50 rows (the last padded with weight-0 rows) on small data, the sums are the one-pass sums."""
    from jaxmlm.core import _lmm

    data = jm.datasets.load(dataset)
    model = jm.Model(formula, data, weights=np.linspace(0.5, 2.0, len(data)))
    d = model.design
    whole = _lmm.make_linear_problem(model.structure, model.rows, d.weights, d.X, d.y)
    monkeypatch.setattr(_lmm, "STATISTICS_CHUNK_ROWS", 50)
    chunked = _lmm.make_linear_problem(model.structure, model.rows, d.weights, d.X, d.y)
    for a, b in zip(jax.tree.leaves(whole), jax.tree.leaves(chunked)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-12, atol=1e-9)
