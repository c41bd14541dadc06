"""lme4's argument spellings for `lmer` / `glmer`: `REML=` and `nAGQ=` as aliases of `reml` / `nagq`,
`start=` in lme4's list form (a dict with "theta", and "fixef" for a GLMM), and a clear error naming jaxmlm's
option for lme4's arguments that have no counterpart here (control=, verbose=, devFunOnly=, ...)."""

from __future__ import annotations

import numpy as np

__all__ = ["lme4_alias", "refuse_lme4_arguments", "lmer_start"]

# lme4's argument → what to use in jaxmlm instead
_NO_COUNTERPART = {
    "control": "jaxmlm takes its optimizer settings as keyword arguments, not an lmerControl()/glmerControl() list: "
               "max_iter=, start=, solver= and solver_options= (linear models), approximation= (dispersion "
               "families); the convergence checks' results are in fit.optinfo",
    "verbose": "jaxmlm does not print the optimizer's iterations; fit.optinfo holds the evaluation count, the "
               "gradient and the optimizer's messages",
    "devFunOnly": "use jm.Model(formula, data).deviance(theta) for lme4's devfun of a linear model, or "
                  "model.problem(method).objective(x) for any method",
    "subset": "select the rows of the DataFrame before fitting",
    "contrasts": "jaxmlm uses R's treatment contrasts; recode the factor in the DataFrame",
    "mustart": "jaxmlm starts from R's glm starting values; give start={'theta': ..., 'fixef': ...} instead",
    "etastart": "jaxmlm starts from R's glm starting values; give start={'theta': ..., 'fixef': ...} instead",
    "na.action": "use na_action='omit' (the default) or 'fail'",
}


def lme4_alias(kwargs: dict, lme4_name: str, value, default, jaxmlm_name: str):
    """The value of a jaxmlm argument that may also come under lme4's name (e.g. REML= for reml=)."""
    if lme4_name not in kwargs:
        return value
    given = kwargs.pop(lme4_name)
    if value is not default and value != default and value != given:
        raise TypeError(f"give either {jaxmlm_name}= or lme4's {lme4_name}=, not both with different values")
    return given


def refuse_lme4_arguments(kwargs: dict, entry: str) -> None:
    """Raise a clear error for an lme4 argument that jaxmlm does not take, naming jaxmlm's way of doing it."""
    for name, advice in _NO_COUNTERPART.items():
        if name in kwargs:
            raise TypeError(f"{entry}() does not take lme4's {name}= argument: {advice}")


def lmer_start(start):
    """lme4's start=list(theta = ...) for lmer, written as a dict: its θ."""
    if isinstance(start, dict):
        unknown = set(start) - {"theta"}
        if unknown:
            raise ValueError(f"lmer's start takes only 'theta' (lme4's list form); got {', '.join(sorted(unknown))}")
        return None if start.get("theta") is None else np.asarray(start["theta"], dtype=np.float64)
    return start
