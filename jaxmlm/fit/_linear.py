"""Fitting linear mixed models: driver functions over the profiled objective (ML deviance or REML criterion in θ).

`fit_linear` takes the model's structure and statistics once, then runs on functions of θ alone: the optimizer
(BFGS on the host around the compiled value-and-gradient program, or COBYQA for large dense tails), the shared
restart / boundary / saddle path (`_boundary`), the derivatives for lme4's checks, and the estimates at the
optimum; θ goes to the result without passing through `Model` again. `fit_iterative` is the same for the
iterative solver's estimated objective.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import compile_ahead
from .._errors import DataError
from ..core._covariance import canonical_theta
from ..core._lmm import (deviance_and_gradient, deviance_value, gradients_at_points, linear_diagnostics,
                         linear_estimates, split_problem)
from ..optim._optimize import (central_difference_hessian, cobyqa_minimize, cobyqa_newton_minimize,
                               difference_derivatives, host_bfgs_minimize)
from ..results._results import MixedModelResult
from . import _boundary

__all__ = ["finite_difference_derivatives", "fit_iterative", "fit_linear", "stencil_derivatives"]

_HESSIAN_MAX_PARAMS = 60  # exact Hessian diagnostics for models up to this many θ
# The convergence checks need the gradient and Hessian at θ. Up to this many θ the Hessian comes from central
# differences of the exact (autodiff) gradient at θ ± δe_j: 2k calls of the optimizer's own value-and-gradient
# program, so nothing more compiles (jax.hessian's program compiles slowly). Dividing gradient differences by
# δ = 1e-5 keeps ~1e-8 relative accuracy (lme4 differences the deviance itself, dividing by δ²); forward
# differences would be ~1e-5 accurate, too coarse for a zero eigenvalue to show an unidentifiable model. Beyond
# 10 θ the exact Hessian is cheaper than 2k gradients. (Measurements behind these thresholds: docs/scale.md.)
_STENCIL_MAX_PARAMS = 10
# ... computed by separate calls of that program for statistics of up to this many numbers; past it a call of its
# own costs enough more than a gradient inside a program that the 2k gradients run in one compiled call (one more
# program to compile).
_STENCIL_MAX_SIZE = 1_000_000


class _Objective:
    """The profiled objective of one fit as host functions of θ: its value (the fit's own compiled program) and
    the optimizer (`minimize`)."""

    def __init__(self, problem, reml: bool, qs, derivative_free: bool):
        self.problem, self.reml, self.qs, self.derivative_free = problem, reml, qs, derivative_free
        self.finished = None  # (θ, gradient, Hessian) of the last derivative-free search's Newton finish

    def value(self, theta) -> float:
        # NumPy θ: jnp.asarray of a NumPy array compiles a copy program of its own on first use
        return float(deviance_value(np.asarray(theta, dtype=np.float64), self.problem, self.reml))

    def minimize(self, theta0, max_iter: int, problem=None, initial_radius: float = 1.0):
        """One optimizer run from θ0 on `problem` (default: the float64 statistics): BFGS on the host around the
        compiled value-and-gradient program, or COBYQA for large dense tails (lower bounds 0 on the diagonal of
        each T_k, as lme4). The host loop, not a compiled optimizer loop: that loop compiles several times slower
        than the value-and-gradient program, most of a first fit, while the host loop adds microseconds per
        evaluation (docs/scale.md). A float32 search stops at float32's tolerances (relative gradient 1e-6, stall
        1e-9); `initial_radius` bounds the first step (small for a polish)."""
        problem = self.problem if problem is None else problem
        dtype = problem.blocks.tail_ff.dtype
        if not self.derivative_free:
            tolerances = dict(gtol=1e-6, ftol=1e-9) if dtype == jnp.float32 else {}
            # NumPy arguments: jnp.asarray's own dispatch would cost as much as a small model's evaluation
            return host_bfgs_minimize(lambda th: deviance_and_gradient(np.asarray(th, dtype=dtype), problem, self.reml),
                                      np.asarray(theta0, dtype=np.float64), max_iter=max_iter,
                                      first_step=min(0.25, initial_radius), **tolerances)
        lower = _theta_lower(self.qs)
        start = canonical_theta(np.asarray(theta0, dtype=np.float64), self.qs)  # same TTᵀ, diagonal ≥ 0
        res, hess = cobyqa_newton_minimize(
            lambda th: float(deviance_value(jnp.asarray(th, dtype=dtype), problem, self.reml)), start, lower,
            max_eval=max_iter, initial_radius=initial_radius)
        # the finish's differences serve lme4's checks only if they are of the float64 objective
        self.finished = None if hess is None or dtype != jnp.float64 else (np.asarray(res.x), res.grad, hess)
        return res


def _theta_lower(qs) -> np.ndarray:
    from ..core._covariance import theta_diagonal_mask

    return np.where(theta_diagonal_mask(qs), 0.0, -np.inf)


def _search(obj: _Objective, statistics, theta0, default, max_iter: int, dtype: str):
    """The optimizer with its restarts; a float32 search (on the float64 `statistics` cast) is polished in float64
    from its optimum."""
    search = obj.problem if dtype == "float64" else split_problem(_cast_problem(statistics, jnp.dtype(dtype)))
    res, messages = _boundary.minimize_with_restarts(lambda th: obj.minimize(th, max_iter, search), theta0,
                                                     _boundary.scaled_starts(theta0, theta0.size, default),
                                                     _not_finite())
    if search is not obj.problem:  # polish the single-precision optimum in double precision (a few evaluations)
        found = canonical_theta(np.asarray(res.x, dtype=np.float64), obj.qs)
        res32, res = res, obj.minimize(found, max_iter, initial_radius=1e-3)
        if not np.isfinite(float(res.value)):
            res = res32._replace(grad=np.full(theta0.size, np.nan))  # a float32 gradient: not reused below
        else:
            res = res._replace(n_eval=res.n_eval + res32.n_eval, n_iter=res.n_iter + res32.n_iter)
    return res, messages


def _to_boundary(obj: _Objective, res, default, max_iter: int, messages: list):
    """The optimum in canonical sign, tiny variances snapped to 0, off a saddle on the boundary."""
    lower = _theta_lower(obj.qs)

    def finish(x):
        return _boundary.snap_to_boundary(canonical_theta(np.asarray(x, dtype=np.float64), obj.qs), lower, obj.value)

    def refit(start):
        res2, _ = _boundary.minimize_with_restarts(lambda th: obj.minimize(th, max_iter), start,
                                                   _boundary.scaled_starts(start, start.size, default), _not_finite())
        return finish(res2.x), res2

    return _boundary.leave_boundary_saddle(finish(res.x), res, lower, obj.value, refit, messages)


def _not_finite():
    return DataError("the deviance is not finite at any start (the response or weights may be too large or too "
                     "small for double precision; rescale them)")


def _derivatives(model, obj: _Objective, theta, res, objective: float):
    """Gradient and Hessian at θ for lme4's checks, by the cheapest route for the model's size."""
    if obj.derivative_free:  # as lme4: differences of the deviance (a gradient costs ~3 evaluations here)
        if obj.finished is not None and np.array_equal(theta, obj.finished[0]):
            return obj.finished[1], obj.finished[2]  # the Newton finish's gradient at θ, Hessian one step away
        return finite_difference_derivatives(obj.value, theta, objective)
    if theta.size <= _STENCIL_MAX_PARAMS:
        # the optimizer's last gradient is the stencil's centre when θ left it unchanged (one evaluation fewer)
        known = np.asarray(res.grad, dtype=np.float64) if np.array_equal(theta, np.asarray(res.x)) else None
        return stencil_derivatives(obj.problem, theta, obj.reml, grad=known,
                                   one_program=model._statistics_size > _STENCIL_MAX_SIZE)
    return linear_diagnostics(np.asarray(theta), obj.problem, obj.reml, theta.size <= _HESSIAN_MAX_PARAMS)


def fit_linear(model, reml: bool, *, start=None, max_iter: int = 1000, warn: bool = True,
               dtype: str = "float64") -> MixedModelResult:
    """Fit an unstructured linear mixed model by REML or ML from θ start (lme4's when `start` is None)."""
    obj = _Objective(model._for_evaluation(), reml, model.qs, model._derivative_free)
    theta0 = model.start_theta(start)
    # the estimates' program compiles in a worker thread while the search's compiles and runs here
    estimates_ahead = compile_ahead(linear_estimates, theta0, model.linear_problem, reml)
    default = None if start is None else model.theta_start()
    res, messages = _search(obj, model.linear_problem, theta0, default, max_iter, dtype)
    theta, res = _to_boundary(obj, res, model.theta_start(), max_iter, messages)
    estimates_ahead.exception()  # waits (one compile of the program at a time); an error is the call's to raise
    est = linear_estimates(np.asarray(theta, dtype=np.float64), model.linear_problem, reml)
    objective = float(est["objective"])
    grad, hess = _derivatives(model, obj, theta, res, objective)
    method = "reml" if reml else "ml"
    optsum = _boundary.diagnose("COBYQA" if obj.derivative_free else "BFGS", method, theta, grad, hess, res,
                                messages, lower=_theta_lower(obj.qs), initial=theta0, fmin=objective,
                                max_iter=max_iter)
    fit = MixedModelResult(model, method=method, theta=theta, beta=np.asarray(est["beta"]),
                           vcov=np.asarray(est["vcov"]), sigma=float(est["sigma"]),
                           b=[np.asarray(x) for x in est["b"]], objective=objective,
                           loglik=-objective / 2.0,  # lme4's logLik: of the REML criterion for REML fits
                           optinfo=optsum.info(), optsum=optsum)
    if warn:
        _boundary.warn_fit(fit)
    return fit


def fit_iterative(model, method: str, problem, theta0, *, settings: dict, max_iter: int, warn: bool,
                  extra: dict) -> MixedModelResult:
    """The iterative path (`core/_iterative`): COBYQA on the estimated objective (its probes fixed, so smooth in
    θ), lme4's finite-difference convergence checks, estimates at the optimum."""
    from ..core._iterative import iterative_deviance, iterative_estimates

    reml = method == "reml"

    def objective(th):
        return float(iterative_deviance(jnp.asarray(th, dtype=jnp.float64), problem, reml, **settings)[0])

    lower = _theta_lower(model.qs)
    res = cobyqa_minimize(objective, canonical_theta(theta0, model.qs), lower, max_eval=max_iter)
    if not np.isfinite(float(res.value)):
        raise DataError("the iterative objective is not finite at the optimizer's end point (the conjugate "
                        "gradients may not have converged: raise solver_options['cg_tol'] or rescale the data)")
    theta = _boundary.snap_to_boundary(canonical_theta(np.asarray(res.x), model.qs), lower, objective)
    est = iterative_estimates(jnp.asarray(theta), problem, reml, **settings)
    value = float(est["objective"])
    grad, hess = finite_difference_derivatives(objective, theta, value)
    messages = []
    if float(est["cg_residual"]) > 1e-6:
        messages.append(f"conjugate gradients stopped at relative residual {float(est['cg_residual']):.2g}")
    optsum = _boundary.diagnose("COBYQA (iterative)", method, theta, grad, hess, res, messages, lower=lower,
                                initial=theta0, fmin=value, max_iter=max_iter)
    fit = MixedModelResult(
        model, method=method, theta=theta, beta=np.asarray(est["beta"]), vcov=np.asarray(est["vcov"]),
        sigma=float(est["sigma"]), b=[np.asarray(x) for x in est["b"]], objective=value, loglik=-value / 2.0,
        optinfo=optsum.info(), optsum=optsum,
        extra=dict(solver="iterative", objective_se=float(est["objective_se"]), cg_iterations=int(est["cg_iterations"]),
                   **extra),
    )
    if warn:
        _boundary.warn_fit(fit)
    return fit


def stencil_derivatives(problem, theta: np.ndarray, reml: bool, delta: float = 1e-5, grad=None,
                        one_program: bool = False):
    """Exact gradient at θ (unless given, finite) and the Hessian by central differences of the gradient
    (symmetrized). one_program: the 2k off-centre gradients in one compiled call, one after another (large
    statistics, where a call of its own costs about twice a gradient inside a program)."""

    def gradient(point):
        return np.asarray(deviance_and_gradient(point, problem, reml)[1], dtype=np.float64)

    if grad is None or not np.isfinite(grad).all():
        grad = gradient(theta)
    if one_program:
        hess = central_difference_hessian(lambda points: gradients_at_points(points, problem, reml, 1), theta, delta)
    else:
        hess = central_difference_hessian(lambda points: np.stack([gradient(x) for x in points]), theta, delta)
    return grad, hess


def finite_difference_derivatives(objective, theta: np.ndarray, f0: float, delta: float = 1e-4):
    """Gradient and Hessian by central differences of the objective with lme4's step (1e-4), as lme4's deriv12
    but for the Hessian's off-diagonal elements from two points each instead of four
    (`_optimize.difference_derivatives`: 1 + k(k + 1) evaluations with the centre)."""
    return difference_derivatives(objective, np.asarray(theta, dtype=np.float64), f0, delta)


def _cast_problem(problem, dtype):
    """The statistics (formed in float64) in another floating dtype, for a lower-precision search."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, problem)
