"""The shared BFGS step (`optim/_bfgs.py`) and the shared restart / boundary / saddle path (`fit/_boundary.py`).

The host loop (`host_bfgs_minimize`), the traced `lax.while_loop` (`bfgs_minimize`) and the batched host loop run
the same step, so they take the same iterates; the boundary path gives lme4's answers on singular fits and on fits
started at a saddle on the boundary, for linear and generalized models alike.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.fit import _boundary
from jaxmlm.optim import _bfgs
from jaxmlm.optim._batch_bfgs import host_batch_bfgs_minimize
from jaxmlm.optim._optimize import bfgs_minimize, host_bfgs_minimize


def _quadratic():
    rng = np.random.default_rng(3)
    M = rng.normal(size=(4, 4))
    A, b = M @ M.T + 0.5 * np.eye(4), rng.normal(size=4)
    return lambda x: 0.5 * x @ jnp.asarray(A) @ x - jnp.asarray(b) @ x, np.linalg.solve(A, b)


def _iterates_agree(fun, x0, **options):
    """After every number of passes, the host loop and the while_loop stand at the same state, until the search
    reaches the limit of the arithmetic (its value within 1e-13 of the end's): there a trial's acceptance turns on
    the last bit of an evaluation, which two compiled programs (one inlined in the loop) may round differently."""
    value_and_grad = jax.jit(jax.value_and_grad(fun))
    traced = jax.jit(lambda x, m: bfgs_minimize(fun, x, max_iter=m, **options))
    end = host_bfgs_minimize(value_and_grad, x0, **options)
    seen = []
    for m in range(2, int(end.n_eval) + 1):
        host = host_bfgs_minimize(value_and_grad, x0, max_iter=m, **options)
        if float(host.value) - float(end.value) < 1e-13 * (1.0 + abs(float(end.value))):
            break
        inside = traced(jnp.asarray(x0), m)
        np.testing.assert_allclose(np.asarray(inside.x), host.x, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(float(inside.value), float(host.value), rtol=1e-12, atol=1e-12)
        assert int(inside.n_eval) == int(host.n_eval) and int(inside.n_iter) == int(host.n_iter)
        seen.append(host.x)
    inside = traced(jnp.asarray(x0), options.get("max_iter", 1000))
    assert bool(inside.converged) and bool(end.converged)
    assert float(inside.value) == pytest.approx(float(end.value), rel=1e-13, abs=1e-13)
    np.testing.assert_allclose(np.asarray(inside.x), end.x, rtol=1e-6, atol=1e-7)
    return seen, end


def test_same_iterates_on_host_and_in_the_while_loop_on_a_quadratic(x64):
    fun, minimum = _quadratic()
    seen, last = _iterates_agree(fun, np.array([2.0, -1.0, 0.5, 3.0]), gtol=1e-12)
    assert last.converged and len({tuple(x) for x in seen}) > 3  # the search moved through several points
    np.testing.assert_allclose(last.x, minimum, rtol=1e-6, atol=1e-7)  # an eigenvalue ~1e-2: x to √ε


def test_same_iterates_on_host_and_in_the_while_loop_on_sleepstudy(x64):
    """The profiled ML deviance of sleepstudy through the public objective, every pass until convergence."""
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    problem = model.problem("ml")
    seen, last = _iterates_agree(problem.objective, np.asarray(problem.x0))
    assert last.converged and len(seen) > 5
    fit = model.fit(method="ml", warn=False)
    assert float(last.value) == pytest.approx(fit.objective, rel=1e-10)


def test_batched_host_loop_takes_the_same_steps(x64):
    """The batched host driver runs the step on (m × k) rows: each row is the one-problem host run (row by row
    through the same compiled program, so that the evaluations are the same to the last bit)."""
    fun, _ = _quadratic()
    value_and_grad = jax.jit(jax.value_and_grad(fun))

    def rows(X):
        out = [value_and_grad(x) for x in X]
        return np.array([float(v) for v, _ in out]), np.stack([np.asarray(g) for _, g in out])

    starts = np.array([[2.0, -1.0, 0.5, 3.0], [0.0, 0.0, 0.0, 1.0], [-4.0, 1.0, 1.0, 0.0]])
    batch = host_batch_bfgs_minimize(rows, starts, gtol=1e-12)
    for i, x0 in enumerate(starts):
        alone = host_bfgs_minimize(value_and_grad, x0, gtol=1e-12)
        np.testing.assert_allclose(batch.x[i], alone.x, rtol=1e-12, atol=1e-12)
        assert batch.n_eval[i] == alone.n_eval and batch.n_iter[i] == alone.n_iter


def test_step_state_is_the_same_pytree_for_both_namespaces(x64):
    """One step from the same state: the host (a Python branch) and the traced step (a select) agree field by field."""
    fun, _ = _quadratic()
    value_and_grad = jax.value_and_grad(fun)
    options = _bfgs.BfgsOptions()
    x0 = np.array([2.0, -1.0, 0.5, 3.0])
    v, g = value_and_grad(jnp.asarray(x0))
    host = _bfgs.bfgs_init(x0, np.float64(v), np.asarray(g), options, _bfgs.HOST)
    traced = _bfgs.bfgs_init(jnp.asarray(x0), v, g, options, _bfgs.TRACED)
    step = jax.jit(lambda s: _bfgs.bfgs_step(s, value_and_grad, options, _bfgs.TRACED))
    for _ in range(6):
        host = _bfgs.bfgs_step(host, lambda x: tuple(np.asarray(a) for a in value_and_grad(jnp.asarray(x))),
                               options, _bfgs.HOST)
        traced = step(traced)
        for name, a, b in zip(_bfgs.BfgsState._fields, host, _bfgs.host_state(traced)):
            np.testing.assert_allclose(np.asarray(b, dtype=float), np.asarray(a, dtype=float), rtol=1e-12,
                                       atol=1e-12, err_msg=name)


def test_singular_fit_gives_lme4s_answer(lme4_reference):
    """Dyestuff2 (lme4's example of a singular fit): the variance lands exactly on 0, lme4's REML criterion."""
    ref = lme4_reference["dyestuff2_reml_singular"]
    fit = jm.Model(ref["formula"], jm.datasets.load("Dyestuff2")).fit(method="reml", warn=False)
    assert fit.theta[0] == 0.0 and fit.is_singular
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-10)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=1e-6)
    assert fit.optsum.lower[0] == 0.0 and fit.converged


def test_shared_path_on_the_public_objective(lme4_reference, x64):
    """The boundary functions alone, on the public objective: a tiny variance is snapped to lme4's 0 (Dyestuff2),
    and a start at θ = 0, a saddle for sleepstudy, is left for lme4's optimum."""
    ref = lme4_reference["dyestuff2_reml_singular"]
    problem = jm.Model(ref["formula"], jm.datasets.load("Dyestuff2")).problem("reml")
    value_and_grad = jax.jit(jax.value_and_grad(problem.objective))
    lower = np.asarray(problem.lower)

    def objective(x):
        return float(problem.objective(jnp.asarray(x)))

    snapped = _boundary.snap_to_boundary(np.array([1e-7]), lower, objective)
    assert snapped[0] == 0.0 and objective(snapped) == pytest.approx(ref["objective"], rel=1e-10)

    ref = lme4_reference["sleepstudy_intercept_ml"]
    problem = jm.Model(ref["formula"], jm.datasets.load("sleepstudy")).problem("ml")
    value_and_grad = jax.jit(jax.value_and_grad(problem.objective))

    def objective(x):  # noqa: F811
        return float(problem.objective(jnp.asarray(x)))

    res = host_bfgs_minimize(value_and_grad, np.zeros(1))
    assert res.x[0] == 0.0  # the deviance is even in θ: the gradient at 0 vanishes and BFGS stays

    def refit(start):
        res2 = host_bfgs_minimize(value_and_grad, start)
        return _boundary.snap_to_boundary(np.abs(res2.x), lower, objective), res2

    messages = []
    x, res = _boundary.leave_boundary_saddle(np.zeros(1), res, np.asarray(problem.lower), objective, refit, messages)
    assert x[0] == pytest.approx(ref["theta"], rel=1e-5)
    assert objective(x) == pytest.approx(ref["objective"], rel=1e-10)
    assert messages and "saddle" in messages[0]


def test_saddle_start_linear_and_generalized(lme4_reference):
    """Started at θ = 0, both the linear and the generalized fit leave the saddle for lme4's optimum."""
    ref = lme4_reference["sleepstudy_intercept_ml"]
    fit = jm.Model(ref["formula"], jm.datasets.load("sleepstudy")).fit(method="ml", start=[0.0], warn=False)
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-10)
    assert any("saddle" in m for m in fit.optsum.messages)
    ref = lme4_reference["cbpp_binomial_laplace"]
    default = jm.glmer(ref["formula"], jm.datasets.load("cbpp"), family="binomial", warn=False)
    fit = jm.glmer(ref["formula"], jm.datasets.load("cbpp"), family="binomial", start={"theta": [0.0]}, warn=False)
    # lme4's Nelder–Mead stops 3e-6 (relative) above the optimum that both starts reach
    assert fit.objective == pytest.approx(ref["objective"], rel=1e-5)
    assert fit.objective == pytest.approx(default.objective, rel=1e-10)
    assert fit.theta[0] == pytest.approx(ref["theta"], rel=1e-3)
    assert any("saddle" in m for m in fit.optsum.messages)


def test_restarts_after_a_non_finite_end():
    """`minimize_with_restarts` tries the scaled starts in turn and says which one it used."""
    def minimize(x):
        finite = x[0] < 1.0
        return jm.optim._optimize.OptimResult(x=x, value=np.asarray(1.0 if finite else np.nan), grad=x,
                                              n_iter=np.asarray(1), n_eval=np.asarray(1),
                                              converged=np.asarray(finite))

    res, messages = _boundary.minimize_with_restarts(minimize, np.array([1.5, 2.0]),
                                                     _boundary.scaled_starts(np.array([1.5, 2.0]), 1),
                                                     ValueError("none"))
    assert res.x[0] == pytest.approx(0.75) and res.x[1] == 2.0
    assert messages == ["restarted from θ start × 0.5 after a non-finite evaluation"]
    with pytest.raises(ValueError, match="none"):
        _boundary.minimize_with_restarts(minimize, np.array([30.0]), _boundary.scaled_starts(np.array([30.0]), 1),
                                         ValueError("none"))


def test_host_numbers_take_the_array_forms_steps_to_the_last_bit():
    """The host step keeps the per-problem numbers as Python floats and bools; its iterates are the array forms'
    (the batched host loop on one row) bit for bit, on a smooth non-quadratic function and from a start where the
    first steps are rejected."""
    A = np.array([[3.0, 0.5, 0.1], [0.5, 2.0, 0.2], [0.1, 0.2, 1.0]])

    def one(x):
        return float(0.5 * x @ A @ x + np.sum(np.cosh(x - 1.0))), A @ x + np.sinh(x - 1.0)

    def rows(X):
        out = [one(x) for x in X]
        return np.array([v for v, _ in out]), np.stack([g for _, g in out])

    for x0 in (np.array([3.0, 3.0, 3.0]), np.array([-8.0, 0.5, 6.0])):
        for max_iter in (2, 5, 9, 1000):
            alone = host_bfgs_minimize(one, x0, max_iter=max_iter)
            batch = host_batch_bfgs_minimize(rows, x0[None], max_iter=max_iter)
            np.testing.assert_array_equal(alone.x, batch.x[0])
            assert float(alone.value) == float(batch.value[0])
            np.testing.assert_array_equal(alone.grad, batch.grad[0])
            assert int(alone.n_eval) == int(batch.n_eval[0]) and int(alone.n_iter) == int(batch.n_iter[0])
            assert bool(alone.converged) == bool(batch.converged[0])
