"""Model comparison, as lme4's anova() and drop1(): likelihood-ratio tests between models fitted to the same rows,
the sequential F table of one model's fixed-effect terms, and single-term deletions.

Several models: REML fits are refitted by ML first (lme4's default refit = TRUE; REML criteria of models with
different fixed effects are not comparable), the models are ordered by their number of parameters, and each is
tested against the one before it: χ² = 2 max(0, ΔlogLik) on Δnpar degrees of freedom.

One model: lme4's "Analysis of Variance Table". With R_X the upper Cholesky factor of the fixed effects' block
(R_Xᵀ R_X = σ² vcov(β)⁻¹ for a linear model; the PIRLS factor at the optimum for a GLMM, σ = 1), the sequential
sum of squares of a term is Σ (R_X β)ⱼ² over its columns, and F = (SS / npar) / σ².
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from .._config import float64
from .._errors import DataError
from .._warn import user_stacklevel

__all__ = ["anova", "drop1", "AnovaTable"]


class AnovaTable(pd.DataFrame):
    """A DataFrame that prints as R prints an anova table: its heading, then every column (blank for NA)."""

    @property
    def _constructor(self):
        return pd.DataFrame  # what is computed from the table is a plain frame

    def __repr__(self) -> str:
        heading = self.attrs.get("heading", "")
        blank_or = lambda fmt: lambda v: "" if pd.isna(v) else fmt(v)  # noqa: E731
        formatters = {"Df": blank_or(lambda v: str(int(v))), "npar": blank_or(lambda v: str(int(v))),
                      "Pr(>Chisq)": blank_or(lambda v: f"{v:.4g}"), "Pr(Chi)": blank_or(lambda v: f"{v:.4g}")}
        text = self.to_string(na_rep="", formatters={k: f for k, f in formatters.items() if k in self.columns})
        return (heading + "\n" if heading else "") + text

    __str__ = __repr__

_LRT_COLUMNS = ["npar", "AIC", "BIC", "logLik", "deviance", "Chisq", "Df", "Pr(>Chisq)"]


@float64
def anova(*fits, names=None, refit: bool = True, type=None, ddf: str = "satterthwaite") -> AnovaTable:
    """lme4's anova(): with one fit, the sequential F table of its fixed-effect terms; with several, their
    likelihood-ratio tests (ordered by number of parameters; REML fits refitted by ML unless refit=False).

    >>> m0 = jm.lmer("Reaction ~ Days + (1 | Subject)", sleepstudy)
    >>> m1 = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    >>> jm.anova(m0, m1, names=["m0", "m1"])   # columns npar, AIC, BIC, logLik, deviance, Chisq, Df, Pr(>Chisq)

    The table is a DataFrame (`AnovaTable`) that prints as R's, with the lines R prints above it
    (`attrs["heading"]`)."""
    from ..results._results import MixedModelResult

    if not fits:
        raise ValueError("anova() needs at least one fitted model")
    for i, fit in enumerate(fits):
        if not isinstance(fit, MixedModelResult):
            raise TypeError(f"anova() compares fitted models (MixedModelResult); argument {i + 1} is a "
                            f"{fit.__class__.__name__}")
    if type is not None:
        if len(fits) > 1:
            raise ValueError("type= asks for the F tests of one model's terms (lmerTest's anova(fit, type = 3)); "
                             "a comparison of several models is a likelihood-ratio table")
        from ._anova_lmertest import lmertest_table

        return lmertest_table(fits[0], type, ddf)
    if len(fits) == 1:
        if names is not None:
            raise ValueError("names= labels the models of a comparison; anova() of one model tabulates its terms")
        return _f_table(fits[0])
    names = [f"model {i + 1}" for i in range(len(fits))] if names is None else [str(n) for n in names]
    if len(names) != len(fits) or len(set(names)) != len(names):
        raise ValueError(f"names= must give {len(fits)} distinct labels, one per model; got {names}")
    return _lrt_table(list(fits), names, bool(refit))


def _lrt_table(fits, names, refit: bool) -> pd.DataFrame:
    _check_same_data(fits, names)
    heading = []
    reml = [f.reml for f in fits]
    if refit and any(reml):
        fits = [f.model.fit(method="ml") if f.reml else f for f in fits]
        heading.append("refitting model(s) with ML (instead of REML)")
    elif any(reml) and not all(reml):
        raise DataError("anova() with refit=False cannot compare REML criteria with ML log-likelihoods; "
                        "refit the REML fits by ML (refit=True, the default)")
    elif all(reml) and len({tuple(f.design.x_names) for f in fits}) > 1:
        warnings.warn("the REML criteria of models with different fixed effects are not comparable; "
                      "anova(..., refit=True) compares their ML fits", UserWarning, stacklevel=user_stacklevel())
    for n, f in zip(names, fits):
        if not np.isfinite(f.loglik):
            raise DataError(f"the log-likelihood of {n} is not finite ({f.loglik}), so no likelihood-ratio test "
                            "applies (non-integer Poisson counts?)")
    order = sorted(range(len(fits)), key=lambda i: fits[i].n_params)  # stable: ties keep the given order
    fits, names = [fits[i] for i in order], [names[i] for i in order]
    heading += ["Models:"] + [f"{n}: {f.design.formula.text}" for n, f in zip(names, fits)]
    npar = np.array([f.n_params for f in fits], dtype=np.int64)
    loglik = np.array([f.loglik for f in fits])
    chisq = np.r_[np.nan, 2.0 * np.maximum(0.0, np.diff(loglik))]
    df = np.r_[np.nan, np.diff(npar)].astype(np.float64)
    # R's pchisq on 0 degrees of freedom is a point mass at 0: upper tail 0
    p = np.r_[np.nan, [stats.chi2.sf(c, d) if d > 0 else 0.0 for c, d in zip(chisq[1:], df[1:])]]
    table = AnovaTable(
        {"npar": npar, "AIC": [f.aic for f in fits], "BIC": [f.bic for f in fits], "logLik": loglik,
         "deviance": -2.0 * loglik, "Chisq": chisq, "Df": df, "Pr(>Chisq)": p},
        index=pd.Index(names), columns=_LRT_COLUMNS)
    table.attrs["heading"] = "\n".join(heading)
    return table


def _check_same_data(fits, names) -> None:
    """lme4 refuses models fitted to different numbers of rows; comparing likelihoods also needs the same
    response (and prior weights) on those rows."""
    nobs = [f.nobs for f in fits]
    if len(set(nobs)) > 1:
        listed = ", ".join(f"{n}: {k}" for n, k in zip(names, nobs))
        raise DataError(f"models were not all fitted to the same size of dataset ({listed} rows); "
                        "likelihoods of different rows are not comparable")
    first = fits[0].design
    for n, f in zip(names[1:], fits[1:]):
        if not (np.array_equal(f.design.y, first.y) and np.array_equal(f.design.weights, first.weights)):
            raise DataError(f"{n} was fitted to a different response (or weights) than {names[0]} "
                            f"({f.design.response_name!r} against {first.response_name!r}); their likelihoods "
                            "are not comparable")


def _f_table(fit) -> pd.DataFrame:
    d = fit.design
    # R_Xᵀ R_X: σ² vcov⁻¹ for a linear model; for a GLMM the PIRLS factor's (vcov itself may come from the Hessian)
    inv_crossprod = fit.extra.get("vcov_rx") if not fit.is_linear else fit._vcov / fit.sigma**2
    if inv_crossprod is None:
        raise ValueError("this fit does not hold the fixed effects' factor that the F table needs")
    if not np.all(np.isfinite(inv_crossprod)):
        raise FloatingPointError("the fixed effects' factor R_X at the optimum is not finite, so the F table cannot "
                                 "be formed; check the fit's convergence messages (fit.optinfo)")
    R_x = np.linalg.cholesky(np.linalg.inv(np.asarray(inv_crossprod))).T
    effects = (R_x @ fit._beta) ** 2
    sigma2 = 1.0 if fit.sigma is None else fit.sigma**2
    kept = {name: j for j, name in enumerate(d.x_names)}
    rows, npar, sum_sq = [], [], []
    for label, _, _, columns in _fixed_terms(d):
        cols = [kept[c] for c in columns if c in kept]  # columns dropped for rank deficiency do not count
        if not cols:
            continue
        rows.append(label)
        npar.append(len(cols))
        sum_sq.append(float(np.sum(effects[cols])))
    npar_arr, ss = np.asarray(npar, dtype=np.int64), np.asarray(sum_sq)
    mean_sq = ss / np.maximum(npar_arr, 1)
    table = AnovaTable({"npar": npar_arr, "Sum Sq": ss, "Mean Sq": mean_sq, "F value": mean_sq / sigma2},
                         index=pd.Index(rows))
    table.attrs["heading"] = "Analysis of Variance Table"
    return table


def _fixed_terms(design) -> list[tuple[str, str, set, list[str]]]:
    """Per fixed-effect term but the intercept, in formula order: (label as the user wrote it, formulaic's term
    text, its variables, its model-matrix column names in lme4's spelling)."""
    from ..formula._design import _user_spelling

    names = design.x_names_all
    return [(_user_spelling(str(t), design.formula.renames), str(t), {str(f) for f in t.factors},
             [names[i] for i in idx])
            for t, idx in design.x_spec.term_indices.items() if str(t) != "1"]


@float64
def drop1(fit, test: str | None = None) -> AnovaTable:
    """lme4's drop1(): the model refitted without each fixed-effect term that marginality lets go (a main effect
    stays while an interaction holds it), by ML (a REML fit is refitted by ML first, as lme4). Columns npar (the
    parameters dropped) and AIC; test="Chisq" adds the likelihood-ratio statistic LRT and Pr(Chi)."""
    if test not in (None, "Chisq"):
        raise ValueError(f"test must be None or 'Chisq' (likelihood-ratio), got {test!r}")
    base = fit.model.fit(method="ml", warn=False) if fit.reml else fit
    refit = dict(method=base.method, warn=False)
    if base.method == "agq":
        refit["nagq"] = int(base.extra["nagq"])
    rows, npar, aic, loglik = ["<none>"], [np.nan], [base.aic], [base.loglik]
    for label, term in _droppable_terms(base.design):
        reduced = base.model.update(f". ~ . - {term}").fit(**refit)
        if reduced.nobs != base.nobs:
            raise DataError(f"dropping {label} changes the rows in use ({base.nobs} to {reduced.nobs}): remove the "
                            "rows with missing values first")
        rows.append(label)
        npar.append(base.n_params - reduced.n_params)
        aic.append(reduced.aic)
        loglik.append(reduced.loglik)
    table = AnovaTable({"npar": np.asarray(npar, dtype=float), "AIC": aic}, index=pd.Index(rows))
    if test == "Chisq":
        lrt = np.r_[np.nan, 2.0 * np.maximum(0.0, loglik[0] - np.asarray(loglik[1:]))]
        table["LRT"] = lrt
        table["Pr(Chi)"] = np.r_[np.nan, [stats.chi2.sf(x, k) for x, k in zip(lrt[1:], npar[1:])]]
    table.attrs["heading"] = f"Single term deletions\n\nModel:\n{base.design.formula.text}"
    return table


def _droppable_terms(design) -> list[tuple[str, str]]:
    """(label, the term's text) of the terms no other term contains (R's drop.scope)."""
    terms = _fixed_terms(design)
    return [(label, text) for label, text, variables, _ in terms
            if not any(variables < other for _, _, other, _ in terms)]
