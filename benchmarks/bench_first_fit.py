"""What a new process pays before its first estimate: the first sleepstudy fit, with an empty and a filled
compilation cache.

Each run is two new processes on one fresh cache directory: the first compiles into the empty cache, the second
reads it back (what a user's second session pays). A process imports jaxmlm and loads sleepstudy (pandas), then
times `jm.lmer("Reaction ~ Days + (Days | Subject)", data, REML=False)` in its parts:

* import: what the fit imports on first use (jaxmlm's fit modules, and with them JAX and equinox);
* model: `Model(formula, data)` (formula parsing, model frame, design);
* fit: `model.fit("ml")`: the structure and statistics, then tracing, lowering and compiling (or reading from
  the cache) each program and running it, read from JAX's compile log (`jax_log_compiles`);

in wall seconds and in CPU seconds of the process (all threads; less disturbed by other work on a shared
machine than wall time). The table gives the median over the runs and the median of `first fit` = import +
model + fit, next to the load average when the runs began.

    python benchmarks/bench_first_fit.py [--runs 5] [--json out.json] [--source CHECKOUT] [--store-only]

--source times another checkout's jaxmlm (a `git worktree` of an older commit, for a before/after).
--store-only leaves JAX's persistent cache off: the processes keep and read jaxmlm's programs in the program
store's default place (XDG_CACHE_HOME pointed at the run's directory), as a user who has set nothing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMULA = "Reaction ~ Days + (Days | Subject)"
try:  # JAX's per-program tracing, lowering and compiling times, as bench_compile.py reads them
    from benchmarks.bench_compile import _CompileLog
except ImportError:  # run as a script from benchmarks/
    from bench_compile import _CompileLog


def _clock():
    return time.perf_counter(), time.process_time()


def _since(start):
    wall, cpu = _clock()
    return dict(wall=wall - start[0], cpu=cpu - start[1])


def child(cache_dir: str, store_only: bool = False) -> dict:
    """One first fit in this (new) process."""
    os.environ["JAXMLM_PROGRAM_STORE"] = "1"  # what this benchmark times (benchmarks/__init__.py turns it off)
    import jaxmlm as jm

    data = jm.datasets.load("sleepstudy")  # pandas: the user's, before the fit
    t = _clock()
    import jax

    from jaxmlm.fit import _model  # noqa: F401 (what the first jm.lmer imports)
    parts = dict(import_=_since(t))
    if not store_only:
        jm.enable_compilation_cache(cache_dir)
    log = _CompileLog()
    logger = logging.getLogger("jax")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    jax.config.update("jax_log_compiles", True)
    t = _clock()
    model = jm.Model(FORMULA, data)
    parts["model"] = _since(t)
    t = _clock()
    fit = model.fit("ml")
    parts["fit"] = _since(t)
    programs = {k: dict(v) for k, v in log.programs.items()}
    return dict(parts=parts, programs=programs, objective=float(fit.objective))


def _spawn(cache_dir: str, source: str, store_only: bool = False) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAXMLM_CACHE_DIR", "JAXMLM_NO_CACHE")}
    env["PYTHONPATH"] = os.pathsep.join([source] + [p for p in [os.environ.get("PYTHONPATH")] if p])
    if store_only:
        env["XDG_CACHE_HOME"] = cache_dir
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", cache_dir]
                         + (["--store-only"] if store_only else []), env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _median(values):
    return statistics.median(values) if values else float("nan")


def summarize(runs: list[dict]) -> dict:
    """Medians over runs of each part (wall, CPU), of the first fit's total, and of the compile log's stages."""
    out = {}
    for part in ("import_", "model", "fit"):
        for clock in ("wall", "cpu"):
            out[f"{part.rstrip('_')}_{clock}"] = _median([r["parts"][part][clock] for r in runs])
    for clock in ("wall", "cpu"):
        out[f"first_fit_{clock}"] = _median([sum(r["parts"][p][clock] for p in r["parts"]) for r in runs])
    for stage in ("trace", "lower", "compile"):
        out[stage] = _median([sum(p[stage] for p in r["programs"].values()) for r in runs])
    out["compiles"] = _median([sum(p["compiles"] for p in r["programs"].values()) for r in runs])
    out["programs"] = sorted(runs[0]["programs"]) if runs else []
    return out


def table(results: dict, load: str) -> str:
    lines = [f"first sleepstudy fit (ML) in a new process, medians of {results['runs']} runs; load average at the "
             f"start: {load}", "",
             "| cache | first fit wall s | first fit CPU s | import wall / CPU | model wall / CPU | fit wall / CPU | "
             "trace s | lower s | compile s | compiles |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in ("empty", "filled"):
        s = results[name]
        lines.append(f"| {name} | {s['first_fit_wall']:.2f} | {s['first_fit_cpu']:.2f} | "
                     f"{s['import_wall']:.2f} / {s['import_cpu']:.2f} | {s['model_wall']:.2f} / {s['model_cpu']:.2f} | "
                     f"{s['fit_wall']:.2f} / {s['fit_cpu']:.2f} | {s['trace']:.2f} | {s['lower']:.2f} | "
                     f"{s['compile']:.2f} | {s['compiles']:.0f} |")
    lines += ["", f"programs: {', '.join(results['empty']['programs'])}; objective {results['objective']!r}"]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--json", help="also write the runs and their summary here")
    parser.add_argument("--source", default=ROOT, help="the checkout whose jaxmlm is timed (default: this one)")
    parser.add_argument("--store-only", action="store_true", help="JAX's persistent cache off (module docstring)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.store_only)))
        return
    import compileall

    # .pyc files as pip writes them on install, so that "import" is what a user's process pays (not compiling
    # jaxmlm's sources, which an editable install under PYTHONDONTWRITEBYTECODE would redo in every process)
    compileall.compile_dir(os.path.join(args.source, "jaxmlm"), quiet=1)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    empty, filled = [], []
    with tempfile.TemporaryDirectory(prefix="jaxmlm-first-fit-") as root:
        for i in range(args.runs):
            cache_dir = os.path.join(root, str(i))
            empty.append(_spawn(cache_dir, args.source, args.store_only))
            filled.append(_spawn(cache_dir, args.source, args.store_only))
    objectives = {r["objective"] for r in empty + filled}
    if len(objectives) != 1:
        raise RuntimeError(f"the fits disagree: objectives {sorted(objectives)}")
    results = dict(runs=args.runs, load=load, objective=objectives.pop(), empty=summarize(empty),
                   filled=summarize(filled))
    print(table(results, load))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(results, empty_runs=empty, filled_runs=filled), fh, indent=1)


if __name__ == "__main__":
    main()
