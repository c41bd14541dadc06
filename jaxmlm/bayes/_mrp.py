"""Multilevel regression and post-stratification (MRP): cell predictions weighted up to population groups.

For each cell (row of the post-stratification frame) the model predicts the response-scale mean μ_c; within each
``by`` group the estimate is Σ N_c μ_c / Σ N_c over its cells. A grouping level that was not in the data (a state
nobody was polled in) gets a zero random effect in the plug-in estimate (lme4's ``allow.new.levels``) and, in
every draw, an effect drawn from N(0, Σ_k) with that draw's covariance of the term (rstanarm's treatment of new
levels), so its interval carries the between-level variation.

One compiled program (`_kernel`) does the work for every source of draws:
* a ``Posterior``: every draw gives one set of group estimates; ``estimate`` is their mean, ``sd`` their standard
  deviation, ``lower``/``upper`` their quantiles.
* a point fit: ``estimate`` is the plug-in value at (β̂, b̂); the interval comes from joint draws of (β, b) from
  their approximate posterior given θ̂ (`_joint`: the blocked factor of the fit, Fisher weights for a GLMM), and,
  with ``theta_uncertainty=True``, over θ's normal approximation too (each draw's new levels at its own θ).
* a ``fit_batch`` result (linear, binomial, Poisson): the same per outcome, one block of rows per outcome.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._config import float64
from .._errors import DataError, JaxmlmError
from ..core._covariance import theta_to_matrices
from ..formula._design import to_pandas
from . import _cells, _joint, _kernel

__all__ = ["poststratify"]

_REQUIRED = object()
_POINT_FAMILIES = ("gaussian", "binomial", "poisson")


def _check_options(draws, level, by):
    if by is _REQUIRED:
        raise JaxmlmError("poststratify needs by=: the frame's columns to group the estimates by, e.g. "
                          "by=['state'] (by=[] gives one overall estimate)")
    if isinstance(by, str):
        by = [by]
    by = list(by or [])
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level!r}")
    if not isinstance(draws, (int, np.integer)) or draws < 2:
        raise ValueError(f"draws must be an integer ≥ 2, got {draws!r}")
    return by


@dataclasses.dataclass
class _Draws:
    """Draw tables flat over outcomes × draws: beta (M·S × p), b[k] (M·S × l_k × q_k), and per draw the factor
    F_k (M·S × q_k × q_k, F Fᵀ the term's covariance) from which a level the data never saw is drawn."""

    model: object
    beta: np.ndarray
    b: list
    factors: list
    n_outcomes: int = 1
    outcomes: list | None = None
    has_mode: bool = False  # whether the first draw of each outcome is the plug-in mode (no new-level noise)


def _posterior_factors(post) -> list:
    out = []
    for sd, cor in zip(post._sd, post._cor):
        sd = sd.reshape((-1, sd.shape[-1]))
        if cor is None:
            out.append(sd[:, :, None] * np.eye(sd.shape[-1])[None])
        else:
            chol = np.linalg.cholesky(cor.reshape((-1,) + cor.shape[-2:]))
            out.append(sd[:, :, None] * chol)
    return out


def _scaled_factors(theta: np.ndarray, qs, scale: np.ndarray) -> list:
    """scale × T_k per draw from θ per draw (rows of theta), lme4's layout (in NumPy: a few numbers per draw, for
    which eager JAX would compile a program per operation)."""
    scale = np.asarray(scale, dtype=np.float64)[:, None, None]
    return [T * scale for T in theta_to_matrices(np.atleast_2d(theta), qs)]


def _source_draws(source, draws: int, seed: int, theta_uncertainty: bool, responses) -> _Draws:
    from ..fit._batch import BatchResult
    from ._posterior import Posterior

    if isinstance(source, Posterior):
        c, s = source.chains, source.n_draws
        b = [x.reshape((c * s,) + x.shape[2:]) for x in source._b]
        return _Draws(source.model, source._beta.reshape(c * s, -1), b, _posterior_factors(source))
    if isinstance(source, BatchResult):
        if theta_uncertainty:
            raise JaxmlmError("theta_uncertainty=True is for a single fit; a fit_batch result's draws are at each "
                              "outcome's θ̂")
        return _batch_source(source, draws, seed, responses)
    if hasattr(source, "model") and hasattr(source, "condvar"):
        family = getattr(source.model.family, "name", "gaussian")
        if family not in _POINT_FAMILIES:
            raise JaxmlmError(f"poststratify from a point fit supports the gaussian, binomial and poisson families, "
                              f"not {family}; sample the model (model.sample()) and post-stratify the posterior")
        sims, mode = _joint.point_fit_draws(source, draws, seed, theta_uncertainty)
        beta = np.concatenate([np.asarray(mode["beta"])[None], np.asarray(sims["beta"])])
        b = [np.concatenate([np.asarray(m)[None], np.asarray(x)]) for m, x in zip(mode["b"], sims["b"])]
        scale = 1.0 if source.sigma is None else source.sigma
        if "theta" in sims:  # a new level's effect drawn with each draw's own θ (and σ)
            thetas = np.vstack([source._theta[None], np.asarray(sims["theta"])])
            scales = np.r_[scale, np.asarray(sims.get("sigma", np.ones(draws)))]
            factors = _scaled_factors(thetas, source.model.qs, scales)
        else:
            factors = _scaled_factors(source._theta, source.model.qs, np.array([scale]))
            factors = [np.broadcast_to(f, (draws + 1,) + f.shape[1:]) for f in factors]
        return _Draws(source.model, beta, b, factors, has_mode=True)
    raise TypeError(f"poststratify needs a fitted model, a batch result or a Posterior, got {type(source).__name__}")


def _batch_source(batch, draws: int, seed: int, responses) -> _Draws:
    model = batch.model
    family = getattr(model.family, "name", "gaussian")
    if family not in _POINT_FAMILIES:
        raise JaxmlmError(f"poststratify of a fit_batch result supports the gaussian, binomial and poisson "
                          f"families, not {family}")
    responses = getattr(batch, "responses", None) if responses is None else responses
    if responses is None:
        raise JaxmlmError("poststratify of a fit_batch result needs responses=: the Y the batch was fitted to")
    Y = np.asarray(responses if isinstance(responses, np.ndarray) else pd.DataFrame(responses).to_numpy(),
                   dtype=np.float64)
    Y = Y[:, None] if Y.ndim == 1 else Y
    if Y.shape != (model.design.n, len(batch)):
        raise JaxmlmError(f"responses must be {model.design.n} × {len(batch)} (the batch's Y), got {Y.shape}")
    if model.is_gaussian:
        sims, mode = _joint.batch_draws(batch, Y, draws, seed)
        sigma = np.asarray(batch.sigma, dtype=np.float64)
    else:
        sims, mode = _joint.glmm_batch_draws(batch, Y, draws, seed)
        sigma = np.ones(len(batch))
    m = len(batch)
    # outcome-major, the mode first in each outcome's block
    def join(mk, xk):
        return np.concatenate([np.asarray(mk)[:, None], np.swapaxes(np.asarray(xk), 0, 1)], axis=1)

    def flat(a):
        return a.reshape((m * a.shape[1],) + a.shape[2:])

    beta = flat(join(mode["beta"], sims["beta"]))
    b = [flat(join(mk, xk)) for mk, xk in zip(mode["b"], sims["b"])]
    factors = _scaled_factors(np.repeat(batch.theta, draws + 1, axis=0), model.qs,
                              np.repeat(sigma, draws + 1))
    return _Draws(model, beta, b, factors, m, list(batch.columns), True)


def _with_new_levels(source: _Draws, n_new, seed: int) -> list:
    """b tables with rows for the frame's unseen levels: drawn from N(0, F Fᵀ) per draw (the effect of a level
    with no data), zero in the plug-in columns."""
    rng = np.random.default_rng([seed, 1])
    out = []
    for b, F, k in zip(source.b, source.factors, n_new):
        if not k:
            out.append(b)
            continue
        z = rng.standard_normal((b.shape[0], k, b.shape[2]))
        new = np.einsum("sij,snj->sni", F, z)
        if source.has_mode:
            new.reshape((source.n_outcomes, -1) + new.shape[1:])[:, 0] = 0.0
        out.append(np.concatenate([b, new], axis=1))
    return out


def _table(keys, by, estimate, sd, lower, upper, outcomes):
    """The result frame: (outcome,) by columns, estimate, sd, lower, upper; outcome-major rows."""
    n_groups = len(keys)
    base = keys if by else pd.DataFrame(index=range(n_groups))
    parts = []
    for j in range(estimate.shape[0]):
        part = base.copy()
        if outcomes is not None:
            part.insert(0, "outcome", outcomes[j])
        part["estimate"], part["sd"], part["lower"], part["upper"] = estimate[j], sd[j], lower[j], upper[j]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


@float64
def poststratify(fit_or_posterior, frame, weight: str = "N", by=_REQUIRED, *, draws: int = 1000, seed: int = 0,
                 level: float = 0.95, theta_uncertainty: bool = False, responses=None, chunk_cells: int | None = None,
                 chunk_draws: int | None = None) -> pd.DataFrame:
    """Post-stratified estimates per ``by`` group: DataFrame with the ``by`` columns, estimate, sd, lower, upper.

    ``frame`` holds one row per population cell with every predictor of the model and the cell count ``weight``.
    ``by`` (required) lists the columns whose combinations are the groups (``["state"]``, ``["state", "age"]``);
    ``[]`` gives one overall row. For a point fit, ``draws`` joint draws of (β, b) (seeded) give sd and the
    interval; ``theta_uncertainty=True`` also draws θ from its normal approximation (the Hessian of the profiled
    deviance at θ̂; for a GLMM, of the Laplace deviance in (θ, β) profiled over β) and (β, b) given each θ. A
    ``Posterior`` uses its own draws. A ``fit_batch`` result (linear, binomial or Poisson) gives one block of rows
    per outcome (an ``outcome`` column first); pass the batch's Y as ``responses``. chunk_cells / chunk_draws
    override the chunk sizes (default: from the free memory).
    """
    frame = to_pandas(frame)
    by = _check_options(draws, level, by)
    weights = _cells.check_weights(frame, weight)
    if len(frame) == 0:
        raise DataError("the post-stratification frame has no rows")
    group, keys, totals = _cells.group_codes(frame, weights, by)
    source = _source_draws(fit_or_posterior, int(draws), seed, theta_uncertainty, responses)
    model = source.model
    cells = _cells.cell_arrays(model, frame, group, weights)
    b = _with_new_levels(source, cells.n_new, seed)
    q_total = sum(t.q for t in model.design.terms)
    size_c, size_d = _kernel.chunk_sizes(len(frame), source.beta.shape[0], q_total, chunk_cells, chunk_draws)
    sims = _kernel.group_draws(cells, source.beta, b, model.family, totals, size_c, size_d)
    sims = sims.reshape(len(keys), source.n_outcomes, -1).transpose(1, 0, 2)  # outcomes × groups × draws
    if source.has_mode:
        estimate, sims = sims[..., 0], sims[..., 1:]
    else:
        estimate = sims.mean(axis=-1)
    sd, lower, upper = _kernel.summarize(np.asarray(sims), float(level))
    return _table(keys, by, np.asarray(estimate), sd, lower, upper, source.outcomes)
