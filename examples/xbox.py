"""MRP at the scale of the Xbox poll: a skewed poll, a multilevel model, post-stratified state estimates.

Wang, Rothschild, Goel and Gelman (2015) forecast the 2012 US election from 750,148 interviews on the Xbox, 93%
of them men and 65% aged 18–29. Weighted naively such a poll is far off; a multilevel logistic model of the vote
by state, age, sex, race, education, party, ideology and 2008 vote, post-stratified to the population's cells,
recovers each state. This script simulates a poll of that shape (`jaxmlm.datasets.simulate.xbox_poll`), fits the
model, post-stratifies it with 1000 joint draws, prints the state estimates against the truth and the raw poll
and, when matplotlib is installed, saves the MRP plot.

Run:  python examples/xbox.py [--n 750148] [--no-interactions] [--draws 1000] [--theta-uncertainty]
      [--plot xbox_mrp.png]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

import jaxmlm as jm
from jaxmlm.datasets.simulate import xbox_formula, xbox_poll


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=750_148, help="interviews (default: the Xbox poll's 750,148)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-interactions", action="store_true", help="leave out (1|state:age) and (1|sex:race)")
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--theta-uncertainty", action="store_true",
                        help="draw θ from its normal approximation too (wider intervals, θ̂ itself uncertain)")
    parser.add_argument("--plot", default="xbox_mrp.png", help="where to save the plot ('' for none)")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    poll = xbox_poll(args.n, seed=args.seed)
    t_sim = time.perf_counter() - start
    share = lambda col: (poll.cells.groupby(col, observed=True)["n"].sum() / poll.cells["n"].sum())  # noqa: E731
    print(f"poll: {args.n:,} interviews in {len(poll.cells):,} binomial cells "
          f"({share('sex')['male']:.0%} men, {share('age')['18-29']:.0%} aged 18-29); "
          f"population frame: {len(poll.population):,} cells  [{t_sim:.1f} s]")

    formula = xbox_formula(interactions=not args.no_interactions)
    start = time.perf_counter()
    fit = jm.glmer(formula, poll.cells, family="binomial")
    t_fit = time.perf_counter() - start
    print(f"\n{formula}\nfitted in {t_fit:.1f} s (first fit in this process: includes compiling)")
    print(fit.varcorr()[["grp", "sdcor"]].to_string(index=False))

    start = time.perf_counter()
    mrp = jm.poststratify(fit, poll.population, weight="N", by=["state"], draws=args.draws, seed=1,
                          theta_uncertainty=args.theta_uncertainty)
    t_mrp = time.perf_counter() - start
    national = jm.poststratify(fit, poll.population, weight="N", by=[], draws=args.draws, seed=1,
                               theta_uncertainty=args.theta_uncertainty)
    print(f"post-stratified {len(poll.population):,} cells × {args.draws} draws in {t_mrp:.1f} s")

    table = (pd.DataFrame({"truth": poll.truth, "raw poll": poll.raw})
             .join(mrp.set_index("state")[["estimate", "lower", "upper"]].rename(columns={"estimate": "MRP"})))
    pd.set_option("display.width", 120)
    print("\n" + table.round(3).to_string())
    for col in ["raw poll", "MRP"]:
        err = (table[col] - table["truth"]).abs()
        print(f"{col:>9}: mean absolute error {err.mean():.3f}, worst {err.max():.3f}")
    covered = ((table["lower"] <= table["truth"]) & (table["truth"] <= table["upper"])).mean()
    print(f"95% intervals cover the truth in {covered:.0%} of states")
    population = poll.population
    truth = float(np.sum(population["N"] * population["p_true"]) / population["N"].sum())
    row = national.iloc[0]
    print(f"national: truth {truth:.3f}, raw poll {poll.cells['yes'].sum() / poll.cells['n'].sum():.3f}, "
          f"MRP {row['estimate']:.3f} [{row['lower']:.3f}, {row['upper']:.3f}]")
    if args.plot:
        _plot(mrp, poll, args.plot)


def _plot(mrp: pd.DataFrame, poll, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot)")
        return
    table = mrp.set_index("state").join(poll.truth).join(poll.raw).sort_values("truth")
    fig, ax = plt.subplots(figsize=(7, 6))
    ax.errorbar(table["truth"], table["estimate"], yerr=[table["estimate"] - table["lower"],
                table["upper"] - table["estimate"]], fmt="o", ms=4, label="MRP (95% interval)")
    ax.plot(table["truth"], table["raw poll"], "x", color="grey", label="raw poll")
    lims = [min(table[["truth", "lower", "raw poll"]].min()), max(table[["truth", "upper", "raw poll"]].max())]
    ax.plot(lims, lims, color="black", lw=0.8)
    ax.set_xlabel("true state share")
    ax.set_ylabel("estimate")
    ax.set_title("Xbox-shaped poll: state estimates against the truth")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"plot saved to {path}")


if __name__ == "__main__":
    main()
