"""Standard errors and intervals of predictions (fit.predict(interval=..., se_fit=True)).

On the link scale a prediction is η = xᵀβ + zᵀb = xᵀβ + (Λᵀz)ᵀu. Given θ (and σ), (u, β) has the conditional
covariance s C⁻¹ of Henderson's mixed-model equations,

    C = [ΛᵀZᵀWZΛ + I   ΛᵀZᵀWX]        s = σ² (linear model; W the prior weights)
        [XᵀWZΛ         XᵀWX  ]        s = 1  (GLMM; W the working weights at the optimum: Laplace's curvature)

so Var(η̂ − η) = s aᵀC⁻¹a with a = (Λᵀz, x): the variance of the estimated fixed effects, of the random
effects' conditional modes and their covariance, all at once. C is sparse; it is factored once (sparse LU) and
solved against the prediction rows in blocks. Population-level predictions (re_form="~0") use vcov(β) alone
(for a GLMM lme4's vcov, from the Hessian). A level not in the data contributes its prior variance zᵀΣz.
Uncertainty in θ and σ is not propagated (as merTools' predictInterval and emmeans).

interval="prediction" adds the residual variance σ² (linear models only). Intervals are η̂ ± z se on the link
scale; type="response" maps fit and bounds through the inverse link and scales se by |dμ/dη| (delta method).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from scipy import stats

from .._errors import DataError

__all__ = ["predict_with_se"]

_SOLVE_BLOCK = 2048  # prediction rows solved against C's factor at a time (bounds the dense right-hand side)


def predict_with_se(fit, rows, used, type: str, interval, level: float) -> pd.DataFrame:
    """Columns fit, se, lower, upper for the prediction rows `rows` = (X, zs, codes, offset, index)."""
    X, zs, codes, offset, index = rows
    eta = fit._linear_predictor(X, zs, codes, offset, used)
    variance = _link_variance(fit, X, zs, codes, used)
    if interval == "prediction":
        variance = variance + fit.sigma**2
    se = np.sqrt(np.maximum(variance, 0.0))
    half = stats.norm.ppf(0.5 + level / 2.0) * se
    lower, upper = eta - half, eta + half
    if type == "response" and hasattr(fit.family, "linkinv"):
        mu = fit._inverse_link(eta)
        se = se * np.abs(np.asarray(fit.family.mu_eta(eta)))
        bounds = np.stack([fit._inverse_link(lower), fit._inverse_link(upper)])
        eta, lower, upper = mu, bounds.min(axis=0), bounds.max(axis=0)  # a decreasing link swaps the bounds
    return pd.DataFrame({"fit": eta, "se": se, "lower": lower, "upper": upper}, index=index)


def check_interval(fit, interval, level) -> None:
    if interval not in (None, "confidence", "prediction"):
        raise ValueError(f"interval must be None, 'confidence' or 'prediction', got {interval!r}")
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be a probability between 0 and 1, got {level!r}")
    if interval == "prediction" and not fit.is_linear:
        raise DataError("interval='prediction' adds the residual variance of a Gaussian model; a GLMM's "
                        "observations have no normal residual (use interval='confidence')")
    if fit.extra.get("solver") == "iterative":
        raise DataError("prediction standard errors need the direct solver's factor (fit with solver='direct')")


def _link_variance(fit, X, zs, codes, used) -> np.ndarray:
    if not used:
        return np.einsum("ij,jk,ik->i", X, fit._vcov, X)
    from ._getme import getme

    d = fit.design
    scale = fit.sigma**2 if fit.is_linear else 1.0
    weights = d.weights if fit.is_linear else np.asarray(fit.extra["working_weights"])
    ZL = (getme(fit, "Z") @ getme(fit, "Lambda")).tocsc()
    WX = d.X * weights[:, None]
    C = sp.bmat([[ZL.T @ sp.diags(weights) @ ZL + sp.identity(ZL.shape[1]), sp.csc_matrix(ZL.T @ WX)],
                 [sp.csc_matrix(WX.T @ ZL), sp.csc_matrix(d.X.T @ WX)]], format="csc")
    lu = spla.splu(C)
    A = sp.hstack([_new_rows_z(fit, zs, codes, used) @ getme(fit, "Lambda"), sp.csr_matrix(X)], format="csr")
    variance = np.empty(X.shape[0])
    for start in range(0, X.shape[0], _SOLVE_BLOCK):
        block = A[start : start + _SOLVE_BLOCK]
        solved = lu.solve(block.T.toarray())
        variance[start : start + block.shape[0]] = np.asarray(block.multiply(solved.T).sum(axis=1)).ravel()
    return scale * variance + _new_level_variance(fit, zs, codes, used)


def _new_rows_z(fit, zs, codes, used) -> sp.csr_matrix:
    """The prediction rows' Z in getME's column order (zero for terms not used and for new levels)."""
    blocks = []
    n = next(z.shape[0] for z in zs if z is not None)
    for k, t in enumerate(fit.design.terms):
        if k not in used:
            blocks.append(sp.csr_matrix((n, t.n_levels * t.q)))
            continue
        known = codes[k] >= 0
        rows = np.repeat(np.flatnonzero(known), t.q)
        cols = (codes[k][known][:, None] * t.q + np.arange(t.q)[None, :]).ravel()
        blocks.append(sp.csr_matrix((zs[k][known].ravel(), (rows, cols)), shape=(n, t.n_levels * t.q)))
    return sp.hstack(blocks, format="csr")


def _new_level_variance(fit, zs, codes, used) -> np.ndarray:
    """zᵀΣ_k z for rows at levels the data did not have: their random effects are unknown, drawn from the prior."""
    n = next(z.shape[0] for z in zs if z is not None)
    extra = np.zeros(n)
    covariances = fit._covariances()
    for k in used:
        new = codes[k] < 0
        if new.any():
            z = zs[k][new]
            extra[new] += np.einsum("ij,jk,ik->i", z, covariances[k], z)
    return extra
