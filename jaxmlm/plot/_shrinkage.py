"""The shrinkage plot: per group, the no-pooling estimate (a fit of that group alone), the complete-pooling
estimate (one fit ignoring the groups) and the multilevel estimate (lme4's coef()), with an arrow from each
group's own estimate to its partially pooled one. Groups with few rows or noisy data move furthest towards the
population value: the picture that explains partial pooling.

The no-pooling and complete-pooling fits regress y on the grouping factor's random-effects columns with the
fixed-effects columns that are not among them (X₋) held at the mixed model's estimates, as an offset, with the
model's prior weights: least squares for a linear model (for `Reaction ~ Days + (Days | Subject)`,
lm(Reaction ~ Days) per subject and over all of them), the family's GLM by Fisher scoring for a generalized
one, on the link scale. A group whose own GLM has no finite estimate (all successes, or none) has none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ._common import group_term_indices, new_axes

__all__ = ["shrinkage", "shrinkage_table"]

_SCORING_STEPS = 40
_SEPARATED = 12.0  # |own coefficient| on the link scale past which a group's GLM is taken as separated

_NO_POOL = dict(marker="o", facecolors="none", edgecolors="#1f77b4", s=30, label="no pooling (per-group fit)")
_PARTIAL = dict(marker="o", color="#d62728", s=22, label="multilevel (partial pooling)")
_COMPLETE = dict(marker="*", color="black", s=160, zorder=4, label="complete pooling")


def _weighted_normal_equations(z, r, w, codes, n_groups):
    """Per group ZᵀWZ (G × q × q) and ZᵀWr (G × q) by segment sums over the rows."""
    q = z.shape[1]
    gram = np.zeros((n_groups, q, q))
    for i in range(q):
        for j in range(i, q):
            gram[:, i, j] = gram[:, j, i] = np.bincount(codes, weights=w * z[:, i] * z[:, j], minlength=n_groups)
    rhs = np.stack([np.bincount(codes, weights=w * z[:, i] * r, minlength=n_groups) for i in range(q)], axis=1)
    return gram, rhs


def _solve_full_rank(gram, rhs):
    """Batched solve; NaN rows where a group's ZᵀWZ is (numerically) singular — e.g. one row and a slope."""
    eig = np.linalg.eigvalsh(gram)
    ok = eig[:, 0] > 1e-10 * np.maximum(eig[:, -1], 1e-300)
    out = np.full(rhs.shape, np.nan)
    if ok.any():
        out[ok] = np.linalg.solve(gram[ok], rhs[ok][..., None])[..., 0]
    return out


def _glm_by_fisher_scoring(fit, z, eta_held, codes, n_groups, start):
    """Per group, the family's GLM of y on z with offset eta_held (prior weights as the model's), by Fisher
    scoring from `start` (G × q): NaN for groups whose estimate runs off (separation) or whose ZᵀWZ is singular."""
    fam, y, w = fit.family, fit.design.y, np.asarray(fit.design.weights, dtype=np.float64)
    coef = np.array(start, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for _ in range(_SCORING_STEPS):
            eta = eta_held + np.sum(z * np.nan_to_num(coef)[codes], axis=1)
            mu = np.asarray(fam.linkinv(eta))
            slope = np.asarray(fam.mu_eta(eta))
            working_weight = w * slope**2 / np.maximum(np.asarray(fam.variance(mu)), 1e-300)
            gram, rhs = _weighted_normal_equations(z, (y - mu) / np.where(slope > 0, slope, np.inf),
                                                   working_weight, codes, n_groups)
            coef = coef + _solve_full_rank(gram, rhs)
    coef[~np.all(np.abs(coef) < _SEPARATED, axis=1)] = np.nan
    return coef


def _own_and_pooled(fit, z, offset, codes, n_groups, multilevel):
    """(no-pooling G × q, complete pooling q) estimates: least squares, or the GLM by Fisher scoring."""
    d = fit.design
    if fit.is_linear:
        r = d.y - offset
        w = np.asarray(d.weights, dtype=np.float64)
        gram, rhs = _weighted_normal_equations(z, r, w, codes, n_groups)
        return _solve_full_rank(gram, rhs), _solve_full_rank(gram.sum(axis=0)[None], rhs.sum(axis=0)[None])[0]
    own = _glm_by_fisher_scoring(fit, z, offset, codes, n_groups, multilevel)
    pooled = _glm_by_fisher_scoring(fit, z, offset, np.zeros_like(codes), 1, multilevel.mean(axis=0)[None])[0]
    return own, pooled


def shrinkage_table(fit, term=None):
    """(per-level DataFrame, complete-pooling Series) behind `shrinkage`.

    The frame is indexed by level with columns `n` (rows), `weight` (the prior weights' sum: a binomial
    model's trials), `no_pooling_<col>` and `multilevel_<col>` per random-effects column of the grouping
    factor (a GLMM's on the link scale); no-pooling values are NaN for groups whose rows cannot identify their
    own coefficients."""
    d = fit.design
    group, ks = group_term_indices(fit, term)
    columns = [c for k in ks for c in d.terms[k].column_names]
    z = np.column_stack([d.terms[k].z for k in ks])
    codes = np.asarray(d.terms[ks[0]].codes, dtype=np.int64)
    levels = d.terms[ks[0]].levels.astype(str)
    beta = fit.fixef[d.x_names].to_numpy(dtype=np.float64)
    held = [j for j, name in enumerate(d.x_names) if name not in columns]
    multilevel = fit.coef()[group][columns].to_numpy(dtype=np.float64)
    no_pool, complete = _own_and_pooled(fit, z, d.offset + d.X[:, held] @ beta[held], codes, len(levels),
                                        multilevel)
    table = pd.DataFrame({"n": np.bincount(codes, minlength=len(levels)),
                          "weight": np.bincount(codes, weights=d.weights, minlength=len(levels))},
                         index=pd.Index(levels, name=group))
    for c, name in enumerate(columns):
        table[f"no_pooling_{name}"] = no_pool[:, c]
    for c, name in enumerate(columns):
        table[f"multilevel_{name}"] = multilevel[:, c]
    return table, pd.Series(complete, index=columns, name="complete_pooling")


def _arrows(ax, x0, y0, x1, y1):
    ok = np.isfinite(x0) & np.isfinite(y0)
    for a, b, c, e in zip(x0[ok], y0[ok], x1[ok], y1[ok]):
        ax.annotate("", xy=(c, e), xytext=(a, b),
                    arrowprops=dict(arrowstyle="->", color="0.55", lw=0.8, shrinkA=0, shrinkB=2))


def _two_columns(ax, table, complete, cx, cy, group):
    xs, ys = table[f"no_pooling_{cx}"].to_numpy(), table[f"no_pooling_{cy}"].to_numpy()
    xm, ym = table[f"multilevel_{cx}"].to_numpy(), table[f"multilevel_{cy}"].to_numpy()
    _arrows(ax, xs, ys, xm, ym)
    ok = np.isfinite(xs) & np.isfinite(ys)
    ax.scatter(xs[ok], ys[ok], **_NO_POOL)
    ax.scatter(xm, ym, **_PARTIAL)
    ax.scatter([complete[cx]], [complete[cy]], **_COMPLETE)
    ax.set_xlabel(cx)
    ax.set_ylabel(cy)
    ax.set_title(f"Shrinkage of {group}'s coefficients")


def _spread_sizes(n, order_by):
    """Group sizes spread apart by the estimate's rank (within ±0.35 of the smallest gap between sizes), so
    that groups of equal size (a balanced design) do not sit on one vertical line."""
    distinct = np.unique(n)
    gap = float(np.min(np.diff(distinct))) if len(distinct) > 1 else 1.0
    rank = np.argsort(np.argsort(order_by, kind="stable"), kind="stable")
    return n + 0.35 * gap * (2.0 * rank / max(len(n) - 1, 1) - 1.0)


def _one_column(ax, table, complete, col, group, size_label):
    n = table["weight" if size_label.startswith("trials") else "n"].to_numpy(dtype=float)
    own, pooled = table[f"no_pooling_{col}"].to_numpy(), table[f"multilevel_{col}"].to_numpy()
    x = _spread_sizes(n, pooled)
    _arrows(ax, x, own, x, pooled)
    ok = np.isfinite(own)
    ax.scatter(x[ok], own[ok], **_NO_POOL)
    ax.scatter(x, pooled, **_PARTIAL)
    ax.axhline(complete[col], color="black", lw=1.2, ls="--", label="complete pooling")
    ax.set_xlabel(f"{size_label} in {group}")
    ax.set_ylabel(col)
    ax.set_title(f"Shrinkage of {group}'s {col}")


def shrinkage(fit, term=None, columns=None, ax=None):
    """Draw the shrinkage plot of a mixed model's grouping factor `term` ("Subject", or a term's text
    "Days | Subject"; default: the formula's first); returns the Axes.

    With two or more random-effects columns (e.g. `(Days | Subject)`) the plane of the first two (or `columns`)
    shows each group's own fit, its multilevel estimate and the arrow between them, and the complete-pooling
    estimate as a star. With one column (`(1 | g)`) the estimates are drawn against the group's number of rows
    (a binomial model's trials), the complete-pooling estimate as a dashed line. A GLMM's are on the link scale."""
    table, complete = shrinkage_table(fit, term)
    group = table.index.name
    names = list(complete.index)
    chosen = names[:2] if columns is None else ([columns] if isinstance(columns, str) else list(columns))
    unknown = [c for c in chosen if c not in names]
    if unknown or not 1 <= len(chosen) <= 2:
        raise ValueError(f"columns must name one or two of {group}'s random-effects columns {names}, got {columns!r}")
    ax = new_axes(ax)
    if len(chosen) == 2:
        _two_columns(ax, table, complete, chosen[0], chosen[1], group)
    else:
        binomial = getattr(fit.family, "name", "") == "binomial"
        _one_column(ax, table, complete, chosen[0], group, "trials" if binomial else "rows")
    if not fit.is_linear:
        ax.set_ylabel(f"{ax.get_ylabel()} (link scale)")
    ax.legend(fontsize="small", frameon=False)
    return ax
