"""Pictures of a fit, drawn with matplotlib (the optional extra: pip install 'jaxmlm[plot]'). Each function draws
on a new figure, or on the Axes given as `ax` / `axes`, and returns the Axes for further styling.

>>> import jaxmlm as jm
>>> fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
>>> ax = jm.plot.shrinkage(fit)            # per-subject lm, complete pooling and the multilevel estimates
>>> ax.figure.savefig("shrinkage.png")

* `shrinkage(fit, term)`: no pooling, complete pooling and partial pooling per group.
* `caterpillar(fit, term)`: conditional modes with 95% intervals, as lme4's `dotplot(ranef(fit, condVar = TRUE))`.
* `residuals(fit)`, `qq(fit)`: residuals against fitted values; a normal QQ plot of the scaled residuals.
* `profile(fit)`: ζ against each parameter, as lme4's `xyplot(profile(fit))`.
* `mrp(table, raw)`: post-stratified estimates by group against raw means.
* `trace(posterior)`, `rank(posterior)`: NUTS diagnostics through ArviZ.
"""

from ._bayes import rank, trace
from ._diagnostics import qq, residuals
from ._mrp import mrp
from ._profile import profile
from ._ranef import caterpillar
from ._shrinkage import shrinkage, shrinkage_table

__all__ = ["shrinkage", "shrinkage_table", "caterpillar", "residuals", "qq", "profile", "mrp", "trace", "rank"]
