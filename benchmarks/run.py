"""Time jaxmlm and every installed peer on the same workloads, in one run.

    python -m benchmarks.run                 # every workload this machine can run
    python -m benchmarks.run --quick         # sleepstudy, InstEval, 1M × 5k
    python -m benchmarks.run --only insteval,ri_1m_5k --engines jaxmlm,mixedlm

Each (workload, engine) runs in a new child process: *cold* is its first fit (imports done, data in memory, so it
includes building the model and compiling), *warm* the median of the next three fits in the same process (fewer
when they take over a minute together; the first repeat alone can pay one-off costs such as the allocator growing
its heap), *peak* the child's RSS
high-water mark (data included). jaxmlm runs twice: once with an empty compilation cache (cold = with compiling),
then again in a new process on the cache the first one filled (*cached*: what a user's second session pays).
*Δ best* is the relative difference of the objective (-2 log-likelihood) from the best any engine reached.
Writes benchmarks/results/RESULTS.md and results.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from benchmarks import peers  # noqa: E402
from benchmarks.workloads import WORKLOADS, make_data  # noqa: E402

RESULTS_DIR = os.path.join(HERE, "results")


# ----------------------------------------------------------------------------------------------- child process
def child(engine: str, workload_name: str, out: str) -> None:
    w = WORKLOADS[workload_name]
    if engine == "jaxmlm":
        import jaxmlm  # (imports and JAX start-up are not part of the fit)

        # asked for explicitly (jaxmlm changes neither by itself): the persistent compilation cache, in the
        # directory run_engine made for this workload, and glibc's allocator tuned during fits (docs/scale.md)
        jaxmlm.enable_compilation_cache(os.environ.get("JAXMLM_CACHE_DIR"))
        os.environ.setdefault("JAXMLM_MALLOPT", "1")
    data, data_s = peers.timed(lambda: make_data(workload_name))
    (obj, details), cold = peers.timed(lambda: peers.python_fit(engine, w, data))
    warm_runs = [peers.timed(lambda: peers.python_fit(engine, w, data))[1]]
    while len(warm_runs) < peers.WARM_REPEATS and sum(warm_runs) < peers.WARM_BUDGET_S:
        warm_runs.append(peers.timed(lambda: peers.python_fit(engine, w, data))[1])
    peers.write_json(out, dict(objective=obj, cold_s=cold, warm_s=float(sorted(warm_runs)[(len(warm_runs) - 1) // 2]),
                               warm_runs=warm_runs, data_s=data_s, **details))


# ---------------------------------------------------------------------------------------------- parent process
def _spawn(cmd: list[str], env: dict, timeout: float, log: str):
    """Run cmd; return (returncode or None on timeout, peak RSS in bytes, wall seconds)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, env=env, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT)
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                proc.returncode = os.waitstatus_to_exitcode(status)
                return proc.returncode, usage.ru_maxrss * 1024, time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                _, _, usage = os.wait4(proc.pid, 0)
                return None, usage.ru_maxrss * 1024, time.perf_counter() - t0
            time.sleep(0.05)


def run_engine(engine: str, w, workdir: str, csv_path: str | None, timeout: float) -> dict:
    out = os.path.join(workdir, f"{w.name}-{engine}.json")
    log = out.replace(".json", ".log")
    env = dict(os.environ)
    row = dict(workload=w.name, engine=engine)
    if engine in ("lme4", "glmmTMB"):
        script = os.path.join(workdir, "fit.R")
        with open(script, "w") as fh:
            fh.write(peers.r_script())
        factors = ",".join(_grouping_columns(w.formula))
        cmd = ["Rscript", script, csv_path, w.formula, engine, w.method, factors, out]
    else:
        cmd = [sys.executable, "-m", "benchmarks.run", "--child", engine, w.name, "--out", out]
    if engine == "jaxmlm":  # the cold process fills an empty cache (and the program store beside it), the next reads it
        env["JAXMLM_CACHE_DIR"] = tempfile.mkdtemp(prefix="xla-", dir=workdir)
        env["JAXMLM_PROGRAM_STORE"] = "1"
    rc, peak, wall = _spawn(cmd, env, timeout, log)
    row["peak_gib"] = peak / 2**30
    if rc is None:
        row["note"] = f"timed out after {timeout:.0f} s"
        return row
    if rc != 0 or not os.path.exists(out):
        with open(log) as fh:
            tail = fh.read().strip().splitlines()[-1:] or ["(no output)"]
        row["note"] = f"failed: {tail[0][:160]}"
        return row
    with open(out) as fh:
        row.update(json.load(fh))
    if engine == "jaxmlm":  # a second process on the cache the first one filled
        rc2, peak2, _ = _spawn(cmd, env, timeout, log)
        if rc2 == 0:
            with open(out) as fh:
                row["cached_s"] = json.load(fh)["cold_s"]
    return row


def _grouping_columns(formula: str) -> list[str]:
    cols = []
    for part in formula.split("|")[1:]:
        for name in part.split(")")[0].replace("/", ":").split(":"):
            name = name.strip()
            if name and name not in cols:
                cols.append(name)
    return cols


def machine() -> dict:
    import numpy

    info = dict(python=platform.python_version(), platform=platform.platform(), cores=os.cpu_count())
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu"] = next(l.split(":", 1)[1].strip() for l in fh if l.startswith("model name"))
        with open("/proc/meminfo") as fh:
            info["ram_gib"] = round(int(next(l for l in fh if l.startswith("MemTotal")).split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    import jax

    info.update(jax=jax.__version__, numpy=numpy.__version__, devices=[str(d) for d in jax.devices()])
    for mod in ("jaxmlm", "mixedlm", "statsmodels"):
        try:
            info[mod] = __import__(mod).__version__
        except Exception:
            pass
    info.update(peers.r_versions())
    return info


def agreement(rows: list[dict]) -> None:
    import math

    by = {}
    for r in rows:
        if "objective" in r and not math.isfinite(r["objective"]):
            if "non-finite objective" not in r.get("note", ""):  # --render runs this again on saved rows
                r["note"] = (r.get("note", "") + " non-finite objective (failed fit)").strip()
            r.pop("rel_to_best", None)
        elif "objective" in r:
            by.setdefault(r["workload"], []).append(r["objective"])
    for r in rows:
        if "objective" in r and r["workload"] in by and math.isfinite(r["objective"]):
            best = min(by[r["workload"]])
            r["rel_to_best"] = (r["objective"] - best) / abs(best)


def _fmt(x, spec):
    return "" if x is None else format(x, spec)


def markdown(rows: list[dict], notes: list[str], info: dict, extra: list[dict]) -> str:
    lines = ["# Benchmarks", "", f"Run {info['date']} on {info.get('cpu', '?')}, {info.get('cores')} cores, "
             f"{info.get('ram_gib', '?')} GiB RAM; devices {', '.join(info.get('devices', []))}.", "",
             "Versions: " + ", ".join(f"{k} {info[k]}" for k in ("python", "jax", "jaxmlm", "mixedlm", "statsmodels",
                                                                   "R", "lme4", "glmmTMB") if k in info) + ".", "",
             "cold: first fit in a new process (model building and compiling included; jaxmlm with an empty "
             "compilation cache); warm: median of the next three fits in that process; cached: first fit of a new process that "
             "finds the persistent compilation cache filled; peak: the process's RSS high-water mark, data "
             "included; Δ best: objective (−2 log L) minus the best any engine reached, relative.", "",
             "| workload | engine | cold s | warm s | cached s | peak GiB | objective | Δ best | evals | note |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(
            f"| {r['workload']} | {r['engine']} | {_fmt(r.get('cold_s'), '.2f')} | {_fmt(r.get('warm_s'), '.3f')} | "
            f"{_fmt(r.get('cached_s'), '.2f')} | {_fmt(r.get('peak_gib'), '.2f')} | {_fmt(r.get('objective'), '.4f')} | "
            f"{_fmt(r.get('rel_to_best'), '.1e')} | {r.get('n_eval', '')} | {r.get('note', '')} |")
    ratios = []
    for wname in dict.fromkeys(r["workload"] for r in rows):
        j = next((r for r in rows if r["workload"] == wname and r["engine"] == "jaxmlm" and "warm_s" in r), None)
        m = next((r for r in rows if r["workload"] == wname and r["engine"] == "mixedlm" and "warm_s" in r), None)
        if j and m:
            ratios.append(f"| {wname} | {j['warm_s'] / m['warm_s']:.2f} | {j['cold_s'] / m['cold_s']:.2f} |")
    if ratios:
        lines += ["", "jaxmlm ÷ mixedlm (target: warm ≤ 0.25, cold ≤ 1):", "", "| workload | warm | cold |",
                  "|---|---:|---:|", *ratios]
    if notes:
        lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    if extra:
        lines += ["", "Other benchmarks (benchmarks/bench_*.py):", ""]
        keys = list(dict.fromkeys(k for r in extra for k in r))
        lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        for r in extra:
            lines.append("| " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _compile_sources() -> None:
    """Byte-compile jaxmlm's sources first, as pip does on install: a cold child then reads .pyc files, as a
    user's first fit does, even where PYTHONDONTWRITEBYTECODE keeps Python from writing them itself (an editable
    install, such an environment: every new process compiled ~35 modules from source inside its first fit)."""
    import compileall

    compileall.compile_dir(os.path.join(ROOT, "jaxmlm"), quiet=1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", help="comma-separated workloads: " + ", ".join(WORKLOADS))
    ap.add_argument("--engines", help="comma-separated engines (default: every installed one)")
    ap.add_argument("--quick", action="store_true", help="small workloads only")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per engine and workload")
    ap.add_argument("--out", default=RESULTS_DIR, help="folder for RESULTS.md and results.json")
    ap.add_argument("--no-extra", action="store_true", help="skip benchmarks/bench_*.py")
    ap.add_argument("--render", action="store_true", help="rewrite RESULTS.md from results.json in --out")
    ap.add_argument("--child", nargs=2, metavar=("ENGINE", "WORKLOAD"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return child(args.child[0], args.child[1], args.out)
    if args.render:
        with open(os.path.join(args.out, "results.json")) as fh:
            saved = json.load(fh)
        agreement(saved["results"])
        with open(os.path.join(args.out, "RESULTS.md"), "w") as fh:
            fh.write(markdown(saved["results"], saved["notes"], saved["machine"], saved["extra"]))
        return None

    import jax

    _compile_sources()
    accelerator = any(d.platform != "cpu" for d in jax.devices())
    names = args.only.split(",") if args.only else [n for n, w in WORKLOADS.items() if w.quick or not args.quick]
    engines = peers.available_engines()
    if args.engines:
        engines = [e for e in engines if e in args.engines.split(",")]
    info = machine()
    info["date"] = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    rows, notes = [], []
    for name in names:
        w = WORKLOADS[name]
        if w.accelerator_only and not accelerator:
            notes.append(f"{name} ({w.description}): accelerator-only workload, skipped on this CPU-only machine")
            continue
        if w.family != "gaussian":
            import importlib.util

            if importlib.util.find_spec("jaxmlm.fit._glmm") is None:
                notes.append(f"{name}: the GLMM engine (jaxmlm.fit._glmm) is not present; skipped")
                continue
        todo = [e for e in engines if peers.supports(e, w)]
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as workdir:
            csv_path = None
            if any(e in ("lme4", "glmmTMB") for e in todo):
                csv_path = os.path.join(workdir, "data.csv")
                make_data(name).to_csv(csv_path, index=False)
            for e in todo:
                timeout = args.timeout or (w.peer_timeout_s if e != "jaxmlm" else 3 * w.peer_timeout_s)
                print(f"[{datetime.datetime.now():%H:%M:%S}] {name} / {e} …", flush=True)
                row = run_engine(e, w, workdir, csv_path, timeout)
                print("   ", {k: v for k, v in row.items() if k not in ("theta",)}, flush=True)
                rows.append(row)
    agreement(rows)
    extra = []
    if not args.no_extra and not args.only:
        for mod in ("bench_glmm", "bench_batch"):
            if os.path.exists(os.path.join(HERE, mod + ".py")):
                try:
                    __import__(f"benchmarks.{mod}", fromlist=["run"]).run(extra)
                except Exception as exc:  # one benchmark module failing must not lose the others' rows
                    notes.append(f"benchmarks/{mod}.py failed: {type(exc).__name__}: {exc}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as fh:
        json.dump(dict(machine=info, results=rows, notes=notes, extra=extra), fh, indent=1, default=str)
    with open(os.path.join(args.out, "RESULTS.md"), "w") as fh:
        fh.write(markdown(rows, notes, info, extra))
    print(markdown(rows, notes, info, extra))


if __name__ == "__main__":
    main()
