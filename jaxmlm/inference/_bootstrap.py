"""Parametric bootstrap: simulate from the fitted model, refit every sample in one batch, percentile intervals.

As lme4's bootMer(fit, FUN, nsim, type = "parametric"): new random effects and residuals for each sample
(`fit.simulate`), each refitted by the fit's own method, starting from the fit's θ as lme4's refit() does.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._config import float64_methods
from ._confint import interval_columns, parameter_names, variance_parameters

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


def bootstrap(fit, n: int = 500, seed: int = 0, *, chunk_size=None, progress=None) -> BootstrapResult:
    model = fit.model
    if int(n) != n or n < 2:
        raise ValueError(f"n (the number of bootstrap samples) must be an integer ≥ 2, got {n!r}")
    sims = fit.simulate(int(n), seed=seed)  # a binomial model's as proportions on its trials, as fit_batch takes
    start = None if fit.is_singular else fit.theta
    batch = model.fit_batch(sims.to_numpy(), method=fit.method, start=start, chunk_size=chunk_size,
                            progress=progress, nagq=fit.extra.get("nagq"))
    names = parameter_names(model)
    sigma = batch.sigma if model.is_gaussian else None  # binomial and Poisson models have no σ
    values = np.column_stack([variance_parameters(batch.theta, sigma, model.qs), batch.beta])
    draws = pd.DataFrame(values, columns=names, index=pd.RangeIndex(int(n), name="sample"))
    est = np.concatenate([variance_parameters(fit.theta, fit.sigma, model.qs)[0],
                          fit.fixef[model.design.x_names].to_numpy()])
    return BootstrapResult(estimate=pd.Series(est, index=names), draws=draws, converged=batch.converged.copy(),
                           batch=batch)
