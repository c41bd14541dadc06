"""lmerTest's F tables of one linear model's fixed-effect terms: anova(fit, type = 3) and anova(fit, type = 1), with
Satterthwaite's or Kenward–Roger's denominator df.

Each term gets a hypothesis matrix L (rows: the term's columns of X) and is tested by H0: Lβ = 0 (see
_satterthwaite.f_test and _kenward_roger.kr_f_test). The matrices are lmerTest 3.1-3's:

- Type I (sequential): the rows of the unit upper-triangular factor of XᵀX = L D Lᵀ (Doolittle) for the term's
  columns, i.e. the Cholesky factor R with each row divided by its diagonal.
- Type III (SAS's, for treatment coding): with X̄ the overparameterized design (an intercept, then per term the
  products of every level's indicator and the numeric variables), L₀ = (X⁺X̄)ᵀ expresses X̄'s columns in X's
  coefficients; a term's columns are residualized (least squares over X̄'s columns) on those of every term that
  contains it (all its variables and more, the same numeric ones), highest order first; its hypothesis is then
  read at X's own columns and rows that are zero are dropped. A factor's main effect in the presence of its
  interaction with a numeric covariate is therefore tested at the covariate's zero, as in SAS and lmerTest.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .._errors import DataError
from ._anova import AnovaTable, _fixed_terms
from ._satterthwaite import ddf_method

__all__ = ["lmertest_table", "type1_hypotheses", "type3_hypotheses"]

_COLUMNS = ["Sum Sq", "Mean Sq", "NumDF", "DenDF", "F value", "Pr(>F)"]


def lmertest_table(fit, type, ddf) -> AnovaTable:
    """lmerTest's anova(fit, type = 1 | 3, ddf = ...) for a linear mixed model."""
    number = {"1": 1, "i": 1, "3": 3, "iii": 3}.get(str(type).lower())
    if number is None:
        raise ValueError(f"type must be 1 or 3 (lmerTest's Type I or Type III tests), got {type!r}")
    method = ddf_method(ddf)
    if not fit.is_linear:
        raise DataError("F tests with Satterthwaite or Kenward-Roger df are for linear mixed models; compare a "
                        "GLMM's terms by likelihood ratio (drop1(test='Chisq') or anova(m0, m1))")
    hypotheses = type1_hypotheses(fit.design) if number == 1 else type3_hypotheses(fit)
    if method == "satterthwaite":
        from ._satterthwaite import f_test as test
    else:
        from ._kenward_roger import kr_f_test as test
    rows = {label: test(fit, L) for label, L in hypotheses.items()}
    table = AnovaTable(pd.DataFrame.from_dict(rows, orient="index", columns=_COLUMNS))
    table["NumDF"] = table["NumDF"].astype(np.int64)
    name = "Satterthwaite's" if method == "satterthwaite" else "Kenward-Roger's"
    table.attrs["heading"] = f"Type {'I' * number} Analysis of Variance Table with {name} method"
    return table


def _term_columns(design) -> dict[str, tuple[list[int], str, set]]:
    """Per term (label): its kept columns of X, the term's text, its variables."""
    kept = {name: j for j, name in enumerate(design.x_names)}
    out = {}
    for label, text, variables, columns in _fixed_terms(design):
        cols = [kept[c] for c in columns if c in kept]
        if cols:
            out[label] = (cols, text, variables)
    return out


def type1_hypotheses(design) -> dict[str, np.ndarray]:
    X = design.X
    R = np.linalg.cholesky(X.T @ X).T
    U = R / np.diag(R)[:, None]
    U[np.abs(U) < 1e-6] = 0.0  # lmerTest's doolittle() zeroes entries under 1e-6
    return {label: U[cols] for label, (cols, _, _) in _term_columns(design).items()}


def _zapsmall(M: np.ndarray, digits: int = 7) -> np.ndarray:
    """R's zapsmall(): round to `digits` significant digits of the largest entry."""
    largest = np.max(np.abs(M)) if M.size else 0.0
    if largest == 0:
        return M
    return np.round(M, max(0, digits - int(np.ceil(np.log10(largest)))))


def type3_hypotheses(fit) -> dict[str, np.ndarray]:
    d = fit.design
    terms = _term_columns(d)
    if d.p <= 1 or len(terms) <= 1:
        return type1_hypotheses(d)
    numerics = {label: {v for v in variables if v not in d.x_spec.levels} for label, (_, _, variables) in terms.items()}
    full_X, full_terms, intercept = _overparameterized(fit, terms)
    L = _zapsmall(np.linalg.lstsq(d.X, full_X, rcond=None)[0].T)  # (columns of X̄) × (columns of X)
    labels = list(terms)
    contains = {a: [b for b in labels if terms[a][2] < terms[b][2] and numerics[a] == numerics[b]]
                for a in labels}
    for label in sorted(labels, key=lambda t: -len(terms[t][2])):  # highest order first, ties in formula order
        if contains[label]:
            basis = L[:, [j for b in contains[label] for j in terms[b][0]]]
            target = L[:, terms[label][0]]
            L[:, terms[label][0]] = _zapsmall(target - basis @ np.linalg.lstsq(basis, target, rcond=None)[0])
    at_x = _columns_of_x_in(full_X, full_terms, terms, d, intercept)
    L = L[at_x]  # rows read at X's own columns: (p × p)
    out = {}
    for label in labels:
        H = L[:, terms[label][0]].T
        out[label] = H[np.abs(H).sum(axis=1) > 1e-8]
    return out


def _overparameterized(fit, terms):
    """X̄ on the model's rows: the intercept (if X has one), then per term the products of every level's indicator
    of its factors and the values of its numeric variables. Returns (X̄, the term of each column, intercept?)."""
    from ..formula._design import to_pandas
    from ..formula._modelmatrix import _coded_columns, _interact

    d = fit.design
    spec = d.x_spec
    frame = to_pandas(fit.model._source["data"]).loc[d.row_index]
    intercept = "(Intercept)" in d.x_names
    columns, owner = ([np.ones(d.n)], [None]) if intercept else ([], [])
    by_text = {str(t): t for t in spec.terms}
    for label, (_, text, _) in terms.items():
        term = by_text[text]
        parts = [_coded_columns(spec._variable(v, frame, False), "full" if v in spec.levels else "numeric", v)
                 for v in term.variables]
        block, _ = _interact(parts)
        columns.extend(np.asarray(block, dtype=np.float64).T)
        owner.extend([label] * block.shape[1])
    full_X = np.column_stack(columns)
    if np.any(np.all(full_X == 0, axis=0)):
        raise DataError("the data have empty cells of a factor interaction; Type III hypotheses are not defined "
                        "for them here (lmerTest warns 'Missing cells'): use type=1 or compare models")
    return full_X, owner, intercept


def _columns_of_x_in(full_X, full_terms, terms, design, intercept) -> list[int]:
    """For each column of X, the column of X̄ equal to it (the same term's indicator product under treatment
    coding); an error for other codings."""
    owner_of = {j: label for label, (cols, _, _) in terms.items() for j in cols}
    out = []
    for j in range(design.p):
        if design.x_names[j] == "(Intercept)":
            out.append(0)
            continue
        candidates = [i for i, t in enumerate(full_terms) if t == owner_of.get(j)]
        match = [i for i in candidates if np.allclose(full_X[:, i], design.X[:, j], rtol=0, atol=1e-10)]
        if not match:
            raise DataError(f"Type III hypotheses are built for treatment contrasts; column "
                            f"{design.x_names[j]!r} is coded otherwise")
        out.append(match[0])
    return out
