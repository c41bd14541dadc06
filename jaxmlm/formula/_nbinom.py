"""Negative binomial families: NB2 (lme4's glmer.nb, glmmTMB's nbinom2; Var = μ + μ²/θ, reported θ) and NB1
(glmmTMB's nbinom1; Var = μ(1 + φ), reported φ). Both with the log link. Counts must be non-negative integers."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln

from ._dispersion import DispersionFamily, glm_moments

__all__ = ["NegativeBinomial2", "NegativeBinomial1"]


class _Counts(DispersionFamily):
    links = ("log",)

    def check_response(self, y, parsed) -> None:
        self._refuse(y, y < 0, parsed, "non-negative counts")
        self._refuse(y, np.abs(y - np.round(y)) > 1e-8, parsed, "integer counts")

    def mustart(self, y, weights):
        return y + jnp.where(y == 0, 1.0 / 6.0, 0.0)  # R's negative.binomial()$initialize


@dataclasses.dataclass(frozen=True)
class NegativeBinomial2(_Counts):
    """NB2: size θ, Var(y) = μ + μ²/θ. `dispersion` is θ (fixed when given, as MASS's negative.binomial(theta))."""

    name = "nbinom2"
    dispersion_name = "theta"

    def neg2_logp(self, y, mu, weights, theta):
        logp = (gammaln(y + theta) - gammaln(theta) - gammaln(y + 1.0) + theta * jnp.log(theta)
                + y * jnp.log(mu) - (y + theta) * jnp.log(mu + theta))
        return -2.0 * weights * logp

    def conditional_variance(self, mu, weights, theta):
        return (mu + mu**2 / theta) / weights

    def variance(self, mu):
        return mu + mu**2 / self._fixed()

    def deviance_residuals(self, y, mu, weights):
        """MASS's negative.binomial(θ)$dev.resids."""
        theta = self._fixed()
        y = jnp.asarray(y)
        return 2.0 * weights * (y * jnp.log(jnp.maximum(y, 1.0) / mu) - (y + theta) * jnp.log((y + theta) / (mu + theta)))

    def dispersion_start(self, y, mu, weights, n_params: int) -> float:
        """θ from the moments of a Poisson GLM fit: Σμ² / Σ((y − μ)² − μ), kept in [0.05, 1e4]."""
        y, mu, w, _ = glm_moments(y, mu, weights, n_params)
        excess = np.sum(w * ((y - mu) ** 2 - mu))
        return float(np.clip(np.sum(w * mu**2) / excess, 0.05, 1e4)) if excess > 0 else 1e4

    def simulate(self, rng, mu, weights, extra):
        theta = self._fixed()
        mu = np.asarray(mu)
        return rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float64)


@dataclasses.dataclass(frozen=True)
class NegativeBinomial1(_Counts):
    """NB1 (glmmTMB's nbinom1): size μ/φ, probability 1/(1 + φ), Var(y) = μ(1 + φ). `dispersion` is φ."""

    name = "nbinom1"
    dispersion_name = "phi"

    def _logp(self, y, mu, phi):
        size = mu / phi
        return (gammaln(y + size) - gammaln(size) - gammaln(y + 1.0) + y * jnp.log(phi)
                - (y + size) * jnp.log1p(phi))

    def neg2_logp(self, y, mu, weights, phi):
        return -2.0 * weights * self._logp(y, mu, phi)

    def conditional_variance(self, mu, weights, phi):
        return mu * (1.0 + phi) / weights

    def variance(self, mu):
        return mu * (1.0 + self._fixed())

    def deviance_residuals(self, y, mu, weights):
        """2 w (log p(y | μ = y) − log p(y | μ)), the saturated model's gap (log p(0 | μ → 0) = 0)."""
        phi = self._fixed()
        y = jnp.asarray(y)
        saturated = jnp.where(y > 0, self._logp(y, jnp.where(y > 0, y, 1.0), phi), 0.0)
        return 2.0 * weights * (saturated - self._logp(y, mu, phi))

    def dispersion_start(self, y, mu, weights, n_params: int) -> float:
        """φ from Pearson's χ² of a Poisson GLM fit: χ²/(n − p) − 1, kept in [0.05, 1e4]."""
        y, mu, w, dof = glm_moments(y, mu, weights, n_params)
        return float(np.clip(np.sum(w * (y - mu) ** 2 / mu) / dof - 1.0, 0.05, 1e4))

    def simulate(self, rng, mu, weights, extra):
        phi = self._fixed()
        return rng.negative_binomial(np.asarray(mu) / phi, 1.0 / (1.0 + phi)).astype(np.float64)
