"""Inference after the fit: jaxmlm against lme4 (and lmerTest) through Rscript, when R is installed.

Workloads (each engine times only the inference step, on a model it has already fitted):
* profile_lmm: profile-likelihood intervals of sleepstudy's `Reaction ~ Days + (Days | Subject)` by ML (confint).
* profile_glmm: profile-likelihood intervals of cbpp's binomial `period + (1 | herd)` model (confint, Laplace).
* bootstrap_glmm: 500 parametric bootstrap refits of that cbpp model (jaxmlm: `fit.bootstrap`, one vmapped batch;
  lme4: bootMer with the fixed effects and θ as the statistic).
* satterthwaite: lmerTest's t-tests (Satterthwaite df) for grouseticks' `log(1 + TICKS) ~ YEAR + cHEIGHT +
  (1 | LOCATION) + (1 | BROOD)` (jaxmlm: `fit.t_tests()`; lmerTest: as_lmerModLmerTest + summary, its Hessian and
  Jacobian by numerical differentiation).

cold_s is the first call in the process (compiling included for jaxmlm), warm_s the same call on a second fit.
Run alone (`python benchmarks/bench_inference.py`, prints a markdown table) or call `run(results)`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import warnings

import jaxmlm as jm

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

SLEEP = "Reaction ~ Days + (Days | Subject)"
CBPP = "cbind(incidence, size - incidence) ~ period + (1 | herd)"
TICKS = "log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD)"
N_BOOT = 500


def _fits():
    return dict(
        profile_lmm=lambda: jm.lmer(SLEEP, jm.datasets.load("sleepstudy"), reml=False),
        profile_glmm=lambda: jm.glmer(CBPP, jm.datasets.load("cbpp"), family="binomial"),
        bootstrap_glmm=lambda: jm.glmer(CBPP, jm.datasets.load("cbpp"), family="binomial"),
        satterthwaite=lambda: jm.lmer(TICKS, jm.datasets.load("grouseticks")),
    )


_STEPS = dict(
    profile_lmm=lambda fit: fit.confint(),
    profile_glmm=lambda fit: fit.confint(),
    bootstrap_glmm=lambda fit: fit.bootstrap(N_BOOT, seed=1, progress=False),
    satterthwaite=lambda fit: fit.t_tests(),
)


def _jaxmlm(results: list) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, make in _fits().items():
            times = []
            for _ in range(2):
                fit = make()
                t = time.perf_counter()
                _STEPS[name](fit)
                times.append(time.perf_counter() - t)
            results.append(dict(workload=name, engine="jaxmlm", cold_s=times[0], warm_s=times[1]))


_R_CODE = r"""
suppressMessages({library(lme4); library(lmerTest); library(jsonlite)})
data(sleepstudy, cbpp, grouseticks, package = "lme4")
timed <- function(make, step) {
  out <- c()
  for (i in 1:2) { fit <- make(); t0 <- proc.time()[["elapsed"]]; invisible(step(fit)); out <- c(out, proc.time()[["elapsed"]] - t0) }
  out
}
res <- list(
  profile_lmm = timed(function() lme4::lmer(Reaction ~ Days + (Days | Subject), sleepstudy, REML = FALSE),
                      function(f) suppressMessages(confint(f))),
  profile_glmm = timed(function() glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial),
                       function(f) suppressMessages(confint(f))),
  bootstrap_glmm = timed(function() glmer(cbind(incidence, size - incidence) ~ period + (1 | herd), cbpp, binomial),
                         function(f) suppressWarnings(bootMer(f, function(m) c(fixef(m), getME(m, "theta")),
                                                              nsim = %d, seed = 1))),
  satterthwaite = timed(function() lme4::lmer(log(1 + TICKS) ~ YEAR + cHEIGHT + (1 | LOCATION) + (1 | BROOD),
                                              grouseticks),
                        function(f) coef(summary(as_lmerModLmerTest(f))))
)
cat(toJSON(res, digits = NA))
"""


def _lme4(results: list) -> None:
    if shutil.which("Rscript") is None:
        return
    out = subprocess.run(["Rscript", "-e", _R_CODE % N_BOOT], capture_output=True, text=True)
    if out.returncode != 0:
        return
    for name, (cold, warm) in json.loads(out.stdout.strip().splitlines()[-1]).items():
        engine = "lmerTest" if name == "satterthwaite" else "lme4"
        results.append(dict(workload=name, engine=engine, cold_s=cold, warm_s=warm))


def run(results: list) -> list:
    _jaxmlm(results)
    _lme4(results)
    return results


def markdown(results: list) -> str:
    lines = ["| workload | engine | cold (s) | warm (s) |", "|---|---|---|---|"]
    for r in sorted(results, key=lambda r: (r["workload"], r["engine"])):
        lines.append(f"| {r['workload']} | {r['engine']} | {r['cold_s']:.3g} | {r['warm_s']:.3g} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run([])))
