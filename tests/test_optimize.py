"""The optimizers on problems with known minima, single and vmapped."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxmlm._optimize import bfgs_minimize, lbfgs_minimize


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
        np.testing.assert_allclose(np.asarray(res.x), expected, rtol=1e-9)


def test_bfgs_stops_on_non_finite_start():
    res = bfgs_minimize(lambda x: jnp.sum(jnp.log(x)), jnp.array([-1.0, 1.0]))
    assert not bool(res.converged)
    assert int(res.n_eval) == 1
