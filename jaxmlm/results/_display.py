"""Text output laid out as lme4's print(summary(fit))."""

from __future__ import annotations

import math
import textwrap

import numpy as np
import pandas as pd
from scipy import stats

from .._warn import SINGULAR_NOTE

__all__ = ["Summary", "short_text"]


def _significant(x: float, digits: int) -> tuple[int, int]:
    """(significant digits needed ≤ digits, decimal exponent) of x shown to `digits` significant digits with
    trailing zeros dropped, as R's formatReal counts them."""
    if x == 0:
        return 1, 0
    mantissa, exponent = f"{abs(x):.{digits - 1}e}".split("e")
    return len(mantissa.replace(".", "").rstrip("0")) or 1, int(exponent)


def r_format(values, digits: int) -> list[str]:
    """R's format(x, digits = digits) of a numeric vector: one common layout for all elements, fixed notation
    with as many decimals as the element needing most, unless scientific notation is narrower."""
    values = [float(v) for v in values]
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return ["NA" if math.isnan(v) else ("Inf" if v > 0 else "-Inf") for v in values]
    parts = [_significant(v, digits) for v in finite]
    neg = any(v < 0 for v in finite)
    rgt = max(0, max(sig - 1 - e for sig, e in parts))
    # R's formatReal: the integer part's width with its own sign, element by element ("-0.51" next to "106.3")
    left = max((v < 0) + max(1, e + 1) for v, (_, e) in zip(finite, parts))
    width_fixed = left + (rgt + 1 if rgt else 0)
    mant = max(sig for sig, _ in parts)
    width_sci = neg + (mant + 1 if mant > 1 else 1) + (5 if any(abs(e) >= 100 for _, e in parts) else 4)
    if width_fixed <= width_sci:
        fmt = lambda v: f"{v:.{rgt}f}"  # noqa: E731
    else:
        fmt = lambda v: f"{v:.{mant - 1}e}"  # noqa: E731
    return [fmt(v) if math.isfinite(v) else ("NA" if math.isnan(v) else ("Inf" if v > 0 else "-Inf")) for v in values]


def _format_pvalues(pv, digits: int = 3) -> list[str]:
    """R's format.pval(pv, digits = 3) as printCoefmat calls it: below machine epsilon '< 2e-16', p ≥ 1e-4 in one
    fixed layout, smaller ones in another."""
    eps = np.finfo(float).eps
    out = ["NA"] * len(pv)
    ok = [i for i, v in enumerate(pv) if math.isfinite(v)]
    tiny = [i for i in ok if pv[i] < eps]
    rest = [i for i in ok if pv[i] >= eps]
    fixp = [i for i in rest if math.floor(math.log10(pv[i])) >= -4]
    small = [i for i in rest if i not in fixp]
    for group in (fixp, small):
        for i, text in zip(group, r_format([pv[i] for i in group], digits)):
            out[i] = text
    if tiny:
        nc = max((len(out[i]) for i in rest), default=0)
        d = max(1, digits - 2)
        if rest and d > 1 and d + 6 > nc:
            d = max(1, nc - 7)
        sep = "" if (d == 1 and (not rest or nc <= 6)) else " "
        for i in tiny:
            out[i] = "<" + sep + r_format([eps], d)[0]
    return out


def _coefficient_columns(estimate, se, stat, digits: int = 4, df=None):
    """R's printCoefmat for Estimate, Std. Error (and df, lmerTest's third coefficient column) and the t or z
    value: the coefficient columns rounded to max(1, digits − digmin) decimals (digmin: 1 + floor(log10) of their
    smallest and largest magnitude) and formatted together; the statistic rounded to 3 decimals and formatted with
    `digits`. Returns (estimate, se, statistic) texts, and df texts after them when df is given."""
    columns = [estimate, se] + ([df] if df is not None else [])
    coef_se = np.concatenate([np.asarray(c, float) for c in columns])
    acs = np.abs(coef_se[np.isfinite(coef_se) & (coef_se != 0)])
    digmin = 1 + (np.floor(np.log10([acs.min(), acs.max()])) if acs.size else np.zeros(2))
    rounded = np.round(coef_se, int(max(1, *(digits - digmin))))
    texts = r_format(rounded, digits)
    k = len(estimate)
    split = [texts[i * k : (i + 1) * k] for i in range(len(columns))]
    return (split[0], split[1], r_format(np.round(np.asarray(stat, float), 3), digits), *split[2:])


def _table(frame: pd.DataFrame, index_name: str = "") -> str:
    cols = [str(c) for c in frame.columns]
    idx = [str(i) for i in frame.index]
    cells = [[str(v) for v in row] for row in frame.to_numpy()]
    wi = max([len(index_name)] + [len(i) for i in idx])
    widths = [max([len(c)] + [len(r[j]) for r in cells]) for j, c in enumerate(cols)]
    lines = [index_name.ljust(wi) + " " + " ".join(c.rjust(w) for c, w in zip(cols, widths))]
    for i, row in zip(idx, cells):
        lines.append(i.ljust(wi) + " " + " ".join(v.rjust(w) for v, w in zip(row, widths)))
    return "\n".join(lines)


def _method_title(title: str, cls: str, width: int = 80) -> str:
    """lme4's .prt.methTit: 'title ['class']' when it fits the console width, else the title wrapped (continuation
    lines indented by two) and ' [class]' appended, as cat(fill = TRUE) lays it out."""
    if len(title) + 5 + len(cls) <= width:
        return f"{title} ['{cls}']"
    items = textwrap.wrap(title, width=width - 3, subsequent_indent="  ", break_on_hyphens=False) + [" [", cls, "]"]
    lines, current = [], ""
    for item in items:
        if current and len(current) + len(item) > width:
            lines.append(current)
            current = item
        else:
            current += item
    return "\n".join(lines + [current])


def _title(fit, ddf=None) -> str:
    if fit.is_linear:
        how = "REML" if fit.reml else "maximum likelihood "
        if ddf is not None:  # lmerTest's title
            method = "Kenward-Roger's" if str(ddf).lower().startswith("k") else "Satterthwaite's"
            return _method_title(f"Linear mixed model fit by {how}. t-tests use {method} method",
                                 "lmerModLmerTest")
        return _method_title(f"Linear mixed model fit by {how}", "lmerMod")
    approx = "Laplace Approximation" if fit.method == "laplace" else f"Adaptive Gauss-Hermite Quadrature, nAGQ = {fit.extra.get('nagq', '?')}"
    fam = fit.family
    return (
        _method_title(f"Generalized linear mixed model fit by maximum likelihood ({approx})", "glmerMod") + "\n"
        f" Family: {fam.name}  ( {fam.link} )"
    )


def _named_vector(names: list[str], texts: list[str]) -> str:
    """R's print of a named vector (one line of names over one of values): every field right-justified to the
    widest name or value, each followed by a space."""
    width = max(len(x) for x in list(names) + list(texts))
    return "\n".join("".join(x.rjust(width) + " " for x in row) for row in (names, texts))


def _fit_criteria(fit) -> str:
    estimated = ""
    if fit.extra.get("solver") == "iterative":  # the log-determinant is a stochastic estimate: say how good
        estimated = (f"\n(iterative solver: log-determinant estimated, standard error "
                     f"{fit.extra['objective_se']:.2g}, {fit.extra['n_probes']} probes)")
    if fit.reml:
        return f"REML criterion at convergence: {fit.objective:.1f}" + estimated
    df_resid = fit.nobs - fit.n_params
    # lme4's .prt.aictab: format(round(c(AIC, BIC, logLik, deviance), 1)) jointly, df.resid on its own
    values = r_format(np.round([fit.aic, fit.bic, fit.loglik, fit.deviance], 1), 7)
    return _named_vector(["AIC", "BIC", "logLik", "deviance", "df.resid"], values + [str(df_resid)]) + estimated


def _scaled_residuals(res: np.ndarray) -> str:
    """lme4's .prt.resids: quantiles, zapsmall(·, 5), printed with digits = 4."""
    q = np.quantile(res, [0, 0.25, 0.5, 0.75, 1.0])
    mx = np.max(np.abs(q))
    q = np.round(q, max(0, 5 - int(np.ceil(np.log10(mx)))) if mx > 0 else 5)
    return _named_vector(["Min", "1Q", "Median", "3Q", "Max"], r_format(q, 4))


def _random_effects(fit, variance: bool = True) -> str:
    """lme4's random-effects block: summary's Variance and Std.Dev. columns, or print()'s Std.Dev. alone."""
    vc = fit.varcorr()
    lines = []
    max_q = max(t.q for t in fit.design.terms)
    header = [" Groups", "Name", "Variance", "Std.Dev."] + (["Corr"] if max_q > 1 else [])
    rows, variances_all, sds_all = [], [], []
    for grp, sub in vc.groupby("grp", sort=False):
        variances = sub[sub["var2"].isna()]
        names = list(variances["var1"]) if grp != "Residual" else [""]
        cors = sub[sub["var2"].notna()]
        # lme4's formatVC: format(round(r, 2), nsmall = 2) over the group's correlation matrix (1.00 included)
        corr_text = {}
        for _, m in cors.iterrows():
            corr_text[(m["var1"], m["var2"])] = f"{round(float(m['sdcor']), 2):.2f}"
        corr_width = max([4] + [len(t) for t in corr_text.values()])
        for i, (_, r) in enumerate(variances.iterrows()):
            cells = [(" " + grp) if i == 0 else "", "" if grp == "Residual" else str(r["var1"]), None, None]
            variances_all.append(float(r["vcov"]))
            sds_all.append(float(r["sdcor"]))
            if max_q > 1:
                corr = [corr_text.get((names[j], names[i]), "").rjust(corr_width) for j in range(i)]
                cells.append(" ".join(corr))
            rows.append(cells)
    # lme4's formatVC: format(values, digits = 4) per column (one layout for the column, padded to one width)
    for column, values in ((2, variances_all), (3, sds_all)):
        texts = r_format(values, 4)
        width = max(len(t) for t in texts)
        for row, text in zip(rows, texts):
            row[column] = text.rjust(width)
    if not variance:
        header, rows = header[:2] + header[3:], [r[:2] + r[3:] for r in rows]
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    lines.append(" ".join(h.ljust(w) for h, w in zip(header, widths)))
    for r in rows:
        lines.append(" ".join(c.ljust(w) for c, w in zip(r, widths)))
    groups = "; ".join(f"{g}, {n}" for g, n in fit.ngroups.items())  # as lme4 prints it
    lines.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    if fit.dispersion is not None:  # a dispersion family's parameter, as glmmTMB prints it (with its SE)
        fam = fit.family
        se = fit.dispersion_se
        se_text = f" (SE {r_format([se], 4)[0]})" if se is not None and np.isfinite(se) else " (fixed)"
        lines.append(f"\nDispersion parameter for {fam.name} family ({fam.dispersion_name}): "
                     f"{r_format([fit.dispersion], 4)[0]}{se_text}")
    return "Random effects:\n" + "\n".join(lines)


def _stars(p: float) -> str:
    return "***" if p < 0.001 else "**" if p < 0.01 else "*" if p < 0.05 else "." if p < 0.1 else ""


def _common_width(*columns):
    """The columns printCoefmat formats together (Estimate, Std. Error, lmerTest's df), padded to one width."""
    width = max(len(t) for column in columns for t in column)
    return [[t.rjust(width) for t in column] for column in columns]


def _with_stars(cols: dict, p, index) -> str:
    stars = [_stars(v) for v in p]
    width = max(len(x) for x in stars)
    cols[""] = [x.ljust(width) for x in stars]  # R pads the stars on the right
    text = _table(pd.DataFrame(cols, index=index))
    return text + "\n---\nSignif. codes:  0 '***' 0.001 '**' 0.01 '*' 0.05 '.' 0.1 ' ' 1"


def _fixed_effects(fit, ddf=None) -> str:
    fe, se = fit.fixef, fit.se
    stat = fe / se
    if ddf is not None:  # lmerTest's table: Estimate, Std. Error, df, t value, Pr(>|t|) (kept columns only)
        tests = fit.t_tests(ddf=ddf)
        est_text, se_text, stat_text, df_text = _coefficient_columns(
            tests["Estimate"].to_numpy(), tests["Std. Error"].to_numpy(), tests["t value"].to_numpy(),
            df=tests["df"].to_numpy())
        p = tests["Pr(>|t|)"].to_numpy()
        est_text, se_text, df_text = _common_width(est_text, se_text, df_text)
        cols = {"Estimate": est_text, "Std. Error": se_text, "df": df_text, "t value": stat_text,
                "Pr(>|t|)": _format_pvalues(list(p))}
        return "Fixed effects:\n" + _with_stars(cols, p, tests.index)
    est_text, se_text, stat_text = _coefficient_columns(fe.to_numpy(), se.to_numpy(), stat.to_numpy())
    cols = dict(zip(["Estimate", "Std. Error"], _common_width(est_text, se_text)))
    if fit.is_linear:
        cols["t value"] = stat_text
        frame = pd.DataFrame(cols, index=fe.index)
        text = _table(frame)
    else:
        p = 2 * stats.norm.sf(np.abs(stat.to_numpy()))
        cols["z value"] = stat_text
        cols["Pr(>|z|)"] = _format_pvalues(list(p))
        text = _with_stars(cols, p, fe.index)
    dropped = [n for n in fit.design.x_names_all if n not in fit.design.x_names]
    if dropped:
        text = f"fit warning: fixed-effect model matrix is rank deficient; dropped {', '.join(dropped)}\n" + text
    return "Fixed effects:\n" + text


def _abbreviate(name: str, width: int = 6) -> str:
    """R's abbreviate(): drop lower-case vowels from the right (never the first letter), then truncate."""
    if name == "(Intercept)":
        return "(Intr)"
    chars = list(name)
    i = len(chars) - 1
    while len(chars) > width and i > 0:
        if chars[i] in "aeiou":
            del chars[i]
        i -= 1
    return "".join(chars[:width])


def _correlation(fit) -> str:
    v = fit.vcov.to_numpy()
    if v.shape[0] < 2:
        return ""
    sd = np.sqrt(np.diag(v))
    cor = v / np.outer(sd, sd)
    names = list(fit.vcov.index)
    abbrev = [_abbreviate(n) for n in names]
    rows = []
    for i in range(1, len(names)):
        rows.append([f"{cor[i, j]:.3f}" for j in range(i)] + [""] * (len(names) - 1 - i))
    frame = pd.DataFrame(rows, index=names[1:], columns=abbrev[:-1])
    return "Correlation of Fixed Effects:\n" + _table(frame)


class Summary:
    """lme4-style summary; print() it or use str()."""

    def __init__(self, fit, ddf=None):
        self.fit = fit
        self.ddf = ddf  # "satterthwaite": lmerTest's title and fixed-effects table

    def __str__(self) -> str:
        fit = self.fit
        d = fit.design
        res = fit.residuals(type="pearson", scaled=True).to_numpy()
        resid = _scaled_residuals(res)
        parts = [
            _title(fit, self.ddf),
            f"Formula: {d.formula.text}",
            f"   Data: {fit.model.data_name}" if fit.model.data_name else None,
            "",
            _fit_criteria(fit),
            "",
            "Scaled residuals: \n" + resid,
            "",
            _random_effects(fit),
            "",
            _fixed_effects(fit, self.ddf),
        ]
        if d.n_dropped:
            parts.insert(3, f"   ({d.n_dropped} observation{'s' if d.n_dropped > 1 else ''} deleted due to missingness)")
        corr = _correlation(fit)
        if corr:
            parts += ["", corr]
        return "\n".join(p for p in parts + _notes(fit) if p is not None)

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle):  # IPython
        p.text(str(self))


def _notes(fit) -> list[str]:
    """The optimizer's line and its notes (singular fit, convergence, messages), as lme4's .prt.warn; none if
    there is nothing to say."""
    notes = []
    if fit.is_singular:
        notes.append(SINGULAR_NOTE)
    if not fit.converged:
        notes.append(f"convergence: the optimizer stopped with max|grad| = {fit.optinfo.grad_max:.3g}")
    notes.extend(fit.optinfo.messages)
    if not notes:
        return []
    method = getattr(fit.optinfo, "method", None) or "L-BFGS"
    return [f"optimizer ({method}) convergence code: 0 (OK)" if fit.converged else "", *notes]


def _named_vector_lines(names: list[str], texts: list[str], gap: int = 2, width: int = 80) -> str:
    """R's print of a named character vector (quote = FALSE, print.gap = gap): every field right-justified to
    the widest name or value and followed by the gap, as many fields to a line as fit in `width`."""
    field = max(len(x) for x in list(names) + list(texts))
    per_line = max(1, width // (field + gap))
    lines = []
    for start in range(0, len(names), per_line):
        for row in (names[start : start + per_line], texts[start : start + per_line]):
            lines.append("".join(x.rjust(field) + " " * gap for x in row))
    return "\n".join(lines)


def _print_criteria(fit) -> str:
    """print.merMod's .prt.aictab(·, 4): the REML criterion, or AIC, BIC, logLik, deviance and df.resid."""
    if fit.reml:
        return f"REML criterion at convergence: {r_format([round(fit.objective, 4)], 7)[0]}"
    values = r_format(np.round([fit.aic, fit.bic, fit.loglik, fit.deviance], 4), 7)
    return _named_vector(["AIC", "BIC", "logLik", "deviance", "df.resid"], values + [str(fit.nobs - fit.n_params)])


def _print_fixed(fit) -> str:
    kept = fit.fixef[fit.design.x_names]
    if kept.empty:
        return "No fixed effect coefficients"
    text = "Fixed Effects:\n" + _named_vector_lines(list(kept.index), r_format(kept.to_numpy(), 4))
    dropped = [n for n in fit.design.x_names_all if n not in fit.design.x_names]
    if dropped:
        text += f"\nfit warnings:\nfixed-effect model matrix is rank deficient so dropping {len(dropped)} " + (
            "columns / coefficients" if len(dropped) > 1 else "column / coefficient")
    return text


def short_text(fit) -> str:
    """What print(fit) shows in R (print.merMod): title, formula, data, the fit criteria, the random effects'
    standard deviations and correlations, the numbers of observations and groups, and the fixed effects."""
    data_name = fit.model.data_name
    parts = [
        _title(fit),
        f"Formula: {fit.design.formula.text}",
        f"   Data: {data_name}" if data_name else None,
        _print_criteria(fit),
        _random_effects(fit, variance=False),
        _print_fixed(fit),
    ]
    return "\n".join(p for p in parts + _notes(fit) if p is not None)
