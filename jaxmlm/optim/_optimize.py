"""Minimizers of the profiled objectives, each for the setting it serves:

* `lbfgs_minimize`: optax's L-BFGS (zoom line search) as one `lax.while_loop`, so a whole fit is one XLA program
  (GLMM fits, profiles);
* `bfgs_minimize`: dense BFGS whose loop pass is exactly one evaluation, vmapped over batches of problems;
* `host_bfgs_minimize`: the same BFGS as a NumPy loop around one compiled value-and-gradient program (single
  linear mixed model fits: nothing but the objective compiles);
* `cobyqa_minimize`: derivative-free, with lower bounds, for large dense tails (as lme4 fits with BOBYQA).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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


def _step_limit(direction, x, xp=np):
    """Factor (≤ 1) that keeps a unit step from moving any θ by more than max(0.5, max|θ|). θ are relative
    scales, so a step beyond that is a poor curvature estimate overshooting (from lme4's start θ = 1 the
    deviance is often not convex); capped, InstEval's gradient-based fit took 22 evaluations instead of 37 and
    1M × 100k intercept + slope 12 instead of 17, small models as many as before."""
    limit = xp.maximum(0.5, xp.max(xp.abs(x)))
    big = xp.max(xp.abs(direction))
    return xp.where(big > limit, limit / xp.maximum(big, 1e-300), 1.0)


class _BfgsState(NamedTuple):
    x: jax.Array  # accepted point
    value: jax.Array
    grad: jax.Array
    inv_hess: jax.Array  # (k, k) BFGS approximation of the inverse Hessian
    direction: jax.Array
    step: jax.Array  # trial step length along `direction`
    it: jax.Array  # accepted iterations
    n_eval: jax.Array
    stall: jax.Array
    scaled: jax.Array  # whether inv_hess has had its first (Shanno–Phua) scaling


def bfgs_minimize(
    fun: Callable,
    x0: jax.Array,
    *args,
    max_iter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    first_step: float = 0.25,
) -> OptimResult:
    """Minimize fun(x, *args) from x0 by dense BFGS with a backtracking (Armijo) line search, for few parameters.

    Every pass of the loop costs exactly one value-and-gradient evaluation: a pass either accepts its trial point
    (BFGS update, new direction, unit step) or shrinks the step by quadratic interpolation for the next pass.
    There is no nested line-search loop, so under vmap every problem of a batch advances by one evaluation per
    pass and none waits for another's line search: this is the batch optimizer (`_batch`), where optax's zoom
    line search spent several evaluations' worth of bookkeeping per iteration. The first direction is the
    gradient scaled to a largest component of `first_step`; after the first accepted step the inverse Hessian
    is scaled by sᵀy/yᵀy (Nocedal & Wright 6.20); until then directions are scaled gradient steps, and no unit
    step moves a θ further than `_step_limit` allows. Convergence as in `lbfgs_minimize`; max_iter bounds the passes.
    """
    k = x0.shape[0]
    eye = jnp.eye(k, dtype=x0.dtype)
    value_and_grad = jax.value_and_grad(lambda x: fun(x, *args))

    v0, g0 = value_and_grad(x0)
    d0 = -g0 * (first_step / jnp.maximum(jnp.max(jnp.abs(g0)), 1e-300))
    init = _BfgsState(x=x0, value=v0, grad=g0, inv_hess=eye, direction=d0, step=jnp.asarray(1.0, x0.dtype),
                      it=jnp.asarray(0), n_eval=jnp.asarray(1), stall=jnp.asarray(0), scaled=jnp.asarray(False))

    def cond(s):
        done = _gradient_small(s.value, s.grad, gtol) | (s.stall >= 3) | ~jnp.isfinite(s.value) | (s.step < 1e-12)
        return (s.n_eval < max_iter) & ~done

    def body(s):
        x_try = s.x + s.step * s.direction
        v_try, g_try = value_and_grad(x_try)
        slope = jnp.dot(s.grad, s.direction)  # < 0 along a descent direction
        ok = jnp.isfinite(v_try) & jnp.all(jnp.isfinite(g_try)) & (v_try <= s.value + 1e-4 * s.step * slope)
        # rejected: minimizer of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step
        excess = jnp.where(jnp.isfinite(v_try), v_try - s.value - slope * s.step, jnp.inf)
        t_quad = -slope * s.step**2 / (2.0 * jnp.maximum(excess, 1e-300))
        t_back = jnp.clip(t_quad, 0.1 * s.step, 0.5 * s.step)
        # accepted: BFGS update of the inverse Hessian, skipped when the curvature sᵀy is not safely positive
        sv, yv = x_try - s.x, g_try - s.grad
        sy = jnp.dot(sv, yv)
        curvature_ok = sy > 1e-10 * jnp.linalg.norm(sv) * jnp.linalg.norm(yv)
        H0 = jnp.where(s.scaled, s.inv_hess, eye * (sy / jnp.maximum(jnp.dot(yv, yv), 1e-300)))
        rho = 1.0 / jnp.where(curvature_ok, sy, 1.0)
        V = eye - rho * jnp.outer(sv, yv)
        H_new = jnp.where(curvature_ok, V @ H0 @ V.T + rho * jnp.outer(sv, sv), s.inv_hess)
        d_new = -H_new @ g_try
        # a BFGS matrix that lost positive definiteness numerically: fall back to a scaled gradient step
        bad_dir = ~(jnp.dot(d_new, g_try) < 0)
        # ... and while it is still the unscaled identity (no accepted step has had positive curvature yet), the
        # scaled gradient step too: -g itself has the deviance's units, steps of thousands in θ
        unscaled = ~(s.scaled | curvature_ok)
        d_new = jnp.where(bad_dir | unscaled, -g_try * (first_step / jnp.maximum(jnp.max(jnp.abs(g_try)), 1e-300)),
                          d_new)
        d_new = d_new * _step_limit(d_new, x_try, jnp)
        H_new = jnp.where(bad_dir, eye, H_new)
        rel = (s.value - v_try) / (1.0 + jnp.abs(s.value))
        return _BfgsState(
            x=jnp.where(ok, x_try, s.x), value=jnp.where(ok, v_try, s.value), grad=jnp.where(ok, g_try, s.grad),
            inv_hess=jnp.where(ok, H_new, s.inv_hess), direction=jnp.where(ok, d_new, s.direction),
            step=jnp.where(ok, 1.0, t_back), it=s.it + ok.astype(s.it.dtype), n_eval=s.n_eval + 1,
            stall=jnp.where(ok, jnp.where(rel < ftol, s.stall + 1, 0), s.stall),
            scaled=s.scaled | (ok & curvature_ok & ~bad_dir),
        )

    s = jax.lax.while_loop(cond, body, init)
    converged = _converged(s.value, s.grad, gtol, (s.stall >= 3) | (s.step < 1e-12))
    return OptimResult(x=s.x, value=s.value, grad=s.grad, n_iter=s.it, n_eval=s.n_eval, converged=converged)


def host_bfgs_minimize(
    value_and_grad: Callable[[np.ndarray], tuple],
    x0,
    *,
    max_iter: int = 1000,
    gtol: float = 1e-9,
    ftol: float = 1e-13,
    first_step: float = 0.25,
) -> OptimResult:
    """`bfgs_minimize`'s algorithm as a NumPy loop around one compiled value-and-gradient program.

    A first fit mostly pays for compiling: the optimizer's `lax.while_loop` with the objective and its gradient
    inlined (and optax's line search) compiles several times slower than the bare value-and-gradient program,
    while the loop's own arithmetic on a few θ is microseconds on the host. Same passes, acceptance rule,
    interpolation, BFGS update, scaling and convergence test as `bfgs_minimize`; each pass is one call of
    `value_and_grad(x) -> (value, gradient)`. Returns an `OptimResult` of NumPy values.

    One more way to stall: a finite trial rejected although the decrease it was expected to make (−step·gᵀd) is
    below ftol·(1 + |f|), with max|grad| already within 1e-4·(1 + |f|). Such a trial failed on rounding, not
    on the model: where the gradient cannot get below gtol (a REML criterion whose value carries ~1e-12 relative
    rounding, say) the shrinking steps otherwise cost ~60 rejected trials before the step fell to 1e-12
    (Penicillin REML: 78 evaluations against 16)."""
    x = np.array(x0, dtype=np.float64)
    k = x.shape[0]
    eye = np.eye(k)

    def evaluate(point):
        v, g = value_and_grad(point)
        return float(v), np.asarray(g, dtype=np.float64)

    def small(v, g, tol):
        return bool(np.max(np.abs(g), initial=0.0) <= tol * (1.0 + abs(v)))

    def gradient_step(g):
        return -g * (first_step / max(float(np.max(np.abs(g), initial=0.0)), 1e-300))

    value, grad = evaluate(x)
    inv_hess, direction, step = eye, gradient_step(grad), 1.0
    it, n_eval, stall, scaled, floor = 0, 1, 0, False, False
    while n_eval < max_iter and not (small(value, grad, gtol) or stall >= 3 or floor or not np.isfinite(value)
                                     or step < 1e-12):
        x_try = x + step * direction
        v_try, g_try = evaluate(x_try)
        n_eval += 1
        slope = float(grad @ direction)  # < 0 along a descent direction
        if not (np.isfinite(v_try) and np.isfinite(g_try).all() and v_try <= value + 1e-4 * step * slope):
            # rejected: minimizer of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step
            floor = bool(np.isfinite(v_try)) and -step * slope < ftol * (1.0 + abs(value)) and small(value, grad, 1e-4)
            excess = v_try - value - slope * step if np.isfinite(v_try) else np.inf
            t_quad = -slope * step**2 / (2.0 * max(excess, 1e-300))
            step = float(np.clip(t_quad, 0.1 * step, 0.5 * step))
            continue
        # accepted: BFGS update of the inverse Hessian, skipped when the curvature sᵀy is not safely positive
        sv, yv = x_try - x, g_try - grad
        sy = float(sv @ yv)
        curvature_ok = sy > 1e-10 * np.linalg.norm(sv) * np.linalg.norm(yv)
        H = inv_hess
        if curvature_ok:
            H0 = inv_hess if scaled else eye * (sy / max(float(yv @ yv), 1e-300))
            V = eye - np.outer(sv, yv) / sy
            H = V @ H0 @ V.T + np.outer(sv, sv) / sy
        d_new = -H @ g_try
        bad_dir = not (float(d_new @ g_try) < 0)
        if bad_dir:  # a BFGS matrix that lost positive definiteness numerically: a scaled gradient step
            d_new, H = gradient_step(g_try), eye
        elif not (scaled or curvature_ok):  # H is still the unscaled identity: -g has the deviance's units
            d_new = gradient_step(g_try)
        d_new = d_new * _step_limit(d_new, x_try)
        rel = (value - v_try) / (1.0 + abs(value))
        stall = stall + 1 if rel < ftol else 0
        scaled = scaled or (curvature_ok and not bad_dir)
        x, value, grad, inv_hess, direction, step = x_try, v_try, g_try, H, d_new, 1.0
        it += 1
    stalled = stall >= 3 or floor or step < 1e-12
    converged = small(value, grad, gtol) or (stalled and small(value, grad, 1e-4))
    return OptimResult(x=x, value=np.asarray(value), grad=grad, n_iter=np.asarray(it), n_eval=np.asarray(n_eval),
                       converged=np.asarray(converged))


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
