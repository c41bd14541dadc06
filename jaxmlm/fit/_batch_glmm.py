"""Many binomial or Poisson responses on one design: the Laplace (or AGQ) fit vmapped over response columns.

The GLMM problem differs between columns only in its response, its prior weights (a missing value gets weight 0)
and the family's normalizing constant, so one compiled program fits a whole chunk: the starting β comes from a
joint PIRLS at θ = lme4's start, then a quasi-Newton fit on (θ, β) as a single fit's first stage does, by the
batch optimizer (`bfgs_minimize`: one evaluation per loop pass, so vmapped columns never wait on one another's line
searches). Standard errors come from the exact Hessian of each column's deviance, as in a single fit; where that
Hessian is not positive definite (a boundary fit, say) they fall back, as a single fit does and with its warning, to
lme4's RX (the PIRLS factor at the optimum). (A single fit also tries a few Newton steps at the end; the batch
stops at the gradient tolerance, which keeps objectives within 1e-6 relative.)

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

from ..core._covariance import canonical_theta
from .._errors import ConvergenceWarning, DataError
from .._memory import chunk_size as memory_chunk_size
from ._glmm import _objective, _state_at, glmm_problem
from ..optim._optimize import bfgs_minimize
from ..core._pirls import pirls
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
        y, w, extra = fam.prepare_response([pd.Series(np.where(observed, col, 0.0))],
                                           dataclasses.replace(single, response=str(name)), w_obs)
        ys.append(y)
        ws.append(w)
        consts.append(fam.log_constant(y, w, extra))
        non_integer.append(bool(extra.get("non_integer", False)))
    return np.stack(ys, axis=1), np.stack(ws, axis=1), np.asarray(consts), np.asarray(non_integer)


@jit(static_argnames=("max_iter",))
def fit_glmm_chunk(problem, Y, W, constants, theta0, nodes, node_weights, max_iter: int):
    """Fit the columns of Y (n × c) with prior weights W (n × c) on the problem's design."""
    nt = problem.structure.n_theta

    def one(y, w, c):
        prob = eqx.tree_at(lambda p: (p.y, p.weights, p.constant), problem, (y, w, c))
        beta0, _, _, _, _ = pirls(theta0, jnp.zeros(prob.p, dtype=theta0.dtype), prob, joint=True)
        beta0 = jnp.where(jnp.isfinite(beta0), beta0, 0.0)
        x0 = jnp.concatenate([theta0, beta0])
        res = bfgs_minimize(_objective, x0, prob, None, None, max_iter=max_iter, gtol=1e-8)
        if nodes is not None:  # AGQ continues from the Laplace optimum, as a single fit does
            res = bfgs_minimize(_objective, res.x, prob, nodes, node_weights, max_iter=max_iter, gtol=1e-8)
        hess = jax.hessian(_objective)(res.x, prob, nodes, node_weights)
        H = 0.5 * (hess + hess.T)
        positive_definite = jnp.all(jnp.isfinite(jnp.linalg.cholesky(H)))
        variance = jnp.diagonal(2.0 * jnp.linalg.inv(H))[nt:]
        usable = positive_definite & jnp.all(jnp.isfinite(variance)) & jnp.all(variance > 0)
        se = jnp.where(usable, jnp.sqrt(jnp.where(usable, variance, 1.0)), jnp.nan)
        return dict(theta=res.x[:nt], beta=res.x[nt:], se=se, objective=res.value, converged=res.converged,
                    n_iter=res.n_iter, nobs=jnp.sum(w > 0), hessian_ok=usable)

    return jax.vmap(one, in_axes=(1, 1, 0))(Y, W, constants)


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


def fit_glmm_batch(model, values, columns, *, method: str, nagq, chunk_size, max_iter: int, bar, start=None):
    """Driver used by `fit_batch` for binomial and Poisson models; returns the per-column arrays. start: θ to
    start every column from (default lme4's); β starts from each column's GLM fit."""
    from ..core._agq import gauss_hermite
    from ._glmm import _check_method

    method, nagq = _check_method(model, method, nagq)
    if getattr(model.family, "has_dispersion", False):
        raise ValueError(f"fit_batch (and bootstrap) are for the binomial and Poisson families; fit each response of "
                         f"the {model.family.name} family with Model.fit")
    problem = glmm_problem(model)
    nodes = node_weights = None
    if method == "agq":
        z, w = gauss_hermite(nagq)
        nodes, node_weights = jnp.asarray(z), jnp.asarray(w)
    m, nt = values.shape[1], model.n_theta
    size = memory_chunk_size(m, _bytes_per_column(problem, nt), override=chunk_size, maximum=64)
    size = min(size, 1 << int(np.ceil(np.log2(max(m, 1)))))  # no padding past the batch itself
    theta0 = jnp.asarray(model.start_theta(start))
    out: dict[str, list] = {}
    fallback = []
    for first in range(0, m, size):
        cols = np.arange(first, min(first + size, m))
        take = np.concatenate([cols, np.repeat(cols[:1], size - len(cols))])  # one compiled program per chunk size
        Y, W, constants, non_integer = glmm_columns(model, values[:, take], columns[take])
        res = fit_glmm_chunk(problem, jnp.asarray(Y), jnp.asarray(W), jnp.asarray(constants), theta0, nodes,
                             node_weights, max_iter)
        res = {k: np.asarray(v)[: len(cols)] for k, v in res.items()}
        res["constants"], res["non_integer"] = constants[: len(cols)], non_integer[: len(cols)]
        x = np.concatenate([res["theta"], res["beta"]], axis=1)
        for j in np.flatnonzero(~res["hessian_ok"] & np.isfinite(res["objective"])):
            res["se"][j] = _rx_standard_errors(problem, x[j], Y[:, j], W[:, j], constants[j])
            fallback.append(columns[cols[j]])
        for k, v in res.items():
            out.setdefault(k, []).append(v)
        bar.update(len(cols))
    res = {k: np.concatenate(v) for k, v in out.items()}
    _warn_fallback(fallback)
    res["theta"] = canonical_theta(res["theta"], model.qs)
    constants, non_integer = res.pop("constants"), res.pop("non_integer")
    # lme4's loglik scale: Laplace objective is −2 log L; AGQ's leaves the constants out (kept as a single fit does)
    res["loglik"] = -res["objective"] / 2.0 if method == "laplace" else -(res["objective"] + constants) / 2.0
    res["loglik"] = np.where(non_integer, -np.inf, res["loglik"])
    res["method"] = method
    return res


def _warn_fallback(columns) -> None:
    from ._batch import user_stacklevel

    if columns:
        listed = ", ".join(map(repr, columns[:5])) + (f" and {len(columns) - 5} more" if len(columns) > 5 else "")
        warnings.warn(
            f"fit_batch: for {len(columns)} response column(s) ({listed}) the variance-covariance matrix computed "
            "from the Hessian is not positive definite or contains NA values: falling back to var-cov estimated "
            "from RX", ConvergenceWarning, stacklevel=user_stacklevel())
