"""Parametric bootstrap: simulate from the fitted model, refit every sample in one batch, percentile intervals.

As lme4's bootMer(fit, FUN, nsim, type = "parametric"): new random effects and residuals for each sample
(`fit.simulate`), each refitted by the fit's own method, starting from the fit's θ as lme4's refit() does. A
family with a dispersion parameter d simulates with the fitted d and refits d too (each sample's own estimate,
started from the fitted d), so its percentile interval comes with the others'.

Samples are simulated and refitted in blocks sized to the machine's memory (`_memory`; `block_size=` overrides),
from one random generator, so the draws do not depend on the blocking and memory does not grow with n beyond the
table of estimates (n × parameters).

A model with cs() / ar1() terms refits each sample on the structures' parameters ψ (`fit_batch`), and reports the
same rows as every other model: the sds and correlations of each term's covariance σ² T(ψ) T(ψ)ᵀ.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._config import float64_methods
from .._memory import chunk_size as memory_chunk_size
from ._confint import dispersion_name, interval_columns, parameter_names, require_laplace, variance_parameters

__all__ = ["BootstrapResult", "bootstrap"]


@float64_methods
@dataclasses.dataclass
class BootstrapResult:
    """Bootstrap draws: one row per sample, one column per parameter (lme4's confint names)."""

    estimate: pd.Series  # the parameters of the fitted model
    draws: pd.DataFrame  # all samples; `converged` says which refits converged
    converged: np.ndarray
    batch: object  # the BatchResult of the refits

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals from the converged refits (lme4's confint(method = 'boot', boot.type = 'perc'))."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level}")
        ok = self.draws[self.converged]
        alpha = (1.0 - level) / 2.0
        q = ok.quantile([alpha, 1.0 - alpha]).T
        q.columns = interval_columns(level)
        return q

    def __repr__(self) -> str:
        return f"BootstrapResult({len(self.draws)} samples, {int(self.converged.sum())} converged)"


_BLOCK_MULTIPLE = 128  # blocks of a multiple of fit_batch's largest vectorized chunk: its programs are reused


def _bytes_per_sample(model) -> float:
    """A sample's simulated response and the copies fit_batch makes of it (its chunk, a GLMM's prior weights)."""
    return 8.0 * model.design.n * 6


def _concatenate(batches, n: int):
    """One BatchResult of the refits of every block, in sample order."""
    from ..fit._batch import BatchResult

    first = batches[0]
    arrays = {f: np.concatenate([getattr(b, f) for b in batches])
              for f in ("theta", "beta", "se_beta", "sigma", "objective", "loglik", "converged", "nobs", "n_iter")}
    if first.dispersion is not None:
        arrays.update({f: np.concatenate([getattr(b, f) for b in batches]) for f in ("dispersion", "dispersion_se")})
    if first.psi is not None:
        arrays["psi"] = np.concatenate([b.psi for b in batches])
    return BatchResult(model=first.model, method=first.method, columns=pd.RangeIndex(n), **arrays,
                       seconds=float(sum(b.seconds for b in batches)))


def bootstrap(fit, n: int = 500, seed: int = 0, *, chunk_size=None, block_size=None,
              progress=None) -> BootstrapResult:
    """n parametric bootstrap samples of fit, refitted (see the module docstring). chunk_size: responses per
    vectorized step of the refits (`fit_batch`); block_size: samples simulated and refitted at a time (default
    from the available memory)."""
    model = fit.model
    require_laplace(fit, "bootstrap()")
    if isinstance(n, bool) or int(n) != n or n < 2:
        raise ValueError(f"n (the number of bootstrap samples) must be an integer ≥ 2, got {n!r}")
    n = int(n)
    block = memory_chunk_size(n, _bytes_per_sample(model), override=block_size, name="block_size")
    if block_size is None and block < n:
        block = max(_BLOCK_MULTIPLE, block // _BLOCK_MULTIPLE * _BLOCK_MULTIPLE)
    rng = np.random.default_rng(seed)
    # refits start from the fit, as lme4's refit(); a model with cs() / ar1() terms searches ψ, so starts there
    start = None if fit.is_singular else fit.extra.get("psi", fit.theta)
    if dispersion_name(model) is not None:
        start = {"theta": start, "dispersion": fit.dispersion}
    batches = []
    for first in range(0, n, block):
        # a binomial model's samples as proportions on its trials, as fit_batch takes them
        sims = fit._simulate_draws(rng, min(block, n - first))
        batches.append(model.fit_batch(sims, method=fit.method, start=start, chunk_size=chunk_size,
                                       progress=progress, nagq=fit.extra.get("nagq")))
    batch = _concatenate(batches, n)
    names = parameter_names(model)
    sigma = batch.sigma if model.is_gaussian else None  # other families' random effects are on η's scale
    # a dispersion family's d sits where a linear model's σ does (confint's row order)
    d_draws, d_est = ([batch.dispersion[:, None]], [[fit.dispersion]]) if dispersion_name(model) else ([], [])
    values = np.column_stack([variance_parameters(batch.theta, sigma, model.qs), *d_draws, batch.beta])
    draws = pd.DataFrame(values, columns=names, index=pd.RangeIndex(n, name="sample"))
    est = np.concatenate([variance_parameters(fit.theta, fit.sigma, model.qs)[0], *d_est,
                          fit.fixef[model.design.x_names].to_numpy()])
    return BootstrapResult(estimate=pd.Series(est, index=names), draws=draws, converged=batch.converged.copy(),
                           batch=batch)
