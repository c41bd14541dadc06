"""Response families. The Gaussian family lives here; ``_glm_families.py`` adds the GLMM families.

A family turns the evaluated response (one or two columns, for ``cbind``) and the prior weights into the
numeric response the engine fits, checking that the values fit the family.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from .._errors import DataTypeError, FamilyError, FormulaError

__all__ = ["Gaussian", "LinkMethods", "get_family"]


class LinkMethods:
    """R's family$linkfun, $linkinv and $mu.eta, answered by the family's link object (its `_link`)."""

    def linkfun(self, mu):
        return self._link.linkfun(mu)

    def linkinv(self, eta):
        return self._link.linkinv(eta)

    def mu_eta(self, eta):
        return self._link.mu_eta(eta)


def numeric_response(values, what: str, family: str | None = None) -> np.ndarray:
    """A numeric column (a response, an offset) as float64; booleans count as 0/1, strings and categoricals are
    refused."""
    context = f" for the {family} family" if family else ""
    if isinstance(values, pd.Series):
        if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == object or values.dtype.kind in "OSU":
            raise DataTypeError(f"{what} must be numeric{context}, got {values.dtype}")
        values = values.to_numpy()
    arr = np.asarray(values)
    if arr.dtype == bool:
        return arr.astype(np.float64)
    if not np.issubdtype(arr.dtype, np.number):
        raise DataTypeError(f"{what} must be numeric{context}, got values of type {arr.dtype}")
    return arr.astype(np.float64)


@dataclasses.dataclass(frozen=True)
class Gaussian:
    name: str = "gaussian"
    link: str = "identity"

    def __post_init__(self):
        if self.link != "identity":  # lme4 hands a non-identity Gaussian link to glmer's GLMM engine; we do not
            raise FamilyError(f"the gaussian family supports only the identity link, got link={self.link!r}")

    def prepare_response(self, parts, parsed, prior_weights):
        if len(parts) != 1:
            raise FormulaError("cbind() responses are for the binomial family")
        return numeric_response(parts[0], f"response {parsed.response!r}", "gaussian"), prior_weights, {}


_REGISTRY: dict[str, type] = {"gaussian": Gaussian}


def register_family(name: str, cls: type) -> None:
    _REGISTRY[name] = cls


def get_family(family, link: str | None = None):
    """'gaussian' | 'binomial' | 'poisson' (or a family object) → family object, checking the link."""
    if not isinstance(family, str):
        if hasattr(family, "prepare_response"):
            return family
        raise FamilyError(f"family must be a name such as 'binomial', got {type(family).__name__}")
    key = family.lower()
    if key not in _REGISTRY:
        # the GLMM families register themselves on import
        from . import _glm_families  # noqa: F401
    if key not in _REGISTRY:
        raise FamilyError(f"unknown family {family!r}; known: {', '.join(sorted(_REGISTRY))}")
    cls = _REGISTRY[key]
    if link is None:
        return cls()
    try:
        return cls(link=link)
    except (TypeError, ValueError) as exc:
        raise FamilyError(f"family {family!r} does not support link {link!r}: {exc}") from None
