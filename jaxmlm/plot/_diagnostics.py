"""Residual diagnostics: residuals against fitted values (lme4's `plot(fit)`) and a normal QQ plot of the scaled
residuals (`qqnorm(resid(fit, scaled = TRUE))` with `qqline`)."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ._common import new_axes

__all__ = ["residuals", "qq", "binned_means", "normal_scores"]


def _shown_rows(n: int, max_points: int | None, seed: int = 0) -> np.ndarray:
    """All rows, or a fixed random subset of max_points of them (a million points only hide each other)."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_points, replace=False))


def binned_means(x: np.ndarray, y: np.ndarray, n_bins: int = 20):
    """(centres, means) of y over bins of x with equal counts: the smoother drawn through the residuals."""
    order = np.argsort(x, kind="stable")
    edges = np.linspace(0, len(x), min(n_bins, len(x)) + 1).astype(int)
    bins = np.repeat(np.arange(len(edges) - 1), np.diff(edges))
    counts = np.bincount(bins)
    centres = np.bincount(bins, weights=x[order]) / counts
    means = np.bincount(bins, weights=y[order]) / counts
    return centres, means


def residuals(fit, type: str = "pearson", max_points: int | None = 20000, smoother: bool = True, ax=None):
    """Residuals (`type` as fit.residuals: Pearson by default, as lme4's plot.merMod) against fitted values,
    with a zero line and the residuals' means over 20 equal-count bins of the fitted values; returns the Axes.
    Beyond `max_points` rows a fixed random subset is drawn (the smoother uses every row)."""
    fitted = fit.fitted().to_numpy(dtype=np.float64)
    resid = fit.residuals(type=type).to_numpy(dtype=np.float64)
    ax = new_axes(ax)
    shown = _shown_rows(len(fitted), max_points)
    ax.scatter(fitted[shown], resid[shown], s=10, color="#1f77b4", alpha=0.6, linewidths=0, label="rows")
    ax.axhline(0.0, color="0.4", lw=0.9, ls="--")
    if smoother:
        centres, means = binned_means(fitted, resid)
        ax.plot(centres, means, color="#d62728", lw=1.5, label="binned means")
        ax.legend(fontsize="small", frameon=False)
    ax.set_xlabel("Fitted values")
    ax.set_ylabel(f"{type.capitalize()} residuals")
    ax.set_title("Residuals against fitted values")
    return ax


def normal_scores(n: int) -> np.ndarray:
    """R's qnorm(ppoints(n)): the normal quantiles at (i − a) / (n + 1 − 2a), a = 3/8 for n ≤ 10, else 1/2."""
    a = 0.375 if n <= 10 else 0.5
    return stats.norm.ppf((np.arange(1, n + 1) - a) / (n + 1 - 2 * a))


def qq(fit, type: str = "pearson", max_points: int | None = 20000, ax=None):
    """Normal QQ plot of the scaled residuals (divided by σ for linear models, as summary()'s 'Scaled
    residuals'), with R's qqline through the first and third quartiles; returns the Axes."""
    resid = fit.residuals(type=type, scaled=True).to_numpy(dtype=np.float64)
    ordered = np.sort(resid)
    theory = normal_scores(len(ordered))
    ax = new_axes(ax)
    shown = _shown_rows(len(ordered), max_points)
    ax.scatter(theory[shown], ordered[shown], s=10, color="#1f77b4", linewidths=0)
    q_sample = np.quantile(resid, [0.25, 0.75])
    q_theory = stats.norm.ppf([0.25, 0.75])
    slope = (q_sample[1] - q_sample[0]) / (q_theory[1] - q_theory[0])
    ax.axline((q_theory[0], q_sample[0]), slope=slope, color="#d62728", lw=1.2)
    ax.set_xlabel("Theoretical quantiles")
    ax.set_ylabel("Scaled residuals" if fit.is_linear else f"{type.capitalize()} residuals")
    ax.set_title("Normal QQ plot")
    return ax
