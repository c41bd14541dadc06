"""The inverse Gaussian family (glmer's inverse.gaussian()): Var(y) = σ²μ³, y > 0. `dispersion` is σ, R's
sigma(fit) (σ² is R's dispersion). The links of R's inverse.gaussian(); 1/mu^2 is the default."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from ._dispersion import DispersionFamily, glm_moments

__all__ = ["InverseGaussian"]


@dataclasses.dataclass(frozen=True)
class InverseGaussian(DispersionFamily):
    name = "inverse_gaussian"
    links = ("1/mu^2", "inverse", "log", "identity")
    dispersion_name = "sigma"

    def check_response(self, y, parsed) -> None:
        self._refuse(y, ~(y > 0), parsed, "positive")

    def neg2_logp(self, y, mu, weights, sigma):
        s2 = sigma**2
        return weights * (jnp.log(2.0 * jnp.pi * s2 * y**3) + (y - mu) ** 2 / (s2 * mu**2 * y))

    def conditional_variance(self, mu, weights, sigma):
        return sigma**2 * mu**3 / weights

    def variance(self, mu):
        return mu**3

    def deviance_residuals(self, y, mu, weights):
        """R's inverse.gaussian()$dev.resids: w (y − μ)²/(y μ²)."""
        return weights * (y - mu) ** 2 / (y * mu**2)

    def dispersion_start(self, y, mu, weights, n_params: int) -> float:
        y, mu, w, dof = glm_moments(y, mu, weights, n_params)
        return float(np.sqrt(np.clip(np.sum(w * (y - mu) ** 2 / mu**3) / dof, 1e-8, 1e4)))

    def simulate(self, rng, mu, weights, extra):
        mu = np.asarray(mu)
        return rng.wald(mu, 1.0 / self._fixed() ** 2 * np.ones_like(mu))
