"""NUTS diagnostics through ArviZ (the `bayes` extra): trace and rank plots of a Posterior's draws."""

from __future__ import annotations

import numpy as np

__all__ = ["trace", "rank"]


def _arviz():
    try:
        import arviz as az
    except ImportError as exc:
        raise ImportError("trace and rank plots need ArviZ: pip install 'jaxmlm[bayes,plot]'") from exc
    major = int(str(az.__version__).split(".")[0])
    if major >= 1 or not hasattr(az, "plot_trace"):  # 1.x's plots return PlotCollections, not matplotlib Axes
        raise ImportError(f"trace and rank plots need ArviZ 0.x (its plot_trace and plot_rank draw matplotlib "
                          f"Axes); ArviZ {az.__version__} is installed: pip install 'arviz<1'")
    return az


def _tidy(axes):
    """ArviZ's grid with its panel titles clear of the axes above (tight layout)."""
    np.ravel(axes)[0].figure.tight_layout()
    return axes


def trace(posterior, var_names=None, **kwargs):
    """ArviZ's plot_trace of `posterior` (jaxmlm's `Posterior`): per parameter the marginal density per chain and
    the draws in order; returns ArviZ's array of Axes. var_names selects parameters (the names of posterior.draws)."""
    return _tidy(_arviz().plot_trace(posterior.to_arviz(), var_names=var_names, **kwargs))


def rank(posterior, var_names=None, **kwargs):
    """ArviZ's plot_rank: per parameter the histogram of the draws' ranks (over all chains) in each chain, flat
    when the chains mix; returns ArviZ's array of Axes."""
    return _tidy(_arviz().plot_rank(posterior.to_arviz(), var_names=var_names, **kwargs))
