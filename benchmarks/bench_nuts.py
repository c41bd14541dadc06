"""NUTS on the MRP cells model: jaxmlm's `Model.sample` against rstanarm's `stan_glmer`, same model, same poll.

The poll: `xbox_poll(5000, seed=0)` (Xbox-shaped, eight factors), as binomial cells; the model:
`xbox_formula()` (an intercept, eight scalar terms, state × age and sex × race). Both samplers run 4 chains with
rstanarm's default priors (jaxmlm: prior="rstanarm"), warmup = draws. Reported per sampler: wall time (jaxmlm's
includes compiling; rstanarm's model is precompiled), min bulk ESS and max split R-hat over every parameter
(intercept, sds, every random effect) and over the hyperparameters alone (intercept and sds), min ESS per second
of wall time and per CPU second (the machine may be shared). The R script is benchmarks/nuts_rstanarm.R; the JSON goes to benchmarks/results/nuts.json.

Run:  python benchmarks/bench_nuts.py [--draws 1000] [--r-draws 1000] [--no-r] [--r-json previous.json]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import tempfile
import time

HERE = pathlib.Path(__file__).parent
RESULTS = HERE / "results"


def run_jaxmlm(cells_csv: str, draws: int, chains: int, prior: str) -> dict:
    import numpy as np
    import pandas as pd

    import jaxmlm as jm
    from jaxmlm.bayes._posterior import ess_bulk, split_rhat
    from jaxmlm.datasets.simulate import xbox_formula

    model = jm.Model(xbox_formula(), pd.read_csv(cells_csv), family="binomial")
    start, cpu_start = time.perf_counter(), time.process_time()
    post = model.sample(chains=chains, draws=draws, warmup=draws, seed=1, prior=prior)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    table = post.summary()
    effects = [b[:, :, level, 0] for b in post._b for level in range(b.shape[2])]
    ess_all = min(table["ess_bulk"].min(), min(ess_bulk(x) for x in effects))
    rhat_all = max(table["r_hat"].max(), max(split_rhat(x) for x in effects))
    steps = np.asarray(post.mcmc.get_extra_fields()["num_steps"])
    return dict(wall_s=wall, cpu_s=cpu, chains=chains, warmup=draws, draws=draws, prior=prior, cells=int(model.design.n),
                min_ess_bulk=float(ess_all), max_rhat=float(rhat_all),
                min_ess_bulk_hyper=float(table["ess_bulk"].min()), max_rhat_hyper=float(table["r_hat"].max()),
                ess_per_s=float(ess_all / wall), ess_per_cpu_s=float(ess_all / cpu), mean_leapfrog_steps=float(steps.mean()),
                divergences=post.divergences, intercept_mean=float(table.loc["(Intercept)", "mean"]),
                intercept_sd=float(table.loc["(Intercept)", "sd"]),
                sd_mean={name: float(row["mean"]) for name, row in table.iterrows() if name.startswith("sd_")})


def run_rstanarm(cells_csv: str, draws: int, chains: int, out: pathlib.Path) -> dict:
    from jaxmlm.datasets.simulate import xbox_formula

    cmd = ["Rscript", str(HERE / "nuts_rstanarm.R"), cells_csv, xbox_formula(), str(chains), str(2 * draws), str(out)]
    subprocess.run(cmd, check=True)
    result = json.loads(out.read_text())
    result["ess_per_s"] = result["min_ess_bulk"] / result["wall_s"]
    result["ess_per_cpu_s"] = result["min_ess_bulk"] / result["cpu_s"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--r-draws", type=int, default=1000, help="rstanarm's draws per chain (warmup the same)")
    parser.add_argument("--no-r", action="store_true")
    parser.add_argument("--r-json", help="reuse a result written by nuts_rstanarm.R instead of running it")
    parser.add_argument("--out", default=str(RESULTS / "nuts.json"))
    args = parser.parse_args()
    from jaxmlm.datasets.simulate import xbox_poll

    with tempfile.TemporaryDirectory() as tmp:
        cells_csv = str(pathlib.Path(tmp) / "cells.csv")
        xbox_poll(args.n, seed=0).cells.to_csv(cells_csv, index=False)
        result = dict(poll_interviews=args.n,
                      jaxmlm=run_jaxmlm(cells_csv, args.draws, args.chains, "rstanarm"))
        if args.r_json:
            r = json.loads(pathlib.Path(args.r_json).read_text())
            r.update(ess_per_s=r["min_ess_bulk"] / r["wall_s"], ess_per_cpu_s=r["min_ess_bulk"] / r["cpu_s"])
            result["rstanarm"] = r
        elif not args.no_r:
            result["rstanarm"] = run_rstanarm(cells_csv, args.r_draws, args.chains, pathlib.Path(tmp) / "r.json")
    pathlib.Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name in ("jaxmlm", "rstanarm"):
        if name in result:
            r = result[name]
            print(f"{name:9s} {r['chains']}×{r['draws']}: {r['wall_s']:7.1f} s  min bulk ESS {r['min_ess_bulk']:7.1f}  "
                  f"max R-hat {r['max_rhat']:.4f}  ESS/s {r['ess_per_s']:.2f}  ESS/CPU-s {r['ess_per_cpu_s']:.2f}", file=sys.stderr)


if __name__ == "__main__":
    main()
