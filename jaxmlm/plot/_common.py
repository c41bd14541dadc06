"""What every plot shares: matplotlib on demand (an optional extra), a fresh Axes when none is given."""

from __future__ import annotations

import numpy as np

from .._errors import FormulaError


def pyplot():
    """matplotlib.pyplot, or an ImportError that says how to install it."""
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("jaxmlm.plot needs matplotlib: pip install 'jaxmlm[plot]'") from exc
    return plt


def new_axes(ax=None, figsize=(5.5, 4.5)):
    """`ax` itself, or the Axes of a new figure."""
    if ax is not None:
        return ax
    _, ax = pyplot().subplots(figsize=figsize, layout="constrained")
    return ax


def panel_axes(n_panels: int, axes=None, panel_size=(3.2, 3.0), max_columns: int = 4, sharey=False):
    """n_panels Axes in a grid (a flat array), or the given ones after checking their number."""
    if axes is not None:
        flat = np.ravel(np.asarray(axes, dtype=object))
        if flat.size < n_panels:
            raise ValueError(f"need {n_panels} Axes, got {flat.size}")
        return flat[:n_panels]
    n_cols = min(n_panels, max_columns)
    n_rows = -(-n_panels // n_cols)
    fig, grid = pyplot().subplots(n_rows, n_cols, figsize=(panel_size[0] * n_cols, panel_size[1] * n_rows),
                                  sharey=sharey, squeeze=False, layout="constrained")
    flat = grid.ravel()
    for extra in flat[n_panels:]:
        fig.delaxes(extra)
    return flat[:n_panels]


def group_term_indices(fit, term):
    """(grouping factor's name, indices of its terms) for `term`: a grouping factor's name ("Subject") or a
    random-effects term's text ("Days | Subject"); the first grouping factor in the formula by default."""
    terms = fit.design.terms
    group = term.rsplit("|", 1)[-1].strip(" ()") if isinstance(term, str) else term
    names = list(dict.fromkeys(t.group_name for t in sorted(terms, key=lambda t: t.formula_position)))
    if group is None:
        group = names[0]
    if group not in names:
        raise FormulaError(f"no random-effects term is grouped by {group!r}; the grouping factors are {names}")
    return group, [k for k, t in enumerate(terms) if t.group_name == group]
