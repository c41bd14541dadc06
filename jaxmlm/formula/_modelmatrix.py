"""R's model.matrix: formula terms evaluated on a data frame (NumPy, outside jit).

Each variable of a term (a column, or an R expression such as `I(Time^2)`, `log(x)`, `factor(x)`, `poly(x, 2)`)
is evaluated here with R's meaning (`^` is a power, names are R's) into numeric columns or a factor. A factor is
coded as R codes it (TermCode in R's model.c): by contrasts where the term without that factor is in the model
before it (or is the empty term), else by one indicator per level; without an intercept the first factor of the
first term holding one gets indicators. Contrasts are R's defaults (treatment for unordered factors, contr.poly
for ordered ones) unless C(f, contr.sum) and the like name others. Columns of an interaction are products with
the first variable varying fastest, and are named as R names them (`fb:x`, `poly(x, 2)1`, `o.L`,
`I(x > 2)TRUE`).

A ``ModelMatrixSpec`` keeps what the training data fixed (factor levels, poly() and scale() coefficients), so the
same columns can be built on new data for prediction.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd

from .._errors import DataError, FormulaError
from ._parser import BinOp, Call, Name, Node, Num, Paren, Str, Unary, deparse, parse_expression
from ._parser import _number as _deparse_number
from ._terms import Term

__all__ = ["ModelMatrixSpec", "build_model_matrix", "evaluate_numeric", "evaluate"]


@dataclasses.dataclass
class Numeric:
    values: np.ndarray  # (n, k)
    suffixes: list[str] | None = None  # column names after the variable's label; None: one column named by it
    logical: bool = False  # R's logical: a factor with levels FALSE, TRUE in a model matrix


@dataclasses.dataclass
class Factor:
    codes: np.ndarray  # (n,) int64
    levels: list[str]
    ordered: bool = False
    contrasts: str = ""  # set by C(f, ...): "treatment", "sum", "helmert", "poly", "SAS"; "" is R's default


def format_number(value: float) -> str:
    """A number as R's as.character writes it (1, 2.5, 1e+06)."""
    return _deparse_number(Num(float(value)))


def _labels(values: np.ndarray) -> list[str]:
    if values.dtype.kind in "iub":
        return [str(int(v)) for v in values]
    if values.dtype.kind == "f":
        return [format_number(v) for v in values]
    return [str(v) for v in values]


def _column(frame: pd.DataFrame, name: str):
    if name not in frame.columns:
        raise FormulaError(f"the formula uses {name!r}, which is not a column of the data")
    col = frame[name]
    if isinstance(col.dtype, pd.CategoricalDtype):
        categories = col.cat.categories
        return Factor(col.cat.codes.to_numpy().astype(np.int64), _labels(np.asarray(categories)), bool(col.cat.ordered))
    if pd.api.types.is_bool_dtype(col.dtype):
        return Numeric(col.to_numpy(dtype=np.float64)[:, None], logical=True)
    if pd.api.types.is_numeric_dtype(col.dtype):
        return Numeric(col.to_numpy(dtype=np.float64)[:, None])
    codes, uniques = pd.factorize(col.astype(str), sort=True)  # a character column: R's factor(), sorted levels
    return Factor(codes.astype(np.int64), [str(u) for u in uniques])


def _as_factor(value, where: str) -> Factor:
    """R's factor(x): the levels present, in the factor's order or sorted."""
    if isinstance(value, Factor):
        used = np.flatnonzero(np.bincount(value.codes, minlength=len(value.levels)))
        remap = np.full(len(value.levels), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        return dataclasses.replace(value, codes=remap[value.codes], levels=[value.levels[i] for i in used])
    x = _one_column(value, where)
    if value.logical:
        return Factor(x.astype(np.int64), ["FALSE", "TRUE"])
    uniques, codes = np.unique(x, return_inverse=True)
    return Factor(codes.astype(np.int64), _labels(uniques))


def _one_column(value, where: str) -> np.ndarray:
    if isinstance(value, Factor):
        raise FormulaError(f"{where}: arithmetic on a factor is not meaningful (use as.numeric() on a number column)")
    if value.values.shape[1] != 1:
        raise FormulaError(f"{where}: a matrix-valued expression cannot be used inside arithmetic")
    return value.values[:, 0]


_ARITHMETIC: dict[str, Callable] = {
    "+": np.add, "-": np.subtract, "*": np.multiply, "/": np.divide, "^": np.power,
    "%%": np.mod, "%/%": np.floor_divide,
}
_COMPARE: dict[str, Callable] = {
    "<": np.less, ">": np.greater, "<=": np.less_equal, ">=": np.greater_equal, "==": np.equal, "!=": np.not_equal,
    "&": np.logical_and, "&&": np.logical_and, "|": np.logical_or, "||": np.logical_or,
}
_MATH: dict[str, Callable] = {
    "log": np.log, "log10": np.log10, "log2": np.log2, "log1p": np.log1p, "exp": np.exp, "expm1": np.expm1,
    "sqrt": np.sqrt, "abs": np.abs, "sin": np.sin, "cos": np.cos, "tan": np.tan, "floor": np.floor,
    "ceiling": np.ceil, "sign": np.sign, "round": np.round, "trunc": np.trunc, "as.numeric": lambda x: x,
    "as.double": lambda x: x, "as.integer": np.trunc,
}
_CONSTANTS = {"TRUE": 1.0, "T": 1.0, "FALSE": 0.0, "F": 0.0, "pi": np.pi, "Inf": np.inf}


class _Evaluator:
    """Evaluates one R expression on a frame; `state` holds what the training data fixed (poly(), scale())."""

    def __init__(self, frame: pd.DataFrame, state: dict, training: bool, where: str):
        self.frame, self.state, self.training, self.where = frame, state, training, where
        self.n = len(frame)

    def scalar(self, v: float) -> Numeric:
        return Numeric(np.full((self.n, 1), v))

    def __call__(self, node: Node):
        if isinstance(node, Name):
            if node.id in _CONSTANTS and node.id not in self.frame.columns:
                logical = node.id in ("TRUE", "T", "FALSE", "F")
                return Numeric(np.full((self.n, 1), _CONSTANTS[node.id]), logical=logical)
            return _column(self.frame, node.id)
        if isinstance(node, Num):
            return self.scalar(node.value)
        if isinstance(node, Paren):
            return self(node.inner)
        if isinstance(node, Unary):
            value = _one_column(self(node.operand), self.where)
            if node.op == "!":
                return Numeric((value == 0).astype(np.float64)[:, None], logical=True)
            return Numeric((-value if node.op == "-" else value)[:, None])
        if isinstance(node, BinOp):
            return self.binary(node)
        if isinstance(node, Call):
            return self.call(node)
        raise FormulaError(f"{self.where}: cannot evaluate {deparse(node)!r}")

    def binary(self, node: BinOp):
        if node.op in _ARITHMETIC:
            left, right = (_one_column(self(x), self.where) for x in (node.left, node.right))
            with np.errstate(all="ignore"):  # non-finite results are reported with the column's name later
                return Numeric(_ARITHMETIC[node.op](left, right)[:, None])
        if node.op in _COMPARE:
            left, right = self.comparable(node.left), self.comparable(node.right)
            return Numeric(_COMPARE[node.op](left, right).astype(np.float64)[:, None], logical=True)
        raise FormulaError(f"{self.where}: operator {node.op!r} cannot be evaluated in {deparse(node)!r}")

    def comparable(self, node: Node) -> np.ndarray:
        if isinstance(node, Str):
            return np.full(self.n, node.value, dtype=object)
        value = self(node)
        if isinstance(value, Factor):
            return np.asarray(value.levels, dtype=object)[value.codes]
        return _one_column(value, self.where)

    def call(self, node: Call):
        func, args = node.func, node.args
        keywords = dict((k, a) for k, a in zip(node.keywords, args) if k)
        positional = [a for k, a in zip(node.keywords, args) if not k]
        if func == "I" and len(args) == 1:
            return self(args[0])
        if func in _MATH and len(positional) >= 1:
            x = _one_column(self(positional[0]), self.where)
            with np.errstate(all="ignore"):
                out = _MATH[func](x)
                if func == "log" and (len(positional) > 1 or "base" in keywords):
                    out = out / np.log(self.constant(positional[1] if len(positional) > 1 else keywords["base"]))
            return Numeric(np.asarray(out, dtype=np.float64)[:, None])
        if func in ("pmin", "pmax") and len(positional) >= 2:
            cols = [_one_column(self(a), self.where) for a in positional]
            return Numeric((np.minimum if func == "pmin" else np.maximum).reduce(cols)[:, None])
        if func in ("factor", "as.factor", "ordered") and len(args) == 1:
            value = _as_factor(self(args[0]), self.where)
            return dataclasses.replace(value, ordered=value.ordered or func == "ordered")
        if func == "C" and len(positional) == 2:
            return self.contrasts(node, positional)
        if func == "relevel" and (len(positional) == 2 or (len(positional) == 1 and "ref" in keywords)):
            return self.relevel(node, positional[0], positional[1] if len(positional) == 2 else keywords["ref"])
        if func == "poly":
            return self.poly(node, positional, keywords)
        if func == "scale" and len(positional) == 1:
            return self.scale(node, positional[0], keywords)
        raise FormulaError(f"{self.where}: the function {func}() in {deparse(node)!r} is not one jaxmlm evaluates "
                           "(it reads I, log, exp, sqrt, abs, factor, ordered, relevel, C, poly, scale, pmin, pmax "
                           "and R's arithmetic)")

    def contrasts(self, node: Call, args: list) -> Factor:
        """R's C(f, contr): contr.treatment, contr.sum, contr.helmert, contr.poly, contr.SAS, by name, as a string
        or abbreviated (C(f, sum))."""
        spec = args[1].inner if isinstance(args[1], Paren) else args[1]
        name = spec.value if isinstance(spec, Str) else spec.id if isinstance(spec, Name) else ""
        kind = name[len("contr."):] if name.startswith("contr.") else name
        if kind not in _CONTRASTS:
            raise FormulaError(f"{self.where}: unknown contrasts {deparse(args[1])!r} in {deparse(node)!r} (use "
                               "contr.treatment, contr.sum, contr.helmert, contr.poly or contr.SAS)")
        factor = _factor_of(self(args[0]))
        if factor is None:
            raise FormulaError(f"{self.where}: C() needs a factor, but {deparse(args[0])!r} is not one")
        return dataclasses.replace(_as_factor(factor, self.where), contrasts=kind)

    def relevel(self, node: Call, arg: Node, ref: Node) -> Factor:
        """R's relevel(f, ref): the reference level first, the others in their order."""
        factor = _factor_of(self(arg))
        ref_label = ref.value if isinstance(ref, Str) else format_number(self.constant(ref))
        if factor is None or factor.ordered:
            raise FormulaError(f"{self.where}: relevel() needs an unordered factor: {deparse(node)!r}")
        if ref_label not in factor.levels:
            raise FormulaError(f"{self.where}: 'ref' {ref_label!r} in {deparse(node)!r} is not a level of "
                               f"{deparse(arg)!r} (levels: {', '.join(factor.levels[:8])})")
        k = factor.levels.index(ref_label)
        order = [k] + [i for i in range(len(factor.levels)) if i != k]
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        return dataclasses.replace(factor, codes=position[factor.codes], levels=[factor.levels[i] for i in order])

    def constant(self, node: Node) -> float:
        inner = node.inner if isinstance(node, Paren) else node
        if isinstance(inner, Num):
            return inner.value
        if isinstance(inner, Name) and inner.id in _CONSTANTS:
            return _CONSTANTS[inner.id]
        if isinstance(inner, Unary) and inner.op == "-":
            return -self.constant(inner.operand)
        raise FormulaError(f"{self.where}: expected a number, got {deparse(node)!r}")

    def poly(self, node: Call, positional: list, keywords: dict) -> Numeric:
        if not positional:
            raise FormulaError(f"{self.where}: poly() needs a variable: {deparse(node)!r}")
        x = _one_column(self(positional[0]), self.where)
        degree_node = positional[1] if len(positional) > 1 else keywords.get("degree")
        degree = 1 if degree_node is None else int(self.constant(degree_node))
        raw = bool(self.constant(keywords["raw"])) if "raw" in keywords else False
        if degree < 1:
            raise FormulaError(f"{self.where}: poly() needs degree >= 1: {deparse(node)!r}")
        suffixes = [str(j) for j in range(1, degree + 1)]
        if raw:
            return Numeric(np.stack([x**j for j in range(1, degree + 1)], axis=1), suffixes)
        if self.training:
            if len(np.unique(x)) <= degree:
                raise FormulaError(f"{self.where}: 'degree' must be less than the number of unique points in "
                                   f"{deparse(node)!r}")
            self.state[node] = _poly_coefficients(x, degree)
        alpha, norm2 = self.state[node]
        return Numeric(_poly_columns(x, alpha, norm2), suffixes)

    def scale(self, node: Call, arg: Node, keywords: dict) -> Numeric:
        x = _one_column(self(arg), self.where)
        if self.training:
            center = float(np.mean(x)) if self.constant(keywords.get("center", Num(1.0))) else 0.0
            scaled = self.constant(keywords.get("scale", Num(1.0)))
            spread = float(np.sqrt(np.sum((x - center) ** 2) / max(len(x) - 1, 1))) if scaled else 1.0
            self.state[node] = (center, spread)
        center, spread = self.state[node]
        return Numeric(((x - center) / spread)[:, None])


def _poly_coefficients(x: np.ndarray, degree: int) -> tuple[np.ndarray, np.ndarray]:
    """R's poly() coefficients (alpha, norm2) by the three-term recurrence (Stieltjes), as predict() uses them."""
    alpha = np.zeros(degree)
    norm2 = np.ones(degree + 2)  # R's c(1, norm2): norm2[0] = 1, norm2[j + 1] = ‖Z_j‖²
    z_prev, z = np.zeros_like(x), np.ones_like(x)
    norm2[1] = float(len(x))
    for j in range(degree):
        alpha[j] = float(np.sum(x * z**2) / norm2[j + 1])
        z_prev, z = z, (x - alpha[j]) * z - (norm2[j + 1] / norm2[j]) * z_prev
        norm2[j + 2] = float(np.sum(z**2))
    return alpha, norm2


def _poly_columns(x: np.ndarray, alpha: np.ndarray, norm2: np.ndarray) -> np.ndarray:
    degree = len(alpha)
    cols = [np.ones_like(x), x - alpha[0]]
    for j in range(1, degree):
        cols.append((x - alpha[j]) * cols[j] - (norm2[j + 1] / norm2[j]) * cols[j - 1])
    return np.stack(cols[1:], axis=1) / np.sqrt(norm2[2:])


def evaluate(expr: str | Node, frame: pd.DataFrame, where: str, state: dict | None = None, training: bool = True):
    node = parse_expression(expr) if isinstance(expr, str) else expr
    return _Evaluator(frame, {} if state is None else state, training, where)(node)


def evaluate_numeric(expr: str, frame: pd.DataFrame, where: str) -> np.ndarray:
    """Numeric value of an expression such as 'log(expected)' or 'size - incidence'."""
    value = evaluate(expr, frame, where)
    if isinstance(value, Factor) or value.values.shape[1] != 1:
        raise FormulaError(f"{where} {expr!r} must evaluate to one numeric column")
    return value.values[:, 0]


# ---------------------------------------------------------------------------------------------- coding and columns
def _factor_of(value) -> Factor | None:
    if isinstance(value, Factor):
        return value
    if isinstance(value, Numeric) and value.logical:  # R codes a logical as a factor with levels FALSE, TRUE
        return Factor(value.values[:, 0].astype(np.int64), ["FALSE", "TRUE"])
    return None


def _contr_poly(n_levels: int) -> np.ndarray:
    """R's contr.poly(n): orthonormal polynomials in the scores 1..n, without the constant."""
    scores = np.arange(1.0, n_levels + 1)
    alpha, norm2 = _poly_coefficients(scores, n_levels - 1)
    return _poly_columns(scores, alpha, norm2)


_POLY_NAMES = [".L", ".Q", ".C"]


def _contr_sum(levels: list[str]) -> tuple[np.ndarray, list[str]]:
    k = len(levels)
    return np.vstack([np.eye(k - 1), -np.ones((1, k - 1))]), [str(j) for j in range(1, k)]


def _contr_helmert(levels: list[str]) -> tuple[np.ndarray, list[str]]:
    k = len(levels)
    matrix = np.zeros((k, k - 1))
    for j in range(k - 1):
        matrix[: j + 1, j] = -1.0
        matrix[j + 1, j] = j + 1.0
    return matrix, [str(j) for j in range(1, k)]


# R's contrast functions: (levels) → (k × (k-1) matrix, column suffixes as model.matrix names them)
_CONTRASTS: dict[str, Callable] = {
    "treatment": lambda levels: (np.eye(len(levels))[:, 1:], list(levels[1:])),
    "SAS": lambda levels: (np.eye(len(levels))[:, :-1], list(levels[:-1])),
    "sum": _contr_sum,
    "helmert": _contr_helmert,
    "poly": lambda levels: (_contr_poly(len(levels)),
                            [_POLY_NAMES[j] if j < 3 else f"^{j + 1}" for j in range(len(levels) - 1)]),
}


def _coded_columns(value, coding: str, label: str) -> tuple[np.ndarray, list[str]]:
    factor = _factor_of(value)
    if factor is None:
        names = [label] if value.suffixes is None else [label + s for s in value.suffixes]
        return value.values, names
    onehot = np.zeros((len(factor.codes), len(factor.levels)))
    onehot[np.arange(len(factor.codes)), factor.codes] = 1.0
    if coding == "full":
        return onehot, [label + level for level in factor.levels]
    if len(factor.levels) < 2:
        raise FormulaError(f"contrasts can be applied only to factors with 2 or more levels: {label!r} has "
                           f"{len(factor.levels)}")
    kind = factor.contrasts or ("poly" if factor.ordered else "treatment")
    matrix, suffixes = _CONTRASTS[kind](factor.levels)
    return onehot @ matrix, [label + suffix for suffix in suffixes]


def _term_codings(intercept: bool, terms: list[Term], is_factor: dict[str, bool],
                  order: dict[str, int]) -> list[dict[str, str]]:
    """Per term, per factor variable: 'contrasts' or 'full' (R's TermCode, then its no-intercept rule)."""
    codings: list[dict[str, str]] = []
    for k, term in enumerate(terms):
        coding = {}
        for v in term.variables:
            if not is_factor[v]:
                continue
            rest = term.factors - {v}
            margin_present = not rest or any(rest <= earlier.factors for earlier in terms[:k])
            coding[v] = "contrasts" if margin_present else "full"
        codings.append(coding)
    if not intercept:
        for coding in codings:
            if coding:
                first = min(coding, key=order.__getitem__)
                coding[first] = "full"
                break
    return codings


def _interact(blocks: list[tuple[np.ndarray, list[str]]]) -> tuple[np.ndarray, list[str]]:
    """Row-wise products of the variables' columns, the first variable varying fastest (R's order)."""
    values, names = blocks[0]
    for block, block_names in blocks[1:]:
        n = values.shape[0]
        values = (block[:, :, None] * values[:, None, :]).reshape(n, -1)
        names = [f"{a}:{b}" for b in block_names for a in names]
    return values, names


@dataclasses.dataclass
class ModelMatrixSpec:
    """What it takes to build a model matrix again on new data: `get_model_matrix(frame)`, and `term_indices`
    (each term → its columns) for anova."""

    intercept: bool
    terms: list[Term]
    codings: list[dict[str, str]]
    levels: dict[str, list[str]]  # training levels of the factor variables
    state: dict  # poly() and scale() coefficients from the training data
    column_names: list[str]
    term_indices: dict[Term, list[int]]
    where: str

    def _variable(self, label: str, frame: pd.DataFrame, training: bool):
        value = _Evaluator(frame, self.state, training, self.where)(parse_expression(label))
        if label not in self.levels:
            return value
        factor = _factor_of(value)
        if factor is None:
            raise DataError(f"{self.where}: {label!r} was a factor in the data the model was fitted to")
        wanted = pd.Index(self.levels[label])
        codes = wanted.get_indexer(np.asarray(factor.levels, dtype=object))[factor.codes]
        if (codes < 0).any():
            new = sorted({factor.levels[c] for c in factor.codes[codes < 0]})[:5]
            raise DataError(f"{self.where}: factor {label!r} has new level(s) {', '.join(map(repr, new))}")
        return dataclasses.replace(factor, codes=codes.astype(np.int64), levels=list(self.levels[label]))

    def columns(self, frame: pd.DataFrame, training: bool = False) -> np.ndarray:
        n = len(frame)
        variables = {v: self._variable(v, frame, training) for t in self.terms for v in t.variables}
        parts = [np.ones((n, 1))] if self.intercept else []
        for term, coding in zip(self.terms, self.codings):
            values, _ = _interact([_coded_columns(variables[v], coding.get(v, "numeric"), v) for v in term.variables])
            parts.append(values)
        return np.concatenate(parts, axis=1) if parts else np.zeros((n, 0))

    def get_model_matrix(self, frame: pd.DataFrame, output: str = "pandas"):
        values = self.columns(frame)
        if output == "numpy":
            return values
        return pd.DataFrame(values, columns=self.column_names, index=frame.index)


def build_model_matrix(intercept: bool, terms: list[Term], frame: pd.DataFrame,
                       where: str) -> tuple[np.ndarray, ModelMatrixSpec]:
    """R's model.matrix of the terms on the frame: the matrix and the spec that rebuilds it on new data."""
    state: dict = {}
    labels = list(dict.fromkeys(v for t in terms for v in t.variables))
    order = {v: i for i, v in enumerate(labels)}
    values = {}
    for v in labels:
        value = _Evaluator(frame, state, True, where)(parse_expression(v))
        factor = _factor_of(value)
        values[v] = value if factor is None else _as_factor(factor, where)
    levels = {v: values[v].levels for v in labels if isinstance(values[v], Factor)}
    codings = _term_codings(intercept, terms, {v: v in levels for v in labels}, order)
    names, blocks, term_indices = (["(Intercept)"] if intercept else []), [], {}
    if intercept:
        blocks.append(np.ones((len(frame), 1)))
    for term, coding in zip(terms, codings):
        block, block_names = _interact([_coded_columns(values[v], coding.get(v, "numeric"), v) for v in term.variables])
        term_indices[term] = list(range(len(names), len(names) + len(block_names)))
        names += block_names
        blocks.append(block)
    X = np.concatenate(blocks, axis=1) if blocks else np.zeros((len(frame), 0))
    spec = ModelMatrixSpec(intercept, list(terms), codings, levels, state, names, term_indices, where)
    return X, spec
