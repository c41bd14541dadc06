"""What every fit does around its optimizer, written once: restarts after a non-finite evaluation, snapping tiny
variances to the boundary, leaving a saddle on the boundary, the convergence record, and lme4's warnings.

The functions take the objective (x → float, on the host), the optimizer (x0 → `OptimResult`) and the optimizer's
result; they know the parameters only through `lower`: lme4's lower bounds on x, 0 on the diagonal of each T_k
(those are the coordinates that can sit on the boundary) and -inf elsewhere. Linear fits run them on θ,
generalized fits on (θ, β[, log dispersion]), structured fits on (ψ[, β, ...]).

The snap and the saddle are written once, on rows: `snap_rows` and `saddle_starts` take a row of x per problem
and the objective as a function of rows of points, so the batch drivers (many responses, many designs) run the
same rules with the same tolerances on all their problems at once; `snap_to_boundary` and
`leave_boundary_saddle` are those rules for one point.
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
           "refit_is_lower", "SADDLE_MESSAGE", "saddle_probes", "saddle_starts", "snap_rows", "snap_to_boundary", "warn_fit"]


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


def on_boundary(x, lower, xp=np):
    """Which coordinates sit on their bound (within SINGULAR_TOL): lme4 leaves them out of its checks. x may hold
    one point or a row per problem (..., k); xp: NumPy, or jax.numpy inside a traced fit."""
    lower = xp.asarray(lower, dtype=xp.float64)
    bounded = xp.isfinite(lower)
    return bounded & (xp.abs(xp.asarray(x) - xp.where(bounded, lower, 0.0)) < SINGULAR_TOL)


def _each_row(objective: Callable) -> Callable:
    """A host objective of one point as a function of rows of points."""
    return lambda points: np.array([objective(point) for point in points], dtype=np.float64)


def snap_rows(x, lower, objective_rows: Callable, value=None, xp=np):
    """The snap to the boundary on every row of x (..., k) at once; returns (x, the objective at x or None where it
    was not evaluated). lme4 keeps diagonal θ ≥ 0 and often lands exactly on 0; the search is unconstrained, so a
    variance that belongs at the boundary ends near 1e-6: such tiny coordinates are set to their bound where that
    does not raise the objective (by more than 1e-10 relative). objective_rows(points) → the objective at each
    row of points; value: the objective at x where the optimizer knows it. On the host (NumPy) nothing is
    evaluated when no coordinate is tiny; inside a traced fit (jax.numpy, vmapped) every row is."""
    lower = xp.asarray(lower, dtype=x.dtype)
    tiny = on_boundary(x, lower, xp) & (x != lower)
    if xp is np and not tiny.any():
        return x, value
    if value is None:
        value = objective_rows(x)
    snapped = xp.where(tiny, lower, x)
    f_snapped = objective_rows(snapped)
    keep = xp.isfinite(f_snapped) & (f_snapped <= value + 1e-10 * xp.abs(value))
    return xp.where(keep[..., None], snapped, x), xp.where(keep, f_snapped, value)


def snap_to_boundary(x: np.ndarray, lower, objective: Callable) -> np.ndarray:
    """`snap_rows` for one point and a host objective of one point."""
    return snap_rows(np.asarray(x, dtype=np.float64)[None], lower, _each_row(objective))[0][0]


SADDLE_STEP = 0.01  # how far off its bound a probe moves a coordinate
SADDLE_MESSAGE = "the optimizer stopped at a saddle point on the boundary (a zero variance); restarted from there"


def saddle_probes(x: np.ndarray, lower) -> tuple[np.ndarray, np.ndarray]:
    """The points tried around each row of x (m, k), in order: just off each coordinate that sits on its bound,
    then off all of them at once. Returns the points (k + 1, m, k) and which of them are probes (k + 1, m): the
    i-th where coordinate i is on its bound, the last where more than one is."""
    lower = np.asarray(lower, dtype=np.float64)
    zero = np.isfinite(lower) & (x == lower)
    off = np.where(zero, lower + SADDLE_STEP, x)
    single = np.eye(x.shape[-1], dtype=bool)[:, None, :]  # (k, 1, k): coordinate i alone
    points = np.concatenate([np.where(single & zero, off, x), off[None]])
    valid = np.concatenate([zero.T, (zero.sum(axis=-1) > 1)[None]])
    return points, valid


def saddle_starts(x: np.ndarray, lower, objective_rows: Callable, value) -> tuple[np.ndarray, np.ndarray]:
    """Where each row of x (m, k) should search again from a saddle on the boundary. The deviance is even in the
    sign of each column of T, so a zero column is a stationary point whatever the data: an unconstrained
    optimizer that starts or lands there stays, even where it is a saddle (lme4's bounded optimizer steps off
    it). Probe just off each coordinate on its bound and off all of them (`saddle_probes`); a row's best probe
    (the first of equal ones) is a start when it lowers the objective by more than 1e-9·(1 + |f|).
    objective_rows(points (m, k)) → (m,); value (m,): the objective at x. Returns (which rows, their starts)."""
    value = np.asarray(value, dtype=np.float64)
    points, valid = saddle_probes(x, lower)
    values = np.full(valid.shape, np.inf)
    for i in np.flatnonzero(valid.any(axis=1)):
        f = np.asarray(objective_rows(points[i]), dtype=np.float64)
        values[i] = np.where(valid[i] & ~np.isnan(f), f, np.inf)
    rows = np.arange(x.shape[0])
    best = np.argmin(values, axis=0)
    which = values[best, rows] < value - 1e-9 * (1.0 + np.abs(value))
    return which, points[best, rows]


def refit_is_lower(value, refit_value):
    """Whether a search again from a saddle ended lower than where it started (per row)."""
    return np.asarray(refit_value) < np.asarray(value)


def leave_boundary_saddle(x: np.ndarray, res, lower, objective: Callable, refit: Callable, messages: list):
    """`saddle_starts` for one point: if a probe lowers the objective, `refit(start) -> (x, result)` goes on from
    the best one, kept if it ends lower."""
    lower = np.asarray(lower, dtype=np.float64)
    if not (np.isfinite(lower) & (x == lower)).any():
        return x, res
    f0 = objective(x)
    which, starts = saddle_starts(np.asarray(x, dtype=np.float64)[None], lower, _each_row(objective), [f0])
    if not which[0]:
        return x, res
    x2, res2 = refit(starts[0])
    if not refit_is_lower(f0, objective(x2)):
        return x, res
    messages.append(SADDLE_MESSAGE)
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
