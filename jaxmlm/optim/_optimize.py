"""Minimizers of the profiled objectives, each for the setting it serves:

* `lbfgs_minimize`: optax's L-BFGS (zoom line search) as one `lax.while_loop`, so a whole fit is one XLA program
  (GLMM fits, profiles);
* `bfgs_minimize`: dense BFGS whose loop pass is exactly one evaluation, vmapped over batches of problems;
* `host_bfgs_minimize`: the same BFGS as a NumPy loop around one compiled value-and-gradient program (single
  fits: nothing but the objective compiles). Both run the one step of `_bfgs` (and so does the batched host
  loop of `_batch_bfgs`);
* `cobyqa_minimize`: derivative-free, with lower bounds, for large dense tails (as lme4 fits with BOBYQA);
  `cobyqa_newton_minimize` runs it to a coarse radius and finishes with one Newton step on the differences that
  lme4's convergence check takes anyway (`difference_derivatives`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from ._bfgs import HOST, TRACED, BfgsOptions, BfgsState, bfgs_converged, bfgs_done, bfgs_init, bfgs_step

__all__ = ["OptimResult", "bfgs_minimize", "central_difference_hessian", "cobyqa_minimize", "cobyqa_newton_minimize",
           "difference_derivatives", "difference_gradient", "host_bfgs_minimize", "lbfgs_minimize"]


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
    known=None,
    inv_hess=None,
) -> OptimResult:
    """`bfgs_minimize`'s algorithm (the same `_bfgs.bfgs_step`) as a NumPy loop around one compiled
    value-and-gradient program, `value_and_grad(x) -> (value, gradient)`. Returns an `OptimResult` of NumPy values.
    known: (value, gradient) at x0 already evaluated; inv_hess: a first inverse Hessian (a model of the curvature,
    used where its direction descends) instead of the identity and its first scaling.

    A first fit mostly pays for compiling: the optimizer's `lax.while_loop` with the objective and its gradient
    inlined compiles several times slower than the bare value-and-gradient program, while the loop's own
    arithmetic on a few θ is microseconds on the host."""
    options = BfgsOptions(gtol=gtol, ftol=ftol, first_step=first_step, max_iter=max_iter)

    def evaluate(point):
        v, g = value_and_grad(point)
        return float(v), np.asarray(g, dtype=np.float64)

    x = np.array(x0, dtype=np.float64)
    f, g = evaluate(x) if known is None else (float(known[0]), np.asarray(known[1], dtype=np.float64))
    s = bfgs_init(x, f, g, options, HOST)
    if inv_hess is not None:
        direction = -(inv_hess @ g)
        if np.dot(direction, g) < 0:
            s = s._replace(inv_hess=np.asarray(inv_hess, dtype=np.float64), direction=direction, scaled=True)
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


# The Newton finish of `cobyqa_newton_minimize`: COBYQA stops at this trust-region radius (about 1e-4 from the
# optimum in θ), the step is taken only this far from every lower bound, and only this long.
COARSE_RADIUS = 1e-3
_NEWTON_MARGIN = 1e-2
_NEWTON_MAX_STEP = 1e-2


def cobyqa_newton_minimize(fun: Callable[[np.ndarray], float], x0, lower, *, max_eval: int = 1000,
                           initial_radius: float = 1.0, final_radius: float = 1e-6, delta: float = 1e-4):
    """`cobyqa_minimize` to `COARSE_RADIUS`, then one Newton step from the gradient and Hessian of the objective's
    central differences there (`difference_derivatives`, step δ), then the gradient's differences at the new
    point: (OptimResult, Hessian or None). The Hessian is the one at COBYQA's end, a Newton step (< 1e-2) away
    from x: for lme4's checks at x with no further evaluations, where COBYQA alone spends its last third of
    evaluations shrinking its radius from 1e-3 to 1e-6 and the check then differences the objective at x anew.

    The step is taken only well inside the bounds (every bounded coordinate > `_NEWTON_MARGIN` from its bound at
    both ends), with finite differences, a positive definite Hessian, a short step and a value no higher than
    COBYQA's; otherwise COBYQA goes on from its end point to `final_radius` (what `cobyqa_minimize` alone does)
    and the Hessian is None. Returns NumPy values; n_eval counts every evaluation."""
    lower = np.asarray(lower, dtype=np.float64)
    if initial_radius <= COARSE_RADIUS:
        return cobyqa_minimize(fun, x0, lower, max_eval=max_eval, initial_radius=initial_radius,
                               final_radius=final_radius), None
    coarse = cobyqa_minimize(fun, x0, lower, max_eval=max_eval, initial_radius=initial_radius,
                             final_radius=COARSE_RADIUS)
    x, value = np.asarray(coarse.x, dtype=np.float64), float(coarse.value)
    newton = _newton_step(fun, x, value, lower, delta) if np.isfinite(value) else None
    if newton is not None and newton[3]:
        x1, value1, hess, _, used = newton
        grad1 = difference_gradient(fun, x1, delta)
        return OptimResult(x=x1, value=np.asarray(value1), grad=grad1, n_iter=np.asarray(coarse.n_iter + 1),
                           n_eval=np.asarray(coarse.n_eval + used + 2 * x.size),
                           converged=np.asarray(bool(coarse.converged))), hess
    used = 0 if newton is None else newton[4]
    rest = cobyqa_minimize(fun, x, lower, max_eval=max(1, max_eval - int(coarse.n_eval) - used),
                           initial_radius=COARSE_RADIUS, final_radius=final_radius)
    if not float(rest.value) <= value:  # COBYQA's start is its best point so far: only non-finite ends differ
        rest = rest._replace(x=x, value=np.asarray(value))
    return rest._replace(n_eval=np.asarray(int(coarse.n_eval) + used + int(rest.n_eval)),
                         n_iter=np.asarray(int(coarse.n_iter) + int(rest.n_iter))), None


def _newton_step(fun, x, value, lower, delta):
    """(x1, f(x1), the Hessian at x, whether the step is accepted, evaluations) from x, or None when x is too near
    a bound for a step (no evaluations spent)."""
    bounded = np.isfinite(lower)
    if np.any(x[bounded] - lower[bounded] <= _NEWTON_MARGIN):
        return None
    grad, hess = difference_derivatives(fun, x, value, delta)
    used = x.size * (x.size + 1)
    if not (np.isfinite(grad).all() and np.isfinite(hess).all()):
        return x, np.inf, hess, False, used
    try:
        np.linalg.cholesky(hess)
    except np.linalg.LinAlgError:
        return x, np.inf, hess, False, used
    step = -np.linalg.solve(hess, grad)
    x1 = x + step
    if np.max(np.abs(step)) > _NEWTON_MAX_STEP or np.any(x1[bounded] - lower[bounded] <= _NEWTON_MARGIN):
        return x, np.inf, hess, False, used
    value1 = float(fun(x1))
    return x1, value1 if np.isfinite(value1) else np.inf, hess, bool(value1 <= value), used + 1


def difference_gradient(fun: Callable[[np.ndarray], float], x, delta: float = 1e-4) -> np.ndarray:
    """The gradient by central differences of fun (lme4's step 1e-4): 2k evaluations."""
    x = np.asarray(x, dtype=np.float64)
    steps = delta * np.eye(x.size)
    return np.array([(float(fun(x + e)) - float(fun(x - e))) / (2 * delta) for e in steps])


def difference_derivatives(fun: Callable[[np.ndarray], float], x, f0: float, delta: float = 1e-4):
    """Gradient and Hessian by central differences of fun at x (f0 = fun(x)), with lme4's step (1e-4): the
    gradient and the Hessian's diagonal as lme4's deriv12 takes them, each off-diagonal element from the two
    diagonal steps f(x ± δeᵢ ± δeⱼ) and the axis points already taken (the seven-point formula, Abramowitz and
    Stegun 25.3.27; lme4 takes four corner points), so 2k + k(k − 1) = k(k + 1) evaluations instead of 2k². Both
    formulas are exact for quadratics and err by O(δ²); the rounding of the objective, divided by δ², is the
    larger error either way (~1e-3 relative on small models' Hessians, tests/test_gradients.py)."""
    x = np.asarray(x, dtype=np.float64)
    k = x.size
    steps = delta * np.eye(k)
    plus = np.array([float(fun(x + e)) for e in steps])
    minus = np.array([float(fun(x - e)) for e in steps])
    grad = (plus - minus) / (2 * delta)
    hess = np.diag((plus - 2 * f0 + minus) / delta**2)
    for j in range(k):
        for i in range(j):
            both = float(fun(x + steps[i] + steps[j])) + float(fun(x - steps[i] - steps[j]))
            hess[i, j] = hess[j, i] = (both - plus[i] - minus[i] - plus[j] - minus[j] + 2 * f0) / (2 * delta**2)
    return grad, hess


def central_difference_hessian(gradients_at: Callable[[np.ndarray], np.ndarray], x, delta: float = 1e-5) -> np.ndarray:
    """The Hessian at x by central differences of an exact gradient, symmetrized. `gradients_at(points)` returns
    the gradients at the 2k rows of `points`: x + δeⱼ for each j, then x − δeⱼ. Dividing gradient differences by δ
    keeps ~1e-8 relative accuracy at δ = 1e-5 (differencing the function itself divides by δ²)."""
    x = np.asarray(x, dtype=np.float64)
    steps = delta * np.eye(x.size)
    plus, minus = np.split(np.asarray(gradients_at(np.vstack([x + steps, x - steps])), dtype=np.float64), 2)
    hess = (plus - minus) / (2.0 * delta)  # row j: ∂g/∂x_j
    return 0.5 * (hess + hess.T)
