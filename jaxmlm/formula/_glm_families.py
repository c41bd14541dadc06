"""GLMM response families: binomial (logit, probit, cloglog) and Poisson (log).

A family is a small frozen dataclass (hashable, so it can be a static field of a jitted problem) holding its link.
Link and variance functions are written with `jax.numpy`, so they run inside jit and on NumPy arrays alike; the
clamps follow R's `make.link` / `binomial()` / `poisson()` so that fitted values and deviances match lme4's.

The engine needs from a family: `linkfun`, `linkinv`, `mu_eta` (dμ/dη), `variance`, `deviance_residuals` (R's
`dev.resids`: weighted unit deviances), `log_constant` (the part of −2 log p(y | μ) that does not depend on μ, so
that −2 log p = Σ deviance residuals + log_constant, as lme4's `aic()` counts it), `mustart` (R's starting μ),
`canonical` (Fisher scoring is Newton's method) and `simulate`.
"""

from __future__ import annotations

import dataclasses
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import special

from .._errors import FamilyError, FormulaError, ResponseError
from .._warn import user_stacklevel
from ._family import LinkMethods, numeric_response, register_family

__all__ = ["Link", "Binomial", "Poisson", "LINKS"]

_EPS = float(np.finfo(np.float64).eps)
_LOGIT_THRESH = -float(np.log(_EPS))  # R's logit_linkinv threshold
_PROBIT_THRESH = 8.125890664701906  # -qnorm(.Machine$double.eps)


@dataclasses.dataclass(frozen=True)
class Link:
    name: str

    def linkfun(self, mu):
        if self.name == "logit":
            return jnp.log(mu / (1.0 - mu))
        if self.name == "probit":
            return jax.scipy.special.ndtri(mu)
        if self.name == "cloglog":
            return jnp.log(-jnp.log1p(-mu))
        return jnp.log(mu)

    def linkinv(self, eta):
        eta = jnp.asarray(eta)
        if self.name == "logit":
            return jax.nn.sigmoid(jnp.clip(eta, -_LOGIT_THRESH, _LOGIT_THRESH))
        if self.name == "probit":
            return jax.scipy.special.ndtr(jnp.clip(eta, -_PROBIT_THRESH, _PROBIT_THRESH))
        if self.name == "cloglog":
            return jnp.clip(-jnp.expm1(-jnp.exp(jnp.minimum(eta, 700.0))), _EPS, 1.0 - _EPS)
        return jnp.maximum(jnp.exp(eta), _EPS)

    def mu_eta(self, eta):
        eta = jnp.asarray(eta)
        if self.name == "logit":
            mu = jax.nn.sigmoid(eta)
            return jnp.where(jnp.abs(eta) > _LOGIT_THRESH, _EPS, mu * (1.0 - mu))
        if self.name == "probit":
            return jnp.maximum(jax.scipy.stats.norm.pdf(eta), _EPS)
        if self.name == "cloglog":
            e = jnp.minimum(eta, 700.0)
            return jnp.maximum(jnp.exp(e - jnp.exp(e)), _EPS)
        return jnp.maximum(jnp.exp(eta), _EPS)


LINKS = {"binomial": ("logit", "probit", "cloglog"), "poisson": ("log",)}


def _xlogx(x):
    """x log x with 0 log 0 = 0 (NumPy, for constants)."""
    x = np.asarray(x, dtype=np.float64)
    return np.where(x > 0, x * np.log(np.where(x > 0, x, 1.0)), 0.0)


@dataclasses.dataclass(frozen=True)
class _GlmFamily(LinkMethods):
    link: str = ""

    def __post_init__(self):
        allowed = LINKS[self.name]
        if self.link == "":
            object.__setattr__(self, "link", allowed[0])
        if self.link not in allowed:
            raise FamilyError(f"the {self.name} family supports the links {', '.join(allowed)}; got {self.link!r}")

    @property
    def _link(self) -> Link:
        return Link(self.link)

    @property
    def canonical(self) -> bool:
        return self.link == LINKS[self.name][0]


@dataclasses.dataclass(frozen=True)
class Binomial(_GlmFamily):
    """Binomial: y is the proportion of successes, weights the number of trials (× prior weights), as R's glm."""

    name: str = dataclasses.field(default="binomial", init=False)

    def prepare_response(self, parts, parsed, prior_weights):
        prior_weights = np.asarray(prior_weights, dtype=np.float64)
        if len(parts) == 2:
            names = parsed.response_parts
            s = numeric_response(parts[0], f"successes {names[0]!r}", "binomial")
            f = numeric_response(parts[1], f"failures {names[1]!r}", "binomial")
            for arr, name in ((s, names[0]), (f, names[1])):
                if (arr < 0).any():
                    raise ResponseError(
                        f"binomial response: {name!r} has negative values (counts of successes and failures in "
                        f"{parsed.response!r} must be >= 0; are there more successes than trials?)"
                    )
            n = s + f
            y = np.where(n > 0, s / np.where(n > 0, n, 1.0), 0.0)
            weights = prior_weights * n
            m = n if (n > 1).any() else weights
            self._warn_non_integer(y * m, parsed.response)
            return y, weights, {"trials": m}
        values = parts[0]
        name = parsed.response
        is_factor = isinstance(values, pd.Series) and (
            isinstance(values.dtype, pd.CategoricalDtype) or pd.api.types.is_string_dtype(values.dtype)
        )
        if is_factor:
            # a factor: the first level (R's order) is failure, every other level success
            cat = values if isinstance(values.dtype, pd.CategoricalDtype) else values.astype("category")
            y = (cat.cat.codes.to_numpy() > 0).astype(np.float64)
        else:
            y = numeric_response(values, f"response {name!r}", "binomial")
            if ((y < 0) | (y > 1)).any():
                bad = y[(y < 0) | (y > 1)][0]
                raise ResponseError(
                    f"binomial response {name!r} must lie in [0, 1] (0/1 outcomes or proportions with weights= "
                    f"giving the trials), found {bad:g}; for counts use cbind(successes, failures)"
                )
        self._warn_non_integer(y * prior_weights, name)
        return y, prior_weights, {"trials": prior_weights}

    @staticmethod
    def _warn_non_integer(successes, name):
        if np.any(np.abs(successes - np.round(successes)) > 1e-3):
            warnings.warn(f"non-integer #successes in the binomial response {name!r}", UserWarning, stacklevel=user_stacklevel())

    def variance(self, mu):
        return mu * (1.0 - mu)

    def deviance_residuals(self, y, mu, weights):
        """2 w [y log(y/μ) + (1−y) log((1−y)/(1−μ))], written so that y = 0 or 1 has finite derivatives in μ."""
        y = jnp.asarray(y)
        ylogy = jnp.where(y > 0, y * jnp.log(jnp.where(y > 0, y, 1.0)), 0.0)
        nlogn = jnp.where(y < 1, (1.0 - y) * jnp.log(jnp.where(y < 1, 1.0 - y, 1.0)), 0.0)
        return 2.0 * weights * (ylogy - y * jnp.log(mu) + nlogn - (1.0 - y) * jnp.log1p(-mu))

    def log_constant(self, y, weights, extra) -> float:
        """−2 log p(y|μ) − Σ deviance residuals, as R's binomial()$aic counts it (binomial coefficients)."""
        y = np.asarray(y, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        m = np.asarray(extra["trials"], dtype=np.float64)
        k = np.round(m * y)
        mm = np.round(m)
        log_choose = special.gammaln(mm + 1) - special.gammaln(k + 1) - special.gammaln(mm - k + 1)
        coef = np.where(m > 0, w / np.where(m > 0, m, 1.0), 0.0)
        return float(np.sum(-2.0 * coef * log_choose - 2.0 * w * (_xlogx(y) + _xlogx(1.0 - y))))

    def mustart(self, y, weights):
        return (weights * y + 0.5) / (weights + 1.0)

    def simulate(self, rng, mu, weights, extra):
        m = np.round(np.asarray(extra.get("trials", weights), dtype=np.float64)).astype(np.int64)
        draws = rng.binomial(np.maximum(m, 0), np.clip(np.asarray(mu), 0.0, 1.0))
        return np.where(m > 0, draws / np.maximum(m, 1), 0.0)


@dataclasses.dataclass(frozen=True)
class Poisson(_GlmFamily):
    """Poisson counts with the log link."""

    name: str = dataclasses.field(default="poisson", init=False)

    def prepare_response(self, parts, parsed, prior_weights):
        if len(parts) != 1:
            raise FormulaError("cbind() responses are for the binomial family")
        name = parsed.response
        y = numeric_response(parts[0], f"response {name!r}", "poisson")
        if (y < 0).any():
            raise ResponseError(f"poisson response {name!r} must be non-negative counts, found {y[y < 0][0]:g}")
        fractional = np.abs(y - np.round(y)) > 1e-8
        if fractional.any():
            # as R: the fit goes on (the deviance is defined for any y ≥ 0), the likelihood is not
            warnings.warn(
                f"non-integer counts in the poisson response {name!r} (first: {y[fractional][0]:g}): fitted by the "
                "Poisson deviance, which is defined for any y >= 0 (as R's glm fits them), but the Poisson "
                "probability of a non-integer is 0, so logLik is -inf and AIC, BIC and deviance inf, as R reports "
                "them",
                UserWarning, stacklevel=user_stacklevel())
            return y, np.asarray(prior_weights, dtype=np.float64), {"non_integer": True}
        return y, np.asarray(prior_weights, dtype=np.float64), {}

    def variance(self, mu):
        return mu

    def deviance_residuals(self, y, mu, weights):
        y = jnp.asarray(y)
        ylogy = jnp.where(y > 0, y * jnp.log(jnp.where(y > 0, y, 1.0)), 0.0)
        return 2.0 * weights * (ylogy - y * jnp.log(mu) - (y - mu))

    def log_constant(self, y, weights, extra) -> float:
        """−2 Σ w log dpois(y, μ) − Σ deviance residuals: the factorials (R's poisson()$aic). For non-integer y
        log Γ(y + 1) stands in for log y!, so the objective stays finite and smooth; the fit reports logLik -inf
        (`extra["non_integer"]`)."""
        y = np.asarray(y, dtype=np.float64)
        w = np.asarray(weights, dtype=np.float64)
        return float(np.sum(-2.0 * w * (_xlogx(y) - y - special.gammaln(y + 1))))

    def mustart(self, y, weights):
        return y + 0.1

    def simulate(self, rng, mu, weights, extra):
        return rng.poisson(np.asarray(mu)).astype(np.float64)


register_family("binomial", Binomial)
register_family("poisson", Poisson)


def _register_dispersion_families() -> None:
    """The families with a dispersion parameter, under R's and glmmTMB's names (keys are lower case)."""
    from ._beta import Beta
    from ._gamma import Gamma
    from ._inverse_gaussian import InverseGaussian
    from ._nbinom import NegativeBinomial1, NegativeBinomial2

    for names, cls in ((("nbinom2", "negative_binomial", "negative.binomial", "negbin"), NegativeBinomial2),
                       (("nbinom1",), NegativeBinomial1),
                       (("gamma",), Gamma),
                       (("inverse_gaussian", "inverse.gaussian"), InverseGaussian),
                       (("beta", "beta_family"), Beta)):
        for name in names:
            register_family(name, cls)


_register_dispersion_families()
