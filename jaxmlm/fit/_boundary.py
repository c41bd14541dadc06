"""What every fit does around its optimizer, written once: restarts after a non-finite evaluation, snapping tiny
variances to the boundary, leaving a saddle on the boundary, the convergence record, and lme4's warnings.

The functions take the objective (x → float, on the host), the optimizer (x0 → `OptimResult`) and the optimizer's
result; they know the parameters only through `lower`: lme4's lower bounds on x, 0 on the diagonal of each T_k
(those are the coordinates that can sit on the boundary) and -inf elsewhere. Linear fits run them on θ,
generalized fits on (θ, β[, log dispersion]), structured fits on (ψ[, β, ...]).
"""

from __future__ import annotations

import warnings
from typing import Callable, Sequence

import numpy as np

from .._warn import SINGULAR_NOTE, user_stacklevel
from .._errors import ConvergenceWarning, SingularFitWarning
from ..optim._summary import OptSummary, summarize
from ..results._results import SINGULAR_TOL

__all__ = ["diagnose", "finite_result", "leave_boundary_saddle", "minimize_with_restarts", "on_boundary",
           "snap_to_boundary", "warn_fit"]


def finite_result(res) -> bool:
    return bool(np.isfinite(float(res.value)) and np.isfinite(np.asarray(res.x)).all())


def minimize_with_restarts(minimize: Callable, x0, candidates: Sequence[tuple[str, np.ndarray]], error: Exception):
    """minimize(x0); when it ends non-finite, minimize from each (label, start) of `candidates` in turn instead of
    returning NaN. Returns (result, messages); raises `error` when no start gives a finite end."""
    res = minimize(x0)
    if finite_result(res):
        return res, []
    for label, start in candidates:
        res = minimize(start)
        if finite_result(res):
            return res, [f"restarted from {label} after a non-finite evaluation"]
    raise error


def scaled_starts(x0, n_scaled: int, default=None) -> list[tuple[str, np.ndarray]]:
    """The restarts' starts: x0 with its first n_scaled coordinates (θ or ψ) × 0.5 and × 0.1, then (a user's start
    given) lme4's default start and it × 0.1."""
    out = []
    for scale in (0.5, 0.1):
        x = np.array(x0, dtype=np.float64)
        x[:n_scaled] *= scale
        out.append((f"θ start × {scale}", x))
    if default is not None:
        default = np.asarray(default, dtype=np.float64)
        out += [("lme4's default start", default), ("lme4's default start × 0.1", default * 0.1)]
    return out


def on_boundary(x, lower) -> np.ndarray:
    """Which coordinates sit on their bound (within SINGULAR_TOL): lme4 leaves them out of its checks."""
    lower = np.asarray(lower, dtype=np.float64)
    bounded = np.isfinite(lower)
    return bounded & (np.abs(np.asarray(x) - np.where(bounded, lower, 0.0)) < SINGULAR_TOL)


def snap_to_boundary(x: np.ndarray, lower, objective: Callable) -> np.ndarray:
    """lme4 keeps diagonal θ ≥ 0 and often lands exactly on 0; the search is unconstrained, so a variance that
    belongs at the boundary ends near 1e-6. Set such tiny coordinates to their bound when that does not raise the
    objective."""
    x = np.asarray(x, dtype=np.float64)
    tiny = on_boundary(x, lower) & (x != np.asarray(lower))
    if not tiny.any():
        return x
    snapped = x.copy()
    snapped[tiny] = np.asarray(lower, dtype=np.float64)[tiny]
    f_here, f_snapped = objective(x), objective(snapped)
    if np.isfinite(f_snapped) and f_snapped <= f_here + 1e-10 * abs(f_here):
        return snapped
    return x


def leave_boundary_saddle(x: np.ndarray, res, lower, objective: Callable, refit: Callable, messages: list):
    """The deviance is even in the sign of each column of T, so a zero column is a stationary point whatever
    the data: an unconstrained optimizer that starts or lands there stays, even where it is a saddle (lme4's
    bounded optimizer steps off it). Probe just off each zero coordinate with a bound (and off all of them);
    if the objective drops, `refit(start) -> (x, result)` goes on from the best probe, kept if it ends lower."""
    lower = np.asarray(lower, dtype=np.float64)
    zero = np.flatnonzero(np.isfinite(lower) & (x == lower))
    if zero.size == 0:
        return x, res
    f0 = objective(x)
    best, best_value = None, f0 - 1e-9 * (1.0 + abs(f0))
    for idx in [[i] for i in zero] + ([list(zero)] if zero.size > 1 else []):
        probe = x.copy()
        probe[idx] = lower[idx] + 0.01
        value = objective(probe)
        if value < best_value:
            best, best_value = probe, value
    if best is None:
        return x, res
    x2, res2 = refit(best)
    if not objective(x2) < f0:
        return x, res
    messages.append("the optimizer stopped at a saddle point on the boundary (a zero variance); restarted from there")
    return x2, res2


def diagnose(optimizer: str, method: str, x, grad, hessian, res, messages, *, lower, initial, fmin, max_iter,
             nagq: int = 1, gtol: float = 1e-9) -> OptSummary:
    """The fit's OptSummary, with lme4's convergence checks: the Hessian-scaled gradient and the Hessian's
    eigenvalues, coordinates on the boundary left out. Tolerances are the optimizer's: COBYQA's final radius, or
    BFGS's gtol and ftol (`_bfgs`)."""
    tolerances = dict(xtol=1e-6) if optimizer.startswith("COBYQA") else dict(gtol=gtol, ftol=1e-13)
    return summarize(optimizer=optimizer, method=method, result=res, initial=initial, lower=lower, final=x,
                     fmin=fmin, grad=grad, hessian=None if hessian is None else np.asarray(hessian),
                     interior=~on_boundary(x, lower), max_evaluations=max_iter, messages=messages, nagq=nagq,
                     **tolerances)


def warn_fit(fit) -> None:
    """lme4's warnings for a fit: a singular fit, a failed convergence check, and the optimizer's messages."""
    if fit.is_singular:
        warnings.warn(SINGULAR_NOTE, SingularFitWarning, stacklevel=user_stacklevel())
    if not fit.converged:
        warnings.warn(
            "; ".join(fit.optinfo.messages) or f"optimizer did not converge (max|grad| = {fit.optinfo.grad_max:.3g})",
            ConvergenceWarning,
            stacklevel=user_stacklevel(),
        )
    else:
        for m in fit.optinfo.messages:
            warnings.warn(m, ConvergenceWarning, stacklevel=user_stacklevel())
