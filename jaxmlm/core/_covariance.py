"""Variance components: θ ↔ relative covariance factors, lme4's start and canonical sign, VarCorr.

θ holds, per term, the lower triangle of the q×q factor T (column-major, lme4's layout); the term's covariance is
σ² T Tᵀ (σ = 1 for binomial and Poisson). T is identified only up to the sign of each column, so fits report the
canonical factor with a non-negative diagonal.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "theta_start",
    "theta_diagonal_mask",
    "canonical_theta",
    "theta_to_matrices",
    "term_covariances",
    "varcorr_frame",
    "theta_names",
]


def _tril_positions(q: int) -> list[tuple[int, int]]:
    return [(r, c) for c in range(q) for r in range(c, q)]


def theta_start(qs) -> np.ndarray:
    """lme4's starting value: identity factors."""
    return np.concatenate([[1.0 if r == c else 0.0 for r, c in _tril_positions(q)] for q in qs])


def theta_diagonal_mask(qs) -> np.ndarray:
    """True where θ is a diagonal element (lme4's lower bound 0 there)."""
    return np.concatenate([[r == c for r, c in _tril_positions(q)] for q in qs]).astype(bool)


def theta_to_matrices(theta, qs) -> list[np.ndarray]:
    """θ (lme4's layout) → the lower-triangular T_k, (q, q) each; a batch of θ (..., k) gives (..., q, q)."""
    theta = np.asarray(theta, dtype=np.float64)
    out, pos = [], 0
    for q in qs:
        T = np.zeros(theta.shape[:-1] + (q, q))
        for r, c in _tril_positions(q):
            T[..., r, c] = theta[..., pos]
            pos += 1
        out.append(T)
    return out


def canonical_theta(theta, qs) -> np.ndarray:
    """Flip column signs so that every diagonal of T is non-negative (TTᵀ, hence the fit, is unchanged).
    theta may be one θ (k,) or a batch (m, k)."""
    out = np.array(theta, dtype=np.float64, copy=True)
    pos = 0
    for q in qs:
        positions = _tril_positions(q)
        for c in range(q):
            column = [pos + i for i, (r, cc) in enumerate(positions) if cc == c]
            sign = np.where(out[..., column[0]] < 0, -1.0, 1.0)  # the first element of a column is its diagonal
            out[..., column] *= sign[..., None]
        pos += len(positions)
    return out


def term_covariances(theta, qs, sigma: float | None) -> list[np.ndarray]:
    scale = 1.0 if sigma is None else float(sigma) ** 2
    return [scale * T @ T.T for T in theta_to_matrices(theta, qs)]


def _sd_cor(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
    with np.errstate(invalid="ignore", divide="ignore"):
        cor = cov / np.outer(sd, sd)
    cor[~np.isfinite(cor)] = 0.0
    np.fill_diagonal(cor, 1.0)
    return sd, cor


def varcorr_frame(group_names, column_names, covariances, sigma: float | None) -> pd.DataFrame:
    """Rows as R's as.data.frame(VarCorr(fit)): per term its variances, then covariances (lower triangle by
    columns: var1 is the column's name, var2 the row's), then the residual. A name that R shows as NA (var2 of
    a variance, var1 and var2 of the residual) is NaN, whatever the model's terms."""
    rows = []
    for grp, names, cov in zip(group_names, column_names, covariances):
        sd, cor = _sd_cor(cov)
        for i, name in enumerate(names):
            rows.append(dict(grp=grp, var1=name, var2=np.nan, vcov=cov[i, i], sdcor=sd[i]))
        q = len(names)
        for c in range(q):
            for r in range(c + 1, q):
                rows.append(dict(grp=grp, var1=names[c], var2=names[r], vcov=cov[r, c], sdcor=cor[r, c]))
    if sigma is not None:
        rows.append(dict(grp="Residual", var1=np.nan, var2=np.nan, vcov=float(sigma) ** 2, sdcor=float(sigma)))
    return pd.DataFrame(rows, columns=["grp", "var1", "var2", "vcov", "sdcor"])


def theta_names(group_names, column_names) -> list[str]:
    """Names of θ's elements as lme4's getME(fit, 'theta') gives them: 'Subject.(Intercept)', 'Subject.Days.(Intercept)'."""
    out = []
    for grp, names in zip(group_names, column_names):
        for r, c in _tril_positions(len(names)):
            out.append(f"{grp}.{names[r]}" if r == c else f"{grp}.{names[r]}.{names[c]}")
    return out
