"""Power by simulation: 1000 simulations of sleepstudy's `Reaction ~ Days + (Days | Subject)` with the Days effect
set to 3 (ms per day), each tested by the likelihood ratio of ML fits with and without Days.

* jaxmlm: `jm.power_sim(fit, "Days", n_sim=1000, effect=3)`: responses simulated in JAX, the full and reduced
  models each fitted to all 1000 in one vmapped batch. cold_s is the first call in the process (compiling
  included), warm_s a second call with another seed.
* lme4 (simr's method, since simr is not packaged for Debian): simulate(fit, newparams=) then, per simulation,
  refit() of both models and anova() — the loop simr's powerSim runs. Timed once (the loop is its own warm run).
* jaxmlm on lme4's responses: `power_sim(..., responses=Y)` on the very responses lme4 simulated, so that the two
  powers differ only where the fits do (lme4 sometimes stops short of the reduced model's optimum).

Run alone (`python benchmarks/bench_power.py`, prints a markdown table and the powers) or call `run(results)`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import numpy as np

import jaxmlm as jm
from jaxmlm.inference._power import clopper_pearson

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

FORMULA = "Reaction ~ Days + (Days | Subject)"
N_SIM = 1000
EFFECT = 3.0


def _jaxmlm(results: list) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jm.lmer(FORMULA, jm.datasets.load("sleepstudy"), reml=False)
        for seed, key in ((0, "cold_s"), (1, "warm_s")):
            t = time.perf_counter()
            res = jm.power_sim(fit, "Days", n_sim=N_SIM, effect=EFFECT, seed=seed)
            elapsed = time.perf_counter() - t
            if key == "cold_s":
                row = dict(workload="power_sim_1000", engine="jaxmlm", cold_s=elapsed)
            else:
                row["warm_s"] = elapsed
        row.update(power=res.power, lower=res.lower, upper=res.upper, n_sim=res.n_sim)
        results.append(row)


_R_CODE = r"""
suppressMessages({library(lme4); library(jsonlite)})
data(sleepstudy, package = "lme4")
fit1 <- lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE)
fit0 <- lmer(Reaction ~ 1 + (Days | Subject), sleepstudy, REML = FALSE)
beta <- fixef(fit1); beta[["Days"]] <- %f
t0 <- proc.time()[["elapsed"]]
sims <- simulate(fit1, nsim = %d, seed = 1,
                 newparams = list(beta = beta, theta = getME(fit1, "theta"), sigma = sigma(fit1)))
p <- vapply(sims, function(y) {
  f1 <- suppressMessages(suppressWarnings(refit(fit1, y)))
  f0 <- suppressMessages(suppressWarnings(refit(fit0, y)))
  suppressMessages(anova(f0, f1))[["Pr(>Chisq)"]][2]
}, numeric(1))
elapsed <- proc.time()[["elapsed"]] - t0
write.csv(as.matrix(sims), "%s", row.names = FALSE)
cat(toJSON(list(seconds = elapsed, power = mean(p < 0.05), n_sim = length(p)), digits = NA, auto_unbox = TRUE))
"""


def _lme4(results: list) -> None:
    if shutil.which("Rscript") is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sims.csv")
        out = subprocess.run(["Rscript", "-e", _R_CODE % (EFFECT, N_SIM, path)], capture_output=True, text=True)
        if out.returncode != 0:
            return
        Y = np.loadtxt(path, delimiter=",", skiprows=1)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    lower, upper = clopper_pearson(int(round(got["power"] * got["n_sim"])), got["n_sim"])
    results.append(dict(workload="power_sim_1000", engine="lme4 loop (simr's method)", cold_s=got["seconds"],
                        warm_s=got["seconds"], power=got["power"], lower=lower, upper=upper, n_sim=got["n_sim"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = jm.lmer(FORMULA, jm.datasets.load("sleepstudy"), reml=False)
        t = time.perf_counter()
        res = jm.power_sim(fit, "Days", responses=Y)
        elapsed = time.perf_counter() - t
    results.append(dict(workload="power_sim_1000", engine="jaxmlm on lme4's responses", cold_s=elapsed,
                        warm_s=elapsed, power=res.power, lower=res.lower, upper=res.upper, n_sim=res.n_sim))


def run(results: list) -> list:
    _jaxmlm(results)
    _lme4(results)
    return results


def markdown(results: list) -> str:
    lines = ["| workload | engine | cold (s) | warm (s) | power (95% CI) |", "|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['workload']} | {r['engine']} | {r['cold_s']:.3g} | {r['warm_s']:.3g} | "
                     f"{100 * r['power']:.1f}% ({100 * r['lower']:.1f}, {100 * r['upper']:.1f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run([])))
