"""Many binomial or Poisson responses on one design: the Laplace (or AGQ) fit vmapped over response columns.

The GLMM problem differs between columns only in its response, its prior weights (a missing value gets weight 0)
and the family's normalizing constant, so one compiled program fits a whole chunk: the starting β comes from a
joint PIRLS at θ = lme4's start, then a quasi-Newton fit on (θ, β) as a single fit's first stage does, by the
batch optimizer (`bfgs_minimize`: one evaluation per loop pass, so vmapped columns never wait on one another's line
searches). Standard errors come from the exact Hessian of each column's deviance, as in a single fit. (A single fit
also tries a few Newton steps at the end; the batch stops at the gradient tolerance, which keeps objectives within
1e-6 relative.)
"""

from __future__ import annotations

import dataclasses
import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..core._covariance import canonical_theta
from .._errors import DataError
from ._glmm import _objective, glmm_problem
from ..optim._optimize import bfgs_minimize
from ..core._pirls import pirls

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


@functools.partial(jax.jit, static_argnames=("max_iter",))
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
        cov = 2.0 * jnp.linalg.inv(hess)
        se = jnp.sqrt(jnp.diagonal(cov)[nt:])
        return dict(theta=res.x[:nt], beta=res.x[nt:], se=se, objective=res.value, converged=res.converged,
                    n_iter=res.n_iter, nobs=jnp.sum(w > 0))

    return jax.vmap(one, in_axes=(1, 1, 0))(Y, W, constants)


def fit_glmm_batch(model, values, columns, *, method: str, nagq, chunk_size, max_iter: int, bar, start=None):
    """Driver used by `fit_batch` for binomial and Poisson models; returns the per-column arrays. start: θ to
    start every column from (default lme4's); β starts from each column's GLM fit."""
    from ..core._agq import gauss_hermite
    from ._glmm import _check_method

    method, nagq = _check_method(model, method, nagq)
    if getattr(model.family, "has_dispersion", False):
        raise ValueError(f"fit_batch (and bootstrap) are for the binomial and Poisson families; fit each response of "
                         f"the {model.family.name} family with Model.fit")
    Y, W, constants, non_integer = glmm_columns(model, values, columns)
    problem = glmm_problem(model)
    nodes = node_weights = None
    if method == "agq":
        z, w = gauss_hermite(nagq)
        nodes, node_weights = jnp.asarray(z), jnp.asarray(w)
    m = Y.shape[1]
    size = int(chunk_size or min(64, 1 << int(np.ceil(np.log2(max(m, 1))))))
    theta0 = jnp.asarray(model.start_theta(start))
    out: dict[str, list] = {}
    for start in range(0, m, size):
        cols = np.arange(start, min(start + size, m))
        pad = size - len(cols)
        take = np.concatenate([cols, np.repeat(cols[:1], pad)])  # one compiled program per chunk size
        res = fit_glmm_chunk(problem, jnp.asarray(Y[:, take]), jnp.asarray(W[:, take]),
                             jnp.asarray(constants[take]), theta0, nodes, node_weights, max_iter)
        for k, v in res.items():
            out.setdefault(k, []).append(np.asarray(v)[: len(cols)])
        bar.update(len(cols))
    res = {k: np.concatenate(v) for k, v in out.items()}
    res["theta"] = canonical_theta(res["theta"], model.qs)
    # lme4's loglik scale: Laplace objective is −2 log L; AGQ's leaves the constants out (kept as a single fit does)
    res["loglik"] = -res["objective"] / 2.0 if method == "laplace" else -(res["objective"] + constants) / 2.0
    res["loglik"] = np.where(non_integer, -np.inf, res["loglik"])
    res["method"] = method
    return res
