"""Data + parsed formula → the model's design (NumPy, outside jit).

The design holds everything that depends on the data but not on the parameters: the fixed-effects matrix X,
the response, prior weights and offset, and for each random-effects term its grouping codes, level labels and
model-matrix columns z (R's model.matrix, see `_modelmatrix`). Terms are ordered as lme4 orders them
(decreasing number of levels; `_lme4_term_order` says how ties go), which fixes θ's layout and the elimination
order of the blocked Cholesky.

All input checks live here, so that a bad model fails with a message naming the column or term before any
JAX code is traced.
"""

from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._errors import (
    DataError,
    DataTypeError,
    FormulaError,
    FormulaWarning,
    JaxmlmError,
    MissingValuesWarning,
    RankDeficiencyWarning,
)
from .._warn import user_stacklevel
from ._family import numeric_response
from ._ingest import column_names, is_arrow_source, read_frame
from ._modelmatrix import build_model_matrix, evaluate, evaluate_numeric, format_number
from ._parser import Name, parse_expression
from ._terms import ParsedFormula, RandomTerm, expand_terms, expression_names

__all__ = ["TermData", "Design", "build_design", "to_pandas"]


@dataclasses.dataclass
class TermData:
    """One random-effects term, evaluated on the data."""

    term: RandomTerm
    group_name: str  # name as lme4 prints it ("Subject", "cask:batch"); made unique later for display
    column_names: list[str]  # names of its z columns, lme4 style ("(Intercept)", "Days")
    levels: pd.Index  # level labels, in order of codes
    codes: np.ndarray  # (n,) int32 level of each row
    z: np.ndarray  # (n, q) float64
    z_spec: Any  # ModelMatrixSpec to rebuild z on new data
    formula_position: int  # position in the formula (for tie-breaking and display)

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    @property
    def q(self) -> int:
        return self.z.shape[1]


@dataclasses.dataclass
class Design:
    """Everything a fit needs from the data, with terms in lme4's order."""

    formula: ParsedFormula
    X: np.ndarray  # (n, p) after dropping rank-deficient columns
    x_names: list[str]  # kept columns
    x_names_all: list[str]  # all columns before dropping (fixef shows NaN for the dropped)
    x_spec: Any  # ModelMatrixSpec for X on new data
    y: np.ndarray  # (n,) response (for binomial: proportion of successes)
    weights: np.ndarray  # (n,) prior weights (for binomial: trials × user weights)
    offset: np.ndarray  # (n,)
    terms: list[TermData]
    n_dropped: int  # rows dropped for missing values
    row_index: pd.Index  # index labels of the rows used
    has_user_weights: bool
    response_name: str
    extra: dict = dataclasses.field(default_factory=dict)  # family-specific response details (e.g. trials)

    @property
    def n(self) -> int:
        return self.X.shape[0]

    @property
    def p(self) -> int:
        return self.X.shape[1]

    @property
    def group_names(self) -> list[str]:
        """Display names per term, made unique as lme4 does ('Subject', 'Subject.1')."""
        seen: dict[str, int] = {}
        out = []
        for t in self.terms:
            k = seen.get(t.group_name, 0)
            out.append(t.group_name if k == 0 else f"{t.group_name}.{k}")
            seen[t.group_name] = k + 1
        return out

    @property
    def ngroups(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.terms:
            out.setdefault(t.group_name, t.n_levels)
        return out


def to_pandas(data: Any, columns: Any = None) -> pd.DataFrame:
    """Accept pandas, polars, Arrow-family sources and parquet / IPC paths (see _ingest), anything with to_pandas,
    or a dict of columns. With ``columns``, Arrow-family sources and polars frames read only those of them they hold
    (the caller reports the others)."""
    if isinstance(data, pd.DataFrame):
        return data
    if is_arrow_source(data) or (columns is not None and column_names(data) is not None):
        return read_frame(data, columns, missing="ignore")
    mod = type(data).__module__
    if mod.startswith("polars"):
        return data.to_pandas()
    if hasattr(data, "to_pandas"):
        return data.to_pandas()
    if isinstance(data, dict):
        return pd.DataFrame(data)
    raise DataTypeError(f"data must be a pandas or polars DataFrame, got {type(data).__name__}")


def _check_columns(names: set[str], frame: pd.DataFrame, where: str) -> None:
    for name in sorted(names):
        if name not in frame.columns:
            close = difflib.get_close_matches(name, [str(c) for c in frame.columns], n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise FormulaError(f"{where} uses {name!r}, which is not a column of the data{hint}")


def level_labels(values) -> list[str]:
    """Level labels as R's factor() writes them, as.character of each value: 2 and 2.5 for doubles (not "2.0"),
    1e+05, TRUE / FALSE; strings as they are. Vectorized where it can be (string levels, integers, and doubles
    that are small whole numbers, the usual coded grouping column)."""
    values = pd.Index(values)
    if pd.api.types.is_bool_dtype(values.dtype):
        return ["TRUE" if v else "FALSE" for v in values]
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.astype(str).tolist()
    if pd.api.types.is_float_dtype(values.dtype):
        v = values.to_numpy(dtype=np.float64)
        whole = np.isfinite(v) & (v == np.round(v)) & (np.abs(v) < 1e5)  # R writes these as integers
        out = np.where(whole, np.where(whole, v, 0).astype(np.int64).astype(str), "").astype(object)
        rest = np.flatnonzero(~whole)
        out[rest] = [format_number(x) for x in v[rest]]
        return out.tolist()
    return values.astype(str).tolist()


def row_labels(frame: pd.DataFrame, factors) -> pd.Series:
    """Each row's level of the (interaction of) grouping factors, labelled as `level_labels` labels a fit's levels
    ("a:b" for an interaction): the key that matches new data to a fitted model's levels."""
    parts = []
    for name in factors:
        col = frame[name]
        codes, uniques = pd.factorize(col, sort=False)
        labels = np.asarray(level_labels(uniques) + ["NA"], dtype=object)
        parts.append(pd.Series(labels[codes], index=frame.index))
    out = parts[0]
    for part in parts[1:]:
        out = out + ":" + part
    return out


def _grouping_codes(frame: pd.DataFrame, factors: tuple[str, ...]) -> tuple[np.ndarray, pd.Index]:
    """Codes and labels of the (interaction of) grouping factors; unused levels dropped, as R's factor() does."""
    codes_list = []
    labels_list = []
    for name in factors:
        col = frame[name]
        if isinstance(col.dtype, pd.CategoricalDtype):
            categories = col.cat.categories
            codes = col.cat.codes.to_numpy()
            used = np.flatnonzero(np.bincount(codes[codes >= 0], minlength=len(categories)))  # O(n), no sort
            remap = np.full(len(categories), -1, dtype=np.int64)
            remap[used] = np.arange(len(used))
            codes = remap[codes]
            labels = level_labels(categories[used])
        else:
            codes, uniques = pd.factorize(col, sort=True)
            labels = level_labels(uniques)
        codes_list.append(codes.astype(np.int64))
        labels_list.append(labels)
    if len(factors) == 1:
        return codes_list[0].astype(np.int32), pd.Index(labels_list[0], name=factors[0])
    combined = np.zeros(len(frame), dtype=np.int64)
    for codes, labels in zip(codes_list, labels_list):
        combined = combined * len(labels) + codes
    used, codes = np.unique(combined, return_inverse=True)  # first factor varies slowest, as R's a:b
    parts = []
    rem = used.copy()
    for labels in reversed(labels_list):
        parts.append(np.asarray(labels, dtype=object)[rem % len(labels)])
        rem //= len(labels)
    parts.reverse()
    labels = [":".join(str(x) for x in row) for row in zip(*parts)]
    return codes.astype(np.int32), pd.Index(labels, name=":".join(factors))


def _evaluate(expr: str, frame: pd.DataFrame, where: str) -> np.ndarray:
    """Numeric value of an expression such as 'log(expected)' or 'size - incidence'."""
    if expr in frame.columns:
        return frame[expr].to_numpy()
    node = parse_expression(expr)
    if isinstance(node, Name) and node.id in frame.columns:
        return frame[node.id].to_numpy()
    return evaluate_numeric(expr, frame, where)


def _response_part(expr: str, frame: pd.DataFrame):
    """A response column as it is (a factor stays a factor), or the value of an expression."""
    node = parse_expression(expr)
    if isinstance(node, Name) and node.id in frame.columns:
        return frame[node.id]
    value = evaluate(node, frame, "the response")
    if not hasattr(value, "values") or value.values.shape[1] != 1:
        raise FormulaError(f"the response {expr!r} must evaluate to one numeric column")
    return value.values[:, 0]


_QR_BLOCK_ROWS = 32768


def _drop_rank_deficient(X: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Drop linearly dependent columns as lme4 does, warning with lme4's message.

    lme4 calls R's qr(X, tol = 1e-7), whose LINPACK routine (dqrdc2) pivots only to move a column to the end when
    its norm orthogonal to the columns before it falls below 1e-7 of its original norm: the kept columns are the
    first independent ones in the formula's order. With the unpivoted R of X that test is |R_jj| ≤ 1e-7 ‖x_j‖
    (a dropped column lies in the span of the earlier ones, so it leaves the later |R_jj| unchanged).
    R comes block by block (TSQR: the R of the stacked block R's is X's R): LAPACK on a tall X is bound by memory
    traffic, and this takes ~6 ms at 1M × 2 and ~35 ms at 1M × 8."""
    if X.shape[1] == 0:
        return X, names
    r_stack = np.vstack([np.linalg.qr(X[i : i + _QR_BLOCK_ROWS], mode="r") for i in range(0, X.shape[0], _QR_BLOCK_ROWS)])
    r_x = np.linalg.qr(r_stack, mode="r") if r_stack.shape[0] > X.shape[1] else r_stack
    norms = np.sqrt((r_x**2).sum(axis=0))  # column norms of X
    diag = np.zeros(X.shape[1])
    diag[: min(r_x.shape)] = np.abs(np.diagonal(r_x))  # fewer rows than columns: the rest are dependent
    independent = diag > 1e-7 * norms
    rank = int(independent.sum())
    if rank == X.shape[1]:
        return X, names
    keep = np.flatnonzero(independent)
    dropped = X.shape[1] - rank
    warnings.warn(
        f"fixed-effect model matrix is rank deficient so dropping {dropped} column{'s' if dropped > 1 else ''} / "
        f"coefficient{'s' if dropped > 1 else ''} ({', '.join(names[i] for i in sorted(set(range(X.shape[1])) - set(keep)))})",
        RankDeficiencyWarning,
        stacklevel=user_stacklevel(),
    )
    return X[:, keep], [names[i] for i in keep]


def _user_spelling(column: str, renames) -> str:
    """A column or term name as the user wrote it (column names are R's spelling already; renames map the rest)."""
    for translated, original in renames:
        column = column.replace(translated, original)
    return column


def _vector_argument(value: Any, frame: pd.DataFrame, n_rows: int, what: str) -> np.ndarray | None:
    """weights= / offset= given as a column name or an array of the data's length."""
    if value is None:
        return None
    if isinstance(value, str):
        if value not in frame.columns:
            raise FormulaError(f"{what}={value!r} is not a column of the data")
        value = frame[value].to_numpy()
    arr = np.asarray(value)
    if arr.ndim != 1 or arr.shape[0] != n_rows:
        raise DataError(f"{what} must have one value per row of the data ({n_rows}), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataTypeError(f"{what} must be numeric, got values of type {arr.dtype}")
    return arr.astype(np.float64)


def _check_formula_columns(parsed: ParsedFormula, frame: pd.DataFrame) -> None:
    """Every name the formula uses must be a column (the frame may be an empty one with the source's columns)."""
    _check_columns(set().union(*(expression_names(p) for p in parsed.response_parts)), frame, "the response")
    _check_columns(expression_names(parsed.fixed), frame, "the fixed-effects part")
    for term in parsed.random:
        _check_columns(expression_names(term.lhs), frame, f"random-effects term {term.text}")
        _check_columns(set(term.factors), frame, f"random-effects term {term.text}")
        lhs_vars = expression_names(term.lhs)
        same = lhs_vars & set(term.factors)
        if same:
            raise FormulaError(
                f"random-effects term {term.text} uses {sorted(same)[0]!r} both as a slope and as its grouping "
                "factor"
            )
    for o in parsed.offsets:
        _check_columns(expression_names(o), frame, "offset()")


# the covariance structures the fitters implement; the others of COVARIANCE_STRUCTURES parse but are refused here
SUPPORTED_COVARIANCES = ("us", "diag", "cs", "ar1")


def _check_covariances(parsed: ParsedFormula, frame: pd.DataFrame) -> None:
    """ar1() terms need one factor on the left of the bar and no intercept; structures not implemented are refused
    (messages name the term)."""
    for term in parsed.random:
        if term.covariance == "ar1":
            intercept, lhs_terms = expand_terms(parse_expression(term.lhs), f"random-effects term {term.text}")
            variables = [v for t in lhs_terms for v in t.variables]
            if len(variables) != 1 or len(lhs_terms) != 1:
                raise FormulaError(f"ar1() needs one factor on the left of its bar, as in ar1(0 + time | g): "
                                   f"{term.text}")
            if intercept:  # glmmTMB's ar1 is over the factor's levels, one column each: no intercept column
                raise FormulaError(f"ar1() takes no intercept: write ar1(0 + {variables[0]} | {term.group_name}) for "
                                   f"{term.text}")
            value = evaluate(variables[0], frame, f"random-effects term {term.text}")
            if not hasattr(value, "levels"):
                raise FormulaError(f"ar1() needs a factor on the left of its bar, but {variables[0]!r} in "
                                   f"{term.text} is not one (use factor({variables[0]}))")
        if term.covariance not in SUPPORTED_COVARIANCES:
            raise FormulaError(f"{term.covariance}() covariance structures are not supported yet: {term.text}")


def _warn_response_as_predictor(parsed: ParsedFormula) -> None:
    """`y ~ x + (y | g)` is legal, but a slope on the response explains the response by itself: the fit is
    degenerate (the residual variance is driven towards zero), which is seldom what was meant."""
    response_vars = set().union(*(expression_names(p) for p in parsed.response_parts))
    for term in parsed.random:
        shared = sorted(response_vars & expression_names(term.lhs))
        if shared:
            warnings.warn(
                f"the response variable {shared[0]!r} is used as a random-effects predictor in {term.text}; "
                "the model explains the response by itself (a degenerate fit); did you mean another column?",
                FormulaWarning,
                stacklevel=user_stacklevel(),
            )
            return


def _formula_columns(parsed: ParsedFormula, weights: Any, offset: Any) -> list[str]:
    """The columns a model reads: the formula's variables and weights= / offset= given as column names."""
    used: set[str] = set()
    for p in parsed.response_parts:
        used |= expression_names(p)
    used |= expression_names(parsed.fixed)
    for term in parsed.random:
        used |= expression_names(term.lhs) | set(term.factors)
    for o in parsed.offsets:
        used |= expression_names(o)
    used |= {v for v in (weights, offset) if isinstance(v, str)}
    return sorted(used)


def build_design(
    parsed: ParsedFormula,
    data: Any,
    *,
    family: Any,
    weights: Any = None,
    offset: Any = None,
    na_action: str = "omit",
    check_levels: bool = True,
) -> Design:
    """Evaluate the parsed formula on the data. Raises before any JAX code runs."""
    if na_action not in ("omit", "drop", "raise", "fail"):
        raise JaxmlmError(f"na_action must be 'omit' or 'raise', got {na_action!r}")
    source_names = column_names(data)  # Arrow-family sources and polars: check the formula before reading rows
    if source_names is not None and parsed.random:
        _check_formula_columns(parsed, pd.DataFrame(columns=source_names))
    frame = to_pandas(data, None if source_names is None else _formula_columns(parsed, weights, offset))
    if frame.shape[0] == 0:
        raise DataError("data has no rows")
    if not parsed.random:
        raise FormulaError(
            f"formula {parsed.text!r} has no random-effects term such as (1 | group); "
            "for a model without random effects use an ordinary regression"
        )
    _check_formula_columns(parsed, frame)
    _check_covariances(parsed, frame)
    _warn_response_as_predictor(parsed)

    n_rows = frame.shape[0]
    w_arg = _vector_argument(weights, frame, n_rows, "weights")
    o_arg = _vector_argument(offset, frame, n_rows, "offset")

    frame, w_arg, o_arg, n_missing = _drop_missing(parsed, frame, w_arg, o_arg, na_action)
    y, prior_w, extra = _response(parsed, frame, family, w_arg)
    X_all, x_spec = build_model_matrix(*_fixed_terms(parsed), frame, "the fixed-effects part")
    x_names_all = list(x_spec.column_names)
    if not np.isfinite(X_all).all():
        bad = [x_names_all[j] for j in range(X_all.shape[1]) if not np.isfinite(X_all[:, j]).all()]
        raise DataError(f"fixed-effects column {bad[0]!r} has non-finite values")
    X, x_names = _drop_rank_deficient(X_all, x_names_all)
    return Design(
        formula=parsed,
        X=X,
        x_names=x_names,
        x_names_all=x_names_all,
        x_spec=x_spec,
        y=y,
        weights=np.asarray(prior_w, dtype=np.float64),
        offset=_offset(parsed, frame, o_arg),
        terms=_lme4_term_order([_term_data(pos, term, frame, check_levels) for pos, term in enumerate(parsed.random)]),
        n_dropped=n_missing,
        row_index=frame.index,
        has_user_weights=w_arg is not None,
        response_name=parsed.response,
        extra=extra,
    )


def _drop_missing(parsed: ParsedFormula, frame: pd.DataFrame, w_arg, o_arg, na_action: str):
    """Rows with a missing value in a column the model uses (or in weights/offset): dropped with a warning, or
    refused; then the numeric columns used must be finite. Returns (frame, weights, offset, rows dropped)."""
    used = set(_formula_columns(parsed, None, None))  # weights= and offset= arrays are checked below
    used_cols = [c for c in frame.columns if c in used]
    missing = frame[used_cols].isna().any(axis=1).to_numpy().copy()  # writable (pandas may hand out a view)
    for arr in (w_arg, o_arg):
        if arr is not None:
            missing |= np.isnan(arr)
    n_missing = int(missing.sum())
    if n_missing:
        bad_cols = [c for c in used_cols if frame[c].isna().any()]
        if na_action in ("raise", "fail"):
            raise DataError(
                f"{n_missing} row{'s' if n_missing > 1 else ''} with missing values (in {', '.join(map(repr, bad_cols)) or 'weights/offset'}); "
                "na_action='raise' refuses them (the default 'omit' drops them)"
            )
        warnings.warn(f"{n_missing} row(s) with missing values dropped", MissingValuesWarning,
                      stacklevel=user_stacklevel())
        keep = ~missing
        frame = frame.loc[keep]
        for c in frame.attrs.get("string_columns", ()):  # read from Arrow strings: levels are the strings left
            frame[c] = frame[c].cat.remove_unused_categories()
        w_arg = None if w_arg is None else w_arg[keep]
        o_arg = None if o_arg is None else o_arg[keep]
        if frame.shape[0] == 0:
            raise DataError("no rows left after dropping rows with missing values")
    for c in used_cols:
        col = frame[c]
        if col.dtype.kind == "f" and not np.isfinite(col.to_numpy()).all():
            raise DataError(f"column {c!r} has non-finite values (inf); remove or recode them")
    return frame, w_arg, o_arg, n_missing


def _response(parsed: ParsedFormula, frame: pd.DataFrame, family, w_arg):
    """(y, prior weights, family-specific details) as the family prepares them."""
    raw_parts = [frame[p] if p in frame.columns else _response_part(p, frame) for p in parsed.response_parts]
    prior_w = np.ones(frame.shape[0]) if w_arg is None else w_arg
    if w_arg is not None:
        if not np.isfinite(w_arg).all():
            raise DataError("weights must be finite")
        if (w_arg < 0).any():
            raise DataError("weights must be non-negative (lme4: 'negative weights not allowed')")
    y, prior_w, extra = family.prepare_response(raw_parts, parsed, prior_w)
    y = np.asarray(y, dtype=np.float64)
    if not np.isfinite(y).all():
        raise DataError(f"response {parsed.response!r} has non-finite values")
    return y, prior_w, extra


def _offset(parsed: ParsedFormula, frame: pd.DataFrame, o_arg) -> np.ndarray:
    off = np.zeros(frame.shape[0]) if o_arg is None else o_arg.copy()
    for expr in parsed.offsets:
        off = off + numeric_response(_evaluate(expr, frame, "offset()"), f"offset({expr})")
    if not np.isfinite(off).all():
        raise DataError("offset has non-finite values")
    return off


def _term_data(pos: int, term: RandomTerm, frame: pd.DataFrame, check_levels: bool) -> TermData:
    """One random-effects term on the data: its z columns (model.matrix of its left side) and grouping codes."""
    where = f"random-effects term {term.text}"
    z, z_spec = build_model_matrix(*expand_terms(parse_expression(term.lhs), where), frame, where)
    if z.shape[1] == 0:
        raise FormulaError(f"random-effects term {term.text} has no columns")
    if not np.isfinite(z).all():
        raise DataError(f"random-effects term {term.text} has non-finite values")
    codes, levels = _grouping_codes(frame, term.factors)
    if check_levels and len(levels) < 2:
        raise DataError(
            f"grouping factor {term.group_name!r} in {term.text} has {len(levels)} level; "
            "grouping factors must have > 1 sampled level"
        )
    return TermData(term=term, group_name=term.group_name, column_names=list(z_spec.column_names), levels=levels,
                    codes=codes, z=z, z_spec=z_spec, formula_position=pos)


def _lme4_term_order(terms: list[TermData]) -> list[TermData]:
    """lme4's order (mkReTrms): kept as written when the numbers of levels already do not increase, else
    rev(order(levels)) — decreasing numbers of levels, ties in reverse formula order."""
    n_levels = [t.n_levels for t in terms]
    if all(a >= b for a, b in zip(n_levels, n_levels[1:])):
        return terms
    ascending = sorted(range(len(terms)), key=lambda k: n_levels[k])  # stable, as R's order()
    return [terms[k] for k in reversed(ascending)]


def _fixed_terms(parsed: ParsedFormula):
    """The fixed part's intercept and terms (read again from its text when a caller built the ParsedFormula)."""
    if parsed.fixed_terms or parsed.fixed.strip() in ("0", "1"):
        return parsed.fixed_intercept, list(parsed.fixed_terms)
    return expand_terms(parse_expression(parsed.fixed), "the fixed-effects part")


def check_linear_model(design: Design) -> None:
    """lme4's checks for linear mixed models: levels vs observations, constant response."""
    n = design.n
    for t in design.terms:
        if t.n_levels >= n:
            raise DataError(
                f"number of levels of grouping factor {t.group_name!r} ({t.n_levels}) must be < number of "
                f"observations ({n}); the random effects would be confounded with the residual"
            )
    n_re = sum(t.n_levels * t.q for t in design.terms)
    # lme4's check is for unstructured terms; an ar1()/cs() term's few parameters can be identified (glmmTMB fits
    # ar1(0 + time | g) with one observation per time point)
    if n_re >= n and len(design.terms) == 1 and design.terms[0].q > 1 and design.terms[0].term.covariance == "us":
        raise DataError(
            f"number of observations (={n}) <= number of random effects (={n_re}) for term "
            f"{design.terms[0].term.text}; the random-effects parameters and the residual variance are "
            "probably unidentifiable"
        )
    if np.ptp(design.y) == 0:
        raise DataError(f"response {design.response_name!r} is constant; there is nothing to model")
