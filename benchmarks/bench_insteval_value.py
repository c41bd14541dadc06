"""InstEval's profiled deviance (the value a derivative-free fit evaluates) piece by piece, and whole warm fits
broken down: model building, the search's evaluations, lme4's check, the estimates. Prints one JSON line.

    python -m benchmarks.bench_insteval_value pieces        # the value and its pieces as separate programs
    python -m benchmarks.bench_insteval_value fit after     # a cold fit and warm fits, phase by phase
    python -m benchmarks.bench_insteval_value fit before    # the same as before these changes
    python -m benchmarks.bench_insteval_value pair          # jaxmlm's and mixedlm's warm fits, alternating

`fit after` runs today's path (the row-major Cholesky; COBYQA to a radius of 1e-3, one Newton step on the
check's differences, the check's seven-point differences), `fit before` the earlier one (jax's Cholesky; COBYQA
to 1e-6, then lme4's deriv12 stencil at the optimum); alternate the two processes. Run with
OPENBLAS_NUM_THREADS=1 and JAXMLM_MALLOPT=1 at the lowest load at hand and take minima: on a shared machine
single timings vary several-fold. benchmarks/results/insteval_value.md has the numbers.
"""

from __future__ import annotations

import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("JAXMLM_PROGRAM_STORE", "0")  # cold = compiled in this process (benchmarks/__init__.py)

FORMULA = "y ~ service + (1 | s) + (1 | d) + (1 | dept)"


def _min_median(times: list) -> dict:
    return dict(min_ms=round(1e3 * min(times), 2), median_ms=round(1e3 * float(np.median(times)), 2))


def pieces(repeats: int = 15) -> dict:
    """The value program (and the one before the row-major Cholesky), and its parts compiled as programs of their
    own: the prefix's elimination with the entry pairs' update (and the pairs' update alone), the tail's assembly,
    the Cholesky (jax's, and LAPACK on the row-major memory), the Cholesky with the log terms."""
    import jax
    import jax.numpy as jnp

    import jaxmlm as jm
    from jaxmlm._compile import jit
    from jaxmlm._config import heap_allocations
    from jaxmlm.core import _linalg as la
    from jaxmlm.core._lmm import _deviance, deviance_value

    problem = jm.Model(FORMULA, jm.datasets.load("InstEval"))._for_evaluation()
    st, p = problem.structure, problem.p
    size = st.m_z * st.m_z

    @jit
    def eliminate(theta, problem):
        return la._eliminate(theta, problem.blocks, problem.structure, False)[1]

    @jit
    def pairs(x, st):
        return jax.ops.segment_sum(x[st.pair_a[0]] * x[st.pair_b[0]], st.pair_target[0], size)

    @jit
    def assemble(theta, problem, upd):
        return la._tail_matrix(theta, problem.blocks, problem.structure, upd)

    @jit
    def cholesky_column_major(S):  # jax's own: XLA hands LAPACK a transposed copy of S
        return la._lax_cholesky(S)

    @jit
    def cholesky_row_major(S):  # LAPACK on S's own memory (`_linalg._potrf_row_major`)
        return la._potrf_row_major(S)

    @jit
    def value_before(theta, problem):  # the value program with jax's Cholesky, as before the change
        prefix, S = la.eliminate_prefix(theta, problem.blocks, problem.structure)
        terms = la._tail_values(jnp.diagonal(la._lax_cholesky(S)), st.m_z, p)
        return _deviance(prefix.logdet_prefix() + terms[0], terms[1], terms[2], problem, False)

    @jit
    def log_terms(S):
        return la.tail_log_terms(S, st.m_z, p)

    with jax.enable_x64(True), heap_allocations():
        theta = jnp.asarray([0.3, 0.5, 0.2])
        upd = eliminate(theta, problem)
        S = assemble(theta, problem, upd)
        x = jnp.asarray(np.random.default_rng(0).standard_normal(st.entry_row[0].shape[0]))
        calls = dict(value=lambda: deviance_value(theta, problem, False),
                     value_before=lambda: value_before(theta, problem), eliminate=lambda: eliminate(theta, problem),
                     pairs=lambda: pairs(x, st), assemble=lambda: assemble(theta, problem, upd),
                     cholesky_column_major=lambda: cholesky_column_major(S),
                     cholesky_row_major=lambda: cholesky_row_major(S), cholesky_and_logs=lambda: log_terms(S))
        return _interleaved(calls, repeats, jax.block_until_ready)


def _interleaved(calls: dict, repeats: int, block) -> dict:
    times: dict = {k: [] for k in calls}
    for f in calls.values():
        block(f())
    for _ in range(repeats):  # interleaved, so that load changes hit all alike
        for k, f in calls.items():
            t = time.perf_counter()
            block(f())
            times[k].append(time.perf_counter() - t)
    return {k: _min_median(v) for k, v in times.items()}


def _deriv12(objective, theta, f0, delta=1e-4):
    """lme4's deriv12 stencil (four corner points per off-diagonal element), the check before this change."""
    k = theta.size
    grad, hess = np.zeros(k), np.zeros((k, k))

    def f(*steps):
        x = theta.copy()
        for i, s in steps:
            x[i] += s * delta
        return objective(x)

    plus, minus = [f((j, 1)) for j in range(k)], [f((j, -1)) for j in range(k)]
    for j in range(k):
        grad[j] = (plus[j] - minus[j]) / (2 * delta)
        hess[j, j] = (plus[j] - 2 * f0 + minus[j]) / delta**2
        for i in range(j):
            hess[i, j] = hess[j, i] = (f((j, 1), (i, 1)) - f((j, 1), (i, -1)) - f((j, -1), (i, 1))
                                       + f((j, -1), (i, -1))) / (4 * delta**2)
    return grad, hess


def _earlier_path() -> None:
    """As before these changes: jax's Cholesky in the value program, COBYQA to 1e-6 without the Newton finish,
    lme4's stencil for the check. Set before anything compiles."""
    from jaxmlm.core import _linalg
    from jaxmlm.fit import _linear
    from jaxmlm.optim import _optimize

    _linalg._potrf_row_major = _linalg._lax_cholesky
    _optimize.COARSE_RADIUS, _linear.finite_difference_derivatives = 10.0, _deriv12


class _Phases:
    """Wall time per phase of one fit, by wrapping the functions the fit calls."""

    def __init__(self):
        from jaxmlm.fit import _linear, _model

        self.times: dict = {}
        self.evaluations = 0
        self._patches = []
        self._wrap(_model.Model, "_build_structure", "structure", method=True)
        self._wrap(_model, "make_linear_problems", "statistics")
        self._wrap(_linear, "linear_estimates", "estimates")
        self._wrap(_linear, "_derivatives", "check")
        self._wrap(_linear, "deviance_value", "values", count=True)

    def _wrap(self, owner, name, phase, method=False, count=False):
        import jax

        original = getattr(owner, name)

        def timed(*args, **kwargs):
            t = time.perf_counter()
            out = jax.block_until_ready(original(*args, **kwargs))
            self.times[phase] = self.times.get(phase, 0.0) + time.perf_counter() - t
            self.evaluations += count
            return out

        setattr(owner, name, timed)
        self._patches.append((owner, name, original))

    def reset(self):
        self.times, self.evaluations = {}, 0

    def restore(self):
        for owner, name, original in reversed(self._patches):
            setattr(owner, name, original)


def fit(path: str, repeats: int = 3) -> dict:
    """A cold fit, then `repeats` warm fits (a new Model each, as benchmarks/run.py times them), phase by phase."""
    import jaxmlm as jm

    if path == "before":
        _earlier_path()
    data = jm.datasets.load("InstEval")
    phases = _Phases()
    out: dict = dict(path=path, warm=[])
    for i in range(repeats + 1):
        phases.reset()
        t = time.perf_counter()
        result = jm.Model(FORMULA, data).fit(method="ml", warn=False)
        total = time.perf_counter() - t
        times = dict(phases.times)
        check = times.pop("check", 0.0)  # its evaluations are counted in "values" too
        row = dict(total_s=round(total, 3), evaluations=phases.evaluations,
                   ms_per_value=round(1e3 * times["values"] / phases.evaluations, 1),
                   outside_values_s=round(total - times["values"], 3), check_s=round(check, 3),
                   **{f"{k}_s": round(v, 3) for k, v in times.items()})
        if i == 0:
            out["cold"] = row
        else:
            out["warm"].append(row)
    phases.restore()
    out.update(objective=result.objective, theta=[float(x) for x in result.theta],
               grad_max=float(result.optinfo.grad_max), n_eval=int(result.optinfo.n_eval))
    return out


def pair(repeats: int = 4) -> dict:
    """Warm fits of jaxmlm and mixedlm (benchmarks/peers.py's call) alternating in one process, after one fit of
    each: under a changing load the ratio of fits run back to back is steadier than that of separate runs."""
    import jaxmlm as jm

    from benchmarks import peers
    from benchmarks.workloads import WORKLOADS

    workload, data = WORKLOADS["insteval"], jm.datasets.load("InstEval")
    objectives = {e: peers.python_fit(e, workload, data)[0] for e in ("jaxmlm", "mixedlm")}
    times: dict = {"jaxmlm": [], "mixedlm": []}
    for _ in range(repeats):
        for engine in times:
            t = time.perf_counter()
            peers.python_fit(engine, workload, data)
            times[engine].append(round(time.perf_counter() - t, 3))
    ratios = [round(j / m, 3) for j, m in zip(times["jaxmlm"], times["mixedlm"])]
    return dict(warm_s=times, pair_ratios=ratios, ratio_of_minima=round(min(times["jaxmlm"]) / min(times["mixedlm"]), 3),
                objectives=objectives)


if __name__ == "__main__":
    import os

    import jaxmlm

    mode = sys.argv[1]
    out = pieces() if mode == "pieces" else pair() if mode == "pair" else fit(sys.argv[2] if len(sys.argv) > 2 else "after")
    print(json.dumps(dict(jaxmlm=jaxmlm.__file__, blas_threads=os.environ.get("OPENBLAS_NUM_THREADS"),
                          uptime=os.getloadavg(), **out)), flush=True)
