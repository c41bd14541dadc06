"""`bfgs_minimize`'s algorithm for a batch of problems as a NumPy loop around one compiled, vectorized
value-and-gradient program.

`bfgs_minimize` under vmap is one XLA program for the whole batch fit; its `lax.while_loop` with the objective
and its gradient inlined compiles several times slower than the bare vmapped value-and-gradient program, and
where every batch has its own shapes (`fit_groups`' buckets) compiling is most of the cost. Here each pass calls
that program once for the whole batch and runs the shared step (`_bfgs.bfgs_step`) on (batch × k) arrays on the
host: per problem the passes are `host_bfgs_minimize`'s; a problem that has stopped keeps its point while the
others go on.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ._bfgs import HOST_BATCH, BfgsOptions, bfgs_converged, bfgs_done, bfgs_init, bfgs_step
from ._optimize import OptimResult

__all__ = ["host_batch_bfgs_minimize"]


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
