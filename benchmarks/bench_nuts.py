"""NUTS on the MRP cells model: jaxmlm's `Model.sample` against rstanarm's `stan_glmer`, same model, same poll.

The poll: `xbox_poll(5000, seed=0)` (Xbox-shaped, eight factors), as binomial cells; the model:
`xbox_formula()` (an intercept, eight scalar terms, state × age and sex × race). Both samplers run 4 chains with
rstanarm's default priors (jaxmlm: prior="rstanarm"), warmup = draws. Reported per sampler: wall time (jaxmlm's
includes compiling; rstanarm's model is precompiled), min bulk ESS and max split R-hat over every parameter
(intercept, sds, every random effect) and over the hyperparameters alone (intercept and sds), each
hyperparameter's bulk ESS and R-hat and each term's worst random effect, min ESS per second
of wall time and per CPU second (the machine may be shared). The R script is benchmarks/nuts_rstanarm.R; the JSON goes to benchmarks/results/nuts.json.

jaxmlm's wall time includes the point fit that sets the centring powers (`centring="fit"`, reported apart as
fit_s); `--centring prior` measures the earlier rule (half the sd prior's scale).

Run:  python benchmarks/bench_nuts.py [--n 5000] [--draws 1000] [--r-draws 1000] [--no-r] [--r-json previous.json]
                                      [--centring fit|prior] [--out results/nuts.json]
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


def run_jaxmlm(cells_csv: str, draws: int, chains: int, prior: str, centring: str) -> dict:
    import numpy as np
    import pandas as pd

    import jaxmlm as jm
    from jaxmlm.bayes._posterior import ess_bulk, split_rhat
    from jaxmlm.datasets.simulate import xbox_formula

    model = jm.Model(xbox_formula(), pd.read_csv(cells_csv), family="binomial")
    start, cpu_start = time.perf_counter(), time.process_time()
    fit = model.fit(warn=False) if centring == "fit" else None  # what sample(centring="fit") runs, timed apart
    fit_s = time.perf_counter() - start
    post = model.sample(chains=chains, draws=draws, warmup=draws, seed=1, prior=prior,
                        centring=fit if centring == "fit" else centring)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    table = post.summary()
    names = model.design.group_names
    per_term = {names[k]: dict(min_ess_bulk=float(min(ess_bulk(b[:, :, j, 0]) for j in range(b.shape[2]))),
                               max_rhat=float(max(split_rhat(b[:, :, j, 0]) for j in range(b.shape[2]))))
                for k, b in enumerate(post._b)}
    ess_all = min(table["ess_bulk"].min(), min(t["min_ess_bulk"] for t in per_term.values()))
    rhat_all = max(table["r_hat"].max(), max(t["max_rhat"] for t in per_term.values()))
    steps = np.asarray(post.mcmc.get_extra_fields()["num_steps"])
    return dict(wall_s=wall, fit_s=fit_s, cpu_s=cpu, chains=chains, warmup=draws, draws=draws, prior=prior,
                centring=centring, cells=int(model.design.n),
                hyper={name: dict(mean=float(row["mean"]), ess_bulk=float(row["ess_bulk"]), r_hat=float(row["r_hat"]))
                       for name, row in table.iterrows()},
                effects=per_term,
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
    parser.add_argument("--seed", type=int, default=0, help="the poll's seed")
    parser.add_argument("--centring", default="fit", choices=("fit", "prior"))
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
        xbox_poll(args.n, seed=args.seed).cells.to_csv(cells_csv, index=False)
        result = dict(poll_interviews=args.n, poll_seed=args.seed,
                      jaxmlm=run_jaxmlm(cells_csv, args.draws, args.chains, "rstanarm", args.centring))
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
    for group in ("hyper", "effects"):
        for name, row in result["jaxmlm"][group].items():
            ess, rhat = row.get("ess_bulk", row.get("min_ess_bulk")), row.get("r_hat", row.get("max_rhat"))
            print(f"  {name:24s} bulk ESS {ess:7.1f}  R-hat {rhat:.4f}", file=sys.stderr)


if __name__ == "__main__":
    main()
