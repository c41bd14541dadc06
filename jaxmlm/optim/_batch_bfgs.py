"""`bfgs_minimize`'s algorithm for a batch of problems as a NumPy loop around one compiled, vectorized
value-and-gradient program.

`bfgs_minimize` under vmap is one XLA program for the whole batch fit; its `lax.while_loop` with the objective
and its gradient inlined compiles several times slower than the bare vmapped value-and-gradient program, and
where every batch has its own shapes (`fit_groups`' buckets) compiling is most of the cost. Here each pass calls
that program once for the whole batch and runs the shared step (`_bfgs.bfgs_step`) on (batch × k) arrays on the
host: per problem the passes are `host_bfgs_minimize`'s; a problem that has stopped keeps its point while the
others go on.

`lane_batch_bfgs_minimize` runs the same passes with the step inside the compiled program (`traced_batch_pass`)
on lanes of problems that are refilled as problems stop (the linear `fit_batch`).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._bfgs import HOST_BATCH, TRACED, BfgsOptions, BfgsState, bfgs_converged, bfgs_done, bfgs_init, bfgs_step
from ._optimize import OptimResult

__all__ = ["lane_batch_bfgs_minimize", "traced_lane_pass", "evaluation_state", "host_batch_bfgs_minimize", "traced_batch_pass"]


def host_batch_bfgs_minimize(value_and_grad: Callable[[np.ndarray], tuple], x0, *, max_iter: int = 1000,
                             gtol: float = 1e-9, ftol: float = 1e-13, first_step: float = 0.25) -> OptimResult:
    """Minimize m problems at once from x0 (m × k). `value_and_grad(X)` takes the (m × k) points and returns
    ((m,) values, (m × k) gradients). Returns an `OptimResult` of NumPy arrays with one entry (row) per problem."""
    options = BfgsOptions(gtol=gtol, ftol=ftol, first_step=first_step, max_iter=max_iter)

    def evaluate(points):
        return tuple(np.asarray(a, dtype=np.float64) for a in value_and_grad(points))

    x = np.array(x0, dtype=np.float64)
    s = bfgs_init(x, *evaluate(x), options, HOST_BATCH)
    active = ~bfgs_done(s, options, HOST_BATCH)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # rows that are discarded may be NaN
        while active.any():
            s = bfgs_step(s, evaluate, options, HOST_BATCH, active=active)
            active = ~bfgs_done(s, options, HOST_BATCH)
    return OptimResult(x=s.x, value=s.value, grad=s.grad, n_iter=s.it, n_eval=s.n_eval,
                       converged=bfgs_converged(s, options, HOST_BATCH))


def traced_batch_pass(value_and_grad: Callable, s: BfgsState, options: BfgsOptions):
    """Inside a compiled program: one pass (`_bfgs.bfgs_step`, jax.numpy) of every row of s still searching, the
    others kept. Returns (the new state, its rows' stopping flags, the value and gradient at the pass's trial
    points). A state from `evaluation_state` has every row stopped at its points: the pass only evaluates there."""
    seen = []

    def evaluate(points):
        out = value_and_grad(points)
        seen.append(out)
        return out

    new = bfgs_step(s, evaluate, options, TRACED, active=~bfgs_done(s, options, TRACED))
    return new, bfgs_done(new, options, TRACED), *seen[0]


def evaluation_state(points, options: BfgsOptions) -> BfgsState:
    """A batch state of the search's shapes and types whose rows have all stopped at `points` (m × k): a pass from
    it evaluates the value and gradient there (the start, the boundary snap, the saddle probes), so that one
    compiled pass program serves them too."""
    x = np.array(points, dtype=np.float64)
    s = bfgs_init(x, np.full(x.shape[0], np.inf), np.zeros_like(x), options, HOST_BATCH)
    return s._replace(step=np.zeros(x.shape[0]))


def traced_lane_pass(value_and_grad: Callable, s: BfgsState, index, options: BfgsOptions):
    """Inside a compiled program: `traced_batch_pass` on the lanes of the whole state s (m rows), lane i holding
    problem index[i]; value_and_grad(points) evaluates the lanes' problems. Returns (the whole new state, every
    problem's stopping flags, the value and gradient at the lanes' trial points): the state stays on the device
    between passes and the host reads the flags only."""
    lanes = BfgsState(*(a[index] for a in s))
    new, _, v, g = traced_batch_pass(value_and_grad, lanes, options)
    whole = BfgsState(*(a.at[index].set(b) for a, b in zip(s, new)))
    return whole, bfgs_done(whole, options, TRACED), v, g


def lane_batch_bfgs_minimize(run_pass: Callable, x0, options: BfgsOptions, lanes: int) -> OptimResult:
    """`host_batch_bfgs_minimize`'s passes for m problems through `lanes` lanes: run_pass(state, index) is one
    compiled program (`traced_lane_pass`) that steps problem index[i] in lane i and returns the whole state. A
    problem stays in its lane until it stops, then the next unfinished one takes the lane, so each pass evaluates
    searching problems only (a vmapped loop runs every problem of a batch until the slowest stops: on sleepstudy's
    design a chunk of 512 columns took 41 passes where a column took 15 on average). The state stays on the
    device; the host reads the stopping flags per pass. Per problem the passes are `host_batch_bfgs_minimize`'s
    (the same `_bfgs.bfgs_step`), whatever the lanes."""
    x = np.array(x0, dtype=np.float64)
    m = x.shape[0]
    v0, g0 = np.empty(m), np.empty_like(x)
    at_start = evaluation_state(x, options)
    for first in range(0, m, lanes):  # the starts' values and gradients: passes that only evaluate
        index = _lane_index(np.arange(first, min(first + lanes, m)), lanes)
        _, _, v, g = run_pass(at_start, index)
        v0[index], g0[index] = np.asarray(v), np.asarray(g)
    s = bfgs_init(x, v0, g0, options, HOST_BATCH)
    done = bfgs_done(s, options, HOST_BATCH)
    while not done.all():
        s, stopped, _, _ = run_pass(s, _lane_index(np.flatnonzero(~done)[:lanes], lanes))
        done = np.asarray(stopped)
    s = BfgsState(*(np.asarray(a) for a in s))
    return OptimResult(x=s.x, value=s.value, grad=s.grad, n_iter=s.it, n_eval=s.n_eval,
                       converged=bfgs_converged(s, options, HOST_BATCH))


def _lane_index(rows: np.ndarray, lanes: int) -> np.ndarray:
    """rows filled up to `lanes` entries with copies of the first (a copy computes the same step: harmless)."""
    return np.concatenate([rows, np.repeat(rows[:1], lanes - len(rows))]) if len(rows) < lanes else rows
