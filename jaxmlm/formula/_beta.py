"""The beta family (glmmTMB's beta_family()): y in (0, 1), shape parameters μφ and (1 − μ)φ, Var(y) =
μ(1 − μ)/(1 + φ), logit link. `dispersion` is the precision φ, glmmTMB's sigma(fit)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ._dispersion import DispersionFamily, glm_moments

__all__ = ["Beta"]


@dataclasses.dataclass(frozen=True)
class Beta(DispersionFamily):
    name = "beta"
    links = ("logit",)
    dispersion_name = "phi"

    def check_response(self, y, parsed) -> None:
        self._refuse(y, ~((y > 0) & (y < 1)), parsed, "strictly between 0 and 1")

    def _logp(self, y, mu, phi):
        a, b = mu * phi, (1.0 - mu) * phi
        return gammaln(phi) - gammaln(a) - gammaln(b) + (a - 1.0) * jnp.log(y) + (b - 1.0) * jnp.log1p(-y)

    def neg2_logp(self, y, mu, weights, phi):
        return -2.0 * weights * self._logp(y, mu, phi)

    def conditional_variance(self, mu, weights, phi):
        return mu * (1.0 - mu) / (1.0 + phi) / weights

    def variance(self, mu):
        return mu * (1.0 - mu)

    def deviance_residuals(self, y, mu, weights):
        """2 w (log p(y | μ = y) − log p(y | μ)) at the fitted φ."""
        phi = self._fixed()
        return 2.0 * weights * (self._logp(y, y, phi) - self._logp(y, mu, phi))

    def dispersion_start(self, y, mu, weights, n_params: int) -> float:
        y, mu, w, _ = glm_moments(y, mu, weights, n_params)
        return float(np.clip(np.sum(w * mu * (1 - mu)) / np.sum(w * (y - mu) ** 2) - 1.0, 0.1, 1e4))

    def simulate(self, rng, mu, weights, extra):
        phi = self._fixed()
        mu = np.asarray(mu)
        return rng.beta(mu * phi, (1.0 - mu) * phi)
