"""The post-stratification frame as arrays: fixed-effects rows, offsets, level codes and z columns per term, and
the codes of the ``by`` groups. Host-side NumPy, done once per call, before anything is compiled.

A population frame has many rows but few distinct values per column, so every model matrix is evaluated on the
distinct combinations of the variables it reads and gathered back to the rows (a 175k-cell frame of eight
categorical columns has at most a few thousand distinct fixed-effects rows), and level labels are built for the
distinct combinations of a term's factors only.
"""

from __future__ import annotations

import equinox as eqx
import jax
import numpy as np
import pandas as pd

from .._errors import DataError, DataTypeError
from ..formula._design import row_labels

__all__ = ["Cells", "cell_arrays", "group_codes", "check_weights"]


class Cells(eqx.Module):
    """One row per population cell. codes[k] ≥ n_levels[k] for levels the model never saw: n_levels[k] + j for
    the j-th distinct one (n_new[k] of them)."""

    X: jax.Array  # (C, p)
    offset: jax.Array  # (C,)
    codes: tuple[jax.Array, ...]  # per term (C,) int32
    z: tuple[jax.Array, ...]  # per term (C, q_k)
    group: jax.Array  # (C,) int32, the cell's `by` group
    weight: jax.Array  # (C,) population count
    n_new: tuple[int, ...] = eqx.field(static=True, default=())  # per term, distinct levels not in the data


def _distinct(frame: pd.DataFrame, columns: list[str], what: str):
    """(row → distinct-combination index, frame of the distinct combinations); missing values are an error.
    Per-column codes combined in mixed radix and one np.unique: much faster than a MultiIndex on 10⁵ rows."""
    if not columns:
        return np.zeros(len(frame), dtype=np.int64), pd.DataFrame(index=[0])
    bad = [c for c in columns if frame[c].isna().any()]
    if bad:
        raise DataError(f"the post-stratification frame has missing values in column {bad[0]!r} ({what})")
    key, radix = np.zeros(len(frame), dtype=np.int64), 1
    for c in columns:
        codes, uniques = pd.factorize(frame[c])
        if radix * max(len(uniques), 1) >= 1 << 62:  # recode before the key overflows
            key = np.unique(key, return_inverse=True)[1].astype(np.int64)
            radix = int(key.max()) + 1
        key = key * len(uniques) + codes
        radix *= max(len(uniques), 1)
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return inverse.reshape(-1), frame[columns].iloc[first].reset_index(drop=True)


def _spec_columns(spec, frame: pd.DataFrame, data_columns) -> list[str]:
    """The frame's columns that spec reads: its variables when they are plain column names, else every frame
    column the model's data also had (an expression such as log(x) may read any of them)."""
    names = getattr(spec, "required_variables", None)
    if names is None:
        names = {v for t in getattr(spec, "terms", []) for v in t.variables}
        if not all(name in frame.columns for name in names):
            names = [c for c in frame.columns if c in set(data_columns)]
    missing = [name for name in names if name not in frame.columns]
    return sorted(names), missing


def _model_matrix(spec, frame: pd.DataFrame, what: str, data_columns) -> np.ndarray:
    """spec's model matrix on frame's rows, evaluated once per distinct combination of the variables it reads."""
    needed, missing = _spec_columns(spec, frame, data_columns)
    if missing:
        raise DataError(f"the post-stratification frame has no column {missing[0]!r} (needed by {what})")
    codes, combos = _distinct(frame, needed, what)
    try:
        values = spec.get_model_matrix(combos, output="pandas").to_numpy(dtype=np.float64)
    except Exception as exc:
        raise DataError(f"cannot evaluate {what} on the post-stratification frame: {exc}") from None
    if values.shape[0] != len(combos):  # a constant-only spec evaluated on a frame without columns
        values = np.broadcast_to(values[:1], (len(combos), values.shape[1]))
    return np.ascontiguousarray(values[codes])


def _term_codes(term, frame: pd.DataFrame) -> np.ndarray:
    """(codes, number of unseen levels): codes of the term's levels (lme4's labels 'a:b' for interactions),
    unseen levels numbered from n_levels on."""
    factors = list(term.term.factors)
    for name in factors:
        if name not in frame.columns:
            raise DataError(f"the post-stratification frame has no column {name!r} (grouping factor of "
                            f"{term.term.text})")
    codes, combos = _distinct(frame, factors, f"grouping factor of {term.term.text}")
    labels = row_labels(combos, factors)
    idx = pd.Index(term.levels.astype(str)).get_indexer(labels)
    unseen = idx < 0
    idx[unseen] = term.n_levels + np.arange(int(unseen.sum()))
    return idx[codes].astype(np.int32), int(unseen.sum())


def check_weights(frame: pd.DataFrame, weight: str) -> np.ndarray:
    if weight not in frame.columns:
        raise DataError(f"the post-stratification frame has no column {weight!r}")
    w = frame[weight]
    if not pd.api.types.is_numeric_dtype(w) or pd.api.types.is_bool_dtype(w):
        raise DataTypeError(f"weight column {weight!r} must be numeric, got {w.dtype}")
    w = w.to_numpy(dtype=np.float64)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise DataError(f"weight column {weight!r} must hold finite, non-negative counts")
    return w


def group_codes(frame: pd.DataFrame, weights: np.ndarray, by: list[str]):
    """(codes (C,), keys frame with one row per group, group totals Σ N) for the ``by`` columns (one group if
    none); a group whose weights sum to zero is an error."""
    for col in by:
        if col not in frame.columns:
            raise DataError(f"the post-stratification frame has no column {col!r} (named in by)")
    if by:
        bad = [c for c in by if frame[c].isna().any()]
        if bad:
            raise DataError(f"the post-stratification frame has missing values in column {bad[0]!r} (named in by)")
        codes, uniques = pd.MultiIndex.from_frame(frame[by]).factorize(sort=True)
        keys = uniques.to_frame(index=False)
        keys.columns = by
    else:
        codes = np.zeros(len(frame), dtype=np.int64)
        keys = pd.DataFrame(index=[0])
    totals = np.bincount(codes, weights=weights, minlength=len(keys))
    empty = totals <= 0
    if empty.any():
        bad = keys[empty].iloc[0].to_dict() if by else {}
        raise DataError(f"the post-stratification weights sum to zero in group {bad}")
    return codes.astype(np.int32), keys.reset_index(drop=True), totals


def cell_arrays(model, frame: pd.DataFrame, group: np.ndarray, weights: np.ndarray) -> Cells:
    """The frame's cells for every term of the model (unseen levels at the population level, lme4's
    allow.new.levels)."""
    d = model.design
    data = model._source["data"]
    columns = getattr(data, "columns", None)
    data_columns = list(getattr(data, "column_names", []) if columns is None else columns)
    X = _model_matrix(d.x_spec, frame, "the fixed effects", data_columns)
    X_all_names = list(d.x_names_all)
    X = X[:, [X_all_names.index(name) for name in d.x_names]] if X.shape[1] != len(d.x_names) else X
    offset = np.zeros(len(frame))
    if d.formula.offsets:
        from ..formula._design import _evaluate

        for expr in d.formula.offsets:
            offset = offset + np.asarray(_evaluate(expr, frame, "offset()"), dtype=np.float64)
    codes, zs, n_new = [], [], []
    for t in d.terms:
        term_codes, unseen = _term_codes(t, frame)
        codes.append(term_codes)
        n_new.append(unseen)
        zs.append(_model_matrix(t.z_spec, frame, f"the term {t.term.text}", data_columns))
    return Cells(X=X, offset=offset, codes=tuple(codes), z=tuple(zs), group=group, weight=weights,
                 n_new=tuple(n_new))
