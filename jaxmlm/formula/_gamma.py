"""The Gamma family (glmer's Gamma(), glmmTMB's Gamma): shape k = 1/σ², Var(y) = σ²μ², y > 0. `dispersion` is σ,
R's sigma(fit) (glmmTMB's coefficient of variation 1/√shape; lme4's residual standard deviation). Prior weights
multiply each row's log density, as glmmTMB's."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ._dispersion import DispersionFamily, glm_moments

__all__ = ["Gamma"]


@dataclasses.dataclass(frozen=True)
class Gamma(DispersionFamily):
    name = "Gamma"
    links = ("inverse", "log", "identity")  # R's Gamma() defaults to the inverse link
    dispersion_name = "sigma"

    def check_response(self, y, parsed) -> None:
        self._refuse(y, ~(y > 0), parsed, "positive")

    def neg2_logp(self, y, mu, weights, sigma):
        shape = 1.0 / sigma**2
        logp = (-gammaln(shape) + shape * jnp.log(shape) - shape * jnp.log(mu) + (shape - 1.0) * jnp.log(y)
                - shape * y / mu)
        return -2.0 * weights * logp

    def conditional_variance(self, mu, weights, sigma):
        return sigma**2 * mu**2 / weights

    def variance(self, mu):
        return mu**2

    def deviance_residuals(self, y, mu, weights):
        """R's Gamma()$dev.resids: −2 w (log(y/μ) − (y − μ)/μ)."""
        return -2.0 * weights * (jnp.log(y / mu) - (y - mu) / mu)

    def dispersion_start(self, y, mu, weights, n_params: int) -> float:
        y, mu, w, dof = glm_moments(y, mu, weights, n_params)
        return float(np.sqrt(np.clip(np.sum(w * ((y - mu) / mu) ** 2) / dof, 1e-6, 1e4)))

    def simulate(self, rng, mu, weights, extra):
        shape = 1.0 / self._fixed() ** 2
        return rng.gamma(shape, np.asarray(mu) / shape)
