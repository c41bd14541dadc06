"""Many designs at once: jm.fit_groups on 1,000 datasets against a loop of single jaxmlm fits and lme4.

The datasets (one long frame, `dataset` column) have 50-500 rows and 5-50 levels of g each, y ~ x + (x | g)
simulated with a random intercept and slope; every fit is ML. Side by side in one run:
* jaxmlm fit_groups: cold (first call in the process, compiles included) and warm (a second call);
* a loop of single `jm.lmer` fits: every dataset has its own shape, so every fit compiles. The loop is timed on
  the first `--loop` datasets and scaled to all of them (said so in the output);
* lme4 (Rscript, when R and lme4 are installed): a loop of lmer fits inside one R process, timed there.
Objectives are compared: fit_groups against the single fits of the subset and against lme4 for all datasets.

    python benchmarks/bench_groups.py [--datasets 1000] [--loop 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import pandas as pd

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

ROOT = pathlib.Path(__file__).resolve().parent.parent
FORMULA = "y ~ x + (x | g)"


def long_frame(n_datasets: int, seed: int = 1) -> pd.DataFrame:
    """n_datasets datasets stacked, each with its own rows (50-500) and levels of g (5-50); every level has a
    row. Drawn in one vectorized pass."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(50, 501, n_datasets)
    levels = np.minimum(rng.integers(5, 51, n_datasets), rows // 3)
    dataset = np.repeat(np.arange(n_datasets), rows)
    start = np.repeat(np.cumsum(rows) - rows, rows)
    position = np.arange(rows.sum()) - start
    lv = levels[dataset]
    g = np.where(position < lv, position, rng.integers(0, 1 << 30, rows.sum()) % lv)  # every level present
    level_id = np.cumsum(levels)[dataset] - levels[dataset] + g  # a global id per (dataset, level)
    b0 = rng.normal(0, 0.8, levels.sum())[level_id]
    b1 = rng.normal(0, 0.3, levels.sum())[level_id]
    x = rng.normal(size=rows.sum())
    y = 1.0 + 0.5 * x + b0 + b1 * x + rng.normal(size=rows.sum())
    return pd.DataFrame(dict(dataset=[f"d{v:04d}" for v in dataset], g=g, x=x, y=y))


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_fit_groups(frame):
    import jaxmlm as jm

    cold_result, cold = _timed(lambda: jm.fit_groups(FORMULA, frame, by="dataset", method="ml"))
    result, warm = _timed(lambda: jm.fit_groups(FORMULA, frame, by="dataset", method="ml"))
    return result, cold, warm


def run_loop(frame, labels):
    import jaxmlm as jm

    objectives = {}

    def loop():
        for label in labels:
            objectives[label] = jm.lmer(FORMULA, frame[frame.dataset == label], reml=False, warn=False).objective

    _, seconds = _timed(loop)
    return pd.Series(objectives), seconds


_R_LOOP = r"""
suppressMessages(library(lme4))
d <- read.csv(commandArgs(TRUE)[1])
d$g <- factor(d$g)
parts <- split(d, d$dataset)
start <- proc.time()[["elapsed"]]
dev <- vapply(parts, function(p) deviance(lmer(y ~ x + (x | g), p, REML = FALSE)), numeric(1))
seconds <- proc.time()[["elapsed"]] - start
cat(jsonlite::toJSON(list(seconds = seconds, dataset = names(dev), objective = unname(dev)), digits = NA))
"""


def run_lme4(frame):
    if shutil.which("Rscript") is None:
        return None, None
    with tempfile.TemporaryDirectory() as tmp:
        csv = pathlib.Path(tmp) / "groups.csv"
        frame.to_csv(csv, index=False)
        script = pathlib.Path(tmp) / "loop.R"
        script.write_text(_R_LOOP)
        proc = subprocess.run(["Rscript", str(script), str(csv)], capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        print("lme4 loop failed:", proc.stderr.strip().splitlines()[-3:], file=sys.stderr)
        return None, None
    out = json.loads(proc.stdout)
    seconds = out["seconds"][0] if isinstance(out["seconds"], list) else out["seconds"]
    return pd.Series(out["objective"], index=out["dataset"]), float(seconds)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description="fit_groups against a loop of single fits and lme4")
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--loop", type=int, default=20, help="datasets in the timed loop of single jaxmlm fits")
    parser.add_argument("--no-lme4", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    frame = long_frame(args.datasets)
    result, cold, warm = run_fit_groups(frame)
    subset = list(result.groups[: args.loop])
    single, loop_s = run_loop(frame, subset)
    loop_all = loop_s * len(result) / len(subset)
    rel_single = float(np.max(np.abs(result.objective[subset] - single) / np.abs(single)))
    lme4, lme4_s = (None, None) if args.no_lme4 else run_lme4(frame)
    report = dict(
        datasets=len(result), rows=len(frame), buckets=[[list(k), n] for k, n in result.buckets],
        converged=int(result.converged.sum()), fit_groups_cold_s=cold, fit_groups_warm_s=warm,
        loop_subset=len(subset), loop_subset_s=loop_s, loop_extrapolated_s=loop_all,
        speedup_cold=loop_all / cold, speedup_warm=loop_all / warm, max_rel_diff_vs_single=rel_single,
    )
    if lme4 is not None:
        diff = (result.objective - lme4.reindex(result.groups)) / lme4.reindex(result.groups).abs()
        report.update(lme4_loop_s=lme4_s, max_rel_diff_vs_lme4=float(diff.abs().max()),
                      lower_than_lme4=int((diff < -1e-8).sum()), higher_than_lme4=int((diff > 1e-6).sum()))
    for key, value in report.items():
        print(f"{key:>24}: {value}")
    print(f"(the loop of single jaxmlm fits was timed on {len(subset)} datasets and scaled to {len(result)})")
    if args.json:
        pathlib.Path(args.json).write_text(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
