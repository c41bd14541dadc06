"""InstEval's dense-tail objective: one value against one value and gradient, and whole warm fits by COBYQA (the
rule for tails of 512 columns or more) or by BFGS on the exact gradient (forced). Prints one JSON line.

    python -m benchmarks.bench_insteval_gradient programs       # value, value + gradient (this checkout's), autodiff's
    python -m benchmarks.bench_insteval_gradient fit cobyqa     # a cold fit, then 4 warm fits
    python -m benchmarks.bench_insteval_gradient fit bfgs

Run from a checkout's root (its jaxmlm is the one imported); alternate checkouts and modes in separate processes
and take minima: on a shared machine single timings vary several-fold. benchmarks/results/insteval_gradient.md
has the numbers.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"


def programs(repeats: int = 12) -> dict:
    import jax

    import jaxmlm as jm
    from jaxmlm._compile import jit
    from jaxmlm.core._lmm import deviance_and_gradient, deviance_value, profiled_deviance

    model = jm.Model(FORMULA, jm.datasets.load("InstEval"))
    problem = model._for_evaluation()
    autodiff = jit(jax.value_and_grad(profiled_deviance), static_argnames=("reml",))
    theta = np.asarray([0.3, 0.5, 0.2])
    calls = dict(value=lambda: deviance_value(theta, problem, False),
                 value_and_gradient=lambda: deviance_and_gradient(theta, problem, False),
                 autodiff=lambda: autodiff(theta, problem, reml=False))
    times: dict = {k: [] for k in calls}
    with jax.enable_x64(True):
        for f in calls.values():
            jax.block_until_ready(f())
        for _ in range(repeats):  # interleaved, so that load changes hit all three alike
            for k, f in calls.items():
                t = time.perf_counter()
                jax.block_until_ready(f())
                times[k].append(time.perf_counter() - t)
    return {k: dict(min_ms=round(1e3 * min(v), 1), median_ms=round(1e3 * float(np.median(v)), 1))
            for k, v in times.items()}


def fit(mode: str, repeats: int = 4) -> dict:
    import jaxmlm as jm
    from jaxmlm.fit import _model

    if mode == "bfgs":
        _model._DERIVATIVE_FREE_TAIL = 10**9
    data = jm.datasets.load("InstEval")
    t = time.perf_counter()
    result = jm.Model(FORMULA, data).fit(method="ml", warn=False)
    cold = time.perf_counter() - t
    warm = []
    for _ in range(repeats):
        t = time.perf_counter()
        result = jm.Model(FORMULA, data).fit(method="ml", warn=False)
        warm.append(time.perf_counter() - t)
    info = result.optinfo
    return dict(mode=mode, optimizer=info.method, cold_s=round(cold, 2), warm_s=[round(w, 2) for w in warm],
                objective=result.objective, theta=[float(x) for x in result.theta], evaluations=int(info.n_eval),
                grad_max=float(info.grad_max), converged=bool(result.converged))


if __name__ == "__main__":
    import jaxmlm

    out = programs() if sys.argv[1] == "programs" else fit(sys.argv[2])
    print(json.dumps(dict(jaxmlm=jaxmlm.__file__, **out)), flush=True)
