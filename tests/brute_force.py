"""A dense reference for the linear mixed model, written from the definitions with NumPy/SciPy.

y ~ N(Xβ, σ² V(θ)),  V(θ) = Z Λθ Λθᵀ Zᵀ + W⁻¹.  Profiling β (generalized least squares) and σ gives

    ML:   −2 ℓ(θ) = log|V| + n (1 + log(2π r²/n))
    REML: −2 ℓ_R(θ) = log|V| + log|Xᵀ V⁻¹ X| + (n−p)(1 + log(2π r²/(n−p)))

with r² = (y − Xβ̂)ᵀ V⁻¹ (y − Xβ̂). Nothing here shares code with the engine: Z and Λ are formed explicitly from
the design's level codes and z columns, and θ is read as lme4 lays it out (per term, the lower triangle of T,
column-major).
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import scipy.optimize


def _lower_triangle(q: int) -> list[tuple[int, int]]:
    return [(r, c) for c in range(q) for r in range(c, q)]


def relative_factor(theta: np.ndarray, qs: list[int]) -> np.ndarray:
    """Block-diagonal T for one level per term (used with the level structure below)."""
    mats, pos = [], 0
    for q in qs:
        T = np.zeros((q, q))
        for r, c in _lower_triangle(q):
            T[r, c] = theta[pos]
            pos += 1
        mats.append(T)
    return mats


def dense_z_lambda(design, theta: np.ndarray) -> np.ndarray:
    """Z Λθ as a dense n × Σ(levels·q) matrix (columns: term, level, component)."""
    mats = relative_factor(np.asarray(theta, dtype=float), [t.q for t in design.terms])
    blocks = []
    for t, T in zip(design.terms, mats):
        Z = np.zeros((design.n, t.n_levels * t.q))
        for c in range(t.q):
            Z[np.arange(design.n), t.codes * t.q + c] = t.z[:, c]
        blocks.append(Z @ np.kron(np.eye(t.n_levels), T))
    return np.hstack(blocks)


def dense_criterion(design, theta, reml: bool) -> float:
    """The profiled deviance (ML) or REML criterion at θ, from V directly."""
    keep = design.weights > 0  # rows with zero weight carry no information
    X = design.X[keep]
    y = (design.y - design.offset)[keep]
    w = design.weights[keep]
    ZL = dense_z_lambda(design, theta)[keep]
    n, p = X.shape
    V = ZL @ ZL.T + np.diag(1.0 / w)
    chol = scipy.linalg.cho_factor(V, lower=True)
    logdet_v = 2.0 * np.sum(np.log(np.diag(chol[0])))
    Vi_X = scipy.linalg.cho_solve(chol, X)
    Vi_y = scipy.linalg.cho_solve(chol, y)
    XtViX = X.T @ Vi_X
    beta = np.linalg.solve(XtViX, X.T @ Vi_y)
    resid = y - X @ beta
    r2 = float(resid @ scipy.linalg.cho_solve(chol, resid))
    if reml:
        logdet_x = np.linalg.slogdet(XtViX)[1]
        return float(logdet_v + logdet_x + (n - p) * (1.0 + np.log(2 * np.pi * r2 / (n - p))))
    return float(logdet_v + n * (1.0 + np.log(2 * np.pi * r2 / n)))


def dense_estimates(design, theta, reml: bool) -> dict:
    """β̂ and σ̂ at θ (generalized least squares)."""
    X, y, w = design.X, design.y - design.offset, design.weights
    ZL = dense_z_lambda(design, theta)
    V = ZL @ ZL.T + np.diag(1.0 / w)
    Vi = np.linalg.inv(V)
    beta = np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ y)
    resid = y - X @ beta
    n, p = X.shape
    sigma = np.sqrt(resid @ Vi @ resid / (n - p if reml else n))
    return dict(beta=beta, sigma=sigma)


def dense_optimum(design, reml: bool, starts) -> tuple[float, np.ndarray]:
    """Minimize the dense criterion with SciPy (L-BFGS-B then Nelder–Mead, diagonal θ ≥ 0) from several starts."""
    qs = [t.q for t in design.terms]
    lower = [0.0 if r == c else None for q in qs for r, c in _lower_triangle(q)]
    bounds = [(lo, None) for lo in lower]

    def f(th):
        try:
            return dense_criterion(design, th, reml)
        except (np.linalg.LinAlgError, ValueError):
            return np.inf

    best_value, best_theta = np.inf, None
    for start in starts:
        res = scipy.optimize.minimize(f, np.asarray(start, dtype=float), method="L-BFGS-B", bounds=bounds)
        res = scipy.optimize.minimize(
            f, res.x, method="Nelder-Mead", bounds=bounds, options=dict(xatol=1e-10, fatol=1e-12, maxiter=4000)
        )
        if res.fun < best_value:
            best_value, best_theta = float(res.fun), res.x
    return best_value, best_theta
