"""One formula fitted separately on every group of one long frame (one design per experiment, region, gene).

`fit_batch` fits many responses on one design. Here every group has its own rows and its own levels, so its own
design. The formula is evaluated once on the whole frame (one fixed-effects matrix, one set of columns); each
group's rows are then recoded to the levels it has, and the groups are sorted into size buckets (levels per
term rounded up, `_padding.round_up`; a bucket of few groups joins a larger one). A bucket shares one block
structure (`_padding.complete_structure`), in which a group's missing levels are empty ones that change nothing
in the objective, and one compiled program: objective, gradient and estimates of a chunk of groups, vmapped,
called once per pass by a batched BFGS on the host (`optim._batch_bfgs`). The statistics of a chunk are summed in
NumPy over its real rows (`_padding.complete_statistics`), so no row count enters a compiled shape.

Each group's fit is its single fit's (`lmer` on its rows): same objective, θ, β and σ. What a single fit would
refuse (too few rows or levels, a constant response, a rank-deficient X in that group) is refused per group
before anything compiles, naming the group; errors='skip' leaves such groups out (NaN) with the reason.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .._config import float64
from .._errors import DataError, FormulaError, JaxmlmError, MissingValuesWarning
from .._warn import user_stacklevel
from ..core._covariance import canonical_theta, theta_diagonal_mask, theta_names, theta_start
from ..core._lmm import LinearProblem, profiled_deviance
from ..core._padding import complete_statistics, complete_structure, round_up
from ..formula._design import build_design, to_pandas
from ..formula._family import get_family
from ..formula._terms import parse_formula
from ..optim._batch_bfgs import host_batch_bfgs_minimize
from ..optim._summary import summarize_rows
from ..results._results import SINGULAR_TOL
from ._batch import _estimates
from ._boundary import SADDLE_MESSAGE, refit_is_lower, saddle_starts, snap_rows
from .._compile import carry_effort, jit

__all__ = ["GroupsResult", "fit_groups"]

# Groups per vmapped program: the loop runs until a chunk's slowest group has converged, and small chunks stay in
# cache (fit_batch measured the same trade-off on responses).
_CHUNK = 128
_RANK_TOL = 1e-7  # lme4's qr() tolerance (see _design._drop_rank_deficient)


@dataclasses.dataclass
class GroupsResult:
    """Fits of one formula on every group of a frame. Frames and series are indexed by group."""

    formula: str
    method: str
    groups: pd.Index
    x_names: list[str]
    theta_columns: list[str]
    qs: tuple[int, ...]
    term_names: list[str]
    theta_values: np.ndarray  # (G, k), lme4's layout per term (terms in the whole frame's order), canonical sign
    beta: np.ndarray  # (G, p)
    se_beta: np.ndarray  # (G, p)
    sigma_values: np.ndarray  # (G,)
    objective_values: np.ndarray  # (G,) REML criterion for REML fits, else -2 log-likelihood
    converged_values: np.ndarray  # (G,) bool
    nobs_values: np.ndarray  # (G,) rows per group
    n_levels: np.ndarray  # (G, n_terms) levels per term in each group
    n_iter: np.ndarray  # (G,)
    skipped: pd.Series  # reason per group left out (errors='skip'); empty when none was
    buckets: list  # (padded levels per term, number of groups) per compiled bucket
    seconds: float
    optsum: object = None  # `optim._summary.RowsSummary`: the optimizer's record, a row per group
    _refit: dict = dataclasses.field(repr=False, default_factory=dict)  # what fit_of needs: frame, rows, options

    def _series(self, values, name):
        return pd.Series(values, index=self.groups, name=name)

    @property
    def fixef(self) -> pd.DataFrame:
        return pd.DataFrame(self.beta, index=self.groups, columns=self.x_names)

    @property
    def se(self) -> pd.DataFrame:
        return pd.DataFrame(self.se_beta, index=self.groups, columns=self.x_names)

    @property
    def theta(self) -> pd.DataFrame:
        return pd.DataFrame(self.theta_values, index=self.groups, columns=self.theta_columns)

    @property
    def sigma(self) -> pd.Series:
        return self._series(self.sigma_values, "sigma")

    @property
    def objective(self) -> pd.Series:
        return self._series(self.objective_values, "objective")

    @property
    def loglik(self) -> pd.Series:
        return self._series(-self.objective_values / 2.0, "loglik")

    @property
    def converged(self) -> pd.Series:
        return self._series(self.converged_values, "converged")

    @property
    def nobs(self) -> pd.Series:
        return self._series(self.nobs_values, "nobs")

    @property
    def ngroups(self) -> pd.DataFrame:
        """Levels of each grouping factor (columns) in each group (rows)."""
        return pd.DataFrame(self.n_levels, index=self.groups, columns=self.term_names)

    @property
    def is_singular(self) -> pd.Series:
        mask = theta_diagonal_mask(self.qs)
        return self._series(np.any(self.theta_values[:, mask] < SINGULAR_TOL, axis=1), "is_singular")

    def __len__(self) -> int:
        return len(self.groups)

    def __repr__(self) -> str:
        return (f"GroupsResult({len(self)} groups, method={self.method!r}, {int(self.converged_values.sum())} "
                f"converged, {len(self.skipped)} skipped, {len(self.buckets)} buckets, {self.seconds:.3g} s)")

    @float64
    def fit_of(self, group, **fit_kwargs):
        """The full single fit (a `MixedModelResult`) of one group: `lmer` on its rows, started from the θ found
        here, so it takes a few evaluations (and one compile of that group's shape)."""
        from ._model import Model

        if group not in self.groups:
            raise KeyError(f"no group {group!r}; groups are e.g. {list(self.groups[:5])}")
        info = self._refit
        positions = info["positions"][self.groups.get_loc(group)]
        sub = info["frame"].iloc[positions]
        pick = lambda v: v if v is None or isinstance(v, str) else np.asarray(v)[positions]  # noqa: E731
        model = Model(self.formula, sub, weights=pick(info["weights"]), offset=pick(info["offset"]),
                      na_action=info["na_action"])
        theta = pd.Series(self.theta_values[self.groups.get_loc(group)], index=self.theta_columns)
        names = theta_names(model.design.group_names, [t.column_names for t in model.design.terms])
        start = theta[names].to_numpy() if set(names) == set(self.theta_columns) and theta.notna().all() else None
        return model.fit(method=self.method, start=start, **fit_kwargs)


# ---------------------------------------------------------------------------------------------- the groups
@dataclasses.dataclass
class _Layout:
    """The design's rows split by group: per row its group, its position in the group and its level per term
    (recoded to the levels its group has); per group its size."""

    group: np.ndarray  # (n,)
    position: np.ndarray  # (n,)
    codes: list[np.ndarray]  # per term (n,)
    n_rows: np.ndarray  # (G,)
    n_levels: np.ndarray  # (G, n_terms)


def _split(design, group: np.ndarray, n_groups: int) -> _Layout:
    order = np.argsort(group, kind="stable")
    n_rows = np.bincount(group, minlength=n_groups)
    starts = np.concatenate([[0], np.cumsum(n_rows)[:-1]])
    position = np.empty_like(group)
    position[order] = np.arange(group.size) - starts[group[order]]
    codes, n_levels = [], []
    for t in design.terms:
        key = group.astype(np.int64) * t.n_levels + t.codes
        used, dense = np.unique(key, return_inverse=True)
        first = np.searchsorted(used // t.n_levels, np.arange(n_groups))  # the group's first (level, group) pair
        codes.append((dense - first[group]).astype(np.int32))
        n_levels.append(np.bincount(used // t.n_levels, minlength=n_groups))
    return _Layout(group=group, position=position, codes=codes, n_rows=n_rows, n_levels=np.stack(n_levels, axis=1))


def _group_index(frame: pd.DataFrame, by) -> tuple[np.ndarray, pd.Index]:
    by_columns = [by] if isinstance(by, str) else list(by)
    missing = [c for c in by_columns if c not in frame.columns]
    if not by_columns or missing:
        raise DataError(f"by column {missing[0] if missing else by!r} is not in the data; columns are "
                        f"{list(frame.columns)[:10]}")
    key = by_columns if len(by_columns) > 1 else by_columns[0]
    group = frame.groupby(key, sort=True, dropna=True, observed=True).ngroup().to_numpy(dtype=np.float64)
    group = np.where(np.isnan(group), -1, group).astype(np.int64)
    ids, first = np.unique(group, return_index=True)  # each group's first row, in the order of the group ids
    first = first[ids >= 0]
    if len(by_columns) == 1:
        labels = pd.Index(frame[by_columns[0]].to_numpy()[first], name=by_columns[0])
    else:
        labels = pd.MultiIndex.from_frame(frame[by_columns].iloc[first])
    return group, labels


def _refusals(design, layout: _Layout, y: np.ndarray, reml: bool) -> np.ndarray:
    """Per group, what its single fit would refuse (None where nothing): lme4's checks, group by group."""
    n_groups = layout.n_rows.size
    reasons = np.full(n_groups, None, dtype=object)
    p = design.p

    def refuse(where, message):
        for g in np.flatnonzero(where & pd.isna(reasons)):
            reasons[g] = message(g)

    n = layout.n_rows
    refuse(n <= p + int(reml), lambda g: f"{n[g]} rows, too few for {p} fixed effects")
    for k, t in enumerate(design.terms):
        lev = layout.n_levels[:, k]
        refuse(lev < 2, lambda g: f"grouping factor {t.group_name!r} has {lev[g]} level; grouping factors must have "
                                  "> 1 sampled level")
        refuse(lev >= n, lambda g: f"number of levels of grouping factor {t.group_name!r} ({lev[g]}) must be < "
                                   f"number of observations ({n[g]})")
    if len(design.terms) == 1 and design.terms[0].q > 1:
        n_re = layout.n_levels[:, 0] * design.terms[0].q
        refuse(n_re >= n, lambda g: f"number of observations (={n[g]}) <= number of random effects (={n_re[g]}) "
                                    f"for term {design.terms[0].term.text}")
    y_min = np.full(n_groups, np.inf)
    y_max = np.full(n_groups, -np.inf)
    np.minimum.at(y_min, layout.group, y)
    np.maximum.at(y_max, layout.group, y)
    refuse(y_max == y_min, lambda g: f"response {design.response_name!r} is constant")
    return reasons


def _rank_deficient(X: np.ndarray) -> np.ndarray:
    """Per design of a stacked (designs × rows × p) X (zero rows for padding): whether lme4's qr() test would drop
    a column (|R_jj| ≤ 1e-7 ‖x_j‖ in the unpivoted R, as `_design._drop_rank_deficient`)."""
    R = np.linalg.qr(X, mode="r")
    norms = np.sqrt(np.sum(X**2, axis=1))
    diag = np.abs(np.diagonal(R, axis1=-2, axis2=-1))
    if diag.shape[-1] < X.shape[-1]:
        diag = np.concatenate([diag, np.zeros(diag.shape[:-1] + (X.shape[-1] - diag.shape[-1],))], axis=-1)
    return np.any(~(diag > _RANK_TOL * norms), axis=-1)


# ---------------------------------------------------------------------------------------------- buckets
@dataclasses.dataclass
class _Chunk:
    """Groups of one bucket (padded levels per term) and their statistics, with a leading axis of designs (the
    chunk's size; slots past its groups repeat the first)."""

    levels: tuple[int, ...]
    groups: np.ndarray  # group ids, in slot order
    statistics: tuple  # (Blocks, n, sum_log_w)
    p: int


def _bucket_levels(n_levels: np.ndarray, fitted: np.ndarray, growth: float, min_bucket: int) -> np.ndarray:
    """Padded levels per group and term: each count rounded up on the ladder of `growth` (from 4). A bucket of
    fewer than `min_bucket` groups then joins the smallest larger bucket that holds it on every term (its own
    compile would cost more than the padding), smallest buckets first."""
    sizes = np.unique(n_levels)
    ladder = dict(zip(sizes.tolist(), [round_up(int(s), growth) for s in sizes]))
    padded = np.vectorize(ladder.__getitem__, otypes=[np.int64])(n_levels) if n_levels.size else n_levels.copy()
    if fitted.size == 0:
        return padded
    keys, inverse, counts = np.unique(padded[fitted], axis=0, return_inverse=True, return_counts=True)
    order = np.argsort(np.prod(keys.astype(np.float64), axis=1), kind="stable")
    into = np.arange(len(keys))  # the bucket each bucket's groups end in
    for i in order:
        if counts[i] >= min_bucket:
            continue
        larger = [j for j in order if j != i and counts[j] > 0 and np.all(keys[j] >= keys[i])]
        if larger:  # `order` is by size, so the first is the smallest
            counts[larger[0]] += counts[i]
            counts[i] = 0
            into[into == i] = larger[0]
    padded[fitted] = keys[into[inverse.reshape(-1)]]
    return padded


def _chunks(design, layout: _Layout, fitted: np.ndarray, structures: dict, padded: np.ndarray,
            chunk_size: int) -> list[_Chunk]:
    """The groups to be fitted by bucket, in chunks of at most `chunk_size` (a bucket smaller than that gets the
    power of two that holds it, so that small buckets do not compute for empty slots)."""
    keys, bucket = np.unique(padded[fitted], axis=0, return_inverse=True)
    y = design.y - design.offset
    F = np.concatenate([design.X, y[:, None]], axis=1)
    out = []
    for b, key in enumerate(keys):
        levels = tuple(int(v) for v in key)
        ids = fitted[bucket.reshape(-1) == b]
        size = min(chunk_size, 1 << int(np.ceil(np.log2(ids.size))))
        for start in range(0, ids.size, size):
            part = ids[start : start + size]
            slot_of = np.full(layout.n_rows.size, -1)
            slot_of[part] = np.arange(part.size)
            rows = np.flatnonzero(slot_of[layout.group] >= 0)
            statistics = complete_statistics(structures[levels], slot_of[layout.group[rows]],
                                             [c[rows] for c in layout.codes], [t.z[rows] for t in design.terms],
                                             design.weights[rows], F[rows], size)
            out.append(_Chunk(levels=levels, groups=part, statistics=statistics, p=design.p))
    return out


def _rank_deficient(X: np.ndarray, group: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, whether lme4's qr() test would drop a column of its rows of X: |R_jj| ≤ 1e-7 ‖x_j‖ in the
    unpivoted R (as `_design._drop_rank_deficient`). R_jj² is the j-th pivot of the unpivoted Cholesky (LDLᵀ)
    of the group's Gram matrix XᵀX, computed for all groups at once."""
    p = X.shape[1]
    gram = np.stack([np.stack([np.bincount(group, X[:, a] * X[:, b], minlength=n_groups) for b in range(p)], -1)
                     for a in range(p)], -2)  # (G, p, p)
    norms2 = np.diagonal(gram, axis1=-2, axis2=-1).copy()
    deficient = np.zeros(n_groups, bool)
    S = gram.copy()
    for j in range(p):  # elimination over the p columns, vectorized over groups
        pivot = S[:, j, j]
        bad = ~(pivot > (_RANK_TOL**2) * norms2[:, j])
        deficient |= bad
        safe = np.where(bad, 1.0, pivot)
        update = S[:, :, j, None] * S[:, None, j, :] / safe[:, None, None]
        S = np.where(bad[:, None, None], S, S - update)  # a dependent column leaves the later pivots unchanged
    return deficient


# ---------------------------------------------------------------------------------------------- compiled
def _problem(structure, statistics, p: int) -> LinearProblem:
    blocks, n, sum_log_w = statistics
    return LinearProblem(structure=structure, blocks=blocks, n=n, p=p, sum_log_w=sum_log_w)


@jit(static_argnames=("p", "reml"))
def _evaluate(structure, statistics, theta, p: int, reml: bool):
    """Each design's objective, its gradient, and β, their standard errors and σ, at the design's own θ (rows of
    `theta`). The host optimizer calls this one program on every pass: it compiles several times faster than a
    whole optimizer loop, and the estimates ride along (cheap at these sizes) so that nothing else compiles."""

    def one(th, stats):
        problem = _problem(structure, stats, p)
        value, grad = jax.value_and_grad(profiled_deviance)(th, problem, reml)
        beta, se, sigma, _ = _estimates(th, problem, reml)
        return value, grad, dict(beta=beta, se=se, sigma=sigma)

    return jax.vmap(one)(theta, statistics)


def _search(value_and_grad, evaluate, starts: np.ndarray, lower: np.ndarray, max_iter: int):
    """The batched host BFGS from `starts`, then each design's tiny variances snapped to the boundary as a single
    fit's are (`_boundary.snap_rows`). Returns the result and the snapped θ."""
    res = host_batch_bfgs_minimize(value_and_grad, starts, max_iter=max_iter)
    theta, _ = snap_rows(res.x, lower, lambda th: np.asarray(evaluate(th)[0]), value=res.value)
    return res, theta


def _take_rows(which: np.ndarray, new, old):
    """Rows `which` of new, the others of old (arrays, or the fields of two `OptimResult`s)."""
    if isinstance(old, tuple):
        return type(old)(*(_take_rows(which, u, v) for u, v in zip(new, old)))
    new, old = np.asarray(new), np.asarray(old)
    return np.where(which.reshape(which.shape + (1,) * (new.ndim - 1)), new, old)


@float64  # in a worker thread: JAX's float64 setting is per thread
def _run_chunk(chunk: _Chunk, structure, theta0: np.ndarray, mask, reml: bool, max_iter: int) -> dict:
    """One chunk's fits; a design whose fit went non-finite is refitted from smaller starts, as a single fit is
    (the others start at their optimum, so they stop at once, and keep their first run). Each design's messages
    say what its single fit's would (a restart, a saddle left)."""
    real = chunk.groups.size
    statistics = jax.tree.map(jnp.asarray, chunk.statistics)
    evaluate = lambda th: _evaluate(structure, statistics, th, p=chunk.p, reml=reml)  # noqa: E731
    value_and_grad = lambda th: evaluate(th)[:2]  # noqa: E731
    starts = np.broadcast_to(theta0, (statistics[1].shape[0], theta0.size))
    lower = np.where(mask, 0.0, -np.inf)
    messages = [[] for _ in range(starts.shape[0])]
    res, theta = _search(value_and_grad, evaluate, starts, lower, max_iter)
    for scale in (0.5, 0.1):
        bad = ~np.isfinite(res.value)
        if not bad.any():
            break
        res2, theta2 = _search(value_and_grad, evaluate, np.where(bad[:, None], theta0 * scale, res.x), lower,
                               max_iter)
        res, theta = _take_rows(bad, res2, res), _take_rows(bad, theta2, theta)
        for i in np.flatnonzero(bad & np.isfinite(res.value)):
            messages[i].append(f"restarted from θ start × {scale} after a non-finite evaluation")
    objective, _, estimates = evaluate(theta)
    res, theta, objective, estimates = _leave_saddles(value_and_grad, evaluate, res, theta, objective, estimates,
                                                      lower, max_iter, messages)
    out = {k: np.asarray(v)[:real] for k, v in estimates.items()}
    out.update(theta=theta[:real], objective=np.asarray(objective)[:real], n_iter=np.asarray(res.n_iter)[:real],
               n_eval=np.asarray(res.n_eval)[:real], messages=messages[:real])
    out["converged"] = np.asarray(res.converged)[:real] & np.isfinite(out["objective"])
    return out


def _leave_saddles(value_and_grad, evaluate, res, theta, objective, estimates, lower, max_iter, messages):
    """As a single fit does: a design stopped at a saddle on the boundary searches again from the best probe off it
    (`_boundary.saddle_starts`), kept where it ends lower. The designs that need no second search start at their
    own optimum, so they stop at once (and keep their first run)."""
    objective = np.asarray(objective)
    which, starts = saddle_starts(theta, lower, lambda th: np.asarray(evaluate(th)[0]), objective)
    if not which.any():
        return res, theta, objective, estimates
    res2, theta2 = _search(value_and_grad, evaluate, np.where(which[:, None], starts, theta), lower, max_iter)
    objective2, _, estimates2 = evaluate(theta2)
    take = which & refit_is_lower(objective, np.asarray(objective2))
    for i in np.flatnonzero(take):
        messages[i].append(SADDLE_MESSAGE)
    estimates = {k: _take_rows(take, estimates2[k], v) for k, v in estimates.items()}
    return (_take_rows(take, res2, res), _take_rows(take, theta2, theta), _take_rows(take, objective2, objective),
            estimates)


# ---------------------------------------------------------------------------------------------- driver
def _name(labels: pd.Index, g: int) -> str:
    label = labels[g]
    return repr(label.item() if isinstance(label, np.generic) else label)


def _check_arguments(family, method, errors, chunk_size, growth) -> str:
    if getattr(get_family(family), "name", None) != "gaussian":
        raise JaxmlmError(f"fit_groups fits linear mixed models (family='gaussian'); got family {family!r}")
    method = "reml" if method is None else str(method).lower()
    if method not in ("reml", "ml"):
        raise ValueError(f"fit_groups method must be 'reml' or 'ml', got {method!r}")
    if errors not in ("raise", "skip"):
        raise ValueError(f"errors must be 'raise' or 'skip', got {errors!r}")
    if chunk_size is not None and (int(chunk_size) != chunk_size or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
    if not growth > 1.0:
        raise ValueError(f"growth must be > 1, got {growth!r}")
    return method


def _without_missing_groups(frame, group, weights, offset):
    """Rows whose `by` value is missing belong to no group: dropped, with a warning."""
    keep = group >= 0
    if keep.all():
        return frame, group, weights, offset
    warnings.warn(f"{int((~keep).sum())} row(s) with a missing `by` value dropped", MissingValuesWarning, stacklevel=user_stacklevel())
    cut = lambda v: v if v is None or isinstance(v, str) else np.asarray(v)[keep]  # noqa: E731
    return frame.loc[keep].reset_index(drop=True), group[keep], cut(weights), cut(offset)


def _check_stateless(design) -> None:
    """A transform that learns from its rows (scale(), center(), poly(), splines) would learn from the whole frame
    here, not from each group's rows as the group's single fit does."""
    for where, spec in [("the fixed-effects part", design.x_spec)] + [(t.term.text, t.z_spec) for t in design.terms]:
        if getattr(spec, "state", None) or getattr(spec, "transform_state", None):
            raise FormulaError(
                f"fit_groups: {where} uses poly() or scale(), whose basis or centre and scale would come "
                "from the whole frame rather than from each group's rows (as each group's single fit computes "
                "it); transform the columns within each group before fitting")


def _refuse_or_skip(reasons: np.ndarray, labels: pd.Index, errors: str) -> None:
    bad = np.flatnonzero(~pd.isna(reasons))
    if bad.size and errors == "raise":
        shown = "; ".join(f"group {_name(labels, g)}: {reasons[g]}" for g in bad[:5])
        raise DataError(f"{bad.size} group(s) cannot be fitted (their single fit would refuse them): {shown}"
                        f"{' ...' if bad.size > 5 else ''}. errors='skip' fits the others and lists these in "
                        "result.skipped")


def _structures(design, padded: np.ndarray, fitted: np.ndarray, labels) -> dict:
    """The complete structure of each bucket; a bucket too large for a padded crossed design is refused, naming
    one of its groups."""
    qs = tuple(t.q for t in design.terms)
    out = {}
    for g in fitted:
        levels = tuple(int(v) for v in padded[g])
        if levels not in out:
            try:
                out[levels] = complete_structure(qs, levels)
            except ValueError as exc:
                raise DataError(f"group {_name(labels, g)}: {exc}") from None
    return out


@float64
def fit_groups(formula: str, data, by, family="gaussian", method: str | None = None, *, weights=None, offset=None,
               na_action: str = "omit", errors: str = "raise", start=None, chunk_size: int | None = None,
               growth: float = 2.0, min_bucket: int | None = None, max_iter: int = 1000) -> GroupsResult:
    """Fit `formula` separately on each `by` group of one long frame, as `lmer` on that group's rows would.

    by: a column (or list of columns) of `data`; rows with a missing `by` value are dropped. method: 'reml'
    (default) or 'ml'. Groups are padded into size buckets (levels per term rounded up by `growth`: 2 gives
    powers of two) and fitted `chunk_size` (default 128) at a time in vmapped compiled programs, one optimizer
    compile per bucket; a bucket of fewer than `min_bucket` groups (default: the chunk size) joins a larger one.
    weights / offset: column names (or arrays of the data's length). errors: 'raise' (default)
    refuses, before anything compiles, when a group's single fit would (too few rows or levels, a constant
    response, a rank-deficient fixed-effects matrix in that group); 'skip' fits the others and lists those in
    `result.skipped`. start: θ in the layout of the whole frame's terms (default lme4's start)."""
    t0 = time.perf_counter()
    method = _check_arguments(family, method, errors, chunk_size, growth)
    reml = method == "reml"
    frame = to_pandas(data).reset_index(drop=True)
    group_all, labels = _group_index(frame, by)
    frame, group_all, weights, offset = _without_missing_groups(frame, group_all, weights, offset)
    parsed = parse_formula(formula)
    design = build_design(parsed, frame, family=get_family("gaussian"), weights=weights, offset=offset,
                          na_action=na_action, check_levels=False)
    _check_stateless(design)
    row_positions = np.asarray(design.row_index, dtype=np.int64)
    group = group_all[row_positions]
    layout = _split(design, group, len(labels))
    reasons = _refusals(design, layout, design.y, reml)
    deficient = _rank_deficient(design.X, group, len(labels)) & pd.isna(reasons)
    reasons[deficient] = ("its fixed-effects model matrix is rank deficient (lme4 would drop a column: a factor "
                          "level, or a covariate's variation, missing in this group)")
    qs = tuple(t.q for t in design.terms)
    theta0 = theta_start(qs) if start is None else np.asarray(start, dtype=np.float64)
    if theta0.shape != (sum(q * (q + 1) // 2 for q in qs),):
        raise ValueError(f"start must have {sum(q * (q + 1) // 2 for q in qs)} values (θ in lme4's layout), got "
                         f"shape {theta0.shape}")
    _refuse_or_skip(reasons, labels, errors)
    fitted = np.flatnonzero(pd.isna(reasons))
    padded = _bucket_levels(layout.n_levels, fitted, growth, (chunk_size or _CHUNK) if min_bucket is None else min_bucket)
    structures = _structures(design, padded, fitted, labels)
    chunks = _chunks(design, layout, fitted, structures, padded, chunk_size or _CHUNK) if fitted.size else []
    out = _fit_chunks(chunks, structures, theta0, qs, reml, max_iter, len(labels), design.p)

    refused = ~pd.isna(reasons)
    order = np.argsort(group, kind="stable")
    return GroupsResult(
        formula=formula, method=method, groups=labels, x_names=list(design.x_names),
        theta_columns=theta_names(design.group_names, [t.column_names for t in design.terms]), qs=qs,
        term_names=list(design.group_names), theta_values=canonical_theta(out["theta"], qs), beta=out["beta"],
        se_beta=out["se"], sigma_values=out["sigma"], objective_values=out["objective"],
        converged_values=out["converged"], nobs_values=layout.n_rows, n_levels=layout.n_levels,
        n_iter=out["n_iter"], skipped=pd.Series(reasons[refused], index=labels[refused], name="reason", dtype=object),
        buckets=_bucket_counts(chunks), seconds=time.perf_counter() - t0,
        optsum=summarize_rows(optimizer="BFGS (batched)", method=method, initial=theta0,
                              lower=np.where(theta_diagonal_mask(qs), 0.0, -np.inf), converged=out["converged"],
                              fmin=out["objective"], evaluations=out["n_eval"], iterations=out["n_iter"],
                              max_evaluations=max_iter, gtol=1e-9, messages=list(out["messages"])),
        _refit=dict(frame=frame, weights=weights, offset=offset, na_action=na_action,
                    positions=_GroupRows(row_positions[order], np.cumsum(layout.n_rows))),
    )


class _GroupRows:
    """The frame positions of each group's rows (`[g]`), from the rows sorted by group and the groups' ends."""

    def __init__(self, sorted_positions: np.ndarray, ends: np.ndarray):
        self.sorted_positions, self.ends = sorted_positions, ends

    def __getitem__(self, g: int) -> np.ndarray:
        return self.sorted_positions[(self.ends[g - 1] if g else 0) : self.ends[g]]


def _bucket_counts(chunks) -> list:
    counts: dict = {}
    for c in chunks:
        counts[c.levels] = counts.get(c.levels, 0) + c.groups.size
    return sorted(counts.items())


def _fit_chunks(chunks, structures, theta0, qs, reml, max_iter, n_groups, p) -> dict:
    k = theta0.size
    out = dict(theta=np.full((n_groups, k), np.nan), beta=np.full((n_groups, p), np.nan),
               se=np.full((n_groups, p), np.nan), sigma=np.full(n_groups, np.nan),
               objective=np.full(n_groups, np.nan), converged=np.zeros(n_groups, bool),
               n_iter=np.zeros(n_groups, np.int64), n_eval=np.zeros(n_groups, np.int64),
               messages=np.empty(n_groups, dtype=object))
    out["messages"][:] = [()] * n_groups
    mask = np.asarray(theta_diagonal_mask(qs))
    # XLA runs these small vectorized programs on one core each: chunks go to a thread per core
    workers = max(1, min(os.cpu_count() or 1, len(chunks), 8))
    run = lambda c: _run_chunk(c, structures[c.levels], theta0, mask, reml, max_iter)  # noqa: E731
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for chunk, res in zip(chunks, pool.map(carry_effort(run), chunks)):
            for key in out:
                if key == "messages":
                    for g, m in zip(chunk.groups, res[key]):
                        out[key][g] = tuple(m)
                else:
                    out[key][chunk.groups] = res[key]
    return out
