"""Families with a dispersion parameter on a 100k-row workload: jaxmlm against lme4 (glmer.nb, glmer Gamma),
glmmTMB (nbinom2, Gamma) through Rscript, and mixedlm (glmer_nb, glmer Gamma) when installed.

Workloads (simulated with a fixed seed, 1000 groups × 100 rows, one covariate):
* nb2_100k: y ~ x + (1 | g), negative binomial NB2 (θ = 2), log link.
* gamma_100k: y ~ x + (1 | g), Gamma (shape 2), log link.

Run alone (`python benchmarks/bench_families.py`: prints a markdown table and writes
benchmarks/results/families.json). cold_s: the first fit in the process (compiling included; for R the first fit
after loading the package); warm_s: a second fit of a fresh model on the same data. loglik on each engine's own
scale: jaxmlm and glmmTMB the proper Laplace likelihood, lme4 its own objective (docs/families.md).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

import jaxmlm as jm

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

HERE = os.path.dirname(os.path.abspath(__file__))
N_GROUPS, PER_GROUP = 1000, 100


def workload(name: str, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(N_GROUPS), PER_GROUP)
    x = rng.normal(size=g.size)
    b = rng.normal(scale=0.5, size=N_GROUPS)[g]
    mu = np.exp(0.5 + 0.4 * x + b)
    if name == "nb2_100k":
        y = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(float)
    else:
        y = rng.gamma(2.0, mu / 2.0)
    return pd.DataFrame({"y": y, "x": x, "g": [f"g{k}" for k in g]})


def _jaxmlm(name, data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name == "nb2_100k":
            fit = jm.glmer_nb("y ~ x + (1 | g)", data)
        else:
            fit = jm.glmer("y ~ x + (1 | g)", data, family=jm.families.Gamma(link="log"))
    return dict(loglik=float(fit.loglik), dispersion=float(fit.dispersion), fixef=fit.fixef.tolist())


MIXEDLM_LIMIT_S = 300  # one mixedlm fit is given this long (its NB fit on 100k rows ran past 10 minutes)


def _mixedlm(name, data):
    """One mixedlm fit in a child process, stopped after MIXEDLM_LIMIT_S."""
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "data.csv")
        data.to_csv(csv, index=False)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), "--mixedlm", name, csv],
                             capture_output=True, text=True, timeout=MIXEDLM_LIMIT_S, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _mixedlm_child(name, csv):
    import mixedlm

    data = pd.read_csv(csv)

    if name == "nb2_100k":
        fit = mixedlm.glmer_nb("y ~ x + (1 | g)", data)
    else:
        fit = mixedlm.glmer("y ~ x + (1 | g)", data, family=mixedlm.families.Gamma(link="log"))
    loglik = fit.logLik()
    print(json.dumps(dict(loglik=float(getattr(loglik, "value", loglik)))))


_R_CODE = r"""
suppressMessages({{library(lme4); library(glmmTMB)}})
d <- read.csv("{csv}"); d$g <- factor(d$g)
fit_one <- function() {{ {call} }}
t0 <- proc.time()[["elapsed"]]; f <- fit_one(); t1 <- proc.time()[["elapsed"]]
f <- fit_one(); t2 <- proc.time()[["elapsed"]]
cat(jsonlite::toJSON(list(cold = t1 - t0, warm = t2 - t1, loglik = as.numeric(logLik(f))), auto_unbox = TRUE,
                     digits = NA))
"""

_R_CALLS = {
    ("nb2_100k", "lme4"): "glmer.nb(y ~ x + (1 | g), d)",
    ("nb2_100k", "glmmTMB"): "glmmTMB(y ~ x + (1 | g), d, family = nbinom2)",
    ("gamma_100k", "lme4"): "glmer(y ~ x + (1 | g), d, family = Gamma(link = 'log'))",
    ("gamma_100k", "glmmTMB"): "glmmTMB(y ~ x + (1 | g), d, family = Gamma(link = 'log'))",
}


def _r(name, engine, data):
    with tempfile.TemporaryDirectory() as tmp:
        csv = os.path.join(tmp, "data.csv")
        data.to_csv(csv, index=False)
        code = _R_CODE.format(csv=csv, call=_R_CALLS[(name, engine)])
        out = subprocess.run(["Rscript", "-e", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def _python_engine(results, name, engine, fn, data):
    print(f"{name}: {engine}", file=sys.stderr, flush=True)
    try:
        out, cold = _timed(lambda: fn(name, data))
        # mixedlm runs in a fresh process each time: its one timing is reported as cold, the same again as warm
        _, warm = (None, cold) if engine == "mixedlm" else _timed(lambda: fn(name, data))
        results.append(dict(workload=name, engine=engine, cold_s=cold, warm_s=warm, **out))
    except Exception as exc:  # an engine that cannot fit a workload is reported, not fatal
        if isinstance(exc, subprocess.TimeoutExpired):  # its message holds the command line: say what happened
            message = f"TimeoutExpired: the {engine} fit did not finish within {exc.timeout:.0f} seconds"
        else:
            message = f"{type(exc).__name__}: {exc}"[:200]
        results.append(dict(workload=name, engine=engine, error=message))


def _save(results: list) -> None:
    """Results so far, after every engine (an R fit on 100k rows can take many minutes)."""
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "families.json"), "w") as fh:
        json.dump(results, fh, indent=1)


def run(results: list, save: bool = False) -> list:
    for name in ("nb2_100k", "gamma_100k"):
        data = workload(name)
        _python_engine(results, name, "jaxmlm", _jaxmlm, data)
        if save:
            _save(results)
        _python_engine(results, name, "mixedlm", _mixedlm, data)
        if save:
            _save(results)
        if shutil.which("Rscript"):
            for engine in ("lme4", "glmmTMB"):
                print(f"{name}: {engine}", file=sys.stderr, flush=True)
                try:
                    r = _r(name, engine, data)
                    results.append(dict(workload=name, engine=engine, cold_s=r["cold"], warm_s=r["warm"],
                                        loglik=r["loglik"]))
                except subprocess.CalledProcessError as exc:
                    results.append(dict(workload=name, engine=engine, error=exc.stderr[-200:]))
                if save:
                    _save(results)
    return results


def markdown(results: list) -> str:
    lines = ["| workload | engine | cold (s) | warm (s) | logLik |", "|---|---|---|---|---|"]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['workload']} | {r['engine']} | – | – | failed: {r['error'][:80]} |")
        else:
            lines.append(f"| {r['workload']} | {r['engine']} | {r['cold_s']:.2f} | {r['warm_s']:.2f} | "
                         f"{r['loglik']:.3f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--mixedlm":
        _mixedlm_child(sys.argv[2], sys.argv[3])
        raise SystemExit
    print(markdown(run([], save=True)))
