"""The caterpillar plot, lme4's `dotplot(ranef(fit, condVar = TRUE))`: each level's conditional mode with a
95% interval (± 1.96 conditional standard deviations), levels sorted by the first column's mode."""

from __future__ import annotations

import numpy as np

from ._common import group_term_indices, panel_axes

__all__ = ["caterpillar"]

_Z95 = 1.959963984540054  # the normal 97.5% quantile, lme4's default band


def caterpillar(fit, term=None, columns=None, axes=None, max_labels: int = 60):
    """Conditional modes ± 1.96 conditional sd of grouping factor `term` (default: the formula's first), one
    panel per random-effects column (or those in `columns`), sharing lme4's order (increasing modes of the first
    column). Returns the Axes: one, or a NumPy array of them for several columns. Level names label the rows
    while there are at most `max_labels` levels."""
    group, _ = group_term_indices(fit, term)
    frame = fit.ranef(condvar=True)[group]
    names = list(frame.columns)
    chosen = names if columns is None else ([columns] if isinstance(columns, str) else list(columns))
    unknown = [c for c in chosen if c not in names]
    if unknown or not chosen:
        raise ValueError(f"columns must name {group}'s random-effects columns {names}, got {columns!r}")
    order = np.argsort(frame[chosen[0]].to_numpy(), kind="stable")
    blocks = frame.attrs.get("condvar")
    panels = panel_axes(len(chosen), axes, panel_size=(3.4, max(3.0, 0.14 * len(frame) + 1.0)), sharey=True)
    position = np.arange(len(frame))
    for ax, col in zip(panels, chosen):
        c = names.index(col)
        mode = frame[col].to_numpy()[order]
        sd = np.sqrt(np.maximum(blocks[order, c, c], 0.0)) if blocks is not None else np.zeros_like(mode)
        ax.errorbar(mode, position, xerr=_Z95 * sd, fmt="o", ms=3.5, color="#1f77b4", ecolor="0.45", lw=1.0,
                    capsize=0)
        ax.axvline(0.0, color="0.6", lw=0.8, ls="--")
        ax.set_xlabel(col)
        ax.set_title(group)
        if len(frame) <= max_labels:
            ax.set_yticks(position, labels=list(frame.index[order]), fontsize="small")
        ax.set_ylim(-1, len(frame))
    panels[0].set_ylabel(f"levels of {group}")
    return panels[0] if len(panels) == 1 else panels
