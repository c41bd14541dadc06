"""Draw the pictures of docs/plots.md into this folder (PNG, 80 dpi).

Run from the repository root:  python docs/plots/make_plots.py
"""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import jaxmlm as jm  # noqa: E402
from jaxmlm import plot  # noqa: E402

HERE = pathlib.Path(__file__).parent
DPI = 80


def save(ax, name: str) -> None:
    fig = np.ravel(ax)[0].figure
    fig.savefig(HERE / f"{name}.png", dpi=DPI)
    plt.close(fig)
    print("wrote", HERE / f"{name}.png")


def small_poll(seed: int = 7):
    """A skewed poll of 1500 respondents in 20 states, and the population's cell counts."""
    rng = np.random.default_rng(seed)
    states = [f"S{i:02d}" for i in range(20)]
    census = pd.MultiIndex.from_product([states, ["young", "old"]], names=["state", "age"]).to_frame(index=False)
    census["N"] = rng.integers(5_000, 50_000, size=len(census)).astype(float)
    eta = np.repeat(rng.normal(0, 0.5, len(states)), 2) + np.tile([-0.5, 0.5], len(states))
    census["p"] = 1 / (1 + np.exp(-eta))
    weight = census["N"] * np.tile([5.0, 1.0], len(states)) * np.repeat(rng.uniform(0.1, 1, len(states)), 2)
    cell = rng.choice(len(census), size=1500, p=weight / weight.sum())
    poll = census.loc[cell, ["state", "age"]].assign(yes=(rng.random(cell.size) < census["p"].to_numpy()[cell]))
    return poll.reset_index(drop=True).assign(yes=lambda d: d["yes"].astype(int)), census


def main() -> None:
    sleepstudy = jm.datasets.load("sleepstudy")
    fit = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)
    save(plot.shrinkage(fit), "shrinkage")
    uneven = sleepstudy.iloc[[i for i in range(len(sleepstudy)) if i % 10 < 2 + (i // 10) % 8]]
    save(plot.shrinkage(jm.lmer("Reaction ~ Days + (1 | Subject)", uneven)), "shrinkage_1d")
    cbpp = jm.datasets.load("cbpp")
    herd_fit = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    save(plot.shrinkage(herd_fit), "shrinkage_glmm")
    save(plot.caterpillar(fit), "caterpillar")
    save(plot.residuals(fit), "residuals")
    save(plot.qq(fit), "qq")
    save(plot.profile(jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)), "profile")

    poll, census = small_poll()
    mrp_fit = jm.glmer("yes ~ age + (1 | state)", poll, family="binomial")
    table = jm.poststratify(mrp_fit, census, weight="N", by=["state"])
    save(plot.mrp(table, raw=poll.groupby("state")["yes"].mean()), "mrp")

    try:
        import arviz  # noqa: F401
    except ImportError:
        print("ArviZ is not installed: no trace and rank pictures")
        return
    post = jm.Model("Reaction ~ Days + (1 | Subject)", sleepstudy).sample(chains=4, draws=300, warmup=300, seed=1)
    save(plot.trace(post, var_names=["sigma", "Days"]), "trace")
    save(plot.rank(post, var_names=["sigma", "Days"]), "rank")


if __name__ == "__main__":
    main()
