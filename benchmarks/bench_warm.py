"""Warm small fits, side by side with another checkout of jaxmlm (the one before a change, say).

Each round starts one process per checkout, in turn (the order alternating between rounds); a process fits each
workload a few times to compile and warm up, then times `fits` more fits one by one, wall clock and CPU time.
What a warm fit costs here is the host's share: the optimizer's loop around the compiled programs, the calls of
those programs and building the result, so the figures are medians over rounds and fits, and the ratio is taken
round by round (a busy machine slows both sides of a round alike). The objectives and evaluation counts of both
checkouts are recorded too: a speed-up must not change them.

    python benchmarks/bench_warm.py --before ../jaxmlm-before --rounds 5 --fits 15 \
        --out benchmarks/results/warm_fits.json [--effort default]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

WORKLOADS = {
    "sleepstudy_lmer": "jm.lmer('Reaction ~ Days + (Days | Subject)', jm.datasets.load('sleepstudy'))",
    "cbpp_glmer": "jm.glmer('cbind(incidence, size - incidence) ~ period + (1 | herd)', jm.datasets.load('cbpp'), "
                  "family='binomial')",
}


def _worker(fits: int, warmup: int) -> dict:
    """In the checkout on PYTHONPATH: each workload fitted warmup + fits times; per fit wall and CPU seconds."""
    import warnings

    import jaxmlm as jm

    warnings.simplefilter("ignore")
    out = {}
    for name, expr in WORKLOADS.items():
        fit = None
        for _ in range(warmup):
            fit = eval(expr, {"jm": jm})
        wall, cpu = [], []
        for _ in range(fits):
            t, c = time.perf_counter(), time.process_time()
            fit = eval(expr, {"jm": jm})
            wall.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out[name] = dict(wall=wall, cpu=cpu, objective=float(fit.objective), n_eval=int(fit.optinfo.n_eval),
                         n_iter=int(fit.optinfo.n_iter))
    out["host_bfgs_pass"] = _host_loop(fits)
    return out


def _host_loop(repeats: int) -> dict:
    """The host BFGS loop alone, around a NumPy function of 3 parameters (no compiled program): per pass, what
    the loop itself costs a single fit on top of its evaluations."""
    import numpy as np

    from jaxmlm.optim._optimize import host_bfgs_minimize

    A = np.array([[3.0, 0.5, 0.1], [0.5, 2.0, 0.2], [0.1, 0.2, 1.0]])

    def value_and_grad(x):
        return float(0.5 * x @ A @ x + np.cosh(x - 1.0).sum()), A @ x + np.sinh(x - 1.0)

    wall, cpu = [], []
    for _ in range(10 * repeats):
        t, c = time.perf_counter(), time.process_time()
        res = host_bfgs_minimize(value_and_grad, np.full(3, 3.0))
        wall.append((time.perf_counter() - t) / int(res.n_eval))
        cpu.append((time.process_time() - c) / int(res.n_eval))
    return dict(wall=wall, cpu=cpu, objective=float(res.value), n_eval=int(res.n_eval), n_iter=int(res.n_iter))


def _run(checkout: Path, fits: int, warmup: int, effort: str | None) -> dict:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    env.pop("JAXMLM_COMPILE", None)  # the library's own default, as a user's fit, unless an effort is given
    if effort:
        env["JAXMLM_COMPILE"] = effort
    proc = subprocess.run([sys.executable, __file__, "--worker", "--fits", str(fits), "--warmup", str(warmup)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _commit(checkout: Path) -> str:
    """The checkout's commit, marked when its working tree has changes to jaxmlm/."""
    head = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--", "jaxmlm"], capture_output=True,
                           text=True).stdout.strip()
    return head + (" + uncommitted changes" if dirty else "")


NAMES = list(WORKLOADS) + ["host_bfgs_pass"]


def _summary(rounds: list[dict], label: str) -> dict:
    """Per workload: medians and minima over every timed fit of every round (ms; µs per pass for the loop)."""
    out = {}
    for name in NAMES:
        runs = [r[label][name] for r in rounds]
        scale, unit = (1e6, "us") if name == "host_bfgs_pass" else (1e3, "ms")
        out[name] = {f"{kind}_{unit}_{stat}": scale * fn([t for r in runs for t in r[kind]])
                     for kind in ("wall", "cpu") for stat, fn in (("median", statistics.median), ("min", min))}
        out[name].update(objective=runs[-1]["objective"], n_eval=runs[-1]["n_eval"], n_iter=runs[-1]["n_iter"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="another checkout to time beside this one")
    ap.add_argument("--after", type=Path, default=ROOT, help="the checkout timed as 'after' (default: this one)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fits", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--effort", help="JAXMLM_COMPILE for both sides (default: each checkout's own default)")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.fits, args.warmup)))
        return
    sides = {"after": args.after.resolve()} | ({"before": args.before.resolve()} if args.before else {})
    rounds = []
    for i in range(args.rounds):
        order = list(sides) if i % 2 == 0 else list(sides)[::-1]
        rounds.append({label: _run(sides[label], args.fits, args.warmup, args.effort) for label in order})
    result = {"rounds": args.rounds, "fits_per_round": args.fits, "effort": args.effort or "each side's default",
              "load_average": os.getloadavg(),
              "cpus": os.cpu_count(), "commits": {k: _commit(v) for k, v in sides.items()}}
    for label in sides:
        result[label] = _summary(rounds, label)
    if "before" in sides:
        result["ratio_after_before"] = {
            name: {unit: statistics.median([statistics.median(r["after"][name][unit])
                                            / statistics.median(r["before"][name][unit]) for r in rounds])
                   for unit in ("wall", "cpu")} for name in NAMES}
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
