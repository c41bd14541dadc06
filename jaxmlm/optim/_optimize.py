"""Minimizers of the profiled objectives, each for the setting it serves:

* `lbfgs_minimize`: optax's L-BFGS (zoom line search) as one `lax.while_loop`, so a whole fit is one XLA program
  (GLMM fits, profiles);
* `bfgs_minimize`: dense BFGS whose loop pass is exactly one evaluation, vmapped over batches of problems;
* `host_bfgs_minimize`: the same BFGS as a NumPy loop around one compiled value-and-gradient program (single
  fits: nothing but the objective compiles). Both run the one step of `_bfgs` (and so does the batched host
  loop of `_batch_bfgs`);
* `cobyqa_minimize`: derivative-free, with lower bounds, for large dense tails (as lme4 fits with BOBYQA).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._bfgs import HOST, TRACED, BfgsOptions, BfgsState, bfgs_converged, bfgs_done, bfgs_init, bfgs_step

__all__ = ["OptimResult", "bfgs_minimize", "central_difference_hessian", "cobyqa_minimize", "host_bfgs_minimize",
           "lbfgs_minimize"]


class OptimResult(NamedTuple):
    x: jax.Array
    value: jax.Array
    grad: jax.Array
    n_iter: jax.Array
    n_eval: jax.Array
    converged: jax.Array


def _gradient_small(value, grad, gtol):
    """max|grad| ≤ gtol·(1 + |f|): the convergence test both optimizers share."""
    return jnp.max(jnp.abs(grad)) <= gtol * (1.0 + jnp.abs(value))


def _converged(value, grad, gtol, stalled):
    """Converged: a small gradient, or progress stalled at the limit of the arithmetic with max|grad| still within
    1e-4·(1 + |f|)."""
    return _gradient_small(value, grad, gtol) | (stalled & _gradient_small(value, grad, 1e-4))


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

    import optax  # here, not at import: only profiles use it, and it is slow to import
    import optax.tree_utils as otu

    def f(x):
        return fun(x, *args)

    opt = optax.lbfgs(
        memory_size=memory_size,
        linesearch=optax.scale_by_zoom_linesearch(max_linesearch_steps=40, initial_guess_strategy="one"),
    )
    value_and_grad = optax.value_and_grad_from_state(f)

    def cond(carry):
        x, state, it, n_eval, stall, value, grad = carry
        done = _gradient_small(value, grad, gtol) | (stall >= 3) | ~jnp.isfinite(value)
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
    converged = _converged(value, grad, gtol, stall >= 3)
    return OptimResult(x=x, value=value, grad=grad, n_iter=it, n_eval=n_eval, converged=converged)


def bfgs_minimize(
    fun: Callable,
    x0: jax.Array,
    *args,
    max_iter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    first_step: float = 0.25,
) -> OptimResult:
    """Minimize fun(x, *args) from x0 by dense BFGS with a backtracking (Armijo) line search, for few parameters:
    `_bfgs.bfgs_step` inside one `lax.while_loop`, so a whole fit is one XLA program.

    Every pass of the loop costs exactly one value-and-gradient evaluation: a pass either accepts its trial point
    or shrinks the step for the next pass. There is no nested line-search loop, so under vmap every problem of a
    batch advances by one evaluation per pass and none waits for another's line search: this is the batch
    optimizer (`_batch`), where optax's zoom line search spent several evaluations' worth of bookkeeping per
    iteration. max_iter bounds the passes."""
    options = BfgsOptions(gtol=gtol, ftol=ftol, first_step=first_step, max_iter=max_iter)
    value_and_grad = jax.value_and_grad(lambda x: fun(x, *args))
    v0, g0 = value_and_grad(x0)
    s = jax.lax.while_loop(lambda s: ~bfgs_done(s, options, TRACED),
                           lambda s: bfgs_step(s, value_and_grad, options, TRACED),
                           bfgs_init(x0, v0, g0, options, TRACED))
    return _result(s, options, TRACED)


def host_bfgs_minimize(
    value_and_grad: Callable[[np.ndarray], tuple],
    x0,
    *,
    max_iter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    first_step: float = 0.25,
) -> OptimResult:
    """`bfgs_minimize`'s algorithm (the same `_bfgs.bfgs_step`) as a NumPy loop around one compiled
    value-and-gradient program, `value_and_grad(x) -> (value, gradient)`. Returns an `OptimResult` of NumPy values.

    A first fit mostly pays for compiling: the optimizer's `lax.while_loop` with the objective and its gradient
    inlined compiles several times slower than the bare value-and-gradient program, while the loop's own
    arithmetic on a few θ is microseconds on the host."""
    options = BfgsOptions(gtol=gtol, ftol=ftol, first_step=first_step, max_iter=max_iter)

    def evaluate(point):
        v, g = value_and_grad(point)
        return float(v), np.asarray(g, dtype=np.float64)

    x = np.array(x0, dtype=np.float64)
    s = bfgs_init(x, *evaluate(x), options, HOST)
    while not bfgs_done(s, options, HOST):
        s = bfgs_step(s, evaluate, options, HOST)
    return _result(s, options, HOST)


def _result(s: BfgsState, options: BfgsOptions, ops) -> OptimResult:
    xp = ops.xp  # the host's Python numbers as 0-d arrays, as the other drivers return them
    return OptimResult(x=s.x, value=xp.asarray(s.value), grad=s.grad, n_iter=xp.asarray(s.it),
                       n_eval=xp.asarray(s.n_eval), converged=xp.asarray(bfgs_converged(s, options, ops)))


def cobyqa_minimize(fun: Callable[[np.ndarray], float], x0, lower, *, max_eval: int = 1000,
                    initial_radius: float = 1.0, final_radius: float = 1e-6) -> OptimResult:
    """Minimize a scalar function of few parameters without derivatives, by COBYQA (Powell's successor to the
    BOBYQA that lme4 uses; scipy.optimize), with lower bounds. A host loop around one compiled value function:
    worth it only where an evaluation costs milliseconds and its gradient several times more (large dense
    tails, see `_model`). Non-finite values reach COBYQA as NaN, which it treats as a barrier. Returns an
    `OptimResult` of NumPy values; `grad` is NaN (the caller computes its own diagnostics)."""
    from scipy.optimize import Bounds, minimize

    def f(x):
        value = float(fun(x))
        return value if np.isfinite(value) else np.nan

    x0 = np.asarray(x0, dtype=np.float64)
    lower = np.asarray(lower, dtype=np.float64)
    res = minimize(f, np.maximum(x0, lower), method="COBYQA", bounds=Bounds(lower, np.full_like(lower, np.inf)),
                   options=dict(maxfev=max_eval, initial_tr_radius=initial_radius,
                                final_tr_radius=min(final_radius, initial_radius)))
    return OptimResult(x=np.asarray(res.x), value=np.asarray(res.fun), grad=np.full_like(x0, np.nan),
                       n_iter=np.asarray(res.nit), n_eval=np.asarray(res.nfev), converged=np.asarray(bool(res.success)))


def central_difference_hessian(gradients_at: Callable[[np.ndarray], np.ndarray], x, delta: float = 1e-5) -> np.ndarray:
    """The Hessian at x by central differences of an exact gradient, symmetrized. `gradients_at(points)` returns
    the gradients at the 2k rows of `points`: x + δeⱼ for each j, then x − δeⱼ. Dividing gradient differences by δ
    keeps ~1e-8 relative accuracy at δ = 1e-5 (differencing the function itself divides by δ²)."""
    x = np.asarray(x, dtype=np.float64)
    steps = delta * np.eye(x.size)
    plus, minus = np.split(np.asarray(gradients_at(np.vstack([x + steps, x - steps])), dtype=np.float64), 2)
    hess = (plus - minus) / (2.0 * delta)  # row j: ∂g/∂x_j
    return 0.5 * (hess + hess.T)
