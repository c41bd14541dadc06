"""Estimated marginal means and their pairwise contrasts, as emmeans 1.8 computes them (fit.emmeans).

The reference grid is emmeans': every combination of the levels of the factors in the fixed part, numeric
variables at their means over the rows used. A marginal mean of `specs` (within a level of `by`) is the equally
weighted average of the grid's predictions over the other factors: a linear function cᵀβ with c the average of
the grid rows' model-matrix rows. Its se is √(cᵀVc) with V = vcov(β) (Kenward–Roger's adjusted Φ_A when
lmer_df="kenward-roger"), its df Satterthwaite's or Kenward–Roger's for a linear model (as lmerTest's for cᵀβ) and
infinite for a GLMM (z), and the interval cᵀβ ± t·se. type="response" maps a GLMM's means and bounds through the
inverse link (se by the delta method); emmeans calls them prob (binomial) or rate (Poisson). Pairwise contrasts
are differences of means within each `by` group (on the response scale of a logit or log link: odds ratios or
ratios, tested on the link scale), with p-values adjusted over the group's contrasts: "tukey" (the studentized
range of the group's k means), "bonferroni", "holm" or "none".
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import stats

from .._errors import DataError

__all__ = ["emmeans", "Emmeans"]

_ADJUST = ("tukey", "bonferroni", "holm", "none")
_RESPONSE_NAMES = {"binomial": "prob", "poisson": "rate"}
_RATIO_NAMES = {"logit": "odds_ratio", "log": "ratio"}


class Emmeans(NamedTuple):
    """pairwise=True: the marginal means and their pairwise contrasts."""

    emmeans: pd.DataFrame
    contrasts: pd.DataFrame

    def __repr__(self) -> str:  # as R prints an emm_list
        return f"$emmeans\n{self.emmeans.to_string()}\n\n$contrasts\n{self.contrasts.to_string()}"


def emmeans(fit, specs, by=None, type: str = "link", pairwise: bool = False, adjust: str = "tukey",
            level: float = 0.95, lmer_df: str = "satterthwaite"):
    """The table of marginal means (the specs and by columns, emmean, se, df, lower, upper), or with pairwise=True
    an `Emmeans` (emmeans, contrasts); see the module's text for the method."""
    specs, by = _names(specs, "specs"), _names(by, "by") if by is not None else []
    if type not in ("link", "response"):
        raise ValueError(f"type must be 'link' or 'response', got {type!r}")
    if adjust not in _ADJUST:
        raise ValueError(f"adjust must be one of {', '.join(map(repr, _ADJUST))}, got {adjust!r}")
    if not (isinstance(level, (int, float)) and 0 < level < 1):
        raise ValueError(f"level must be a probability between 0 and 1, got {level!r}")
    grid, X_grid = reference_grid(fit, specs + by)
    keys, L = _marginal_rows(grid, X_grid, specs + by)
    V, df_of = _covariance_and_df(fit, lmer_df)
    estimate = L @ fit._beta
    se = np.sqrt(np.einsum("ri,ij,rj->r", L, V, L))
    df = df_of(L)
    table = pd.DataFrame(keys, columns=specs + by)
    table = pd.concat([table, _estimates(fit, estimate, se, df, level, type)], axis=1)
    if not pairwise:
        return table
    return Emmeans(table, _pairwise(fit, keys, L, specs, by, grid, V, df_of, type, adjust))


def _names(value, what: str) -> list[str]:
    names = [value] if isinstance(value, str) else list(value)
    if not names or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{what} must name one or more factors of the fixed effects, got {value!r}")
    return names


def _data_on_rows(fit) -> pd.DataFrame:
    from ..formula._design import to_pandas

    return to_pandas(fit.model._source["data"]).loc[fit.design.row_index]


def reference_grid(fit, wanted: list[str]) -> tuple[pd.DataFrame, np.ndarray]:
    """emmeans' reference grid (one row per combination of factor levels, numeric variables at their means) and
    its rows of the model matrix (kept columns)."""
    d = fit.design
    spec = d.x_spec
    frame = _data_on_rows(fit)
    labels = list(dict.fromkeys(v for t in spec.terms for v in t.variables))
    factors = [v for v in labels if v in spec.levels]
    for name in wanted:
        if name not in factors:
            kind = "a numeric variable" if name in labels else "not a variable of the fixed effects"
            raise DataError(f"emmeans: {name!r} is {kind}; specs and by name factors of the fixed part "
                            f"({', '.join(map(repr, factors)) or 'none'})")
    for v in factors:
        if v not in frame.columns:
            raise DataError(f"emmeans needs the factor {v!r} as a column of the data")
    numeric = [c for c in frame.columns if c not in factors and any(
        re.search(rf"(?<![\w.]){re.escape(c)}(?![\w.])", v) for v in labels if v not in factors)]
    levels = [list(spec.levels[v]) for v in factors]
    combos = [tuple(reversed(c)) for c in itertools.product(*reversed(levels))]  # the first factor fastest
    grid = pd.DataFrame(combos, columns=factors)
    for v, lv in zip(factors, levels):
        grid[v] = pd.Categorical(grid[v].astype(str), categories=[str(x) for x in lv])
    for c in numeric:
        grid[c] = float(np.mean(np.asarray(frame[c], dtype=np.float64)))
    X_all = spec.get_model_matrix(grid, output="numpy")
    keep = [d.x_names_all.index(name) for name in d.x_names]
    return grid, np.asarray(X_all, dtype=np.float64)[:, keep]


def _marginal_rows(grid, X_grid, names):
    """Per combination of the named factors (the first fastest), the average of its grid rows."""
    levels = [list(grid[n].cat.categories) for n in names]
    keys, rows = [], []
    for combo in (tuple(reversed(c)) for c in itertools.product(*reversed(levels))):
        mask = np.all([grid[n].astype(str).to_numpy() == v for n, v in zip(names, combo)], axis=0)
        keys.append(combo)
        rows.append(X_grid[mask].mean(axis=0))
    return keys, np.asarray(rows)


def _covariance_and_df(fit, lmer_df):
    """(V, df function of L's rows): Satterthwaite or Kenward–Roger for linear models, ∞ for GLMMs."""
    if not fit.is_linear:
        return fit._vcov, lambda L: np.full(L.shape[0], np.inf)
    from ._satterthwaite import contrast_df, ddf_method

    if ddf_method(lmer_df) == "satterthwaite":
        return fit._vcov, lambda L: contrast_df(fit, L)
    from ._kenward_roger import kr_contrast_df, kr_vcov

    return kr_vcov(fit), lambda L: kr_contrast_df(fit, L)


def _estimates(fit, estimate, se, df, level, type) -> pd.DataFrame:
    quantile = stats.t.ppf(0.5 + level / 2, df)
    lower, upper = estimate - quantile * se, estimate + quantile * se
    name = "emmean"
    family = fit.family
    if type == "response" and not fit.is_linear:
        mu_eta = np.abs(np.asarray(family.mu_eta(estimate)))
        bounds = np.stack([fit._inverse_link(lower), fit._inverse_link(upper)])
        estimate, se = fit._inverse_link(estimate), se * mu_eta
        lower, upper = bounds.min(axis=0), bounds.max(axis=0)
        name = _RESPONSE_NAMES.get(getattr(family, "name", ""), "response")
    return pd.DataFrame({name: estimate, "se": se, "df": df, "lower": lower, "upper": upper})


def _level_labels(grid, specs) -> dict[str, dict[str, str]]:
    """emmeans' labels: a factor whose levels all read as numbers is prefixed by its name."""
    out = {}
    for n in specs:
        cats = [str(c) for c in grid[n].cat.categories]
        numeric = all(re.fullmatch(r"[-+]?\d*\.?\d+([eE][-+]?\d+)?", c) for c in cats)
        out[n] = {c: (n + c if numeric else c) for c in cats}
    return out


def _pairwise(fit, keys, L, specs, by, grid, V, df_of, type, adjust) -> pd.DataFrame:
    labels = _level_labels(grid, specs)
    ratio = None
    if type == "response" and not fit.is_linear:
        ratio = _RATIO_NAMES.get(getattr(fit.family, "link", ""))
    sep = " / " if ratio else " - "
    wrap = lambda s: f"({s})" if re.search(r"[-+*/ ]", s) else s  # noqa: E731
    frames = []
    groups = dict.fromkeys(k[len(specs):] for k in keys)
    for group in groups:
        members = [i for i, k in enumerate(keys) if k[len(specs):] == group]
        pairs = list(itertools.combinations(members, 2))
        C = np.asarray([L[i] - L[j] for i, j in pairs])
        names = [sep.join(wrap(" ".join(labels[n][v] for n, v in zip(specs, keys[i][: len(specs)])))
                          for i in (a, b)) for a, b in pairs]
        estimate = C @ fit._beta
        se = np.sqrt(np.einsum("ri,ij,rj->r", C, V, C))
        df = df_of(C)
        statistic = estimate / se
        p = _adjusted(statistic, df, len(members), adjust)
        frame = pd.DataFrame({"contrast": names})
        for n, v in zip(by, group):
            frame[n] = v
        if ratio:
            frame[ratio], frame["se"] = np.exp(estimate), np.exp(estimate) * se
        else:
            frame["estimate"], frame["se"] = estimate, se
        frame["df"] = df
        frame["z_ratio" if fit.is_linear is False else "t_ratio"] = statistic
        frame["p_value"] = p
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def _adjusted(statistic, df, n_means: int, adjust: str) -> np.ndarray:
    raw = 2.0 * stats.t.sf(np.abs(statistic), df)
    m = len(statistic)
    if adjust == "tukey":
        return stats.studentized_range.sf(np.abs(statistic) * np.sqrt(2.0), n_means, df)
    if adjust == "bonferroni":
        return np.minimum(1.0, raw * m)
    if adjust == "holm":
        order = np.argsort(raw)
        stepped = np.maximum.accumulate(np.minimum(1.0, raw[order] * (m - np.arange(m))))
        out = np.empty(m)
        out[order] = stepped
        return out
    return raw
