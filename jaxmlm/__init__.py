"""jaxmlm: multilevel (mixed-effects) models in JAX, with lme4's formulas and numbers.

>>> import jaxmlm as jm
>>> fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
>>> print(fit.summary())

Importing jaxmlm loads only its error types: every other name below is imported on first use (PEP 562), so that
`import jaxmlm` does not pay for JAX, pandas or NumPyro until something needs them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ._errors import (
    ConvergenceWarning,
    DataError,
    DataTypeError,
    FamilyError,
    FormulaError,
    FormulaWarning,
    JaxmlmError,
    MissingValuesWarning,
    NewLevelError,
    PrecisionError,
    RankDeficiencyWarning,
    ResponseError,
    SingularFitWarning,
)

__version__ = "0.1.0"

# public name → the module (relative to this package) that defines it
_LAZY_NAMES = {
    "Model": "fit._model",
    "lmer": "fit._model",
    "glmer": "fit._model",
    "glmer_nb": "fit._glmm",
    "MixedModelResult": "results._results",
    "OptimizerInfo": "results._results",
    "BatchResult": "fit._batch",
    "GroupsResult": "fit._groups",
    "fit_groups": "fit._groups",
    "BootstrapResult": "inference._bootstrap",
    "parse_formula": "formula._terms",
    "poststratify": "bayes._mrp",
    "anova": "inference._anova",
    "drop1": "inference._anova",
    "power_sim": "inference._power",
    "power_curve": "inference._power",
    "PowerResult": "inference._power",
    "read_data": "formula._ingest",
    "Posterior": "bayes._posterior",
    "enable_compilation_cache": "_config",
    "heap_allocations": "_config",
    "compile_effort": "_compile",
}
# public submodules, imported on first use as well
_LAZY_SUBMODULES = ("datasets", "families", "plot")

__all__ = [
    "Model",
    "Posterior",
    "poststratify",
    "anova",
    "drop1",
    "power_sim",
    "power_curve",
    "PowerResult",
    "read_data",
    "lmer",
    "glmer",
    "glmer_nb",
    "families",
    "MixedModelResult",
    "OptimizerInfo",
    "BatchResult",
    "GroupsResult",
    "fit_groups",
    "BootstrapResult",
    "parse_formula",
    "enable_compilation_cache",
    "compile_effort",
    "heap_allocations",
    "datasets",
    "plot",
    "JaxmlmError",
    "FormulaError",
    "DataError",
    "DataTypeError",
    "ResponseError",
    "FamilyError",
    "NewLevelError",
    "PrecisionError",
    "ConvergenceWarning",
    "SingularFitWarning",
    "RankDeficiencyWarning",
    "MissingValuesWarning",
    "FormulaWarning",
]


def __getattr__(name: str):
    if name in _LAZY_SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    elif name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f".{_LAZY_NAMES[name]}", __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # what static analysers and IDEs see
    from . import datasets, families, plot
    from ._compile import compile_effort
    from ._config import enable_compilation_cache, heap_allocations
    from .bayes._mrp import poststratify
    from .bayes._posterior import Posterior
    from .fit._batch import BatchResult
    from .fit._glmm import glmer_nb
    from .fit._groups import GroupsResult, fit_groups
    from .fit._model import Model, glmer, lmer
    from .formula._ingest import read_data
    from .formula._terms import parse_formula
    from .inference._anova import anova, drop1
    from .inference._bootstrap import BootstrapResult
    from .inference._power import PowerResult, power_curve, power_sim
    from .results._results import MixedModelResult, OptimizerInfo
