"""Profile plots, lme4's `xyplot(profile(fit))`: for each parameter the signed root of the deviance's rise, ζ,
against the parameter's value, with the 95% limits (where |ζ| = 1.96) marked. A straight ζ line means a
quadratic log-likelihood, where Wald intervals would serve as well as profile ones."""

from __future__ import annotations

import numpy as np
from scipy import stats

from ._common import panel_axes

__all__ = ["profile"]


def _crossings(value, zeta, target):
    """Where the (increasing) trace crosses ζ = ±target, by linear interpolation; NaN outside the trace."""
    order = np.argsort(zeta, kind="stable")
    z, v = zeta[order], value[order]
    return [float(np.interp(t, z, v)) if z[0] <= t <= z[-1] else np.nan for t in (-target, target)]


def profile(fit, parameters=None, level: float = 0.95, traces=None, axes=None, n_points: int = 15):
    """Draw ζ against each profiled parameter of `fit` (all, or those in `parameters`, named as confint's rows),
    one panel each; returns the NumPy array of Axes (one Axes for one parameter). `traces` takes a
    `jaxmlm.inference.profile_traces` frame already computed; dashed lines mark ζ = ±qnorm((1 + level) / 2)
    and the dotted verticals where the trace crosses them: the profile interval at `level`."""
    from ..inference._profile import profile_traces

    if traces is None:
        traces = profile_traces(fit, names=parameters, n_points=n_points)
    names = list(dict.fromkeys(traces["parameter"]))
    panels = panel_axes(len(names), axes, panel_size=(3.0, 2.6), max_columns=3, sharey=True)
    target = stats.norm.ppf((1.0 + level) / 2.0)
    for ax, name in zip(panels, names):
        rows = traces[traces["parameter"] == name]
        value, zeta = rows["value"].to_numpy(), rows["zeta"].to_numpy()
        ax.plot(value, zeta, "o-", ms=3, lw=1.2, color="#1f77b4")
        for t in (-target, target):
            ax.axhline(t, color="0.6", lw=0.8, ls="--")
        for x in _crossings(value, zeta, target):
            if np.isfinite(x):
                ax.axvline(x, color="0.4", lw=0.8, ls=":")
        ax.set_xlabel(name)
    for ax in panels[:: min(len(panels), 3)]:
        ax.set_ylabel("ζ")
    return panels[0] if len(panels) == 1 else panels
