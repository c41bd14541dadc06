"""The optimizers on problems with known minima, single and vmapped."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core._lmm import deviance_and_gradient, fit_linear
from jaxmlm.optim._optimize import bfgs_minimize, host_bfgs_minimize, lbfgs_minimize

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")


def rosenbrock(x, a):
    """Rosenbrock's function of x / a: minimum 0 at x = (a, a, a)."""
    u = x / a
    return jnp.sum(100.0 * (u[1:] - u[:-1] ** 2) ** 2 + (1.0 - u[:-1]) ** 2)


def test_bfgs_finds_rosenbrock_minimum_vmapped():
    starts = jnp.array([[-1.2, 1.0, 0.5], [2.0, -1.0, 3.0], [0.0, 0.0, 0.0], [1.5, 2.2, 4.9]])
    shifts = jnp.array([1.0, 1.0, 2.0, 0.5])
    res = jax.jit(jax.vmap(lambda x0, a: bfgs_minimize(rosenbrock, x0, a, gtol=1e-10)))(starts, shifts)
    assert bool(jnp.all(res.converged))
    for x, a in zip(np.asarray(res.x), np.asarray(shifts)):
        expected = np.full(3, a)
        np.testing.assert_allclose(x, expected, rtol=1e-6)
    # every pass of the loop is one evaluation; accepted iterations are a subset
    assert bool(jnp.all(res.n_iter <= res.n_eval))


def test_bfgs_matches_lbfgs_on_a_quadratic():
    A = jnp.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    b = jnp.array([1.0, -2.0, 0.5])

    def quad(x):
        return 0.5 * x @ A @ x - b @ x

    expected = np.linalg.solve(np.asarray(A), np.asarray(b))
    for minimize in (bfgs_minimize, lbfgs_minimize):
        res = minimize(quad, jnp.zeros(3), gtol=1e-12)
        assert bool(res.converged)
        # a line search on values resolves x to ~sqrt(2 eps |f| / λ) ~ 2e-8 once f's decreases reach rounding
        np.testing.assert_allclose(np.asarray(res.x), expected, rtol=1e-7)


def test_bfgs_stops_on_non_finite_start():
    res = bfgs_minimize(lambda x: jnp.sum(jnp.log(x)), jnp.array([-1.0, 1.0]))
    assert not bool(res.converged)
    assert int(res.n_eval) == 1


def _host(fun, *args):
    """fun's value and gradient as one compiled program, called from the host loop with NumPy values."""
    program = jax.jit(jax.value_and_grad(fun))
    return lambda x: program(jnp.asarray(x), *args)


def test_host_bfgs_reaches_the_compiled_bfgs_optimum():
    starts = np.array([[-1.2, 1.0, 0.5], [2.0, -1.0, 3.0], [0.0, 0.0, 0.0], [1.5, 2.2, 4.9]])
    for x0, a in zip(starts, [1.0, 1.0, 2.0, 0.5]):
        res = host_bfgs_minimize(_host(rosenbrock, a), x0, max_iter=1000, gtol=1e-10)
        ref = bfgs_minimize(rosenbrock, jnp.asarray(x0), a, gtol=1e-10)
        assert bool(res.converged) and isinstance(res.x, np.ndarray)
        np.testing.assert_allclose(res.x, np.full(3, a), rtol=1e-6)
        np.testing.assert_allclose(res.x, np.asarray(ref.x), rtol=1e-6)
        assert res.n_iter <= res.n_eval <= 1000
    A = np.array([[4.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 2.0]])
    b = np.array([1.0, -2.0, 0.5])
    res = host_bfgs_minimize(_host(lambda x: 0.5 * x @ A @ x - b @ x), np.zeros(3), gtol=1e-12, max_iter=100)
    assert bool(res.converged)
    np.testing.assert_allclose(res.x, np.linalg.solve(A, b), rtol=1e-7)  # rounding-limited, as above


def test_host_bfgs_shrinks_the_step_past_non_finite_values():
    """x − log x (minimum at 1) is NaN for x < 0: a first step that lands there is rejected and shortened."""
    calls = []
    program = _host(lambda x: jnp.sum(x - jnp.log(x)))

    def value_and_grad(x):
        calls.append(np.isfinite(program(x)[0]))
        return program(x)

    res = host_bfgs_minimize(value_and_grad, np.array([3.0, 0.5]), max_iter=200, first_step=5.0)
    assert not calls[1] and bool(res.converged)
    np.testing.assert_allclose(res.x, [1.0, 1.0], rtol=1e-7)
    assert int(res.n_eval) == len(calls)
    # a non-finite start stops at once, unconverged, as bfgs_minimize does
    res = host_bfgs_minimize(_host(lambda x: jnp.sum(jnp.log(x))), np.array([-1.0, 1.0]), max_iter=100)
    assert not bool(res.converged) and int(res.n_eval) == 1


@pytest.mark.parametrize("dataset, formula", [("sleepstudy", "Reaction ~ Days + (Days | Subject)"),
                                              ("Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)")])
def test_linear_fit_matches_the_compiled_lbfgs_fit(dataset, formula):
    """Model.fit (host BFGS on the value-and-gradient program) finds the optimum of the compiled L-BFGS loop."""
    model = jm.Model(formula, jm.datasets.load(dataset))
    fit = model.fit(method="ml", warn=False)
    assert fit.optinfo.method == "BFGS" and fit.converged
    ref = fit_linear(jnp.asarray(model.theta_start()), model.linear_problem, False)
    assert bool(ref.converged)
    reference = model.deviance(np.asarray(ref.x), False)
    assert fit.objective == pytest.approx(reference, rel=1e-10)
    assert float(deviance_and_gradient(np.asarray(ref.x), model.linear_problem, False)[0]) == pytest.approx(reference,
                                                                                                          rel=1e-14)


def test_host_bfgs_stops_when_trials_fail_on_rounding():
    """A value resolved to 1e-12 and a gradient with rounding noise of 1e-6 (as a REML criterion's): gtol cannot
    be met, and a trial rejected although it could only gain less than the resolution ends the search as
    stalled, instead of shrinking the step to 1e-12 again and again (127 evaluations here without that rule)."""
    w, c = np.array([1.0, 4.0, 0.5]), np.array([0.3, -1.2, 2.0])

    def value_and_grad(x):
        value = 1.0 + np.sum(w * (x - c) ** 2)
        return np.round(value, 12), 2.0 * w * (x - c) + 1e-6 * np.sin(1e9 * x)

    res = host_bfgs_minimize(value_and_grad, np.zeros(3), max_iter=1000, gtol=1e-10)
    assert bool(res.converged) and int(res.n_eval) < 30
    np.testing.assert_allclose(res.x, c, atol=1e-5)


def test_heap_allocations_is_reentrant_and_can_be_turned_off(monkeypatch):
    """Fits run inside `heap_allocations` (glibc's mmap for large buffers off, trimming off) and nested fits
    (batches, restarts) must not restore the defaults early; JAXMLM_NO_MALLOPT leaves the allocator alone."""
    from jaxmlm import _config

    calls = []
    monkeypatch.setattr(_config, "_mallopt", lambda: (lambda param, value: calls.append((param, value)) or 1))
    with _config.heap_allocations():
        with _config.heap_allocations():
            assert _config._heap_depth == 2
        assert calls == [(_config._M_MMAP_MAX, 0), (_config._M_TRIM_THRESHOLD, 1 << 30)]
    assert _config._heap_depth == 0
    assert calls[2:] == list(_config._GLIBC_DEFAULTS.items())
    monkeypatch.undo()
    monkeypatch.setenv("JAXMLM_NO_MALLOPT", "1")
    assert _config._mallopt() is None
