"""`bfgs_minimize`'s algorithm for a batch of problems as a NumPy loop around one compiled, vectorized
value-and-gradient program.

`bfgs_minimize` under vmap is one XLA program for the whole batch fit; its `lax.while_loop` with the objective
and its gradient inlined compiles several times slower than the bare vmapped value-and-gradient program, and
where every batch has its own shapes (`fit_groups`' buckets) compiling is most of the cost. Here each pass calls
that program once for the whole batch and does the optimizer's arithmetic on (batch × k) arrays on the host.
Per problem the passes, acceptance rule, interpolation, BFGS update, scaling and convergence test are
`host_bfgs_minimize`'s (one evaluation per pass; a rejected trial shrinks the step for the next pass); a problem
that has stopped keeps its point while the others go on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._optimize import OptimResult

__all__ = ["host_batch_bfgs_minimize"]


def _small(value, grad, tol):
    return np.max(np.abs(grad), axis=1, initial=0.0) <= tol * (1.0 + np.abs(value))


def _gradient_steps(grad, first_step):
    return -grad * (first_step / np.maximum(np.max(np.abs(grad), axis=1, keepdims=True), 1e-300))


def _step_limits(direction, x):
    """`_optimize._step_limit` per problem (row): a unit step moves no θ by more than max(0.5, max|θ|)."""
    limit = np.maximum(0.5, np.max(np.abs(x), axis=1))
    big = np.max(np.abs(direction), axis=1)
    return np.where(big > limit, limit / np.maximum(big, 1e-300), 1.0)


def _bfgs_update(inv_hess, sv, yv, scaled):
    """The BFGS update of each problem's inverse Hessian where its curvature sᵀy is safely positive (the first
    one scaled by sᵀy/yᵀy); elsewhere the matrix is kept. Returns (new matrices, curvature_ok)."""
    k = sv.shape[1]
    eye = np.eye(k)
    sy = np.sum(sv * yv, axis=1)
    curvature_ok = sy > 1e-10 * np.linalg.norm(sv, axis=1) * np.linalg.norm(yv, axis=1)
    yy = np.maximum(np.sum(yv * yv, axis=1), 1e-300)
    H0 = np.where(scaled[:, None, None], inv_hess, eye * (sy / yy)[:, None, None])
    rho = 1.0 / np.where(curvature_ok, sy, 1.0)
    V = eye - rho[:, None, None] * sv[:, :, None] * yv[:, None, :]
    updated = V @ H0 @ np.swapaxes(V, 1, 2) + rho[:, None, None] * sv[:, :, None] * sv[:, None, :]
    return np.where(curvature_ok[:, None, None], updated, inv_hess), curvature_ok


def host_batch_bfgs_minimize(value_and_grad: Callable[[np.ndarray], tuple], x0, *, max_iter: int = 1000,
                             gtol: float = 1e-9, ftol: float = 1e-13, first_step: float = 0.25) -> OptimResult:
    """Minimize m problems at once from x0 (m × k). `value_and_grad(X)` takes the (m × k) points and returns
    ((m,) values, (m × k) gradients). Returns an `OptimResult` of NumPy arrays with one entry (row) per problem."""
    x = np.array(x0, dtype=np.float64)
    m, k = x.shape
    value, grad = (np.asarray(a, dtype=np.float64) for a in value_and_grad(x))
    inv_hess = np.broadcast_to(np.eye(k), (m, k, k)).copy()
    direction = _gradient_steps(grad, first_step)
    step = np.ones(m)
    it, n_eval, stall = np.zeros(m, np.int64), np.ones(m, np.int64), np.zeros(m, np.int64)
    scaled, floor = np.zeros(m, bool), np.zeros(m, bool)

    def running():
        return ~(_small(value, grad, gtol) | (stall >= 3) | floor | ~np.isfinite(value) | (step < 1e-12)
                 | (n_eval >= max_iter))

    active = running()
    while active.any():
        x_try = np.where(active[:, None], x + step[:, None] * direction, x)
        v_try, g_try = (np.asarray(a, dtype=np.float64) for a in value_and_grad(x_try))
        n_eval = n_eval + active
        slope = np.sum(grad * direction, axis=1)  # < 0 along a descent direction
        finite = np.isfinite(v_try) & np.all(np.isfinite(g_try), axis=1)
        with np.errstate(invalid="ignore"):
            ok = active & finite & (v_try <= value + 1e-4 * step * slope)
        rejected = active & ~ok
        # rejected: minimizer of the quadratic through f(0), f'(0) and f(step), kept within [0.1, 0.5]·step; a
        # finite trial whose expected decrease is below rounding, with a small gradient, ends that problem
        floor = floor | (rejected & np.isfinite(v_try) & (-step * slope < ftol * (1.0 + np.abs(value)))
                         & _small(value, grad, 1e-4))
        excess = np.where(np.isfinite(v_try), v_try - value - slope * step, np.inf)
        t_quad = -slope * step**2 / (2.0 * np.maximum(excess, 1e-300))
        step = np.where(rejected, np.clip(t_quad, 0.1 * step, 0.5 * step), step)
        # accepted: BFGS update, new direction (a scaled gradient step while the matrix is unscaled or lost
        # positive definiteness), unit step within `_step_limit`
        sv, yv = np.where(ok[:, None], x_try - x, 1.0), np.where(ok[:, None], g_try - grad, 1.0)
        H, curvature_ok = _bfgs_update(inv_hess, sv, yv, scaled)
        d_new = -np.einsum("mij,mj->mi", H, np.where(ok[:, None], g_try, grad))
        bad_dir = ~(np.sum(d_new * g_try, axis=1) < 0)
        fallback = bad_dir | ~(scaled | curvature_ok)
        d_new = np.where(fallback[:, None], _gradient_steps(np.where(ok[:, None], g_try, grad), first_step), d_new)
        d_new = d_new * _step_limits(d_new, x_try)[:, None]
        H = np.where(bad_dir[:, None, None], np.eye(k), H)
        rel = (value - v_try) / (1.0 + np.abs(value))
        stall = np.where(ok, np.where(rel < ftol, stall + 1, 0), stall)
        scaled = scaled | (ok & curvature_ok & ~bad_dir)
        x, value, grad = np.where(ok[:, None], x_try, x), np.where(ok, v_try, value), np.where(ok[:, None], g_try, grad)
        inv_hess = np.where(ok[:, None, None], H, inv_hess)
        direction = np.where(ok[:, None], d_new, direction)
        step = np.where(ok, 1.0, step)
        it = it + ok
        active = running()
    stalled = (stall >= 3) | floor | (step < 1e-12)
    converged = _small(value, grad, gtol) | (stalled & _small(value, grad, 1e-4))
    return OptimResult(x=x, value=value, grad=grad, n_iter=it, n_eval=n_eval, converged=converged)
