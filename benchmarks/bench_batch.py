"""Many responses on one design: jaxmlm's fit_batch against a loop of mixedlm fits.

Workloads:
* sleepstudy_2000: 2000 responses simulated from the sleepstudy REML fit, fitted on its design (180 rows).
  mixedlm (one lmer per response) is timed on a loop of 50 fits and scaled to 2000.
* rows1000_20k: 20 000 responses on a 1000-row design (100 groups, random intercept and slope), jaxmlm only.

Run alone (`python benchmarks/bench_batch.py`) or import and call `run(results)`, which appends one dict per
workload and engine: workload, engine, cold_s (first call, compile included), warm_s (second call), objective
(mean over responses), per_response_ms, and for the mixedlm comparison the speed ratio.
"""

from __future__ import annotations

import os
import time
import warnings

import numpy as np
import pandas as pd

import jaxmlm as jm

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

FORMULA = "Reaction ~ Days + (Days | Subject)"


def _timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_sleepstudy(results: list, n_responses: int = 2000, n_loop: int = 50) -> None:
    data = jm.datasets.load("sleepstudy")
    model = jm.Model(FORMULA, data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit("reml")
    Y = fit.simulate(n_responses, seed=2024).to_numpy()
    batch, cold = _timed(lambda: model.fit_batch(Y, method="reml", progress=False))
    # warm: the median of three repeat calls (the machine's other load makes single timings noisy)
    warm_runs = [_timed(lambda: model.fit_batch(Y, method="reml", progress=False)) for _ in range(3)]
    batch, warm = warm_runs[-1][0], float(np.median([t for _, t in warm_runs]))
    row = dict(workload=f"sleepstudy_{n_responses}", engine="jaxmlm", cold_s=cold, warm_s=warm,
               objective=float(np.nanmean(batch.objective)), per_response_ms=1e3 * warm / n_responses,
               converged=int(batch.converged.sum()), n_responses=n_responses)
    results.append(row)
    try:
        import mixedlm
    except ImportError:
        return
    frame = data.copy()
    fits = []

    def loop():  # fits only; their objectives are read after the clock stops
        for j in range(n_loop):
            frame["Reaction"] = Y[:, j]
            fits.append(mixedlm.lmer(FORMULA, frame, REML=True))

    _, first = _timed(lambda: (frame.__setitem__("Reaction", Y[:, 0]), mixedlm.lmer(FORMULA, frame, REML=True)))
    _, t_loop = _timed(loop)
    objectives = [float(f.REMLcrit()) for f in fits]
    per = t_loop / n_loop
    gap = np.max(np.abs(np.array(objectives) - batch.objective[:n_loop]) / np.abs(batch.objective[:n_loop]))
    results.append(dict(workload=f"sleepstudy_{n_responses}", engine="mixedlm (loop)", cold_s=first + per * (n_responses - 1),
                        warm_s=per * n_responses, objective=float(np.mean(objectives)), per_response_ms=1e3 * per,
                        n_timed=n_loop, max_rel_objective_gap_vs_jaxmlm=float(gap)))
    row["speedup_vs_mixedlm"] = per / (warm / n_responses)


def bench_large(results: list, n_responses: int = 20_000, n_rows: int = 1000, n_groups: int = 100) -> None:
    rng = np.random.default_rng(7)
    g = np.repeat(np.arange(n_groups), n_rows // n_groups)
    x = rng.uniform(0, 10, n_rows)
    data = pd.DataFrame({"y": rng.normal(size=n_rows), "x": x, "g": g.astype(str)})
    model = jm.Model("y ~ x + (x | g)", data)
    b = rng.normal(size=(n_groups, 2, n_responses)) * np.array([1.0, 0.2])[None, :, None]
    Y = 1.0 + 0.5 * x[:, None] + b[g, 0] + b[g, 1] * x[:, None] + rng.normal(size=(n_rows, n_responses))
    batch, cold = _timed(lambda: model.fit_batch(Y, method="reml", progress=False))
    results.append(dict(workload=f"rows{n_rows}_{n_responses // 1000}k", engine="jaxmlm", cold_s=cold, warm_s=np.nan,
                        objective=float(np.nanmean(batch.objective)), per_response_ms=1e3 * cold / n_responses,
                        converged=int(batch.converged.sum()), n_responses=n_responses))


def run(results: list) -> list:
    bench_sleepstudy(results)
    bench_large(results)
    return results


if __name__ == "__main__":
    rows = run([])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(pd.DataFrame(rows).to_string(index=False))
