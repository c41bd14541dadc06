"""Family objects with R's names, for `family=` (strings work too: "binomial", "poisson", "nbinom2", "nbinom1",
"Gamma", "inverse_gaussian", "beta").

>>> jm.glmer("y ~ x + (1 | g)", data, family=jm.families.Gamma(link="log"))
>>> jm.glmer("y ~ x + (1 | g)", data, family=jm.families.negative_binomial(theta=2.0))  # θ held fixed
"""

from __future__ import annotations

from .formula._beta import Beta
from .formula._family import Gaussian
from .formula._gamma import Gamma as _Gamma
from .formula._glm_families import Binomial, Poisson
from .formula._inverse_gaussian import InverseGaussian
from .formula._nbinom import NegativeBinomial1, NegativeBinomial2

__all__ = ["gaussian", "binomial", "poisson", "Gamma", "inverse_gaussian", "negative_binomial", "nbinom2",
           "nbinom1", "beta_family"]


def gaussian(link: str = "identity") -> Gaussian:
    return Gaussian(link=link)


def binomial(link: str = "logit") -> Binomial:
    """R's binomial(): links logit, probit, cloglog."""
    return Binomial(link=link)


def poisson(link: str = "log") -> Poisson:
    return Poisson(link=link)


def Gamma(link: str = "inverse") -> _Gamma:  # noqa: N802 (R's name)
    """R's Gamma(): links inverse (R's default), log, identity. The shape is estimated."""
    return _Gamma(link=link)


def inverse_gaussian(link: str = "1/mu^2") -> InverseGaussian:
    """R's inverse.gaussian(): links 1/mu^2 (R's default), inverse, log, identity."""
    return InverseGaussian(link=link)


def negative_binomial(theta: float | None = None, link: str = "log") -> NegativeBinomial2:
    """NB2, Var = μ + μ²/θ: θ estimated when None (lme4's glmer.nb, glmmTMB's nbinom2), else held fixed (MASS's
    negative.binomial(theta))."""
    return NegativeBinomial2(link=link, dispersion=theta)


def nbinom2(link: str = "log") -> NegativeBinomial2:
    """glmmTMB's nbinom2: NB2 with θ estimated."""
    return NegativeBinomial2(link=link)


def nbinom1(link: str = "log") -> NegativeBinomial1:
    """glmmTMB's nbinom1: Var = μ(1 + φ), φ estimated."""
    return NegativeBinomial1(link=link)


def beta_family(link: str = "logit") -> Beta:
    """glmmTMB's beta_family(): mean μ, precision φ estimated."""
    return Beta(link=link)
