"""MRP estimates by group: each group's post-stratified estimate with its interval, sorted, against the raw
(unweighted sample) mean where one is given — where the two differ the model has moved a group towards its
population structure or towards the other groups."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import DataError
from ._common import new_axes

__all__ = ["mrp"]

_ESTIMATE_COLUMNS = ("estimate", "sd", "lower", "upper")


def _labels(table: pd.DataFrame, by: list[str]) -> pd.Index:
    if not by:
        return pd.Index(["overall"] * len(table))
    return pd.Index(table[by].astype(str).agg(" · ".join, axis=1))


def _raw_values(raw, table: pd.DataFrame, by: list[str]) -> np.ndarray:
    """raw means aligned with the table's rows: a Series indexed by the group (one `by` column) or a frame with
    the `by` columns and one value column; NaN for groups it lacks."""
    if isinstance(raw, pd.Series):
        if len(by) != 1:
            raise DataError(f"raw as a Series needs one `by` column, the table has {by}")
        return table[by[0]].map(raw).to_numpy(dtype=np.float64)
    if isinstance(raw, pd.DataFrame):
        missing = [c for c in by if c not in raw.columns]
        values = [c for c in raw.columns if c not in by]
        if missing or len(values) != 1:
            raise DataError(f"raw must hold the columns {by} and one column of raw means; it has {list(raw.columns)}")
        merged = table[by].merge(raw, on=by, how="left", validate="one_to_one")
        return merged[values[0]].to_numpy(dtype=np.float64)
    raise DataError(f"raw must be a pandas Series or DataFrame of raw means, got {type(raw).__name__}")


def mrp(table, raw=None, ax=None, sort: bool = True):
    """Draw `jm.poststratify`'s table: per group (its `by` columns) the estimate and its interval (lower, upper),
    and the raw means `raw` (see above) as open diamonds; returns the Axes. Groups are sorted by estimate."""
    if not isinstance(table, pd.DataFrame) or any(c not in table.columns for c in _ESTIMATE_COLUMNS):
        raise DataError(f"mrp() draws the table of jm.poststratify, with columns {list(_ESTIMATE_COLUMNS)}")
    by = [c for c in table.columns if c not in _ESTIMATE_COLUMNS]
    table = table.reset_index(drop=True)
    labels = _labels(table, by)
    order = np.argsort(table["estimate"].to_numpy(), kind="stable") if sort else np.arange(len(table))
    est = table["estimate"].to_numpy(dtype=np.float64)[order]
    low, high = table["lower"].to_numpy(dtype=np.float64)[order], table["upper"].to_numpy(dtype=np.float64)[order]
    position = np.arange(len(table))
    ax = new_axes(ax, figsize=(5.5, max(3.0, 0.22 * len(table) + 1.2)))
    ax.errorbar(est, position, xerr=np.vstack([est - low, high - est]), fmt="o", ms=4, color="#d62728",
                ecolor="0.45", lw=1.0, capsize=0, label="MRP estimate")
    if raw is not None:
        raw_values = _raw_values(raw, table, by)[order]
        ok = np.isfinite(raw_values)
        ax.scatter(raw_values[ok], position[ok], marker="D", facecolors="none", edgecolors="#1f77b4", s=28,
                   zorder=3, label="raw mean")
    ax.set_yticks(position, labels=list(labels[order]), fontsize="small")
    ax.set_ylim(-1, len(table))
    ax.set_xlabel("estimate")
    ax.set_ylabel(" · ".join(by) if by else "")
    ax.set_title("Post-stratified estimates")
    ax.legend(fontsize="small", frameon=False)
    return ax
