"""One BFGS step, written once, that every BFGS driver runs (as optimistix's solvers are a step that a loop runs).

`bfgs_init` makes the state at the start, `bfgs_step` takes a state to the next (one value-and-gradient evaluation:
accept the trial point with a BFGS update of the inverse Hessian and a new direction, or shrink the step by
quadratic interpolation), `bfgs_done` and `bfgs_converged` read the stopping flags. The state may carry a leading
batch axis (one row per problem). What differs between drivers is only an `Ops`: the array namespace and how a
step chooses between the accepted and the rejected state.

* `HOST`: NumPy, a Python `if` (the host loop `host_bfgs_minimize` around one compiled value-and-gradient program);
* `TRACED`: jax.numpy, both states computed and selected elementwise (`bfgs_minimize` inside `lax.while_loop`,
  vmapped over batches);
* `HOST_BATCH`: NumPy on (batch × k) arrays, selected row by row (`host_batch_bfgs_minimize`).

The algorithm: the first direction is the gradient scaled to a largest component of `first_step`; a trial is
accepted on Armijo's condition with constant 1e-4; a rejected trial's next step is the minimizer of the quadratic
through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step. After the first accepted step with positive curvature
the inverse Hessian is scaled by sᵀy/yᵀy (Nocedal & Wright 6.20); until then, and whenever the BFGS matrix has lost
positive definiteness numerically, directions are scaled gradient steps; no unit step moves a coordinate further
than `_step_limit` allows.

Stopping: a small gradient (max|g| ≤ gtol·(1 + |f|)); three accepted steps in a row with relative decrease below
ftol; a step below 1e-12; a non-finite value; max_iter evaluations; or a finite trial rejected although the
decrease it was expected to make (−step·gᵀd) is below ftol·(1 + |f|) with max|g| already within 1e-4·(1 + |f|).
Such a trial failed on rounding, not on the model: where the gradient cannot get below gtol (a REML criterion
whose value carries ~1e-12 relative rounding, say) the shrinking steps otherwise cost ~60 rejected trials before
the step fell to 1e-12 (Penicillin REML: 78 evaluations against 16). Converged: a small gradient, or a stop at the
limit of the arithmetic with max|g| within 1e-4·(1 + |f|).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["BfgsOptions", "BfgsState", "HOST", "HOST_BATCH", "Ops", "TRACED", "bfgs_converged", "bfgs_done",
           "bfgs_init", "bfgs_step"]


class BfgsOptions(NamedTuple):
    gtol: float = 1e-9
    ftol: float = 1e-13
    first_step: float = 0.25
    max_iter: int = 1000  # evaluations


class BfgsState(NamedTuple):
    x: Any  # accepted point (k,) or (m, k)
    value: Any
    grad: Any
    inv_hess: Any  # BFGS approximation of the inverse Hessian (k, k)
    direction: Any
    step: Any  # trial step length along `direction`
    it: Any  # accepted iterations
    n_eval: Any
    stall: Any  # accepted steps in a row with relative decrease below ftol
    scaled: Any  # whether inv_hess has had its first (Shanno–Phua) scaling
    floor: Any  # a trial failed on rounding (see the module docstring)


def _tree_select(xp, pred, a, b):
    """Elementwise choice between two states; `pred` has the states' batch shape."""
    def pick(u, v):
        u, v = xp.asarray(u), xp.asarray(v)
        mask = pred.reshape(pred.shape + (1,) * (u.ndim - pred.ndim)) if hasattr(pred, "reshape") else pred
        return xp.where(mask, u, v)

    return type(a)(*(pick(u, v) for u, v in zip(a, b)))


@dataclasses.dataclass(frozen=True)
class Ops:
    """What a driver chooses: the array namespace and how a step picks the accepted or the rejected state."""

    xp: Any
    lazy: bool  # a Python branch: only the chosen state is computed (host, one problem)

    def branch(self, pred, if_true: Callable, if_false: Callable):
        if self.lazy:
            return if_true() if bool(pred) else if_false()
        return _tree_select(self.xp, pred, if_true(), if_false())


HOST = Ops(np, lazy=True)
HOST_BATCH = Ops(np, lazy=False)
TRACED = Ops(jnp, lazy=False)


# array methods rather than xp.sum / xp.max: NumPy's function forms add a dispatch that costs more than the
# arithmetic on a few θ, and a host fit runs these a few hundred times
def _dot(xp, a, b):
    return (a * b).sum(axis=-1)


def _max_abs(xp, a):
    return abs(a).max(axis=-1)


def _small(xp, value, grad, tol):
    return _max_abs(xp, grad) <= tol * (1.0 + xp.abs(value))


def _gradient_step(xp, grad, first_step):
    """-g scaled to a largest component of first_step: -g itself has the objective's units."""
    return -grad * (first_step / xp.maximum(_max_abs(xp, grad), 1e-300))[..., None]


def _step_limit(xp, direction, x):
    """Factor (≤ 1) that keeps a unit step from moving any θ by more than max(0.5, max|θ|). θ are relative
    scales, so a step beyond that is a poor curvature estimate overshooting (from lme4's start θ = 1 the
    deviance is often not convex); capped, InstEval's gradient-based fit took 22 evaluations instead of 37 and
    1M × 100k intercept + slope 12 instead of 17, small models as many as before."""
    limit = xp.maximum(0.5, _max_abs(xp, x))
    big = _max_abs(xp, direction)
    return xp.where(big > limit, limit / xp.maximum(big, 1e-300), 1.0)


def bfgs_init(x0, value, grad, options: BfgsOptions, ops: Ops) -> BfgsState:
    """The state at x0, given the value and gradient there."""
    xp = ops.xp
    batch = value.shape if hasattr(value, "shape") else ()
    k = x0.shape[-1]
    inv_hess = xp.broadcast_to(xp.eye(k, dtype=x0.dtype), batch + (k, k))
    zeros = xp.zeros(batch, dtype=int)
    return BfgsState(x=x0, value=value, grad=grad, inv_hess=inv_hess * 1.0,
                     direction=_gradient_step(xp, grad, options.first_step), step=xp.ones(batch, dtype=x0.dtype),
                     it=zeros, n_eval=zeros + 1, stall=zeros, scaled=xp.zeros(batch, dtype=bool),
                     floor=xp.zeros(batch, dtype=bool))


def bfgs_done(s: BfgsState, options: BfgsOptions, ops: Ops):
    """Whether the search has stopped (per problem)."""
    xp = ops.xp
    return (_small(xp, s.value, s.grad, options.gtol) | (s.stall >= 3) | s.floor | ~xp.isfinite(s.value)
            | (s.step < 1e-12) | (s.n_eval >= options.max_iter))


def bfgs_converged(s: BfgsState, options: BfgsOptions, ops: Ops):
    xp = ops.xp
    stalled = (s.stall >= 3) | s.floor | (s.step < 1e-12)
    return _small(xp, s.value, s.grad, options.gtol) | (stalled & _small(xp, s.value, s.grad, 1e-4))


def bfgs_step(s: BfgsState, value_and_grad: Callable, options: BfgsOptions, ops: Ops, active=None) -> BfgsState:
    """One pass: evaluate the trial point x + step·direction, then accept or shrink. `active` (batch drivers): the
    problems still searching; the others keep their state (and are evaluated at their own point)."""
    xp = ops.xp
    x_try = s.x + s.step[..., None] * s.direction
    if active is not None:
        x_try = xp.where(active[..., None], x_try, s.x)
    v_try, g_try = value_and_grad(x_try)
    slope = _dot(xp, s.grad, s.direction)  # < 0 along a descent direction
    finite = xp.isfinite(v_try) & xp.all(xp.isfinite(g_try), axis=-1)
    ok = finite & (xp.where(finite, v_try, xp.inf) <= s.value + 1e-4 * s.step * slope)
    new = ops.branch(ok, lambda: _accepted(xp, s, x_try, v_try, g_try, options),
                     lambda: _rejected(xp, s, v_try, slope, options))
    return new if active is None else _tree_select(xp, active, new, s)


def _rejected(xp, s: BfgsState, v_try, slope, options: BfgsOptions) -> BfgsState:
    """The minimizer of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step."""
    finite = xp.isfinite(v_try)
    floor = finite & (-s.step * slope < options.ftol * (1.0 + xp.abs(s.value))) & _small(xp, s.value, s.grad, 1e-4)
    excess = xp.where(finite, v_try - s.value - slope * s.step, xp.inf)
    t_quad = -slope * s.step**2 / (2.0 * xp.maximum(excess, 1e-300))
    return s._replace(step=xp.clip(t_quad, 0.1 * s.step, 0.5 * s.step), n_eval=s.n_eval + 1, floor=s.floor | floor)


def _accepted(xp, s: BfgsState, x_try, v_try, g_try, options: BfgsOptions) -> BfgsState:
    """BFGS update of the inverse Hessian (skipped when the curvature sᵀy is not safely positive), new direction,
    unit step."""
    k = s.x.shape[-1]
    eye = xp.eye(k, dtype=s.inv_hess.dtype)
    sv, yv = x_try - s.x, g_try - s.grad
    sy = _dot(xp, sv, yv)
    curvature_ok = sy > 1e-10 * xp.linalg.norm(sv, axis=-1) * xp.linalg.norm(yv, axis=-1)
    first = eye * (sy / xp.maximum(_dot(xp, yv, yv), 1e-300))[..., None, None]
    H0 = xp.where(s.scaled[..., None, None], s.inv_hess, first)
    rho = (1.0 / xp.where(curvature_ok, sy, 1.0))[..., None, None]
    V = eye - rho * (sv[..., :, None] * yv[..., None, :])
    updated = V @ H0 @ xp.swapaxes(V, -1, -2) + rho * (sv[..., :, None] * sv[..., None, :])
    H = xp.where(curvature_ok[..., None, None], updated, s.inv_hess)
    d_new = -(H @ g_try[..., None])[..., 0]
    # a BFGS matrix that lost positive definiteness numerically: a scaled gradient step (and the identity); while
    # the matrix is still the unscaled identity (no accepted step has had positive curvature yet) too
    bad_dir = ~(_dot(xp, d_new, g_try) < 0)
    fallback = bad_dir | ~(s.scaled | curvature_ok)
    d_new = xp.where(fallback[..., None], _gradient_step(xp, g_try, options.first_step), d_new)
    d_new = d_new * _step_limit(xp, d_new, x_try)[..., None]
    H = xp.where(bad_dir[..., None, None], eye, H)
    rel = (s.value - v_try) / (1.0 + xp.abs(s.value))
    return BfgsState(x=x_try, value=v_try, grad=g_try, inv_hess=H, direction=d_new, step=xp.ones_like(s.step),
                     it=s.it + 1, n_eval=s.n_eval + 1, stall=xp.where(rel < options.ftol, s.stall + 1, 0),
                     scaled=s.scaled | (curvature_ok & ~bad_dir), floor=s.floor)


def host_state(s: BfgsState) -> BfgsState:
    """A traced state's arrays on the host (for comparing iterates)."""
    return BfgsState(*(np.asarray(jax.device_get(a)) for a in s))
