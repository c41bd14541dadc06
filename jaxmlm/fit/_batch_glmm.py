"""Many GLMM responses on one design: the Laplace (or AGQ) fit vmapped over response columns.

The GLMM problem differs between columns only in its response, its prior weights (a missing value gets weight 0)
and the family's normalizing constant, so a chunk of columns shares two compiled programs: a vmapped joint PIRLS
at θ = lme4's start gives each column's starting β, then a quasi-Newton fit on (θ, β) as a single fit's does: the
host loop `host_batch_bfgs_minimize` (a single fit's BFGS step on (columns × k) arrays, one evaluation per pass, so
no column waits on another's line search) around one vmapped value-and-gradient program, which also serves the
boundary snap, the saddle probes and the Hessian's differences. Compiling the optimizer's loop with PIRLS inside
and the Hessian's gradients as one program instead took three times as long (docs/scale.md). Standard errors come
from the Hessian of each column's deviance (central differences of its exact gradient), as in a single fit; where
that Hessian is not positive definite (a boundary fit, say) they fall back, as a single fit does and with its
warning, to lme4's RX (the PIRLS factor at the optimum). (A single fit also tries a few Newton steps at the end;
the batch stops at the gradient tolerance, which keeps objectives within 1e-6 relative.)

A family with a dispersion parameter d (negative binomial, Gamma, inverse Gaussian, beta) optimizes x = (θ, β,
log d) per column, the single fit's coordinates and objective (`_pirls.laplace_deviance`). d starts, as in a single
fit, from the family's moment estimate on a GLM fitted at d = 1 (one vmapped PIRLS for the chunk, the moments per
column on the host), or from start["dispersion"] (the bootstrap's refits start from the fitted d). Its standard
error is d × se(log d) from the same Hessian as β's. A family with d held fixed (`negative_binomial(theta=2)`) has
no such coordinate. lme4's objectives (`approximation="lme4"`) are single fits only: a batch fits the proper
Laplace likelihood.

Memory: each chunk's responses, prior weights and constants are prepared when the chunk runs, and chunks are sized
to the machine (`_memory`), so beside the caller's Y only a chunk's working set is held.
"""

from __future__ import annotations

import dataclasses
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..core._covariance import canonical_theta, theta_diagonal_mask
from .._errors import ConvergenceWarning, DataError
from .._memory import chunk_size as memory_chunk_size
from ._glmm import _objective, _state_at, glmm_problem
from ..optim._batch_bfgs import host_batch_bfgs_minimize
from ..core._pirls import pirls, split_x
from ..core._structures import is_structured, n_psi, psi_diagonal_mask, psi_to_theta
from ._boundary import refit_is_lower, saddle_starts, snap_rows
from .._compile import jit

__all__ = ["glmm_columns", "fit_glmm_chunk"]


def glmm_columns(model, values: np.ndarray, column_names):
    """Check each column against the family (as a single fit would) → responses, prior weights, constants, and
    which columns hold non-integer Poisson counts (their logLik is -inf, as a single fit's)."""
    d, fam = model.design, model.family
    if model.parsed.is_cbind and d.has_user_weights:
        raise DataError(
            "fit_batch for a cbind(successes, failures) model with prior weights: fit the model with a proportion "
            "response and weights= trials × prior weights instead"
        )
    # a cbind() model's columns are proportions of successes, its weights the trials (as `simulate` returns them):
    # the proportion-with-weights form of the same likelihood
    single = dataclasses.replace(model.parsed, response_parts=(model.parsed.response,))
    ys, ws, consts, non_integer = [], [], [], []
    for j, name in enumerate(column_names):
        col = values[:, j]
        observed = ~np.isnan(col)
        w_obs = np.where(observed, d.weights, 0.0)
        y, w, extra = fam.prepare_response([pd.Series(np.where(observed, col, _placeholder(fam, col, name)))],
                                           dataclasses.replace(single, response=str(name)), w_obs)
        ys.append(y)
        ws.append(w)
        consts.append(fam.log_constant(y, w, extra))
        non_integer.append(bool(extra.get("non_integer", False)))
    return np.stack(ys, axis=1), np.stack(ws, axis=1), np.asarray(consts), np.asarray(non_integer)


def _placeholder(fam, col, name) -> float:
    """The value a missing row holds (its prior weight is 0): 0 for binomial and Poisson, the column's first
    observed value for a dispersion family (0 is outside a Gamma's or a beta's support)."""
    if not getattr(fam, "has_dispersion", False):
        return 0.0
    observed = col[~np.isnan(col)]
    if observed.size == 0:
        raise DataError(f"fit_batch: response column {name!r} has no observed values")
    return float(observed[0])


def _with_column(problem, y, w, c):
    return eqx.tree_at(lambda p: (p.y, p.weights, p.constant), problem, (y, w, c))


@jit
def _glm_means(problem, Y, W, constants):
    """Per column, the means of a GLM fitted at d = 1 (θ = 0): a single fit's base for d's moment start."""
    nt = problem.structure.n_theta

    def one(y, w, c):
        prob = _with_column(problem, y, w, c)
        zeros = jnp.zeros((nt,), dtype=y.dtype)
        beta, _, _, _, _ = pirls(zeros, jnp.zeros(prob.p, dtype=y.dtype), prob, joint=True,
                                 phi=jnp.asarray(1.0, dtype=y.dtype))
        beta = jnp.where(jnp.isfinite(beta), beta, 0.0)
        return prob.family.linkinv(prob.X @ beta + prob.offset)

    return jax.vmap(one, in_axes=(1, 1, 0), out_axes=1)(Y, W, constants)


def dispersion_starts(model, problem, Y, W, constants, start_d) -> np.ndarray | None:
    """log d to start each column from (None when the family has no estimated d): start_d for every column, or the
    family's moment estimate on each column's GLM at d = 1, as a single fit's `_dispersion_start`."""
    if not problem.n_dispersion:
        return None
    if start_d is not None:
        d = float(start_d)
        if not np.isfinite(d) or d <= 0:
            raise ValueError(f"start['dispersion'] must be a positive number, got {start_d!r}")
        return np.full(Y.shape[1], np.log(d))
    mu = np.asarray(_glm_means(problem, jnp.asarray(Y), jnp.asarray(W), jnp.asarray(constants)))
    fam = problem.family
    return np.log([fam.dispersion_start(Y[:, j], mu[:, j], W[:, j], problem.p) for j in range(Y.shape[1])])


def _inner_x(x, structures):
    """The search's x → the objective's (θ, β[, log d]): x itself, or (θ(ψ), β[, log d]) for cs() / ar1() terms."""
    if structures is None:
        return x
    k = n_psi(structures)
    return jnp.concatenate([psi_to_theta(x[:k], structures), x[k:]])


def _search_objective(x, problem, nodes, node_weights, structures):
    return _objective(_inner_x(x, structures), problem, nodes, node_weights)


@jit(static_argnames=("structures",))
def _chunk_starts(problem, Y, W, constants, theta0, log_d0, structures=None):
    """Each column's start x = (θ₀ (ψ₀), β₀[, log d₀]): β₀ from a joint PIRLS at θ's start (lme4's nAGQ = 0
    step), d at its start (None for binomial and Poisson, the family's fixed d, or exp(log d₀)), as a single
    fit's."""
    p = problem.p

    def one(y, w, c, tail):
        prob = _with_column(problem, y, w, c)
        theta_start = _inner_x(theta0, structures)
        zeros = jnp.zeros(p, dtype=theta0.dtype)
        phi = split_x(jnp.concatenate([theta_start, zeros, tail]), prob)[2]
        beta0 = pirls(theta_start, zeros, prob, joint=True, phi=phi)[0]
        return jnp.concatenate([theta0, jnp.where(jnp.isfinite(beta0), beta0, 0.0), tail])

    return jax.vmap(one, in_axes=(1, 1, 0, 0))(Y, W, constants, log_d0)


@jit(static_argnames=("structures",))
def chunk_value_and_grad(problem, Y, W, constants, points, nodes, node_weights, structures=None):
    """Each column's search objective and its exact gradient at its row of points (c, k + p [+ 1]): the one
    program every pass of the chunk's search, the boundary snap, the saddle probes and the Hessian's differences
    call (nodes None: Laplace; else AGQ)."""
    def one(y, w, c, x):
        prob = _with_column(problem, y, w, c)
        return jax.value_and_grad(_search_objective)(x, prob, nodes, node_weights, structures)

    return jax.vmap(one, in_axes=(1, 1, 0, 0))(Y, W, constants, points)


class _Chunk:
    """One chunk's data and its compiled value and gradient, called on NumPy points (c, K)."""

    def __init__(self, problem, Y, W, constants, structures):
        self.data = (problem, jnp.asarray(Y), jnp.asarray(W), jnp.asarray(constants))
        self.structures = structures

    def value_and_grad(self, points, nodes=None, node_weights=None):
        return chunk_value_and_grad(*self.data, jnp.asarray(points), nodes, node_weights, self.structures)

    def objective(self, points, nodes=None, node_weights=None) -> np.ndarray:
        return np.asarray(self.value_and_grad(points, nodes, node_weights)[0])

    def hessians(self, x: np.ndarray, nodes, node_weights, delta: float = 1e-5) -> np.ndarray:
        """Each column's Hessian at its row of x by central differences of the exact gradient, as a single fit's
        (`central_difference_hessian`, the same δ): 2K calls of the search's own program, all dispatched before
        any is read."""
        K = x.shape[1]
        steps = delta * np.eye(K)
        pending = [self.value_and_grad(x + sign * steps[j], nodes, node_weights)[1]
                   for sign in (1.0, -1.0) for j in range(K)]
        grads = np.stack([np.asarray(g) for g in pending], axis=1)  # (c, 2K, K): row j of each half is ∂g/∂x_j
        hess = (grads[:, :K] - grads[:, K:]) / (2.0 * delta)
        return 0.5 * (hess + np.swapaxes(hess, 1, 2))


def _search(chunk: _Chunk, starts: np.ndarray, nodes, node_weights, max_iter: int):
    """The batched host BFGS (a single fit's algorithm, `host_batch_bfgs_minimize`): Laplace, then for AGQ the
    quadrature deviance from the Laplace optimum, as a single fit does."""
    res = host_batch_bfgs_minimize(chunk.value_and_grad, starts, max_iter=max_iter, gtol=1e-8)
    if nodes is not None:
        res = host_batch_bfgs_minimize(lambda pts: chunk.value_and_grad(pts, nodes, node_weights), res.x,
                                       max_iter=max_iter, gtol=1e-8)
    return res


def _hessian_standard_errors(hess: np.ndarray, k: int):
    """Per column: whether the Hessian is positive definite with a usable inverse, and the standard errors of the
    coordinates after the first k from 2 H⁻¹ (NaN where not usable), as a single fit's `_glmm._vcov`."""
    K = hess.shape[1]
    eye = np.broadcast_to(np.eye(K), hess.shape)
    finite = np.isfinite(hess).all(axis=(1, 2))
    safe = np.where(finite[:, None, None], hess, eye)
    positive_definite = finite & (np.linalg.eigvalsh(safe)[:, 0] > 0)
    with np.errstate(invalid="ignore", over="ignore"):
        variance = 2.0 * np.diagonal(np.linalg.inv(np.where(positive_definite[:, None, None], safe, eye)),
                                     axis1=1, axis2=2)[:, k:]
    usable = positive_definite & np.isfinite(variance).all(axis=1) & (variance > 0).all(axis=1)
    se = np.where(usable[:, None], np.sqrt(np.where(usable[:, None], variance, 1.0)), np.nan)
    return usable, se


def fit_glmm_chunk(problem, Y, W, constants, theta0, log_d0, nodes, node_weights, max_iter: int, structures=None,
                   x0=None) -> dict:
    """Fit the columns of Y (n × c) with prior weights W (n × c) on the problem's design; log_d0 (c,): each
    column's start of log d (None: no dispersion coordinate). structures: the search runs on the cs() / ar1()
    parameters ψ (theta0 holds ψ's start), as a single structured fit's. x0 (c, k + p [+ 1]): each column's whole
    start instead (a search again from off a saddle); theta0 and log_d0 are then unused.

    A host loop around one compiled, vmapped value-and-gradient program (`chunk_value_and_grad`) and a start
    program: compiling the optimizer's loop with PIRLS inside, the boundary snap and the Hessian's 2K gradients as
    one program took several times as long as these two together."""
    nt, p = problem.structure.n_theta, problem.p
    k = nt if structures is None else n_psi(structures)
    chunk = _Chunk(problem, Y, W, constants, structures)
    if x0 is None:
        log_d0 = jnp.zeros((Y.shape[1], 0), dtype=jnp.asarray(Y).dtype) if log_d0 is None else log_d0[:, None]
        x0 = _chunk_starts(*chunk.data, theta0, log_d0, structures)
    res = _search(chunk, np.asarray(x0, dtype=np.float64), nodes, node_weights, max_iter)
    bounded = theta_diagonal_mask(problem.structure.qs) if structures is None else psi_diagonal_mask(structures)
    lower = np.concatenate([np.where(bounded, 0.0, -np.inf), np.full(res.x.shape[1] - k, -np.inf)])
    # tiny variances to the boundary (β fixed), as a single fit's; the Hessian then at the snapped point
    x, value = snap_rows(res.x, lower, lambda pts: chunk.objective(pts, nodes, node_weights), value=res.value)
    usable, se = _hessian_standard_errors(chunk.hessians(x, nodes, node_weights), k)
    theta = np.asarray(jax.vmap(lambda row: _inner_x(row, structures))(jnp.asarray(x[:, :k])))
    return dict(theta=theta, psi=x[:, :k], beta=x[:, k:k + p], se=se[:, :p], se_tail=se[:, p:], tail=x[:, k + p:],
                objective=np.asarray(value), converged=np.asarray(res.converged), n_iter=np.asarray(res.n_iter),
                n_eval=np.asarray(res.n_eval), nobs=np.sum(np.asarray(W) > 0, axis=0), hessian_ok=usable)


def _rx_standard_errors(problem, x, y, w, c) -> np.ndarray:
    """lme4's fallback standard errors from RX (the PIRLS factor at the optimum x), as a single fit's `_vcov`."""
    prob = eqx.tree_at(lambda p: (p.y, p.weights, p.constant), problem, (y, w, c))
    vcov_rx = np.asarray(_state_at(jnp.asarray(x), prob)["vcov_rx"])
    return np.sqrt(np.diag(vcov_rx))


def _bytes_per_column(problem, nt: int) -> float:
    """A rough working set of one column's fit: per-row arrays of PIRLS and its two Newton steps under the
    Hessian's forward-over-reverse passes, the blocked statistics, and the optimizer's dense state."""
    s = problem.structure
    n, p, k = int(problem.X.shape[0]), problem.p, nt + problem.p
    per_row = 8 * n * (6 + sum(q * q for q in s.qs) + p) * 2 * (k + 1)
    blocks = 8 * (sum(l * q * (q + p + 2) for l, q in zip(s.n_levels, s.qs)) + (s.m_z + p + 1) ** 2) * (k + 1)
    return per_row + blocks + 8 * 60 * k * k


def _split_start(start):
    """fit_batch's start → (θ start or None, d start or None): θ alone, or a dict with "theta" / "dispersion"."""
    if isinstance(start, dict):
        unknown = set(start) - {"theta", "dispersion"}
        if unknown:
            raise ValueError(f"start for fit_batch takes the keys 'theta' and 'dispersion'; got {sorted(unknown)}")
        return start.get("theta"), start.get("dispersion")
    return start, None


def fit_glmm_batch(model, values, columns, *, method: str, nagq, chunk_size, max_iter: int, bar, start=None):
    """Driver used by `fit_batch` for GLMMs; returns the per-column arrays. start: θ to start every column from
    (default lme4's), or a dict {"theta": ..., "dispersion": ...}; β starts from each column's GLM fit, d from
    its moments (`dispersion_starts`)."""
    from ..core._agq import gauss_hermite
    from ._glmm import _check_method

    method, nagq = _check_method(model, method, nagq)
    structures = model.structures if is_structured(model.structures) else None
    if structures is not None and method != "laplace":
        raise ValueError("models with cs() or ar1() terms are fitted by Laplace (method='laplace', nagq=1)")
    problem = glmm_problem(model)
    nodes = node_weights = None
    if method == "agq":
        z, w = gauss_hermite(nagq)
        nodes, node_weights = jnp.asarray(z), jnp.asarray(w)
    m, nt = values.shape[1], model.n_theta
    size = memory_chunk_size(m, _bytes_per_column(problem, nt), override=chunk_size, maximum=64)
    size = min(size, 1 << int(np.ceil(np.log2(max(m, 1)))))  # no padding past the batch itself
    theta_start, d_start = _split_start(start)
    for first in range(0, m, size):  # every column's values checked before anything compiles
        glmm_columns(model, values[:, first:first + size], columns[first:first + size])
    theta0 = jnp.asarray(_search_start(model, structures, theta_start))
    out: dict[str, list] = {}
    fallback = []
    for first in range(0, m, size):
        cols = np.arange(first, min(first + size, m))
        take = np.concatenate([cols, np.repeat(cols[:1], size - len(cols))])  # one compiled program per chunk size
        res = _fit_columns(model, problem, values[:, take], columns[take], theta0, d_start, nodes, node_weights,
                           max_iter, fallback, columns[cols], structures)
        for k, v in res.items():
            out.setdefault(k, []).append(v[: len(cols)])
        bar.update(len(cols))
    res = {k: np.concatenate(v) for k, v in out.items()}
    _warn_fallback(fallback)
    # the record's shared start and bounds: θ's (ψ's); β starts from each column's own GLM
    bounded = theta_diagonal_mask(model.qs) if structures is None else psi_diagonal_mask(structures)
    res.update(theta_start=np.asarray(theta0), theta_lower=np.where(bounded, 0.0, -np.inf),
               hessian_fallback=~res["hessian_ok"] & np.isfinite(res["objective"]))
    return _finish(model, problem, res, method)


def _search_start(model, structures, start) -> np.ndarray:
    """θ to start from (lme4's layout), or ψ for cs() / ar1() terms (the structures' start unless given)."""
    if structures is None:
        return model.start_theta(start)
    from ._structured import _psi_start

    return _psi_start(model, structures, start)


def _fit_columns(model, problem, values, names, theta0, d_start, nodes, node_weights, max_iter, fallback, real,
                 structures=None):
    """One chunk: the columns' data, d's starts, the vmapped fit, and lme4's RX fallback where the Hessian fails
    (recorded in `fallback` for the columns among `real`, the chunk's unpadded names)."""
    Y, W, constants, non_integer = glmm_columns(model, values, names)
    log_d0 = dispersion_starts(model, problem, Y, W, constants, d_start)
    data = (problem, jnp.asarray(Y), jnp.asarray(W), jnp.asarray(constants))
    log_d0 = None if log_d0 is None else jnp.asarray(log_d0)
    res = fit_glmm_chunk(*data, theta0, log_d0, nodes, node_weights, max_iter, structures)
    res = {k: np.array(v) for k, v in res.items()}
    res["saddle"] = _leave_saddles(res, data, theta0, log_d0, nodes, node_weights, max_iter, structures)
    res["constants"], res["non_integer"] = constants, non_integer
    x = np.concatenate([res["theta"], res["beta"], res["tail"]], axis=1)
    for j in np.flatnonzero((~res["hessian_ok"] & np.isfinite(res["objective"]))[: len(real)]):
        res["se"][j] = _rx_standard_errors(problem, x[j], Y[:, j], W[:, j], constants[j])
        res["se_tail"][j] = np.nan
        fallback.append(real[j])
    return res


def _search_x(res) -> np.ndarray:
    return np.concatenate([res["psi"], res["beta"], res["tail"]], axis=1)


def _leave_saddles(res, data, theta0, log_d0, nodes, node_weights, max_iter, structures) -> np.ndarray:
    """As a single fit does (`_boundary.saddle_starts`): a column stopped at a saddle on the boundary searches
    again from the best probe off it (β and d from where it stopped), kept where it ends lower. Returns which
    columns moved."""
    x = _search_x(res)
    k = res["psi"].shape[1]
    lower = np.full(x.shape[1], -np.inf)
    diag = theta_diagonal_mask(data[0].structure.qs) if structures is None else psi_diagonal_mask(structures)
    lower[:k] = np.where(diag, 0.0, -np.inf)
    moved = np.zeros(x.shape[0], dtype=bool)
    if not (np.isfinite(lower) & (x == lower)).any():
        return moved
    chunk = _Chunk(*data, structures)
    which, starts = saddle_starts(x, lower, lambda pts: chunk.objective(pts, nodes, node_weights), res["objective"])
    if not which.any():
        return moved
    starts = np.where(which[:, None], starts, x)  # every column searches, the others from their optimum
    retry = fit_glmm_chunk(*data, theta0, log_d0, nodes, node_weights, max_iter, structures, x0=starts)
    moved = which & refit_is_lower(res["objective"], retry["objective"])
    for key in retry:
        res[key][moved] = retry[key][moved]
    return moved


def _finish(model, problem, res, method):
    """θ in lme4's sign convention, logLik on lme4's scale and, for a dispersion family, d and its SE."""
    res["theta"] = canonical_theta(res["theta"], model.qs)
    constants, non_integer = res.pop("constants"), res.pop("non_integer")
    # lme4's loglik scale: Laplace objective is −2 log L; AGQ's leaves the constants out (kept as a single fit does)
    res["loglik"] = -res["objective"] / 2.0 if method == "laplace" else -(res["objective"] + constants) / 2.0
    res["loglik"] = np.where(non_integer, -np.inf, res["loglik"])
    tail, se_tail = res.pop("tail"), res.pop("se_tail")
    fam = problem.family
    if getattr(fam, "has_dispersion", False):
        if problem.n_dispersion:
            res["dispersion"] = np.exp(tail[:, 0])
            res["dispersion_se"] = res["dispersion"] * se_tail[:, 0]  # the delta method, as a single fit's
        else:
            res["dispersion"] = np.full(len(tail), fam.dispersion)
            res["dispersion_se"] = np.full(len(tail), np.nan)
    res["method"] = method
    if not is_structured(model.structures):
        res.pop("psi")
    return res


def _warn_fallback(columns) -> None:
    from ._batch import user_stacklevel

    if columns:
        listed = ", ".join(map(repr, columns[:5])) + (f" and {len(columns) - 5} more" if len(columns) > 5 else "")
        warnings.warn(
            f"fit_batch: for {len(columns)} response column(s) ({listed}) the variance-covariance matrix computed "
            "from the Hessian is not positive definite or contains NA values: falling back to var-cov estimated "
            "from RX", ConvergenceWarning, stacklevel=user_stacklevel())
