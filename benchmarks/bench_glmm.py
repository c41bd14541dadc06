"""GLMM fits: jaxmlm against lme4's glmer (through Rscript, when R is installed) and mixedlm's glmer.

Workloads (Laplace, binomial logit):
* contraception: use ~ age + I(age^2) + urban + livch + (1 | district) on Contraception (1934 rows, 60 districts).
* crossed_binomial: y ~ x + (1 | subj) + (1 | item) on tests/reference/glmm_crossed.csv (1200 rows, 30 × 20 crossed).

Run alone (`python benchmarks/bench_glmm.py`, prints a markdown table) or import and call `run(results)`, which
appends one dict per workload and engine: workload, engine, cold_s (first fit in this process: model building and
compiling included; for R, the first glmer call after loading lme4), warm_s (second fit), objective (-2 logLik).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
import warnings

import pandas as pd

import jaxmlm as jm

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

HERE = os.path.dirname(os.path.abspath(__file__))
CROSSED_CSV = os.path.join(os.path.dirname(HERE), "tests", "reference", "glmm_crossed.csv")

WORKLOADS = {
    "contraception": ("use ~ age + I(age^2) + urban + livch + (1 | district)", "Contraception"),
    "crossed_binomial": ("y ~ x + (1 | subj) + (1 | item)", "crossed"),
}


def _data(name: str) -> pd.DataFrame:
    if name == "crossed":
        return pd.read_csv(CROSSED_CSV, dtype={"subj": str, "item": str})
    return jm.datasets.load(name)


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _jaxmlm(formula, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(jm.glmer(formula, data, family="binomial").objective)


def _mixedlm(formula, data):
    import mixedlm

    fit = mixedlm.glmer(formula, data, family=mixedlm.families.Binomial())
    return float(-2.0 * fit.logLik())


_R_CODE = r"""
suppressMessages(library(lme4))
d <- read.csv("{csv}", stringsAsFactors = TRUE)
for (col in c({factors})) d[[col]] <- factor(d[[col]])
if ("use" %in% names(d)) d$use <- factor(d$use, levels = c("N", "Y"))
if ("livch" %in% names(d)) d$livch <- factor(d$livch, levels = c("0", "1", "2", "3+"))
t0 <- proc.time()[["elapsed"]]; f <- glmer({formula}, d, family = binomial); t1 <- proc.time()[["elapsed"]]
f <- glmer({formula}, d, family = binomial); t2 <- proc.time()[["elapsed"]]
cat(jsonlite::toJSON(list(cold = t1 - t0, warm = t2 - t1, objective = -2 * as.numeric(logLik(f))), auto_unbox = TRUE, digits = NA))
"""


def _glmer(formula, data, factors):
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "data.csv")
        data.to_csv(csv, index=False)
        code = _R_CODE.format(csv=csv, formula=formula, factors=", ".join(f'"{f}"' for f in factors))
        out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(results: list) -> list:
    for workload, (formula, source) in WORKLOADS.items():
        data = _data(source)
        factors = ["district", "urban"] if source == "Contraception" else ["subj", "item"]
        obj, cold = _timed(lambda: _jaxmlm(formula, data))
        _, warm = _timed(lambda: _jaxmlm(formula, data))
        results.append(dict(workload=workload, engine="jaxmlm", cold_s=cold, warm_s=warm, objective=obj))
        try:
            mformula = formula.replace("I(age^2)", "I(age**2)")
            obj, cold = _timed(lambda: _mixedlm(mformula, data))
            _, warm = _timed(lambda: _mixedlm(mformula, data))
            results.append(dict(workload=workload, engine="mixedlm", cold_s=cold, warm_s=warm, objective=obj))
        except Exception as exc:  # an engine that cannot fit a workload is reported, not fatal
            results.append(dict(workload=workload, engine="mixedlm", cold_s=None, warm_s=None, objective=None,
                                error=f"{type(exc).__name__}: {exc}"[:200]))
        if shutil.which("Rscript"):
            try:
                r = _glmer(formula, data, factors)
                results.append(dict(workload=workload, engine="lme4", cold_s=r["cold"], warm_s=r["warm"],
                                    objective=r["objective"]))
            except subprocess.CalledProcessError as exc:
                results.append(dict(workload=workload, engine="lme4", cold_s=None, warm_s=None, objective=None,
                                    error=exc.stderr[-200:]))
    return results


def markdown(results: list) -> str:
    best = {}
    for r in results:
        if r.get("objective") is not None:
            best[r["workload"]] = min(best.get(r["workload"], float("inf")), r["objective"])
    lines = ["| workload | engine | cold (s) | warm (s) | -2 logLik | Δ best |", "|---|---|---|---|---|---|"]
    for r in results:
        if r.get("objective") is None:
            lines.append(f"| {r['workload']} | {r['engine']} | – | – | failed: {r.get('error', '')[:60]} | |")
            continue
        delta = (r["objective"] - best[r["workload"]]) / abs(best[r["workload"]])
        lines.append(f"| {r['workload']} | {r['engine']} | {r['cold_s']:.3f} | {r['warm_s']:.3f} | "
                     f"{r['objective']:.6f} | {delta:.1e} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(run([])))
