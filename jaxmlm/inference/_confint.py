"""Confidence intervals as lme4's confint.merMod: Wald, profile likelihood, parametric bootstrap.

Every method reports the same rows, named as lme4 names them: per random-effects term its standard deviations
and correlations in θ's order (`sd_(Intercept)|Subject`, `cor_Days.(Intercept)|Subject`, `sd_Days|Subject`), then
`sigma` (Gaussian models) or a dispersion family's estimated d (named as `fit.dispersion` reports it: `theta` for
NB2, `phi` for NB1 and beta, `sigma` for Gamma and inverse Gaussian), then the fixed effects; columns are the
lower and upper quantile in percent ("2.5 %", "97.5 %" at level 0.95).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..core._covariance import theta_to_matrices

__all__ = ["parameter_names", "variance_parameters", "confint", "interval_columns", "dispersion_name"]


def _tril_positions(q: int) -> list[tuple[int, int]]:
    return [(r, c) for c in range(q) for r in range(c, q)]


def variance_parameter_names(model) -> list[str]:
    """sd_/cor_ rows per term in θ's order, then 'sigma' for Gaussian models (lme4's .sig01, .sig02, ... names)."""
    d = model.design
    names = []
    for grp, term in zip(d.group_names, d.terms):
        cols = term.column_names
        for r, c in _tril_positions(term.q):
            names.append(f"sd_{cols[r]}|{grp}" if r == c else f"cor_{cols[r]}.{cols[c]}|{grp}")
    if model.is_gaussian:
        names.append("sigma")
    elif dispersion_name(model) is not None:
        names.append(dispersion_name(model))
    return names


def dispersion_name(model) -> str | None:
    """The row name of a dispersion family's d when the fit estimates it (None: no such family, or d held fixed)."""
    fam = model.family
    if getattr(fam, "has_dispersion", False) and fam.dispersion is None:
        return fam.dispersion_name
    return None


def require_laplace(fit, what: str) -> None:
    """Profiles and bootstrap refits use the proper Laplace likelihood (the batch fits and the profiles' inner
    searches have no lme4 variant): a fit with approximation="lme4" gets a clear error rather than intervals of
    another objective."""
    if fit.extra.get("approximation") == "lme4":
        raise ValueError(f"{what} profiles or refits the proper Laplace likelihood, and this fit used "
                         "approximation='lme4': refit with approximation='laplace', or use confint(method='wald')")


def parameter_names(model) -> list[str]:
    return variance_parameter_names(model) + list(model.design.x_names)


def variance_parameters(theta, sigma, qs) -> np.ndarray:
    """(…, k) θ and (…,) σ → (…, k [+1]) standard deviations and correlations in θ's order, then σ.

    sd and cor of a term come from its covariance σ² T Tᵀ (σ = 1 when sigma is None)."""
    theta = np.atleast_2d(np.asarray(theta, dtype=np.float64))
    scale = np.ones(theta.shape[0]) if sigma is None else np.atleast_1d(np.asarray(sigma, dtype=np.float64))
    out = []
    for i, th in enumerate(theta):
        row = []
        for T in theta_to_matrices(th, qs):
            cov = scale[i] ** 2 * T @ T.T
            sd = np.sqrt(np.clip(np.diag(cov), 0.0, None))
            for r, c in _tril_positions(T.shape[0]):
                if r == c:
                    row.append(sd[r])
                else:
                    den = sd[r] * sd[c]
                    row.append(cov[r, c] / den if den > 0 else np.nan)
        if sigma is not None:
            row.append(scale[i])
        out.append(row)
    return np.asarray(out)


def interval_columns(level: float) -> list[str]:
    """lme4's column labels: '2.5 %' and '97.5 %' at level 0.95 (R's format(..., digits = 3) of the percent)."""
    alpha = (1.0 - level) / 2.0
    return [f"{100 * p:.3g} %" for p in (alpha, 1.0 - alpha)]


def _check_level(level: float) -> float:
    level = float(level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    return level


def wald_intervals(fit, level: float) -> pd.DataFrame:
    """β ± z·se for the fixed effects; NaN for the variance parameters, as lme4's method = 'Wald'; a dispersion
    family's d gets exp(log d ± z·se(log d)), the Wald interval on the scale it is estimated on (glmmTMB's)."""
    z = stats.norm.ppf((1.0 + level) / 2.0)
    names = variance_parameter_names(fit.model)
    d = fit.design
    beta = fit.fixef[d.x_names].to_numpy()
    se = fit.se[d.x_names].to_numpy()
    lower, upper = np.full(len(names), np.nan), np.full(len(names), np.nan)
    if dispersion_name(fit.model) is not None and fit.dispersion_se is not None:
        se_log = fit.dispersion_se / fit.dispersion
        lower[-1], upper[-1] = fit.dispersion * np.exp(-z * se_log), fit.dispersion * np.exp(z * se_log)
    lower = np.concatenate([lower, beta - z * se])
    upper = np.concatenate([upper, beta + z * se])
    return pd.DataFrame(np.column_stack([lower, upper]), index=names + list(d.x_names), columns=interval_columns(level))


def _select(frame: pd.DataFrame, parm, fixed) -> pd.DataFrame:
    """The rows parm names; 'theta_' and 'beta_' as lme4's (fixed: the fixed effects' names)."""
    if parm is None:
        return frame
    if isinstance(parm, str):
        is_var = [n not in fixed for n in frame.index]
        if parm in ("theta_", "beta_"):
            return frame.loc[[n for n, v in zip(frame.index, is_var) if v == (parm == "theta_")]]
        parm = [parm]
    unknown = [p for p in parm if p not in frame.index]
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown}; available: {list(frame.index)}")
    return frame.loc[list(parm)]


def confint(fit, method: str = "profile", level: float = 0.95, parm=None, *, nsim: int = 500, seed: int = 0,
            **kwargs) -> pd.DataFrame:
    """Intervals for every parameter (see module docstring). method: 'profile' (lme4's default), 'wald', 'boot'.

    parm: a name, a list of names, 'theta_' (variance parameters) or 'beta_' (fixed effects). 'boot' refits nsim
    parametric bootstrap samples (`fit.bootstrap`) and reports percentile intervals."""
    level = _check_level(level)
    method = method.lower()
    fixed = list(fit.design.x_names)
    if method == "wald":
        frame = wald_intervals(fit, level)
    elif method == "profile":
        from ._profile import profile_intervals

        frame = profile_intervals(fit, level, names=None if parm is None else _select(wald_intervals(fit, level), parm, fixed).index, **kwargs)
    elif method == "boot":
        frame = fit.bootstrap(nsim, seed=seed, **kwargs).confint(level)
    else:
        raise ValueError(f"method must be 'profile', 'wald' or 'boot', got {method!r}")
    return _select(frame, parm, fixed)
