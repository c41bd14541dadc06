"""Multilevel regression and post-stratification (MRP): cell predictions weighted up to population groups.

For each cell (row of the post-stratification frame) the model predicts the response-scale mean; within each
``by`` group the estimate is Σ N_c μ_c / Σ N_c over its cells. Cells whose grouping levels were not in the data
get zero random effects for those terms (lme4's ``allow.new.levels``).

Uncertainty:
* a ``Posterior``: every draw gives one set of group estimates; ``estimate`` is their mean, ``sd`` their standard
  deviation, ``lower``/``upper`` their 2.5% and 97.5% quantiles.
* a point fit: ``estimate`` is the plug-in value at (β̂, b̂). The interval comes from simulating β ~ N(β̂, vcov(β))
  and, independently, each needed level's b ~ N(b̂, condvar(b)) (lme4's conditional variances), which ignores
  the covariance between β̂ and b̂ and the uncertainty in θ — an approximation that is usually narrower than the
  posterior's interval, most of all with few groups.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._config import float64
from ..formula._design import to_pandas
from .._errors import DataError, DataTypeError

__all__ = ["poststratify"]


def _group_matrix(frame: pd.DataFrame, weights: np.ndarray, by: list[str]):
    """(keys frame, G × n matrix of within-group weight shares)."""
    n = len(frame)
    if by:
        codes, uniques = pd.MultiIndex.from_frame(frame[by]).factorize(sort=True)
        keys = uniques.to_frame(index=False)
        keys.columns = by
        n_groups = len(uniques)
    else:
        codes = np.zeros(n, dtype=np.int64)
        keys = pd.DataFrame(index=[0])
        n_groups = 1
    totals = np.bincount(codes, weights=weights, minlength=n_groups)
    empty = totals <= 0
    if empty.any():
        bad = keys[empty].iloc[0].to_dict() if by else {}
        raise DataError(f"the post-stratification weights sum to zero in group {bad}")
    share = np.zeros((n_groups, n))
    share[codes, np.arange(n)] = weights / totals[codes]
    return keys.reset_index(drop=True), share


def _point_fit_draws(fit, frame: pd.DataFrame, n_draws: int, seed: int) -> np.ndarray:
    """Response-scale cell predictions simulated from the approximate normal distribution of (β, b)."""
    model = fit.model
    d = model.design
    used = list(range(len(d.terms)))
    X, zs, codes, offset, _ = model._new_rows(frame, used, True)
    rng = np.random.default_rng(seed)
    beta = rng.multivariate_normal(fit._beta, fit._vcov, size=n_draws, method="eigh")  # S × p
    eta = beta @ X.T + offset[None, :]
    condvar = fit.condvar()
    for k, t in enumerate(d.terms):
        idx = codes[k]
        known = idx >= 0
        if not known.any():
            continue
        needed, inverse = np.unique(idx[known], return_inverse=True)
        mean = fit._b[k][needed]  # m × q
        if condvar is None:
            b = np.broadcast_to(mean, (n_draws,) + mean.shape)
        else:
            cov = condvar[k][needed]
            chol = np.linalg.cholesky(cov + 1e-12 * np.eye(t.q) * np.maximum(np.trace(cov, axis1=1, axis2=2), 1e-300)[:, None, None])
            b = mean[None] + np.einsum("mij,smj->smi", chol, rng.standard_normal((n_draws,) + mean.shape))
        eta[:, known] += np.einsum("snq,nq->sn", b[:, inverse, :], zs[k][known])
    fam = model.family
    return np.asarray(fam.linkinv(eta)) if hasattr(fam, "linkinv") else eta


@float64
def poststratify(fit_or_posterior, frame, weight: str = "N", by=("state",), *, draws: int = 1000, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """Post-stratified estimates per ``by`` group: DataFrame with the ``by`` columns, estimate, sd, lower, upper.

    ``frame`` holds one row per population cell with every predictor of the model and the cell count ``weight``.
    ``by=None`` or ``[]`` gives one overall row. For a point fit, ``draws`` simulations (seeded) give sd and the
    interval; for a ``Posterior`` its own draws do.
    """
    from ._posterior import Posterior

    frame = to_pandas(frame)
    if isinstance(by, str):
        by = [by]
    by = list(by or [])
    for col in by + [weight]:
        if col not in frame.columns:
            raise DataError(f"the post-stratification frame has no column {col!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    w = frame[weight]
    if not pd.api.types.is_numeric_dtype(w) or pd.api.types.is_bool_dtype(w):
        raise DataTypeError(f"weight column {weight!r} must be numeric, got {w.dtype}")
    w = w.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError(f"weight column {weight!r} must hold finite, non-negative counts")
    if len(frame) == 0:
        raise DataError("the post-stratification frame has no rows")
    keys, share = _group_matrix(frame, w, by)

    if isinstance(fit_or_posterior, Posterior):
        pred = fit_or_posterior.predict(frame, allow_new_levels=True)
        sims = pred.reshape(-1, pred.shape[-1]) @ share.T  # S × G
        estimate = sims.mean(axis=0)
    elif hasattr(fit_or_posterior, "predict") and hasattr(fit_or_posterior, "condvar"):
        if not isinstance(draws, (int, np.integer)) or draws < 2:
            raise ValueError(f"draws must be an integer ≥ 2, got {draws!r}")
        point = fit_or_posterior.predict(frame, allow_new_levels=True).to_numpy(dtype=np.float64)
        estimate = share @ point
        sims = _point_fit_draws(fit_or_posterior, frame, int(draws), seed) @ share.T
    else:
        raise TypeError(f"poststratify needs a fitted model or a Posterior, got {type(fit_or_posterior).__name__}")
    alpha = (1.0 - level) / 2.0
    out = keys.copy() if by else pd.DataFrame(index=[0])
    out["estimate"] = estimate
    out["sd"] = sims.std(axis=0, ddof=1)
    out["lower"] = np.quantile(sims, alpha, axis=0)
    out["upper"] = np.quantile(sims, 1.0 - alpha, axis=0)
    return out.reset_index(drop=True)
