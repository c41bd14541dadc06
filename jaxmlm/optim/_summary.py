"""One record of what the optimizer did (MixedModels.jl's OptSummary), built in one place for every fit.

`summarize` takes the optimizer's run (an `OptimResult`), the start, bounds and tolerances it ran under, and the
derivatives at the reported optimum; it runs lme4's convergence checks (`_convergence.check_convergence`) and
returns an `OptSummary`. Linear, generalized and iterative fits all end here; `OptSummary.info()` gives the older
`OptimizerInfo` view that `fit.optinfo` keeps.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ._convergence import check_convergence

__all__ = ["OptSummary", "RETURN_CODES", "RowsSummary", "return_codes", "summarize", "summarize_rows"]

# why the optimizer itself stopped (before the convergence checks at the optimum)
RETURN_CODES = ("converged", "max_evaluations", "not_finite", "stalled")


@dataclasses.dataclass(frozen=True)
class OptSummary:
    """What the optimizer did: start, bounds, tolerances, evaluations, the end point, result code, messages."""

    optimizer: str  # "BFGS", "COBYQA", "COBYQA (iterative)"
    method: str  # the objective: "reml", "ml", "laplace", "agq"
    initial: np.ndarray  # start x
    lower: np.ndarray  # lower bounds on x (-inf where none)
    final: np.ndarray  # the reported optimum x (canonical sign, boundary snapped)
    fmin: float  # the objective at `final`
    ftol: float  # relative decrease below which an iteration counts as stalled
    gtol: float  # max|grad| ≤ gtol·(1 + |f|) stops a gradient-based search (NaN for derivative-free ones)
    xtol: float  # final trust-region radius of a derivative-free search (NaN for gradient-based ones)
    max_evaluations: int
    evaluations: int
    iterations: int
    return_code: str  # one of RETURN_CODES: why the optimizer stopped
    converged: bool  # the optimizer converged and lme4's checks at the optimum passed
    grad_max: float  # max |∂objective/∂x| at `final`
    hessian_eigenvalues: np.ndarray | None
    messages: tuple[str, ...]
    nagq: int = 1

    def info(self):
        """The same as an `OptimizerInfo` (fit.optinfo)."""
        from ..results._results import OptimizerInfo

        return OptimizerInfo(method=self.optimizer, converged=self.converged, n_iter=self.iterations,
                             n_eval=self.evaluations, grad_max=self.grad_max,
                             hessian_eigenvalues=self.hessian_eigenvalues, messages=self.messages)

    def __repr__(self) -> str:
        rows = [("optimizer", self.optimizer), ("objective", f"{self.method} (nAGQ = {self.nagq})"),
                ("initial", np.array2string(self.initial, precision=6)),
                ("lower", np.array2string(self.lower, precision=6)),
                ("ftol / gtol / xtol", f"{self.ftol:g} / {self.gtol:g} / {self.xtol:g}"),
                ("max evaluations", self.max_evaluations),
                ("evaluations / iterations", f"{self.evaluations} / {self.iterations}"),
                ("final", np.array2string(self.final, precision=6)), ("fmin", f"{self.fmin:.10g}"),
                ("return code", self.return_code), ("converged", self.converged)]
        rows += [("message", m) for m in self.messages]
        width = max(len(k) for k, _ in rows)
        return "OptSummary\n" + "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def return_codes(converged, value, n_eval, max_evaluations: int) -> np.ndarray:
    """Why the optimizer stopped, per problem (one of RETURN_CODES): converged, a non-finite objective, the
    evaluation limit, or a stall short of the tolerances."""
    converged, value, n_eval = np.asarray(converged, bool), np.asarray(value, np.float64), np.asarray(n_eval)
    return np.where(converged, "converged", np.where(~np.isfinite(value), "not_finite",
                                                     np.where(n_eval >= max_evaluations, "max_evaluations", "stalled")))


def _return_code(result, max_evaluations: int) -> str:
    return str(return_codes(result.converged, result.value, result.n_eval, max_evaluations))


def summarize(*, optimizer: str, method: str, result, initial, lower, final, fmin: float, grad, hessian,
              interior, max_evaluations: int, ftol: float = np.nan, gtol: float = np.nan, xtol: float = np.nan,
              messages=(), nagq: int = 1, evaluations: int | None = None,
              iterations: int | None = None) -> OptSummary:
    """The record of one fit. `result`: the optimizer's `OptimResult` (its converged flag, evaluation and
    iteration counts unless given); `grad`/`hessian` at `final`; `interior`: which coordinates are off the
    boundary (lme4 leaves the others out of its checks)."""
    grad = np.asarray(grad, dtype=np.float64)
    ok, eig, found = check_convergence(grad, None if hessian is None else np.asarray(hessian), np.asarray(interior))
    return OptSummary(
        optimizer=optimizer, method=method, initial=np.asarray(initial, dtype=np.float64).copy(),
        lower=np.asarray(lower, dtype=np.float64).copy(), final=np.asarray(final, dtype=np.float64).copy(),
        fmin=float(fmin), ftol=float(ftol), gtol=float(gtol), xtol=float(xtol),
        max_evaluations=int(max_evaluations),
        evaluations=int(result.n_eval if evaluations is None else evaluations),
        iterations=int(result.n_iter if iterations is None else iterations),
        return_code=_return_code(result, max_evaluations), converged=bool(result.converged) and ok,
        grad_max=float(np.max(np.abs(grad))) if grad.size else 0.0, hessian_eigenvalues=eig,
        messages=tuple(messages) + tuple(found), nagq=int(nagq))


@dataclasses.dataclass(frozen=True)
class RowsSummary:
    """The OptSummary of a batch of fits (many responses, many designs): what the fits share, and per fit (row)
    what each optimizer run did. The batch fits' convergence check is the optimizer's own (no Hessian per row)."""

    optimizer: str
    method: str
    initial: np.ndarray  # the start every row's search began from: θ (or ψ); a GLMM's β starts per row
    lower: np.ndarray  # lower bounds on those coordinates
    ftol: float
    gtol: float
    max_evaluations: int
    evaluations: np.ndarray  # (m,) objective evaluations, restarts and saddle searches included
    iterations: np.ndarray  # (m,)
    fmin: np.ndarray  # (m,)
    return_code: np.ndarray  # (m,) of RETURN_CODES
    converged: np.ndarray  # (m,)
    messages: tuple[tuple[str, ...], ...]  # per row: restarts, saddles, fallbacks

    def __len__(self) -> int:
        return len(self.converged)

    def row(self, i: int) -> dict:
        """Row i's record: the shared fields and that fit's own."""
        return dict(optimizer=self.optimizer, method=self.method, initial=self.initial, lower=self.lower,
                    ftol=self.ftol, gtol=self.gtol, max_evaluations=self.max_evaluations,
                    evaluations=int(self.evaluations[i]), iterations=int(self.iterations[i]), fmin=float(self.fmin[i]),
                    return_code=str(self.return_code[i]), converged=bool(self.converged[i]),
                    messages=self.messages[i])

    def __repr__(self) -> str:
        codes, counts = np.unique(self.return_code, return_counts=True)
        noted = sum(1 for m in self.messages if m)
        return (f"RowsSummary({len(self)} fits, optimizer={self.optimizer!r}, method={self.method!r}, "
                f"return codes {dict(zip(codes.tolist(), counts.tolist()))}, {noted} with messages)")


def summarize_rows(*, optimizer: str, method: str, initial, lower, converged, fmin, evaluations, iterations,
                   max_evaluations: int, gtol: float, ftol: float = 1e-13, messages=None) -> RowsSummary:
    """The record of a batch of fits, one row each; messages: per row a sequence of strings (None: none)."""
    converged = np.asarray(converged, bool)
    fmin = np.asarray(fmin, np.float64)
    evaluations = np.asarray(evaluations, np.int64)
    rows = tuple(tuple(m) for m in messages) if messages is not None else ((),) * converged.size
    return RowsSummary(optimizer=optimizer, method=method, initial=np.asarray(initial, np.float64).copy(),
                       lower=np.asarray(lower, np.float64).copy(), ftol=float(ftol), gtol=float(gtol),
                       max_evaluations=int(max_evaluations), evaluations=evaluations,
                       iterations=np.asarray(iterations, np.int64), fmin=fmin,
                       return_code=return_codes(converged, fmin, evaluations, max_evaluations), converged=converged,
                       messages=rows)
