"""Power by simulation, as simr's powerSim and powerCurve, for linear mixed models and binomial or Poisson GLMMs.

`power_sim` draws n_sim responses from the model at given parameters (a fit's β, θ, σ, with `effect` replacing
fixed effects), refits all of them in one vmapped batch (`Model.fit_batch`), tests one fixed-effect term in every
simulation and reports the share of rejections at level alpha with its Clopper–Pearson 95% interval. Tests:

- "lrt" (default): likelihood ratio of ML (GLMM: Laplace, or the fit's nAGQ) fits with and without the term, χ² on the term's number of columns
  (simr's "lr" method, its default for terms of several columns);
- "t": for a one-column term, the Wald t of the REML fit (for a GLMM the Wald z of summary(), normal), β̂/se, against Student's t with Satterthwaite's df of
  the model fitted to the data given (a fit) or to the first simulation (a Model): one df for all simulations,
  exact in balanced designs, an approximation otherwise (simr's "t" uses the residual df, "kr" refits each).

`power_curve` repeats power_sim on designs grown as simr's extend(): along="g" takes the first b levels of
grouping factor g, making new ones (copies of the data's levels' rows, labelled "<level>_<copy>") when b exceeds
the levels there are; within="g" takes the first b rows of every level of g, repeating its rows cyclically
when b exceeds them. The responses in the data are not used: every response is simulated.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .._config import float64
from .._errors import DataError

__all__ = ["power_sim", "power_curve", "PowerResult", "simulate_responses"]


@dataclasses.dataclass(frozen=True)
class PowerResult:
    """Power of one test: rejections among the simulations that were fitted."""

    term: str
    test: str
    alpha: float
    power: float
    lower: float  # Clopper–Pearson 95% interval
    upper: float
    successes: int
    n_sim: int  # simulations whose fits converged (the others are not counted)
    n_failed: int
    p_values: np.ndarray  # one per simulation (NaN for failed fits)
    nobs: int

    def __repr__(self) -> str:
        return (f"Power for predictor {self.term!r} ({self.test} test, alpha = {self.alpha}), "
                f"(95% confidence interval):\n  {100 * self.power:.2f}% ({100 * self.lower:.2f}, "
                f"{100 * self.upper:.2f})\nBased on {self.n_sim} simulations ({self.n_failed} failed fits), "
                f"{self.successes} rejections; {self.nobs} observations")


def clopper_pearson(successes: int, trials: int, level: float = 0.95) -> tuple[float, float]:
    tail = (1 - level) / 2
    lower = stats.beta.ppf(tail, successes, trials - successes + 1) if successes > 0 else 0.0
    upper = stats.beta.ppf(1 - tail, successes + 1, trials - successes) if successes < trials else 1.0
    return float(lower), float(upper)


def _parameters(fit_or_model, params):
    """(model, fit or None, β (kept columns), θ, σ)."""
    from ..fit._model import Model
    from ..results._results import MixedModelResult

    if isinstance(fit_or_model, MixedModelResult):
        fit, model = fit_or_model, fit_or_model.model
        beta, theta, sigma = fit._beta.copy(), fit.theta, fit.sigma
    elif isinstance(fit_or_model, Model):
        fit, model = None, fit_or_model
        needed = {"beta", "theta", "sigma"} if model.is_gaussian else {"beta", "theta"}
        if not isinstance(params, dict) or not needed <= set(params):
            raise ValueError("power_sim of a Model needs params=dict(beta=..., theta=..., sigma=...) to simulate "
                             "from (no sigma for a binomial or Poisson model)")
        beta = _beta_vector(model, params["beta"])
        theta = np.asarray(params["theta"], dtype=np.float64)
        sigma = float(params["sigma"]) if model.is_gaussian else None
        if theta.shape != (model.n_theta,):
            raise ValueError(f"params['theta'] must have {model.n_theta} entries (lme4's layout), got {theta.shape}")
    else:
        raise TypeError(f"power_sim takes a fitted linear mixed model or a Model, got {type(fit_or_model).__name__}")
    if not model.is_gaussian and getattr(model.family, "name", "") not in ("binomial", "poisson"):
        raise DataError("power_sim simulates linear mixed models and binomial or Poisson GLMMs; "
                        f"the {model.family.name} family is not supported yet")
    return model, fit, beta, theta, sigma


def _beta_vector(model, values) -> np.ndarray:
    names = model.design.x_names
    if isinstance(values, dict):
        unknown = [k for k in values if k not in names]
        if unknown:
            raise DataError(f"no fixed-effect column {unknown[0]!r}; the columns are {', '.join(names)}")
        missing = [n for n in names if n not in values]
        if missing:
            raise DataError(f"fixed effect {missing[0]!r} has no value to simulate from")
        return np.array([float(values[n]) for n in names])
    beta = np.asarray(values, dtype=np.float64)
    if beta.shape != (len(names),):
        raise ValueError(f"beta must have {len(names)} entries ({', '.join(names)}), got shape {beta.shape}")
    return beta


@float64
def simulate_responses(model, beta, theta, sigma, n_sim: int, seed: int) -> np.ndarray:
    """n × n_sim responses: η = Xβ + Σ_k z_k·b_k[level] + offset with b_k = s T_k u (u standard normal; s = σ for a
    linear model, 1 for a GLMM), then y = η + σ ε/√w, or the family's draws at μ = g⁻¹(η) (binomial responses as
    proportions of the trials, the form fit_batch takes)."""
    from ..core._covariance import theta_to_matrices

    d = model.design
    scale = 1.0 if sigma is None else sigma
    keys = jax.random.split(jax.random.key(seed), len(d.terms) + 1)
    eta = jnp.asarray(d.X @ beta + d.offset)[:, None]
    for key, t, T in zip(keys[1:], d.terms, theta_to_matrices(theta, model.qs)):
        u = jax.random.normal(key, (n_sim, t.n_levels, t.q), dtype=jnp.float64)
        b = scale * u @ jnp.asarray(T).T  # (n_sim, levels, q)
        eta = eta + jnp.einsum("nq,snq->ns", jnp.asarray(t.z), b[:, jnp.asarray(t.codes), :])
    if sigma is None:  # the family's draws, simulations along the leading axis so that trials broadcast
        mu = np.asarray(model.family.linkinv(eta)).T
        rng = np.random.default_rng(seed)
        return np.asarray(model.family.simulate(rng, mu, d.weights, d.extra), dtype=np.float64).T
    noise = jax.random.normal(keys[0], (d.n, n_sim), dtype=jnp.float64)
    return np.asarray(eta + sigma * noise / jnp.sqrt(jnp.asarray(d.weights))[:, None])


def _term(model, term: str):
    """(label, the term's text, kept column indices) of the fixed-effect term to test."""
    from ._anova import _fixed_terms

    d = model.design
    kept = {n: j for j, n in enumerate(d.x_names)}
    terms = {label: (text, [kept[c] for c in cols if c in kept]) for label, text, _, cols in _fixed_terms(d)}
    if term not in terms:
        raise DataError(f"power_sim: {term!r} is not a fixed-effect term of {model.formula!r}; its terms are "
                        f"{', '.join(map(repr, terms)) or 'none'}")
    text, cols = terms[term]
    return term, text, cols


def _p_values(model, fit, Y, term, text, cols, test):
    how = dict(method="ml") if model.is_gaussian else dict(method="laplace")
    if fit is not None and fit.method == "agq":
        how = dict(method="agq", nagq=int(fit.extra["nagq"]))
    if test == "lrt":
        full = model.fit_batch(Y, progress=False, **how)
        reduced = model.update(f". ~ . - {text}").fit_batch(Y, progress=False, **how)
        chisq = np.maximum(0.0, 2.0 * (full.loglik - reduced.loglik))
        ok = full.converged & reduced.converged
        return np.where(ok, stats.chi2.sf(chisq, len(cols)), np.nan)
    if len(cols) != 1:
        raise DataError(f"the t test is for a term of one column; {term!r} has {len(cols)} (use test='lrt')")
    if not model.is_gaussian:  # a GLMM's Wald z, as summary()
        batch = model.fit_batch(Y, progress=False, **how)
        z_value = batch.beta[:, cols[0]] / batch.se_beta[:, cols[0]]
        return np.where(batch.converged, 2.0 * stats.norm.sf(np.abs(z_value)), np.nan)
    batch = model.fit_batch(Y, method="reml", progress=False)
    if fit is None or not fit.reml:
        fit = _fit_to(model, Y[:, 0])
    df = float(fit.t_tests().iloc[cols[0]]["df"])
    t_value = batch.beta[:, cols[0]] / batch.se_beta[:, cols[0]]
    return np.where(batch.converged, 2.0 * stats.t.sf(np.abs(t_value), df), np.nan)


def _fit_to(model, y):
    """The model's REML fit to one response (for the t test's df)."""
    from ..fit._model import Model

    frame = _data(model).copy()
    frame[model.design.response_name] = pd.Series(y, index=model.design.row_index)
    source = {k: v for k, v in model._source.items() if k != "data"}
    return Model(model.formula, frame, **source).fit(method="reml", warn=False)


def _data(model) -> pd.DataFrame:
    from ..formula._design import to_pandas

    return to_pandas(model._source["data"])


@float64
def power_sim(fit_or_model, test: str, n_sim: int = 1000, alpha: float = 0.05, seed: int = 0, effect=None,
              method: str = "lrt", params=None, responses=None) -> PowerResult:
    """Power of the test of fixed-effect term `test` (its label as anova() prints it) at level alpha, from n_sim
    responses simulated at the fit's parameters (or `params` for a Model), `effect` ({column: value}, or a number
    for a one-column term) replacing fixed effects; method "lrt" or "t" (see the module's text). `responses`
    (rows × simulations, e.g. lme4's simulate()) are tested instead of simulating (n_sim, seed and effect unused)."""
    if method not in ("lrt", "t"):
        raise ValueError(f"method must be 'lrt' (likelihood ratio) or 't' (Wald t), got {method!r}")
    if int(n_sim) != n_sim or n_sim < 1:
        raise ValueError(f"n_sim must be a positive integer, got {n_sim!r}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha!r}")
    model, fit, beta, theta, sigma = _parameters(fit_or_model, params)
    label, text, cols = _term(model, test)
    if effect is not None:
        if not isinstance(effect, dict):
            if len(cols) != 1:
                raise DataError(f"effect= as a number sets a one-column term; give {{column: value}} for {label!r}")
            effect = {model.design.x_names[cols[0]]: float(effect)}
        beta = _beta_vector(model, {**dict(zip(model.design.x_names, beta)), **effect})
    if responses is None:
        Y = simulate_responses(model, beta, theta, sigma, int(n_sim), seed)
    else:
        Y = np.asarray(responses, dtype=np.float64)
        if Y.ndim != 2 or Y.shape[0] != model.design.n:
            raise DataError(f"responses must be a matrix of {model.design.n} rows (one per row of the model's "
                            f"data) by simulations, got shape {Y.shape}")
        n_sim = Y.shape[1]
    p = _p_values(model, fit, Y, label, text, cols, method)  # Satterthwaite df depend on θ and σ, not on β
    done = np.isfinite(p)
    k, n = int(np.sum(p[done] < alpha)), int(done.sum())
    lower, upper = clopper_pearson(k, n)
    wald = "Wald t" if model.is_gaussian else "Wald z"
    return PowerResult(term=label, test="likelihood ratio" if method == "lrt" else wald, alpha=alpha,
                       power=k / n if n else float("nan"), lower=lower, upper=upper, successes=k, n_sim=n,
                       n_failed=int(n_sim) - n, p_values=p, nobs=model.design.n)


def extend_data(frame: pd.DataFrame, along: str | None, within: str | None, size: int) -> pd.DataFrame:
    """simr's extend(): the first `size` levels of `along` (new copies beyond the data's), or the first `size`
    rows of every level of `within` (cycling through its rows)."""
    if (along is None) == (within is None):
        raise ValueError("give one of along= (more groups) or within= (more rows per group)")
    column = along if along is not None else within
    if column not in frame.columns:
        raise DataError(f"power_curve: no column {column!r} in the data")
    if int(size) != size or size < 1:
        raise ValueError(f"breaks must be positive integers, got {size!r}")
    groups = frame.groupby(frame[column].astype(str), sort=False, observed=True)
    labels = list(groups.groups)
    if along is not None:
        pieces = []
        for k in range(int(size)):
            piece = groups.get_group(labels[k % len(labels)]).copy()
            copy = k // len(labels)
            piece[column] = labels[k % len(labels)] if copy == 0 else f"{labels[k % len(labels)]}_{copy + 1}"
            pieces.append(piece)
    else:
        pieces = [rows.iloc[np.arange(int(size)) % len(rows)] for _, rows in groups]
    out = pd.concat(pieces, ignore_index=True)
    out[column] = out[column].astype(str)
    return out


@float64
def power_curve(fit, test: str, along: str | None = None, within: str | None = None, breaks=(), n_sim: int = 1000,
                alpha: float = 0.05, seed: int = 0, effect=None, method: str = "lrt") -> pd.DataFrame:
    """simr's powerCurve: power_sim on the fit's design grown to each size in `breaks` (levels of `along`, or
    rows per level of `within`), at the fit's parameters. One row per break: break, nobs, power, lower, upper,
    successes, n_sim."""
    from ..fit._model import Model
    from ..results._results import MixedModelResult

    if not isinstance(fit, MixedModelResult):
        raise TypeError(f"power_curve takes a fitted linear mixed model, got {type(fit).__name__}")
    breaks = list(breaks)
    if not breaks:
        raise ValueError("breaks must list the sizes to compute power at")
    frame = _data(fit.model)
    params = dict(beta=dict(zip(fit.design.x_names, fit._beta)), theta=fit.theta, sigma=fit.sigma)
    source = {k: v for k, v in fit.model._source.items() if k not in ("data", "weights", "offset")}
    if fit.model._source.get("weights") is not None or fit.model._source.get("offset") is not None:
        raise DataError("power_curve grows the data frame; give weights and offsets as formula terms or columns "
                        "it can copy (not supported here yet)")
    rows = []
    for i, size in enumerate(breaks):
        model = Model(fit.model.formula, extend_data(frame, along, within, size), **source)
        res = power_sim(model, test, n_sim=n_sim, alpha=alpha, seed=seed + i, effect=effect, method=method,
                        params=params)
        rows.append(dict(**{"break": size}, nobs=res.nobs, power=res.power, lower=res.lower, upper=res.upper,
                         successes=res.successes, n_sim=res.n_sim))
    return pd.DataFrame(rows)
