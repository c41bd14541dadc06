"""The accelerator run: the large workloads in one go, each in a child process with its own time limit, every
time and objective written to one results file (JSON lines). `benchmarks/device.sh` installs jaxmlm and calls
this; `--scale small` runs the same workloads at small sizes on a CPU, `--scale tiny` at smaller ones still (the
test suite's run: every code path of the full run, in seconds).

    python benchmarks/device_run.py --scale full --out device_results.jsonl [--budget 480] [--only a,b]

Workloads (full scale):
* slope_10m_1m: y ~ x + (x | g), 10M rows × 1M groups, ML, fitted twice (cold: compiles included; warm);
* ml32m_direct / ml32m_iterative: rating ~ 1 + (1 | user) + (1 | item), 32M rows, 200,948 users × 84,432
  items with heavy-tailed counts (MovieLens ml-32m's shape), ML by the direct path (dense item tail, ~57 GB)
  and by the iterative path (conjugate gradients, stochastic log-determinant);
* batch_100k: 100,000 simulated responses on sleepstudy's design in one fit_batch (REML);
* xbox_mrp: an Xbox-shaped MRP (`jaxmlm.datasets.simulate.xbox_poll`: 750,148 interviews in state × age × sex ×
  race × education × party × ideology × 2008-vote cells; the binomial GLMM of `xbox_formula`, eight random
  intercepts and state × age, sex × race, on the poll's cells; poststratification by state over the population's
  cells with 1000 draws);
* groups_1000: fit_groups on 1,000 datasets of 50-500 rows and 5-50 levels (benchmarks/bench_groups.py).

The first line of the file describes the run (JAX version, backend, devices); then one line per workload with
its status ('ok', 'failed' with the error's last lines, or 'timeout'), phase times in seconds, objective and
convergence. A workload that fails or runs out of time does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# name → ({scale: sizes}, share of the time budget)
WORKLOADS = {
    "slope_10m_1m": (dict(full=dict(rows=10_000_000, groups=1_000_000), small=dict(rows=20_000, groups=2_000),
                          tiny=dict(rows=2_000, groups=200)), 0.20),
    "ml32m_direct": (dict(full=dict(rows=32_000_000, users=200_948, items=84_432),
                          small=dict(rows=20_000, users=400, items=150), tiny=dict(rows=1_500, users=60, items=40)),
                     0.20),
    "ml32m_iterative": (dict(full=dict(rows=32_000_000, users=200_948, items=84_432),
                             small=dict(rows=20_000, users=400, items=150),
                             tiny=dict(rows=1_500, users=60, items=40)), 0.25),
    "batch_100k": (dict(full=dict(responses=100_000), small=dict(responses=64), tiny=dict(responses=8)), 0.12),
    "xbox_mrp": (dict(full=dict(respondents=750_148, draws=1000, terms=True),
                      small=dict(respondents=5_000, draws=100, terms=False),
                      tiny=dict(respondents=2_000, draws=20, terms=False)), 0.13),
    "groups_1000": (dict(full=dict(datasets=1000), small=dict(datasets=8), tiny=dict(datasets=3)), 0.10),
}
SCALES = ("full", "small", "tiny")


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def _quiet():
    import warnings

    warnings.simplefilter("ignore")


# ---------------------------------------------------------------------------------------------- workloads
def run_slope(sizes: dict) -> dict:
    import jaxmlm as jm
    from benchmarks.workloads import _synthetic

    data, t_data = _timed(lambda: _synthetic(sizes["rows"], sizes["groups"], slope=True, binary=False, seed=1))
    model, t_model = _timed(lambda: jm.Model("y ~ x + (x | g)", data))
    fit, t_cold = _timed(lambda: model.fit(method="ml", warn=False))
    refit, t_warm = _timed(lambda: model.fit(method="ml", warn=False))
    return dict(seconds=dict(data=t_data, model=t_model, fit_cold=t_cold, fit_warm=t_warm), objective=fit.objective,
                objective_warm=refit.objective, converged=bool(fit.converged), theta=list(map(float, fit.theta)))


def _movielens(sizes: dict):
    from benchmarks.workloads import _movielens_like

    return _timed(lambda: _movielens_like(sizes["rows"], sizes["users"], sizes["items"], seed=1))


def run_ml32m(sizes: dict, solver: str) -> dict:
    import jaxmlm as jm

    data, t_data = _movielens(sizes)
    model, t_model = _timed(lambda: jm.Model("rating ~ 1 + (1 | user) + (1 | item)", data))
    fit, t_fit = _timed(lambda: model.fit(method="ml", solver=solver, warn=False))
    out = dict(seconds=dict(data=t_data, model=t_model, fit_cold=t_fit), objective=fit.objective,
               converged=bool(fit.converged), theta=list(map(float, fit.theta)), sigma=fit.sigma)
    if solver == "iterative":
        out["objective_se"] = float(fit.extra.get("objective_se", float("nan")))
    return out


def run_batch(sizes: dict) -> dict:
    import numpy as np

    import jaxmlm as jm

    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    fit = model.fit(method="reml", warn=False)
    Y, t_sim = _timed(lambda: fit.simulate(sizes["responses"], seed=2024).to_numpy())
    batch, t_cold = _timed(lambda: model.fit_batch(Y, method="reml", progress=False))
    return dict(seconds=dict(simulate=t_sim, fit_batch=t_cold), objective=float(np.nanmean(batch.objective)),
                converged=int(batch.converged.sum()), responses=int(Y.shape[1]))


def run_xbox(sizes: dict) -> dict:
    import jaxmlm as jm
    from jaxmlm.datasets.simulate import xbox_formula, xbox_poll

    poll, t_data = _timed(lambda: xbox_poll(sizes["respondents"], seed=0))
    # the paper's model at full scale; two of its terms at the small scale (compiling dominates there)
    formula = xbox_formula(interactions=True) if sizes["terms"] else "cbind(yes, no) ~ 1 + (1 | state) + (1 | age)"
    fit, t_fit = _timed(lambda: jm.glmer(formula, poll.cells, family="binomial", warn=False))
    table, t_mrp = _timed(lambda: jm.poststratify(fit, poll.population, weight="N", by=["state"],
                                                  draws=sizes["draws"], seed=1))
    truth = poll.truth.reindex(table["state"].astype(str)).to_numpy()
    return dict(seconds=dict(data=t_data, fit_cold=t_fit, poststratify=t_mrp), objective=fit.objective,
                converged=bool(fit.converged), formula=formula, poll_cells=len(poll.cells),
                population_cells=len(poll.population), states=len(table),
                mean_abs_error=float(abs(table["estimate"].to_numpy() - truth).mean()))


def run_groups(sizes: dict) -> dict:
    from benchmarks.bench_groups import FORMULA, long_frame

    import jaxmlm as jm

    frame, t_data = _timed(lambda: long_frame(sizes["datasets"], seed=1))
    result, t_fit = _timed(lambda: jm.fit_groups(FORMULA, frame, by="dataset", method="ml"))
    return dict(seconds=dict(data=t_data, fit_groups=t_fit), objective=float(result.objective.sum()),
                converged=int(result.converged.sum()), datasets=len(result), buckets=len(result.buckets))


RUNNERS = {
    "slope_10m_1m": run_slope,
    "ml32m_direct": lambda s: run_ml32m(s, "direct"),
    "ml32m_iterative": lambda s: run_ml32m(s, "iterative"),
    "batch_100k": run_batch,
    "xbox_mrp": run_xbox,
    "groups_1000": run_groups,
}


# ---------------------------------------------------------------------------------------------- driver
def environment(scale: str) -> dict:
    import jax

    devices = jax.devices()
    return dict(workload="_environment", scale=scale, jax=jax.__version__, backend=jax.default_backend(),
                devices=[str(d) for d in devices], device_kind=devices[0].device_kind, python=sys.version.split()[0],
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))


def child(name: str, scale: str, out: str) -> None:
    """Run one workload and write its record (a child process: its memory goes back when it ends)."""
    _quiet()
    import jax

    if name == "_environment":
        pathlib.Path(out).write_text(json.dumps(environment(scale)))
        return
    record = RUNNERS[name](WORKLOADS[name][0][scale])
    record.update(workload=name, scale=scale, status="ok", backend=jax.default_backend())
    pathlib.Path(out).write_text(json.dumps(record, default=float))


def _child_process(name: str, scale: str, out: str, log: str) -> None:
    """A workload's process: its output and errors go to `log` (the parent keeps the last lines of a failure)."""
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    child(name, scale, out)


# Every workload runs in a process of its own, forked from a server process that has imported JAX and jaxmlm
# once (without touching a device: no backend is started there), so that each workload pays neither a new
# interpreter nor JAX's import; its memory, the accelerator's included, goes back when it ends.
_PRELOAD = ["numpy", "pandas", "scipy.linalg", "jax", "jaxmlm", "benchmarks.workloads", "benchmarks.device_run"]


def _processes():
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    return context


def run_one(name: str, scale: str, limit_s: float, processes) -> dict:
    from benchmarks import device_run  # the target by its module's name, as the forked process imports it

    with tempfile.TemporaryDirectory() as tmp:
        out, log = os.path.join(tmp, "record.json"), os.path.join(tmp, "log.txt")
        start = time.perf_counter()
        proc = processes.Process(target=device_run._child_process, args=(name, scale, out, log))
        proc.start()
        proc.join(max(limit_s, 1.0))
        wall = time.perf_counter() - start
        if proc.is_alive():
            proc.kill()
            proc.join()
            return dict(workload=name, scale=scale, status="timeout", limit_s=limit_s, wall_s=wall)
        if proc.exitcode != 0 or not os.path.exists(out):
            text = pathlib.Path(log).read_text(errors="replace") if os.path.exists(log) else ""
            return dict(workload=name, scale=scale, status="failed", returncode=proc.exitcode, wall_s=wall,
                        error="\n".join(text.strip().splitlines()[-12:]))
        record = json.loads(pathlib.Path(out).read_text())
        record["wall_s"] = wall
        return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", choices=SCALES, default="full")
    parser.add_argument("--out", default="device_results.jsonl")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds for all workloads together")
    parser.add_argument("--only", default="", help="comma-separated workload names")
    args = parser.parse_args(argv)
    names = [n for n in args.only.split(",") if n] or list(WORKLOADS)
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        parser.error(f"unknown workload(s) {unknown}; known: {', '.join(WORKLOADS)}")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")  # the direct ml-32m tail alone is ~57 GB
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    processes = _processes()
    deadline = time.perf_counter() + args.budget
    share_left = sum(WORKLOADS[n][1] for n in names)
    with open(args.out, "w") as results:
        # the backend, read in a child: JAX in this process would hold the accelerator's memory all along
        info = run_one("_environment", args.scale, 120.0, processes)
        results.write(json.dumps(info, default=float) + "\n")
        results.flush()
        print(f"backend: {info.get('backend')} {info.get('devices')}", flush=True)
        for name in names:
            left = deadline - time.perf_counter()
            limit = left * WORKLOADS[name][1] / share_left  # the time that earlier workloads left goes on
            share_left -= WORKLOADS[name][1]
            record = run_one(name, args.scale, limit, processes)
            results.write(json.dumps(record, default=float) + "\n")
            results.flush()
            print(f"{name}: {record['status']} ({record.get('wall_s', 0.0):.1f} s) objective "
                  f"{record.get('objective')}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
