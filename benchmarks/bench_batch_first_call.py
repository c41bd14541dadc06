"""A linear batch's first call (compile included) and its warm time, each workload in a fresh process.

Workloads (`python benchmarks/bench_batch_first_call.py [name ...]`):
* sleepstudy_2000: 2000 responses simulated from sleepstudy's REML fit, on its design (bench_batch.py's);
* dyestuff_100k: 100 000 responses on Dyestuff's design (tests/test_memory.py's 100k batch);
* ar1_3: the ar1() model of tests/test_structures_batch.py, 3 responses, ML;
* missing_200: 200 sleepstudy responses with a tenth of their rows missing (missing-value chunks).

Prints one JSON line per workload: first_cpu_s / first_wall_s (the first fit_batch call: compile and run;
CPU = user + system of the process), warm_cpu_s / warm_wall_s (the median of three later calls), the objective's
sum (a check that the numbers did not move), and the load average when it started.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
import warnings

import numpy as np

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

WORKLOADS = ("sleepstudy_2000", "dyestuff_100k", "ar1_3", "missing_200")


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _setup(name):
    import jaxmlm as jm

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if name in ("sleepstudy_2000", "missing_200"):
            model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
            m = 2000 if name == "sleepstudy_2000" else 200
            Y = np.array(model.fit("reml").simulate(m, seed=2024).to_numpy())
            if name == "missing_200":
                Y[np.random.default_rng(1).random(Y.shape) < 0.1] = np.nan
            return model, Y, "reml"
        if name == "dyestuff_100k":
            model = jm.Model("Yield ~ 1 + (1 | Batch)", jm.datasets.load("Dyestuff"))
            rng = np.random.default_rng(5)
            Y = model.fit("reml").simulate(16, seed=6).to_numpy()[:, rng.integers(0, 16, size=100_000)]
            return model, Y + rng.normal(scale=5.0, size=Y.shape), "reml"
        sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
        from tests.test_covariance_structures import _ar1_data

        model = jm.Model("y ~ time + ar1(0 + ftime | g)", _ar1_data())
        fit = model.fit(method="ml")
        return model, np.column_stack([model.design.y, fit.simulate(2, seed=4).to_numpy()]), "ml"


def _one(name) -> dict:
    model, Y, method = _setup(name)
    load = os.getloadavg()[0]
    c, t = _cpu(), time.perf_counter()
    batch = model.fit_batch(Y, method=method, progress=False)
    first = dict(first_cpu_s=_cpu() - c, first_wall_s=time.perf_counter() - t)
    runs = []
    for _ in range(1 if name == "dyestuff_100k" else 3):
        c, t = _cpu(), time.perf_counter()
        model.fit_batch(Y, method=method, progress=False)
        runs.append((_cpu() - c, time.perf_counter() - t))
    cpu, wall = np.median(np.array(runs), axis=0)
    return dict(workload=name, load=load, compile=os.environ.get("JAXMLM_COMPILE", "auto"), **first,
                warm_cpu_s=float(cpu), warm_wall_s=float(wall), objective_sum=float(np.nansum(batch.objective)),
                converged=int(batch.converged.sum()), n=int(Y.shape[1]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        print(json.dumps(_one(sys.argv[2])))
    else:
        for name in sys.argv[1:] or WORKLOADS:
            subprocess.run([sys.executable, __file__, "--one", name], check=True)
