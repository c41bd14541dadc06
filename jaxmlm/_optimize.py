"""Gradient-based minimization with optax's L-BFGS (zoom line search), as one pure JAX loop.

The loop is a `lax.while_loop`, so a whole fit compiles to one XLA program, runs without Python in the loop,
and vmaps over a batch of problems (each keeps its own state; the loop ends when all have converged).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax
import optax.tree_utils as otu

__all__ = ["OptimResult", "lbfgs_minimize"]


class OptimResult(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    n_iter: jax.Array
    n_eval: jax.Array
    converged: jax.Array


def lbfgs_minimize(
    fun: Callable,
    x0: jax.Array,
    *args,
    max_iter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    memory_size: int = 20,
) -> OptimResult:
    """Minimize fun(x, *args) from x0. Converged when the gradient's max-norm is below gtol·(1 + |f|), or when
    the relative decrease has stayed below ftol for three iterations in a row (the limit of float64 arithmetic)."""

    def f(x):
        return fun(x, *args)

    opt = optax.lbfgs(
        memory_size=memory_size,
        linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=40, initial_guess_strategy="one"),
    )
    value_and_grad = optax.value_and_grad_from_state(f)

    def grad_small(value, grad):
        return jnp.max(jnp.abs(grad)) <= gtol * (1.0 + jnp.abs(value))

    def cond(carry):
        x, state, it, n_eval, stall, value, grad = carry
        done = grad_small(value, grad) | (stall >= 3) | ~jnp.isfinite(value)
        return (it < max_iter) & ~done

    def body(carry):
        x, state, it, n_eval, stall, value_prev, _ = carry
        value, grad = value_and_grad(x, state=state)
        updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=f)
        x = optax.apply_updates(x, updates)
        steps = otu.tree_get(state, "num_linesearch_steps")
        new_value = otu.tree_get(state, "value")
        new_grad = otu.tree_get(state, "grad")
        rel = (value - new_value) / (1.0 + jnp.abs(value))
        stall = jnp.where(rel < ftol, stall + 1, 0)
        return x, state, it + 1, n_eval + steps, stall, new_value, new_grad

    state0 = opt.init(x0)
    v0, g0 = jax.value_and_grad(f)(x0)
    init = (x0, state0, jnp.asarray(0), jnp.asarray(1), jnp.asarray(0), v0, g0)
    x, state, it, n_eval, stall, value, grad = jax.lax.while_loop(cond, body, init)
    converged = grad_small(value, grad) | ((stall >= 3) & (jnp.max(jnp.abs(grad)) <= 1e-4 * (1.0 + jnp.abs(value))))
    return OptimResult(x=x, value=value, grad=grad, n_iter=it, n_eval=n_eval, converged=converged)
