"""Error and warning types. All errors subclass ValueError or TypeError so callers can catch them broadly."""

from __future__ import annotations


class JaxmlmError(ValueError):
    """Base class for jaxmlm's input errors."""


class FormulaError(JaxmlmError):
    """The formula text cannot be parsed or names something that does not exist."""


class DataError(JaxmlmError):
    """The data cannot support the requested model (missing values, constant response, bad factor, ...)."""


class ResponseError(DataError):
    """The response does not fit the family (negative counts, proportions outside [0, 1], ...)."""


class FamilyError(JaxmlmError):
    """Unknown family or link."""


class NewLevelError(JaxmlmError):
    """predict() met grouping levels not seen in fitting and allow_new_levels is False."""


class PrecisionError(JaxmlmError):
    """A jaxmlm core function was called or traced with JAX's float64 off (it would compute in float32)."""


class DataTypeError(TypeError):
    """A column or argument has the wrong type (non-numeric response, weights of the wrong type)."""


class ConvergenceWarning(UserWarning):
    """The optimizer stopped without meeting its tolerance, or the Hessian at the optimum is not positive definite."""


class SingularFitWarning(UserWarning):
    """The fit lies on the boundary: a variance is estimated as zero or a correlation as ±1."""


class RankDeficiencyWarning(UserWarning):
    """Columns of the fixed-effects model matrix were dropped because they are linearly dependent."""


class MissingValuesWarning(UserWarning):
    """Rows with missing values were dropped."""


class FormulaWarning(UserWarning):
    """The formula is legal but suspicious (e.g. the response used as a random-effects predictor)."""
