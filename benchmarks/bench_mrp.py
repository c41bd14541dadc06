"""MRP end to end on an Xbox-shaped poll: fit + post-stratification with 1000-draw intervals, jaxmlm against lme4.

One run simulates the poll (`jaxmlm.datasets.simulate.xbox_poll`), writes its binomial cells and the population
frame to CSV, and then, each in a fresh child process reading those files:
* jaxmlm: `glmer` (cold: compiling included, no persistent compilation cache; then warm, the same fit again,
  `--warm` times: the median is `fit_warm_s`, every run's wall and CPU seconds are kept) and
  `poststratify(..., by=["state"], draws=1000)` (cold, then warm);
* lme4 (Rscript): `glmer` with its defaults, then predict(newdata = population, type = "response",
  allow.new.levels = TRUE) and the weighted sum by state (point estimates: lme4 has no interval for this).
The table compares times, the deviance and the state estimates; the JSON goes to benchmarks/results/mrp_<n>.json
(mrp_<n>_no_r.json without lme4, so that a jaxmlm-only run leaves the side-by-side record alone; with
`--stored-r` lme4 is not run again but its record is taken from the stored mrp_<n>.json, which is rewritten with
the new jaxmlm numbers beside it).

Run:  python benchmarks/bench_mrp.py [--n 750148] [--interactions] [--no-r | --stored-r] [--draws 1000] [--warm 1]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

RESULTS = pathlib.Path(__file__).parent / "results"

_R_SCRIPT = r"""
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
args <- commandArgs(trailingOnly = TRUE)
cells <- read.csv(args[1], stringsAsFactors = TRUE)
pop <- read.csv(args[2], stringsAsFactors = TRUE)
formula <- as.formula(args[3])
t0 <- proc.time()[["elapsed"]]
fit <- glmer(formula, data = cells, family = binomial)
t1 <- proc.time()[["elapsed"]]
mu <- predict(fit, newdata = pop, type = "response", allow.new.levels = TRUE)
est <- tapply(pop$N * mu, pop$state, sum) / tapply(pop$N, pop$state, sum)
t2 <- proc.time()[["elapsed"]]
cat(toJSON(list(fit_s = t1 - t0, predict_sum_s = t2 - t1, deviance = -2 * as.numeric(logLik(fit)),
                state = names(est), estimate = as.numeric(est),
                version = as.character(packageVersion("lme4"))), digits = NA, auto_unbox = TRUE))
"""


def _child_jaxmlm(cells_csv: str, pop_csv: str, formula: str, draws: int, warm: int = 1) -> dict:
    import numpy as np
    import pandas as pd

    import jaxmlm as jm

    cells, pop = pd.read_csv(cells_csv), pd.read_csv(pop_csv)
    out = {"fit_warm_runs": []}
    for run in ["cold"] + ["warm"] * warm:
        start, cpu = time.perf_counter(), time.process_time()
        fit = jm.glmer(formula, cells, family="binomial")
        seconds = (time.perf_counter() - start, time.process_time() - cpu)
        if run == "cold":
            out["fit_cold_s"], out["fit_cold_cpu_s"] = seconds
        else:
            out["fit_warm_runs"].append(dict(wall_s=seconds[0], cpu_s=seconds[1], load=os.getloadavg()[0]))
        if run == "cold" or len(out["fit_warm_runs"]) == 1:
            start = time.perf_counter()
            table = jm.poststratify(fit, pop, weight="N", by=["state"], draws=draws, seed=1)
            out[f"poststratify_{run}_s"] = time.perf_counter() - start
    out["fit_warm_s"] = float(np.median([r["wall_s"] for r in out["fit_warm_runs"]]))
    out["fit_warm_cpu_s"] = float(np.median([r["cpu_s"] for r in out["fit_warm_runs"]]))
    out.update(deviance=float(fit.deviance), converged=bool(fit.converged), state=list(table["state"].astype(str)),
               estimate=table["estimate"].tolist(), lower=table["lower"].tolist(), upper=table["upper"].tolist())
    return out


def _run_child(args: list[str], env: dict) -> dict:
    proc = subprocess.run(args, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="MRP on an Xbox-shaped poll: jaxmlm against lme4")
    parser.add_argument("--n", type=int, default=750_148)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--interactions", action="store_true", help="add (1|state:age) and (1|sex:race)")
    parser.add_argument("--no-r", action="store_true", help="skip lme4")
    parser.add_argument("--stored-r", action="store_true",
                        help="take lme4's record from the stored mrp_<n>.json instead of running it again")
    parser.add_argument("--warm", type=int, default=1, help="warm fits after the cold one (median reported)")
    parser.add_argument("--child", nargs=5, metavar=("CELLS", "POP", "FORMULA", "DRAWS", "WARM"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        cells_csv, pop_csv, formula, draws, warm = args.child
        print(json.dumps(_child_jaxmlm(cells_csv, pop_csv, formula, int(draws), int(warm))))
        return

    import numpy as np

    from jaxmlm.datasets.simulate import xbox_formula, xbox_poll

    poll = xbox_poll(args.n, seed=0)
    formula = xbox_formula(args.interactions)
    record = dict(n_interviews=args.n, n_cells=len(poll.cells), n_population_cells=len(poll.population),
                  formula=formula, draws=args.draws, cpu_count=os.cpu_count())
    with tempfile.TemporaryDirectory() as tmp:
        cells_csv, pop_csv = os.path.join(tmp, "cells.csv"), os.path.join(tmp, "population.csv")
        poll.cells.to_csv(cells_csv, index=False)
        poll.population.drop(columns="p_true").to_csv(pop_csv, index=False)
        env = dict(os.environ, JAXMLM_NO_CACHE="1")
        record["load_average_before"] = os.getloadavg()
        record["jaxmlm"] = _run_child([sys.executable, __file__, "--child", cells_csv, pop_csv, formula,
                                       str(args.draws), str(args.warm)], env)
        RESULTS.mkdir(exist_ok=True)  # kept should lme4 not finish
        (RESULTS / f"mrp_{args.n}_jaxmlm_only.json").write_text(json.dumps(record, indent=1))
        if args.stored_r:
            stored = json.loads((RESULTS / f"mrp_{args.n}{'_interactions' if args.interactions else ''}.json")
                                .read_text())
            record["lme4"] = dict(stored["lme4"], stored=True)  # from an earlier run of this script
        elif not args.no_r:
            script = os.path.join(tmp, "mrp.R")
            pathlib.Path(script).write_text(_R_SCRIPT)
            start = time.perf_counter()
            record["lme4"] = _run_child(["Rscript", script, cells_csv, pop_csv, formula], dict(os.environ))
            record["lme4"]["process_s"] = time.perf_counter() - start
        record["load_average_after"] = os.getloadavg()
    truth = poll.truth.reindex(record["jaxmlm"]["state"]).to_numpy()
    jx = record["jaxmlm"]
    est = np.asarray(jx["estimate"])
    jx["mean_abs_error"] = float(np.mean(np.abs(est - truth)))
    jx["coverage"] = float(np.mean((np.asarray(jx["lower"]) <= truth) & (truth <= np.asarray(jx["upper"]))))
    record["raw_mean_abs_error"] = float(np.nanmean(np.abs(poll.raw.reindex(jx["state"]).to_numpy() - truth)))
    if "lme4" in record:
        lme4_est = dict(zip(record["lme4"]["state"], record["lme4"]["estimate"]))
        record["max_abs_estimate_difference"] = float(np.max(np.abs(est - [lme4_est[s] for s in jx["state"]])))
    _report(record)
    RESULTS.mkdir(exist_ok=True)
    name = f"mrp_{args.n}{'_interactions' if args.interactions else ''}{'_no_r' if args.no_r else ''}.json"
    (RESULTS / name).write_text(json.dumps(record, indent=1))
    (RESULTS / f"mrp_{args.n}_jaxmlm_only.json").unlink(missing_ok=True)
    print(f"written to benchmarks/results/{name}")


def _report(record: dict) -> None:
    jx = record["jaxmlm"]
    print(f"Xbox-shaped poll: {record['n_interviews']:,} interviews, {record['n_cells']:,} binomial cells, "
          f"{record['n_population_cells']:,} population cells; {record['draws']} draws")
    print(f"{'':>8} {'fit cold':>9} {'fit warm':>9} {'MRP cold':>9} {'MRP warm':>9} {'deviance':>14}")
    print(f"{'jaxmlm':>8} {jx['fit_cold_s']:9.1f} {jx['fit_warm_s']:9.1f} {jx['poststratify_cold_s']:9.2f} "
          f"{jx['poststratify_warm_s']:9.2f} {jx['deviance']:14.4f}")
    if "fit_cold_cpu_s" in jx:
        print(f"{'CPU s':>8} {jx['fit_cold_cpu_s']:9.1f} {jx['fit_warm_cpu_s']:9.1f}  (warm runs: "
              + ", ".join(f"{r['wall_s']:.1f}/{r['cpu_s']:.1f} s" for r in jx["fit_warm_runs"]) + ")")
    if "lme4" in record:
        r = record["lme4"]
        print(f"{'lme4':>8} {r['fit_s']:9.1f} {'':>9} {r['predict_sum_s']:9.2f} {'(point)':>9} {r['deviance']:14.4f}")
        print(f"largest difference between the two engines' state estimates: "
              f"{record['max_abs_estimate_difference']:.2e}")
    print(f"state estimates: mean absolute error {jx['mean_abs_error']:.4f} "
          f"(raw poll {record['raw_mean_abs_error']:.4f}), 95% intervals cover {jx['coverage']:.0%} of states")


if __name__ == "__main__":
    main()
