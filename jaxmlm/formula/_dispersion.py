"""The interface of the families with a dispersion or shape parameter (negative binomial, Gamma, inverse Gaussian,
beta), and the links they use.

Such a family is a frozen dataclass (hashable: a static field of a jitted problem) with its link and, optionally, a
fixed value of its dispersion parameter (`dispersion=None`: estimated). The engine needs from it:

- `neg2_logp(y, mu, weights, d)`: −2 w log p(y | μ, d) per row, the *full* log density with its normalising
  constant (JAX), where d is the dispersion on the scale that `fit.dispersion` reports (NB2: θ; NB1 and beta: φ;
  Gamma and inverse Gaussian: σ, R's `sigma(fit)`). The fit estimates log d as one more coordinate of the flat
  parameter vector, so a new value of d is a new argument of one compiled program.
- `conditional_variance(mu, weights, d)`: Var(y | μ), for the Fisher-scoring weights of PIRLS (any positive weight
  converges to the same mode with the exact gradient; the Fisher weights converge fast).
- `variance(mu)` (R's family variance, with the fixed or fitted d), `deviance_residuals` (R's `dev.resids`, for
  residuals), `mustart`, `dispersion_start` (a moment estimate from a GLM fit), `simulate`, `prepare_response`
  (the checks of the response's values, naming its column).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FamilyError, FormulaError, ResponseError
from ._family import LinkMethods, numeric_response

__all__ = ["DispersionFamily", "DispersionLink"]

_EPS = float(np.finfo(np.float64).eps)
_LOGIT_THRESH = -float(np.log(_EPS))


@dataclasses.dataclass(frozen=True)
class DispersionLink:
    """log, inverse (1/μ), 1/mu^2, identity, logit: R's make.link, written with jax.numpy."""

    name: str

    def linkfun(self, mu):
        mu = jnp.asarray(mu)
        if self.name == "log":
            return jnp.log(mu)
        if self.name == "inverse":
            return 1.0 / mu
        if self.name == "1/mu^2":
            return 1.0 / mu**2
        if self.name == "logit":
            return jnp.log(mu / (1.0 - mu))
        return mu

    def linkinv(self, eta):
        eta = jnp.asarray(eta)
        if self.name == "log":
            return jnp.maximum(jnp.exp(eta), _EPS)
        if self.name == "inverse":
            return 1.0 / eta
        if self.name == "1/mu^2":
            return 1.0 / jnp.sqrt(eta)
        if self.name == "logit":
            return jax.nn.sigmoid(jnp.clip(eta, -_LOGIT_THRESH, _LOGIT_THRESH))
        return eta

    def mu_eta(self, eta):
        eta = jnp.asarray(eta)
        if self.name == "log":
            return jnp.maximum(jnp.exp(eta), _EPS)
        if self.name == "inverse":
            return -1.0 / eta**2
        if self.name == "1/mu^2":
            return -1.0 / (2.0 * eta**1.5)
        if self.name == "logit":
            mu = jax.nn.sigmoid(eta)
            return jnp.where(jnp.abs(eta) > _LOGIT_THRESH, _EPS, mu * (1.0 - mu))
        return jnp.ones_like(eta)


@dataclasses.dataclass(frozen=True)
class DispersionFamily(LinkMethods):
    """Base of the dispersion families. Subclasses set `name`, `links` (the first is the default),
    `dispersion_name` and the methods listed in the module docstring."""

    link: str = ""
    dispersion: float | None = None  # None: estimated jointly with (θ, β)

    name = "dispersion"
    links = ("log",)
    dispersion_name = "dispersion"
    has_dispersion = True
    canonical = False  # the engine takes exact (observed) curvature for every dispersion family

    def __post_init__(self):
        if self.link == "":
            object.__setattr__(self, "link", self.links[0])
        if self.link not in self.links:
            raise FamilyError(f"the {self.name} family supports the links {', '.join(self.links)}; got {self.link!r}")
        if self.dispersion is not None:
            d = float(self.dispersion)
            if not np.isfinite(d) or d <= 0:
                raise FamilyError(f"the {self.name} family's {self.dispersion_name} must be a positive number, "
                                  f"got {self.dispersion!r}")
            object.__setattr__(self, "dispersion", d)

    @property
    def estimates_dispersion(self) -> bool:
        return self.dispersion is None

    def with_dispersion(self, value: float):
        """The same family with its dispersion fixed at `value` (a fitted model's family)."""
        return dataclasses.replace(self, dispersion=float(value))

    @property
    def _link(self) -> DispersionLink:
        return DispersionLink(self.link)

    def log_constant(self, y, weights, extra) -> float:
        return 0.0  # neg2_logp is the full density: no separate constant

    def mustart(self, y, weights):
        return y

    def _fixed(self) -> float:
        if self.dispersion is None:
            raise ValueError(f"the {self.name} family's {self.dispersion_name} is not fixed (fit the model first)")
        return self.dispersion

    def _response(self, parts, parsed) -> np.ndarray:
        if len(parts) != 1:
            raise FormulaError("cbind() responses are for the binomial family")
        return numeric_response(parts[0], f"response {parsed.response!r}", self.name)

    def _refuse(self, y, bad, parsed, what: str):
        if np.any(bad):
            raise ResponseError(f"{self.name} response {parsed.response!r} must be {what}, found {y[bad][0]:g} "
                                f"({int(np.sum(bad))} such rows)")

    def prepare_response(self, parts, parsed, prior_weights):
        y = self._response(parts, parsed)
        self.check_response(y, parsed)
        return y, np.asarray(prior_weights, dtype=np.float64), {}

    def check_response(self, y, parsed) -> None:
        raise NotImplementedError


def glm_moments(y, mu, weights, n_params: int):
    """Pearson's χ²/(n − p) pieces from a GLM fit: residuals (y − μ) and the weights, as NumPy arrays."""
    y, mu, w = (np.asarray(a, dtype=np.float64) for a in (y, mu, weights))
    keep = w > 0
    dof = max(int(np.sum(keep)) - n_params, 1)
    return y[keep], mu[keep], w[keep], dof
