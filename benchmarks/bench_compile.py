"""Where a first fit's time goes: import, model building, and each compiled program (tracing, lowering to MLIR,
XLA's compile), with the size of the programs' HLO text.

Workloads, each in a new process (so every fit is a first fit, with an empty in-memory cache and the persistent
compilation cache off):
* xbox: the Xbox-shaped MRP model (`jaxmlm.datasets.simulate.xbox_formula()`: eight scalar intercepts, state × age
  and sex × race; binomial cells) on a simulated poll of `--interviews` interviews (compile time depends on the
  terms, not the rows);
* xbox8: the same cells with the eight scalar terms alone (`xbox_formula(interactions=False)`);
* xbox2: the same cells with two of the terms, cbind(yes, no) ~ 1 + (1 | state) + (1 | age);
* sleepstudy: lmer(Reaction ~ Days + (Days | Subject)), REML.

`python benchmarks/bench_compile.py [--interviews N] [--only NAME ...]` prints one markdown table per workload
(program, calls compiled, trace / lower / compile seconds, HLO characters) and the totals. Compiles are read from
JAX's own log (`jax_log_compiles`); a program listed with more than one compile was traced again for new shapes,
a new static argument, or a Python object that hashes differently.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import subprocess
import sys
import time
from collections import defaultdict

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

_PATTERNS = {
    "trace": re.compile(r"Finished tracing \+? ?(\S+) for jit in ([\d.e-]+) sec"),
    "lower": re.compile(r"Finished jaxpr to MLIR module conversion jit\((\S+)\) in ([\d.e-]+) sec"),
    "compile": re.compile(r"Finished XLA compilation of jit\((\S+)\) in ([\d.e-]+) sec"),
}


class _CompileLog(logging.Handler):
    """Collects JAX's per-program tracing, lowering and compiling times from its log records."""

    def __init__(self):
        super().__init__(level=logging.DEBUG)
        self.programs = defaultdict(lambda: dict(compiles=0, trace=0.0, lower=0.0, compile=0.0))

    def emit(self, record):
        message = record.getMessage()
        for stage, pattern in _PATTERNS.items():
            found = pattern.search(message)
            if found:
                row = self.programs[found.group(1)]
                row[stage] += float(found.group(2))
                if stage == "compile":
                    row["compiles"] += 1


def _hlo_sizes(problem, x, theta) -> dict:
    """Characters of the StableHLO text of the GLMM fit's three programs at the fit's argument shapes (the
    lowering reuses the fit's traces)."""
    import jax.numpy as jnp

    from jaxmlm.fit import _glmm

    def lowered(program, *args):  # the jitted variant the fit ran (jaxmlm's `jit` keeps one per compile effort)
        return len(program.variant_for(args, {}).lower(*args).as_text())

    phi = jnp.asarray(1.0) if getattr(problem.family, "has_dispersion", False) else None
    return {
        "_start_beta": lowered(_glmm._start_beta, jnp.asarray(theta), problem, phi),
        "_value_and_grad": lowered(_glmm._value_and_grad, x, problem, None, None),
        "_state_from": lowered(_glmm._state_from, x, jnp.zeros(_glmm._n_modes(problem.structure)), problem),
    }


def _one(name: str, interviews: int, seed: int = 1) -> dict:
    """One workload in this (new) process."""
    t0 = time.perf_counter()
    import jax
    import numpy as np

    import jaxmlm as jm
    t_import = time.perf_counter() - t0

    log = _CompileLog()
    jax_logger = logging.getLogger("jax")
    jax_logger.addHandler(log)
    jax_logger.setLevel(logging.DEBUG)
    jax.config.update("jax_log_compiles", True)
    for handler in list(logging.getLogger().handlers):  # keep the log off the terminal
        logging.getLogger().removeHandler(handler)
    jax_logger.propagate = False

    if name == "sleepstudy":
        data = jm.datasets.load("sleepstudy")
        t = time.perf_counter()
        model = jm.Model("Reaction ~ Days + (Days | Subject)", data)
        t_model = time.perf_counter() - t
        t = time.perf_counter()
        fit = model.fit("reml")
        t_fit = time.perf_counter() - t
        hlo = {}
    else:
        from jaxmlm.datasets.simulate import xbox_formula, xbox_poll
        from jaxmlm.fit._glmm import glmm_problem

        poll = xbox_poll(n=interviews, seed=seed)
        formula = {"xbox": xbox_formula(), "xbox8": xbox_formula(interactions=False),
                   "xbox2": "cbind(yes, no) ~ 1 + (1 | state) + (1 | age)"}[name]
        t = time.perf_counter()
        model = jm.Model(formula, poll.cells, family="binomial")
        t_model = time.perf_counter() - t
        t = time.perf_counter()
        fit = model.fit()
        t_fit = time.perf_counter() - t
        with jax.enable_x64(True):
            problem = glmm_problem(model)
            x = np.concatenate([fit._theta, fit._beta])
            hlo = _hlo_sizes(problem, x, fit._theta)
    t = time.perf_counter()
    model.fit()
    t_warm = time.perf_counter() - t
    programs = {k: dict(v, hlo=hlo.get(k)) for k, v in log.programs.items()}
    return dict(workload=name, import_s=t_import, model_s=t_model, first_fit_s=t_fit, warm_fit_s=t_warm,
                objective=float(fit.objective), n_terms=len(model.qs), programs=programs)


def _table(result: dict, top: int = 12) -> str:
    programs = result["programs"]
    totals = {s: sum(p[s] for p in programs.values()) for s in ("trace", "lower", "compile")}
    lines = [f"### {result['workload']} ({result['n_terms']} terms)", "",
             f"import {result['import_s']:.2f} s, model {result['model_s']:.2f} s, first fit "
             f"{result['first_fit_s']:.2f} s (tracing {totals['trace']:.2f} s, lowering {totals['lower']:.2f} s, "
             f"XLA compiling {totals['compile']:.2f} s over {sum(p['compiles'] for p in programs.values())} "
             f"compiles), second fit {result['warm_fit_s']:.2f} s, objective {result['objective']:.6f}", "",
             "| program | compiles | trace s | lower s | compile s | HLO chars |", "|---|---|---|---|---|---|"]
    ranked = sorted(programs.items(), key=lambda kv: -(kv[1]["compile"] + kv[1]["trace"] + kv[1]["lower"]))
    for name, p in ranked[:top]:
        hlo = "" if p.get("hlo") is None else f"{p['hlo']:,}"
        lines.append(f"| {name} | {p['compiles']} | {p['trace']:.2f} | {p['lower']:.2f} | {p['compile']:.2f} | {hlo} |")
    rest = ranked[top:]
    if rest:
        lines.append(f"| {len(rest)} others | {sum(p['compiles'] for _, p in rest)} | "
                     f"{sum(p['trace'] for _, p in rest):.2f} | {sum(p['lower'] for _, p in rest):.2f} | "
                     f"{sum(p['compile'] for _, p in rest):.2f} | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interviews", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1, help="the simulated poll's seed")
    parser.add_argument("--only", nargs="*", default=["sleepstudy", "xbox2", "xbox8", "xbox"])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(_one(args.one, args.interviews, args.seed)))
        return
    import compileall

    # .pyc files as pip writes them on install, so that "import" is what a user's process pays (not compiling
    # jaxmlm's sources, which an editable install under PYTHONDONTWRITEBYTECODE would redo in every process)
    compileall.compile_dir(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "jaxmlm"),
                           quiet=1)
    for name in args.only:
        out = subprocess.run([sys.executable, __file__, "--one", name, "--interviews", str(args.interviews),
                              "--seed", str(args.seed)], env=dict(os.environ, JAXMLM_NO_CACHE="1"),
                             capture_output=True, text=True, check=True)
        print(_table(json.loads(out.stdout.strip().splitlines()[-1])), "\n", flush=True)


if __name__ == "__main__":
    main()
