"""jaxmlm: multilevel (mixed-effects) models in JAX, with lme4's formulas and numbers.

>>> import jaxmlm as jm
>>> fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
>>> print(fit.summary())
"""

from . import _config  # noqa: F401  (JAXMLM_CACHE_DIR, when set, turns the compilation cache on)
from ._config import enable_compilation_cache, heap_allocations
from . import datasets
from ._errors import (
    ConvergenceWarning,
    DataError,
    DataTypeError,
    FamilyError,
    FormulaError,
    JaxmlmError,
    MissingValuesWarning,
    NewLevelError,
    PrecisionError,
    RankDeficiencyWarning,
    ResponseError,
    SingularFitWarning,
)
from .fit._model import Model, glmer, lmer
from .fit._glmm import glmer_nb
from . import families
from .results._results import MixedModelResult, OptimizerInfo
from .fit._batch import BatchResult
from .fit._groups import GroupsResult, fit_groups
from .inference._bootstrap import BootstrapResult
from .formula._terms import parse_formula
from .bayes._mrp import poststratify
from .inference._anova import anova, drop1
from .formula._ingest import read_data
from .bayes._posterior import Posterior

__version__ = "0.1.0"

__all__ = [
    "Model",
    "Posterior",
    "poststratify",
    "anova",
    "drop1",
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
    "heap_allocations",
    "datasets",
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
]
