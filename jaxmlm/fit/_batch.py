"""Many responses on one design: every column of Y fitted by one vectorized (vmapped) optimizer.

Only the response enters the statistics [Z X y]ᵀW[Z X y] through its y-parts: the y column of each prefix block
(Zₜᵀ W y, per level), of the tail (Z_tailᵀ W y), and Xᵀ W y, yᵀ W y. So the Z and X blocks are formed once and
each response adds a few segment sums over the rows. A response with missing values gets zero weight on those
rows; that changes its Z and X blocks too, so such columns get the full statistics of their own weights (and their
own effective n). Per chunk of responses three programs compile once: the columns' statistics, one pass of
the dense BFGS step of `_bfgs.bfgs_step` (one evaluation per pass, no nested line search) vmapped over lanes of
columns, and the estimates. The host runs the passes (`optim._batch_bfgs.lane_batch_bfgs_minimize`): a column
keeps its lane until it stops, then the next takes it, so a pass evaluates searching columns only; the search's
start, the boundary snap and the saddle probes run the same pass program. Compiling the whole vmapped BFGS loop
with the deviance inside as one program instead cost several times as long (benchmarks/suite_time.md). Chunks
are sized to the memory the machine has (`_memory`), the offset is taken off chunk by chunk and the scans for
missing values go by blocks of columns, so beside the caller's Y and the results (a few numbers per response)
memory stays bounded by the chunk size, whatever the number of responses.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import sys
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._config import float64, float64_methods
from ..core._blocks import Blocks, RowData, Structure, cross_products
from ..core._covariance import canonical_theta, theta_diagonal_mask, theta_names
from .._errors import ConvergenceWarning, DataError, DataTypeError
from .._warn import user_stacklevel  # noqa: F401  (also used by _batch_glmm)
from .._memory import DEFAULT_FRACTION, available_bytes
from ..core._linalg import factorize, solve_coefficients
from ..core._lmm import LinearProblem, deviance_from_factor, profiled_deviance
from ..core._structures import is_structured, psi_diagonal_mask, psi_to_theta
from ..optim._batch_bfgs import evaluation_state, lane_batch_bfgs_minimize, traced_lane_pass
from ..optim._bfgs import BfgsOptions
from ..results._results import SINGULAR_TOL
from ..optim._summary import summarize_rows
from ._boundary import SADDLE_MESSAGE, refit_is_lower, saddle_starts, snap_rows
from .._compile import carry_effort, compile_effort, current_effort, jit

__all__ = ["BatchResult", "fit_batch"]

_CHUNK_BYTES = 64 * 2**20  # working memory aimed at per chunk (statistics and optimizer state)
# Each pass of a chunk's search is one dispatch of its compiled pass program, whose fixed cost large chunks
# amortize; columns are split over the worker threads first (`_plan_chunks`). Measured in benchmarks/suite_time.md.
_CHUNK_MAX = 2048
# Columns a pass evaluates (`lane_batch_bfgs_minimize`): at least this many, and a quarter of the chunk, so that
# cheap evaluations (a few numbers per column) do not leave the pass's dispatch to dominate.
_LANES = 128
# The batch's tolerance, looser than a single fit's: max|grad| ≤ 1e-7·(1+|f|) still puts the objective within
# ~1e-12 relative of the optimum (error ≈ g²/2H).
_BATCH_GTOL = 1e-7


@float64_methods
@dataclasses.dataclass
class BatchResult:
    """Fits of many responses on one design. Arrays have one entry (row) per response column."""

    model: object
    method: str
    columns: pd.Index
    theta: np.ndarray  # (m, k), lme4's layout and canonical sign
    beta: np.ndarray  # (m, p)
    se_beta: np.ndarray  # (m, p)
    sigma: np.ndarray  # (m,)
    objective: np.ndarray  # (m,): REML criterion for REML fits, else -2 log-likelihood
    loglik: np.ndarray  # (m,): lme4's logLik (of the REML criterion for REML fits; -inf for non-integer counts)
    converged: np.ndarray  # (m,) bool
    nobs: np.ndarray  # (m,) rows used per response (missing values excluded)
    n_iter: np.ndarray  # (m,)
    seconds: float = float("nan")
    dispersion: np.ndarray | None = None  # (m,) a dispersion family's d (`fit.dispersion`'s scale); else None
    dispersion_se: np.ndarray | None = None  # (m,) its standard error (NaN where d is fixed)
    psi: np.ndarray | None = None  # (m, k) cs() / ar1() models: the structures' parameters ψ (theta is θ(ψ))
    optsum: object = None  # `optim._summary.RowsSummary`: the optimizer's record, a row per response

    @property
    def fixef(self) -> pd.DataFrame:
        return pd.DataFrame(self.beta, index=self.columns, columns=self.model.design.x_names)

    @property
    def se(self) -> pd.DataFrame:
        return pd.DataFrame(self.se_beta, index=self.columns, columns=self.model.design.x_names)

    @property
    def theta_frame(self) -> pd.DataFrame:
        d = self.model.design
        return pd.DataFrame(
            self.theta, index=self.columns, columns=theta_names(d.group_names, [t.column_names for t in d.terms])
        )

    @property
    def is_singular(self) -> np.ndarray:
        mask = theta_diagonal_mask(self.model.qs)
        return np.any(self.theta[:, mask] < SINGULAR_TOL, axis=1)

    def __len__(self) -> int:
        return len(self.columns)

    def __repr__(self) -> str:
        return (
            f"BatchResult({len(self)} responses, method={self.method!r}, "
            f"{int(self.converged.sum())} converged, {self.seconds:.3g} s)"
        )


# ---------------------------------------------------------------------------------------------- statistics
def _response_parts(structure: Structure, rows: RowData, weights, X, y):
    """The y-dependent pieces of [Z X y]ᵀW[Z X y]: per prefix term Σ w y z by level, the tail's Zᵀ W y,
    Xᵀ W y and yᵀ W y. Same segment sums as `cross_products`, with F = y only."""
    wy = weights * y
    fixed_y = tuple(
        jax.ops.segment_sum(wy[:, None] * rows.z[t], rows.codes[t], structure.n_levels[t])
        for t in range(structure.n_prefix)
    )
    tail_zy = jnp.zeros((structure.m_z,), dtype=y.dtype)
    for i, k in enumerate(range(structure.n_prefix, structure.n_terms)):
        q = structure.qs[k]
        idx = rows.tail_row[i][:, None] + jnp.arange(q, dtype=jnp.int32)[None, :]
        tail_zy = tail_zy + jax.ops.segment_sum((wy[:, None] * rows.z[k]).reshape(-1), idx.reshape(-1), structure.m_z)
    return fixed_y, tail_zy, X.T @ wy, jnp.dot(y, wy)


def _with_response(base: Blocks, parts) -> Blocks:
    """Blocks of [Z X y] from the response-free blocks of [Z X] (F = X) and one response's y-parts."""
    fixed_y, tail_zy, xy, yy = parts
    fixed = tuple(jnp.concatenate([f, fy.T[None]], axis=0) for f, fy in zip(base.fixed, fixed_y))  # (f + 1, q, l)
    tail_fz = jnp.concatenate([base.tail_fz, tail_zy[None, :]], axis=0)
    tail_ff = jnp.block([[base.tail_ff, xy[:, None]], [xy[None, :], yy[None, None]]])
    return Blocks(diag=base.diag, offdiag=base.offdiag, fixed=fixed, entries=base.entries, tail_zz=base.tail_zz,
                  tail_fz=tail_fz, tail_ff=tail_ff)


def _sum_log_w(weights):
    positive = weights > 0
    return jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, weights, 1.0)), 0.0))


@jit
def _base_blocks(structure: Structure, rows: RowData, weights, X) -> Blocks:
    return cross_products(structure, rows, weights, X)


def _estimates(theta, problem: LinearProblem, reml: bool):
    """β, its standard errors, σ and the objective at θ (as `_lmm.linear_estimates`, without the factor)."""
    factor = factorize(theta, problem.blocks, problem.structure)
    m_z, p = problem.structure.m_z, problem.p
    beta, _, _ = solve_coefficients(factor, problem.structure, p)
    r2 = factor.tail[-1, -1] ** 2
    sigma = jnp.sqrt(r2 / (problem.n - p if reml else problem.n))
    se = sigma * jnp.sqrt(jnp.sum(factor.fixed_inverse(m_z, p) ** 2, axis=0))
    return beta, se, sigma, deviance_from_factor(factor, problem, reml)


def _deviance(x, problem, reml: bool, structures):
    """The profiled deviance at θ = x, or at θ(ψ) with x = ψ for a model with cs() / ar1() terms."""
    return profiled_deviance(_theta_of(x, structures), problem, reml, True, True)  # the single fit's rules


def _theta_of(x, structures):
    return x if structures is None else psi_to_theta(x, structures)


def _column_data(structure, rows, base, X, weights, y, complete: bool):
    """What one response column adds to the shared statistics. complete=True (no missing values): the blocks
    that y enters (formed once per chunk, not per evaluation), the others being the shared Z/X blocks. Otherwise
    the full statistics of its own weights (missing rows weighted 0), its effective n and Σ log w."""
    if complete:
        blocks = _with_response(base, _response_parts(structure, rows, weights, X, y))
        return blocks.fixed, blocks.tail_fz, blocks.tail_ff  # the parts of the blocks that y enters
    observed = ~jnp.isnan(y)
    w = jnp.where(observed, weights, 0.0)
    F = jnp.concatenate([X, jnp.where(observed, y, 0.0)[:, None]], axis=1)
    return cross_products(structure, rows, w, F), jnp.sum(w > 0).astype(jnp.float64), _sum_log_w(w)


def _column_problem(structure, base, shared, data, complete: bool) -> LinearProblem:
    """One column's problem from its `_column_data`; shared: (n, Σ log w) of the model's weights (complete
    columns)."""
    p = base.tail_ff.shape[0]
    if complete:
        n, sum_log_w = shared
        fixed, tail_fz, tail_ff = data
        blocks = Blocks(diag=base.diag, offdiag=base.offdiag, fixed=fixed, entries=base.entries,
                        tail_zz=base.tail_zz, tail_fz=tail_fz, tail_ff=tail_ff)
        return LinearProblem(structure=structure, blocks=blocks, n=n, p=p, sum_log_w=sum_log_w)
    blocks, n, sum_log_w = data
    return LinearProblem(structure=structure, blocks=blocks, n=n, p=p, sum_log_w=sum_log_w)


@jit(static_argnames=("complete",))
def _chunk_data(structure, rows, base, X, weights, Y, complete: bool):
    """Every column's `_column_data` for the columns of Y (n × c), stacked on a leading axis: formed once per
    chunk, on the device, for all the search's evaluations."""
    return jax.vmap(lambda y: _column_data(structure, rows, base, X, weights, y, complete), in_axes=1)(Y)


@jit(static_argnames=("reml", "complete", "structures", "options"))
def _chunk_pass(structure, base, shared, data, state, index, reml: bool, complete: bool, structures, options):
    """One pass of the chunk's batched BFGS (`_batch_bfgs.traced_batch_pass`) around every column's deviance and
    gradient: the one program that every pass of the search, its start, the boundary snap and the saddle probes
    run (a state from `evaluation_state` only evaluates). state: every column's; lane i steps column index[i]
    (`lane_batch_bfgs_minimize`)."""
    lane_data = jax.tree_util.tree_map(lambda a: a[index], data)

    def one(d, x):
        problem = _column_problem(structure, base, shared, d, complete)
        return jax.value_and_grad(_deviance)(x, problem, reml, structures)

    return traced_lane_pass(lambda points: jax.vmap(one)(lane_data, points), state, index, options)


@jit(static_argnames=("reml", "complete", "structures"))
def _chunk_estimates(structure, base, shared, data, points, reml: bool, complete: bool, structures=None):
    """Each column's θ, β, standard errors, σ, objective and effective n at its row of points."""
    def one(d, x):
        problem = _column_problem(structure, base, shared, d, complete)
        theta = _theta_of(x, structures)
        beta, se, sigma, objective = _estimates(theta, problem, reml)
        return dict(theta=theta, beta=beta, se=se, sigma=sigma, objective=objective, nobs=problem.n)

    return jax.vmap(one)(data, points)


def _fit_chunk(chunk: "_Chunk", starts: np.ndarray, lower: np.ndarray) -> dict:
    """Fit a chunk's columns, column j from starts[j]: the batched BFGS (`lane_batch_bfgs_minimize`, the single
    fits' step on rows) in passes of the chunk's one compiled pass program; then, as a single fit does, tiny
    variances snapped to the boundary (`_boundary.snap_rows`) and the estimates there."""
    res = lane_batch_bfgs_minimize(chunk.run_pass, starts, chunk.options, chunk.lanes)
    x, _ = snap_rows(res.x, lower, chunk.objective, value=res.value)
    est = {k: np.array(v) for k, v in chunk.estimates(x).items()}
    return dict(x=x, **est, converged=np.asarray(res.converged), n_iter=np.asarray(res.n_iter),
                n_eval=np.asarray(res.n_eval))


class _Chunk:
    """One chunk's columns on the device (their `_column_data`) and its compiled programs, called on NumPy rows
    of points."""

    def __init__(self, batch: "_LinearChunks", Y, complete: bool):
        m = batch.model
        self.batch, self.complete = batch, complete
        self.options = BfgsOptions(gtol=_BATCH_GTOL, max_iter=batch.max_iter)
        self.lanes = min(max(_LANES, Y.shape[1] // 4), Y.shape[1])
        # the pass runs a few dozen times per chunk, however small the design: "auto" compiles it fully optimized
        self.effort = "default" if current_effort() == "auto" and Y.shape[1] >= _LANES else current_effort()
        self.data = _chunk_data(m.structure, m.rows, batch.base, batch.X, batch.weights, Y, complete=complete)

    def _args(self, points):
        b = self.batch
        return (b.model.structure, b.base, b.shared, self.data, np.asarray(points, dtype=np.float64))

    def run_pass(self, state, index):
        b = self.batch
        with compile_effort(self.effort):
            return _chunk_pass(b.model.structure, b.base, b.shared, self.data, state, index, reml=b.reml,
                               complete=self.complete, structures=b.structures, options=self.options)

    def objective(self, points) -> np.ndarray:
        """Each column's objective at its row of points (c × k), through the pass program, lanes at a time."""
        state = evaluation_state(points, self.options)
        out = np.empty(len(state.x))
        for first in range(0, len(out), self.lanes):
            index = np.arange(first, first + self.lanes) % len(out)
            out[index] = np.asarray(self.run_pass(state, index)[2])
        return out

    def estimates(self, points) -> dict:
        b = self.batch
        return _chunk_estimates(*self._args(points), reml=b.reml, complete=self.complete, structures=b.structures)


# ---------------------------------------------------------------------------------------------- driver
def _take_better(res: dict, which: np.ndarray, retry: dict) -> None:
    """Replace res's rows `which` by retry's where retry's objective is lower (or res's is not finite)."""
    old = res["objective"][which]
    better = ~np.isfinite(old) | (retry["objective"] < old - 1e-9 * (1.0 + np.abs(old)))
    rows = np.flatnonzero(which)[better]
    for k in res:
        res[k][rows] = retry[k][better]


def _leave_boundary_saddles(res: dict, refit, objective_rows, lower: np.ndarray, messages: list) -> None:
    """As a single fit does (`_boundary.saddle_starts`): a column stopped at a saddle on the boundary searches
    again from the best probe off it, kept where it ends lower. refit(which, starts) fits those columns,
    objective_rows(points) gives every column's objective at its row of points."""
    which, starts = saddle_starts(res["x"], lower, objective_rows, res["objective"])
    if which.any():
        rows = np.flatnonzero(which)
        retry = refit(which, starts[rows])
        lower_end = refit_is_lower(res["objective"][rows], retry["objective"])
        for k in res:
            res[k][rows[lower_end]] = retry[k][lower_end]
        for i in rows[lower_end]:
            messages[i].append(SADDLE_MESSAGE)


def _as_matrix(model, Y) -> tuple[np.ndarray, pd.Index]:
    """Y as an (n × m) float array in the model's rows; a DataFrame indexed like the data is aligned by index."""
    d = model.design
    if hasattr(Y, "to_pandas") and not isinstance(Y, (pd.DataFrame, pd.Series)):
        Y = Y.to_pandas()
    if isinstance(Y, pd.Series):
        Y = Y.to_frame()
    if isinstance(Y, pd.DataFrame):
        columns = pd.Index(Y.columns)
        if len(Y) != d.n and d.row_index.isin(Y.index).all():
            Y = Y.loc[d.row_index]
        try:
            values = Y.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            bad = [c for c in Y.columns if not pd.api.types.is_numeric_dtype(Y[c])]
            raise DataTypeError(f"responses must be numeric; column(s) {bad[:5]} are not") from None
    else:
        try:
            values = np.asarray(Y, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataTypeError("responses must be numeric (an n × m array or DataFrame)") from None
        if values.ndim == 1:
            values = values[:, None]
        columns = pd.RangeIndex(values.shape[1]) if values.ndim == 2 else None
    if values.ndim != 2:
        raise DataError(f"Y must be 2-dimensional (n × m), got shape {values.shape}")
    if values.shape[0] != d.n:
        raise DataError(
            f"Y has {values.shape[0]} rows but the model uses {d.n} rows of its data (after dropping rows with "
            "missing values); give one row per model row, or a DataFrame indexed like the data"
        )
    if any(np.isinf(block).any() for block in _column_blocks(values)):
        raise DataError("Y contains infinite values")
    return values, columns


def _column_blocks(values: np.ndarray, block_bytes: int = 64 * 2**20):
    """Views of values' columns in blocks of about block_bytes, so that a scan's temporaries stay small."""
    step = max(1, block_bytes // max(8 * values.shape[0], 1))
    return (values[:, i : i + step] for i in range(0, values.shape[1], step))


def observed_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the number of observed (non-NaN) rows, and whether any row is missing."""
    counts = np.concatenate([np.sum(~np.isnan(block), axis=0) for block in _column_blocks(values)])
    return counts, counts < values.shape[0]


def warn_unfitted(columns, failed: np.ndarray, too_few: np.ndarray, n_needed: int) -> None:
    """Say which columns came back NaN, and why (results are NaN there, never silently)."""
    for mask, reason in ((too_few, f"have too few observed rows (at most {n_needed})"),
                         (failed & ~too_few, "gave a non-finite objective at every start")):
        if mask.any():
            names = ", ".join(map(repr, list(columns[np.flatnonzero(mask)][:5])))
            more = f" and {int(mask.sum()) - 5} more" if mask.sum() > 5 else ""
            warnings.warn(f"fit_batch: {int(mask.sum())} response column(s) {reason}, so their results are NaN: "
                          f"{names}{more}", ConvergenceWarning, stacklevel=user_stacklevel())


def _default_chunk(model, complete: bool, workers: int = 1) -> int:
    """Columns per vmapped chunk so that the statistics, intermediates and optimizer state stay near _CHUNK_BYTES,
    or less when the machine has less memory to spare for `workers` chunks at once."""
    s, d = model.structure, model.design
    p = d.X.shape[1]
    block_floats = sum(l * q * (q + p + 1) for l, q in zip(s.n_levels[: s.n_prefix], s.qs[: s.n_prefix]))
    block_floats += sum(int(e.shape[0]) * q for e, q in zip(s.entry_level, s.qs)) + (s.m_z + p + 1) ** 2
    row_floats = d.n * (2 + sum(q * q for q in s.qs))
    per_column = 8 * 6 * (block_floats + s.n_pairs + (0 if complete else row_floats + s.m_z**2)) + 8 * 60 * s.n_theta
    budget = min(_CHUNK_BYTES, DEFAULT_FRACTION * available_bytes() / max(workers, 1))
    return int(max(1, min(_CHUNK_MAX, budget // per_column)))


class _Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.done, self.enabled, self.bar = total, 0, enabled, None
        self.start = time.perf_counter()
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, unit="fit", desc="fit_batch")
            except ImportError:
                pass

    def update(self, k: int) -> None:
        self.done += k
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(k)
        else:
            rate = self.done / max(time.perf_counter() - self.start, 1e-9)
            sys.stderr.write(f"\rfit_batch: {self.done}/{self.total} responses ({rate:.0f}/s)")
            sys.stderr.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.enabled:
            sys.stderr.write("\n")


@float64
def fit_batch(model, Y, method: str | None = None, *, chunk_size: int | None = None, progress: bool | None = None,
              start=None, max_iter: int = 1000, nagq: int | None = None) -> BatchResult:
    """Fit every column of Y on the model's design (see `Model.fit_batch`).

    Y: n × m (NumPy array or DataFrame), one row per row of the model's data after rows with missing values in
    the formula's variables were dropped (`model.design.row_index`; a DataFrame indexed like the original data is
    aligned on it). With cs() / ar1() terms each column is searched on ψ, as a single fit is (start: ψ; the
    result's `psi`, and θ = θ(ψ)). NaN in a column drops those rows for that response only. The model's weights
    and offset apply to every column. method: 'reml' or 'ml' (Gaussian; default 'reml'), 'laplace' or 'agq' with
    nagq (the other families; default 'laplace', columns on the model's response scale: 0/1 or proportions,
    counts, positive values, values in (0, 1) for beta; a dispersion family's d is estimated per column). start: θ
    to start every column from; for a GLMM also a dict with "theta" and, for a dispersion family, "dispersion"
    (d's start). chunk_size: responses per vectorized step (default from the design's size, to bound memory).
    progress: show progress (tqdm when installed); None shows it for multi-chunk batches.
    """
    t0 = time.perf_counter()
    method = _batch_method(model, method, nagq, chunk_size)
    values, columns = _as_matrix(model, Y)
    if not model.is_gaussian:
        return _fit_glmm_batch(model, values, columns, method, nagq, chunk_size, max_iter, progress, t0, start)
    reml, p = method == "reml", model.design.X.shape[1]
    structures = model.structures if is_structured(model.structures) else None
    theta0 = _search_start(model, structures, start)
    n_obs, missing = observed_counts(values)
    too_few = n_obs <= p + (1 if reml else 0)
    max_workers = max(1, min(os.cpu_count() or 1, 8))
    chunks = _plan_chunks(model, [(np.flatnonzero(~missing & ~too_few), True),
                                  (np.flatnonzero(missing & ~too_few), False)], chunk_size, max_workers)
    batch = _LinearChunks(model, values, reml, max_iter, structures, theta0)
    out = _empty_results(values.shape[1], theta0.size, model.n_theta, p, n_obs)
    messages: list = [()] * values.shape[1]
    bar = _Progress(values.shape[1], enabled=(len(chunks) > 1) if progress is None else bool(progress))
    # XLA runs these small vectorized programs on one core each: chunks go to a thread per core
    workers = max(1, min(max_workers, len(chunks)))
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for cols, res in pool.map(carry_effort(batch.process), chunks):
            for k in out:
                out[k][cols] = res[k]
            for j, m_j in zip(cols, res["messages"]):
                messages[j] = tuple(m_j)
            bar.update(len(cols))
    bar.close()
    warn_unfitted(columns, ~np.isfinite(out["objective"]), too_few, p + (1 if reml else 0))
    return _linear_batch_result(model, method, columns, out, messages, batch, max_iter, t0)


def _batch_method(model, method, nagq, chunk_size) -> str:
    """The batch's method, checked against the family (and chunk_size checked), before anything compiles."""
    if method is None:
        method = "reml" if model.is_gaussian else ("agq" if nagq and nagq > 1 else "laplace")
    method = method.lower()
    allowed = ("reml", "ml") if model.is_gaussian else ("laplace", "agq")
    if method not in allowed:
        raise ValueError(f"fit_batch method for the {model.family.name} family must be one of {allowed}, got {method!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    return method


def _plan_chunks(model, groups, chunk_size, max_workers) -> list:
    """(columns, complete, padded size) per vectorized step: complete columns and columns with missing values
    apart (their statistics are formed differently), each group in chunks of one size."""
    chunks = []
    for idx, complete in groups:
        if idx.size:
            per_worker = -(-idx.size // max_workers)  # at least a chunk per worker thread
            size = chunk_size or min(_default_chunk(model, complete, max_workers),
                                     1 << int(np.ceil(np.log2(per_worker))))
            chunks += [(idx[i : i + size], complete, size) for i in range(0, idx.size, size)]
    return chunks


def _empty_results(m: int, n_x: int, n_theta: int, p: int, n_obs) -> dict:
    return dict(x=np.full((m, n_x), np.nan), theta=np.full((m, n_theta), np.nan), beta=np.full((m, p), np.nan),
                se=np.full((m, p), np.nan), sigma=np.full(m, np.nan), objective=np.full(m, np.nan),
                converged=np.zeros(m, bool), n_iter=np.zeros(m, np.int64), n_eval=np.zeros(m, np.int64),
                nobs=n_obs.astype(np.float64))


def _pad_rows(rows: np.ndarray, size: int) -> np.ndarray:
    """rows padded to size rows with copies of the first: one compiled program per chunk size."""
    if len(rows) >= size:
        return rows
    return np.concatenate([rows, np.repeat(rows[:1], size - len(rows), axis=0)])


class _LinearChunks:
    """A linear batch's chunks: the fit of a chunk of columns from given starts, the objective of a chunk at
    given points (the saddle probes), and a whole chunk's fit with restarts and the boundary path."""

    def __init__(self, model, values, reml: bool, max_iter: int, structures, theta0):
        d = model.design
        self.model, self.values, self.offset = model, values, d.offset
        self.reml, self.max_iter, self.structures, self.theta0 = reml, max_iter, structures, theta0
        self.X, self.weights = jnp.asarray(d.X), jnp.asarray(d.weights)
        self.base = _base_blocks(model.structure, model.rows, self.weights, self.X)
        positive = d.weights > 0
        self.shared = (jnp.asarray(float(positive.sum())), jnp.asarray(float(np.sum(np.log(d.weights[positive])))))
        diag = theta_diagonal_mask(model.qs) if structures is None else psi_diagonal_mask(structures)
        self.lower = np.where(diag, 0.0, -np.inf)

    def _padded(self, cols, size, rows):
        """The chunk's responses (offset removed chunk by chunk: no copy of all of Y) and per-column rows, padded
        with copies of the first column: one compiled program per chunk size."""
        Yc = self.values[:, cols] - self.offset[:, None]
        return jnp.asarray(_pad_rows(Yc.T, size).T), _pad_rows(np.asarray(rows, dtype=np.float64), size)

    def run(self, cols, complete, size, starts, chunk=None):
        """Fit the columns cols from starts (one row, or a row per column); chunk: those columns' `_Chunk`."""
        Yc, starts = self._padded(cols, size, np.broadcast_to(starts, (len(cols), self.theta0.size)))
        chunk = _Chunk(self, Yc, complete) if chunk is None else chunk
        res = _fit_chunk(chunk, starts, self.lower)
        return {k: np.array(v)[: len(cols)] for k, v in res.items()}

    def objective_rows(self, chunk, cols, size, points):
        """The chunk's columns' objectives, each at its row of points (the saddle probes)."""
        return chunk.objective(_pad_rows(np.asarray(points, dtype=np.float64), size))[: len(cols)]

    @float64  # in a worker thread: JAX's float64 setting is per thread
    def process(self, chunk):
        cols, complete, size = chunk
        whole = _Chunk(self, self._padded(cols, size, self.theta0[None])[0], complete)  # the saddle probes' too
        res = self.run(cols, complete, size, self.theta0, whole)
        messages = [[] for _ in cols]
        bad = ~np.isfinite(res["objective"])
        for scale in (0.5, 0.1):  # a non-finite evaluation: restart from a smaller start, as a single fit does
            if not bad.any():
                break
            _take_better(res, bad, self.run(cols[bad], complete, size, self.theta0 * scale))
            for i in np.flatnonzero(bad & np.isfinite(res["objective"])):
                messages[i].append(f"restarted from θ start × {scale} after a non-finite evaluation")
            bad = ~np.isfinite(res["objective"])
        _leave_boundary_saddles(res, lambda which, starts: self.run(cols[which], complete, size, starts),
                                lambda points: self.objective_rows(whole, cols, size, points), self.lower,
                                messages)
        res["converged"] = res["converged"] & np.isfinite(res["objective"])
        res["messages"] = messages
        return cols, res


def _linear_batch_result(model, method, columns, out, messages, batch: _LinearChunks, max_iter, t0) -> BatchResult:
    m = len(out["objective"])
    theta = canonical_theta(out["theta"], model.qs)
    return BatchResult(model=model, method=method, columns=columns, theta=theta.reshape(m, model.n_theta),
                       beta=out["beta"], se_beta=out["se"], sigma=out["sigma"], objective=out["objective"],
                       loglik=-out["objective"] / 2.0, converged=out["converged"],
                       nobs=out["nobs"].astype(np.int64), n_iter=out["n_iter"], seconds=time.perf_counter() - t0,
                       psi=None if batch.structures is None else out["x"],
                       optsum=summarize_rows(optimizer="BFGS (vmapped)", method=method, initial=batch.theta0,
                                             lower=batch.lower, converged=out["converged"], fmin=out["objective"],
                                             evaluations=out["n_eval"], iterations=out["n_iter"],
                                             max_evaluations=max_iter, gtol=_BATCH_GTOL, messages=messages))



def _search_start(model, structures, start) -> np.ndarray:
    """Where every column's search starts: θ (lme4's layout), or ψ for a model with cs() / ar1() terms."""
    if structures is None:
        return model.start_theta(start)
    from ._structured import _psi_start

    return _psi_start(model, structures, start)


def _fit_glmm_batch(model, values, columns, method, nagq, chunk_size, max_iter, progress, t0, start) -> BatchResult:
    from ._batch_glmm import fit_glmm_batch

    m = values.shape[1]
    bar = _Progress(m, enabled=(m > 64) if progress is None else bool(progress))
    res = fit_glmm_batch(model, values, columns, method=method, nagq=nagq, chunk_size=chunk_size,
                         max_iter=max_iter, bar=bar, start=start)
    bar.close()
    warn_unfitted(columns, ~np.isfinite(res["objective"]), np.zeros(m, bool), 0)
    converged = res["converged"] & np.isfinite(res["objective"])
    optsum = summarize_rows(optimizer="BFGS (vmapped)", method=res["method"], initial=res["theta_start"],
                            lower=res["theta_lower"],
                            converged=converged, fmin=res["objective"], evaluations=res["n_eval"],
                            iterations=res["n_iter"], max_evaluations=max_iter, gtol=1e-8,
                            messages=[((SADDLE_MESSAGE,) if saddle else ()) + ((_RX_MESSAGE,) if fell else ())
                                      for saddle, fell in zip(res.pop("saddle"), res["hessian_fallback"])])
    return BatchResult(model=model, method=res["method"], columns=columns, theta=res["theta"], beta=res["beta"],
                       se_beta=res["se"], sigma=np.full(m, np.nan), objective=res["objective"],
                       loglik=res["loglik"], converged=converged, nobs=res["nobs"].astype(np.int64),
                       n_iter=res["n_iter"], seconds=time.perf_counter() - t0, dispersion=res.get("dispersion"),
                       dispersion_se=res.get("dispersion_se"), psi=res.get("psi"), optsum=optsum)


_RX_MESSAGE = ("the variance-covariance matrix computed from the Hessian is not positive definite or contains NA "
               "values: falling back to var-cov estimated from RX")
