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
import functools
import math
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
    """Elementwise choice between two arrays or two states; `pred` has their batch shape."""
    def pick(u, v):
        u, v = xp.asarray(u), xp.asarray(v)
        ndim = max(u.ndim, v.ndim)
        mask = pred.reshape(pred.shape + (1,) * (ndim - pred.ndim)) if hasattr(pred, "reshape") else pred
        return xp.where(mask, u, v)

    if isinstance(a, tuple):
        return type(a)(*(pick(u, v) for u, v in zip(a, b)))
    return pick(a, b)


@dataclasses.dataclass(frozen=True)
class Ops:
    """What a driver chooses: the array namespace and how a step picks the accepted or the rejected state. These
    are the array forms (a leading batch axis or none, jax.numpy or NumPy): both branches computed, selected
    elementwise. `_HostOps` overrides them for one problem on the host."""

    xp: Any

    def cond(self, pred, if_true: Callable, if_false: Callable):
        """if_true() where pred holds, else if_false() (arrays or states)."""
        return _tree_select(self.xp, pred, if_true(), if_false())

    def where(self, pred, a, b):
        return self.xp.where(pred, a, b)

    def col(self, a):  # a per-problem number against a vector
        return a[..., None]

    def mat(self, a):  # ... against a matrix
        return a[..., None, None]

    def maximum(self, a, b):
        return self.xp.maximum(a, b)

    def clip(self, a, lo, hi):
        return self.xp.clip(a, lo, hi)

    def isfinite(self, a):
        return self.xp.isfinite(a)

    def all_finite(self, v):
        return self.xp.all(self.xp.isfinite(v), axis=-1)

    def not_(self, a):
        return ~a

    def dot(self, a, b):
        return (a * b).sum(axis=-1)

    def max_abs(self, a):
        return abs(a).max(axis=-1)

    def norm(self, a):
        return self.xp.linalg.norm(a, axis=-1)

    def scalar(self, a):
        return a

    def ones_like(self, a):
        return self.xp.ones_like(a)

    def full(self, batch, value, dtype):
        return self.xp.full(batch, value, dtype=dtype)

    def eye(self, k, dtype):
        return self.xp.eye(k, dtype=dtype)


def _nan_max(a, b):
    """np.maximum on two floats (NaN wins)."""
    return b if (b > a or b != b) else a


def _nan_min(a, b):
    return b if (b < a or b != b) else a


@functools.lru_cache(maxsize=64)
def _host_eye(k: int, dtype) -> np.ndarray:
    eye = np.eye(k, dtype=dtype)
    eye.flags.writeable = False
    return eye


class _HostOps(Ops):
    """One problem on the host: the per-problem numbers (value, step, counters, flags) are Python floats, ints and
    bools, a branch is a Python `if`, so that only the vector and matrix arithmetic calls NumPy (a NumPy call on a
    0-d array costs more than the arithmetic on a few θ, and a host fit runs the step a few dozen times). Every
    operation is the array form's, to the last bit: the same NumPy reductions on the vectors, IEEE arithmetic on
    the numbers, NaN kept as np.maximum / np.clip keep it."""

    def cond(self, pred, if_true, if_false):
        return if_true() if pred else if_false()

    def where(self, pred, a, b):
        return a if pred else b

    def col(self, a):
        return a

    mat = col

    def maximum(self, a, b):
        return _nan_max(a, b)

    def clip(self, a, lo, hi):
        return _nan_min(_nan_max(a, lo), hi)

    def isfinite(self, a):
        return math.isfinite(a)

    def all_finite(self, v):
        return bool(np.isfinite(v).all())

    def not_(self, a):
        return not a

    def dot(self, a, b):
        return float(np.add.reduce(a * b))

    def max_abs(self, a):
        return float(np.maximum.reduce(np.abs(a)))

    def norm(self, a):  # np.linalg.norm(a, axis=-1): the square root of add.reduce(a * a)
        return math.sqrt(float(np.add.reduce(a * a)))

    def scalar(self, a):
        return float(a)

    def ones_like(self, a):
        return 1.0

    def full(self, batch, value, dtype):
        return value

    def eye(self, k, dtype):
        return _host_eye(k, np.dtype(dtype))


HOST = _HostOps(np)
HOST_BATCH = Ops(np)
TRACED = Ops(jnp)


def _small(ops: Ops, value, grad, tol):
    return ops.max_abs(grad) <= tol * (1.0 + abs(value))


def _gradient_step(ops: Ops, grad, first_step):
    """-g scaled to a largest component of first_step: -g itself has the objective's units."""
    return -grad * ops.col(first_step / ops.maximum(ops.max_abs(grad), 1e-300))


def _step_limit(ops: Ops, direction, x):
    """Factor (≤ 1) that keeps a unit step from moving any θ by more than max(0.5, max|θ|). θ are relative
    scales, so a step beyond that is a poor curvature estimate overshooting (from lme4's start θ = 1 the
    deviance is often not convex); capped, InstEval's gradient-based fit took 22 evaluations instead of 37 and
    1M × 100k intercept + slope 12 instead of 17, small models as many as before."""
    limit = ops.maximum(0.5, ops.max_abs(x))
    big = ops.max_abs(direction)
    return ops.where(big > limit, limit / ops.maximum(big, 1e-300), 1.0)


def bfgs_init(x0, value, grad, options: BfgsOptions, ops: Ops) -> BfgsState:
    """The state at x0, given the value and gradient there."""
    xp = ops.xp
    value = ops.scalar(value)
    batch = value.shape if hasattr(value, "shape") else ()
    k = x0.shape[-1]
    inv_hess = xp.broadcast_to(ops.eye(k, x0.dtype), batch + (k, k)) * 1.0
    zero = ops.full(batch, 0, int)
    return BfgsState(x=x0, value=value, grad=grad, inv_hess=inv_hess,
                     direction=_gradient_step(ops, grad, options.first_step), step=ops.full(batch, 1.0, x0.dtype),
                     it=zero, n_eval=zero + 1, stall=zero, scaled=ops.full(batch, False, bool),
                     floor=ops.full(batch, False, bool))


def bfgs_done(s: BfgsState, options: BfgsOptions, ops: Ops):
    """Whether the search has stopped (per problem)."""
    return (_small(ops, s.value, s.grad, options.gtol) | (s.stall >= 3) | s.floor | ops.not_(ops.isfinite(s.value))
            | (s.step < 1e-12) | (s.n_eval >= options.max_iter))


def bfgs_converged(s: BfgsState, options: BfgsOptions, ops: Ops):
    stalled = (s.stall >= 3) | s.floor | (s.step < 1e-12)
    return _small(ops, s.value, s.grad, options.gtol) | (stalled & _small(ops, s.value, s.grad, 1e-4))


def bfgs_step(s: BfgsState, value_and_grad: Callable, options: BfgsOptions, ops: Ops, active=None) -> BfgsState:
    """One pass: evaluate the trial point x + step·direction, then accept or shrink. `active` (batch drivers): the
    problems still searching; the others keep their state (and are evaluated at their own point)."""
    x_try = s.x + ops.col(s.step) * s.direction
    if active is not None:
        x_try = ops.where(ops.col(active), x_try, s.x)
    v_try, g_try = value_and_grad(x_try)
    v_try = ops.scalar(v_try)
    slope = ops.dot(s.grad, s.direction)  # < 0 along a descent direction
    finite = ops.isfinite(v_try) & ops.all_finite(g_try)
    ok = finite & (ops.where(finite, v_try, math.inf) <= s.value + 1e-4 * s.step * slope)
    new = ops.cond(ok, lambda: _accepted(ops, s, x_try, v_try, g_try, options),
                   lambda: _rejected(ops, s, v_try, slope, options))
    return new if active is None else _tree_select(ops.xp, active, new, s)


def _rejected(ops: Ops, s: BfgsState, v_try, slope, options: BfgsOptions) -> BfgsState:
    """The minimizer of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step."""
    finite = ops.isfinite(v_try)
    floor = (finite & (-s.step * slope < options.ftol * (1.0 + abs(s.value)))
             & _small(ops, s.value, s.grad, 1e-4))
    excess = ops.where(finite, v_try - s.value - slope * s.step, math.inf)
    t_quad = -slope * s.step**2 / (2.0 * ops.maximum(excess, 1e-300))
    return s._replace(step=ops.clip(t_quad, 0.1 * s.step, 0.5 * s.step), n_eval=s.n_eval + 1,
                      floor=s.floor | floor)


def _updated_inverse(ops: Ops, s: BfgsState, sv, yv, sy, curvature_ok, eye):
    """The BFGS update of the inverse Hessian; its first one (the matrix still the identity) scaled by sᵀy/yᵀy."""
    xp = ops.xp
    H0 = ops.cond(s.scaled, lambda: s.inv_hess, lambda: eye * ops.mat(sy / ops.maximum(ops.dot(yv, yv), 1e-300)))
    rho = ops.mat(1.0 / ops.where(curvature_ok, sy, 1.0))
    V = eye - rho * (sv[..., :, None] * yv[..., None, :])
    return V @ H0 @ xp.swapaxes(V, -1, -2) + rho * (sv[..., :, None] * sv[..., None, :])


def _accepted(ops: Ops, s: BfgsState, x_try, v_try, g_try, options: BfgsOptions) -> BfgsState:
    """BFGS update of the inverse Hessian (skipped when the curvature sᵀy is not safely positive), new direction,
    unit step."""
    eye = ops.eye(s.x.shape[-1], s.inv_hess.dtype)
    sv, yv = x_try - s.x, g_try - s.grad
    sy = ops.dot(sv, yv)
    curvature_ok = sy > 1e-10 * ops.norm(sv) * ops.norm(yv)
    H = ops.cond(curvature_ok, lambda: _updated_inverse(ops, s, sv, yv, sy, curvature_ok, eye), lambda: s.inv_hess)
    d_new = -(H @ g_try[..., None])[..., 0]
    # a BFGS matrix that lost positive definiteness numerically: a scaled gradient step (and the identity); while
    # the matrix is still the unscaled identity (no accepted step has had positive curvature yet) too
    bad_dir = ops.not_(ops.dot(d_new, g_try) < 0)
    fallback = bad_dir | ops.not_(s.scaled | curvature_ok)
    d_new = ops.cond(fallback, lambda: _gradient_step(ops, g_try, options.first_step), lambda: d_new)
    d_new = d_new * ops.col(_step_limit(ops, d_new, x_try))
    H = ops.cond(bad_dir, lambda: eye, lambda: H)
    rel = (s.value - v_try) / (1.0 + abs(s.value))
    return BfgsState(x=x_try, value=v_try, grad=g_try, inv_hess=H, direction=d_new, step=ops.ones_like(s.step),
                     it=s.it + 1, n_eval=s.n_eval + 1, stall=ops.where(rel < options.ftol, s.stall + 1, 0),
                     scaled=s.scaled | (curvature_ok & ops.not_(bad_dir)), floor=s.floor)


def host_state(s: BfgsState) -> BfgsState:
    """A traced state's arrays on the host (for comparing iterates)."""
    return BfgsState(*(np.asarray(jax.device_get(a)) for a in s))
