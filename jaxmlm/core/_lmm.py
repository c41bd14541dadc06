"""The linear mixed model: profiled deviance / REML criterion as pure functions of θ, and the fit.

y = Xβ + ZΛθu + ε, u ~ N(0, σ²I), ε ~ N(0, σ²W⁻¹). With the blocked factor L of
Λᵀ[Z X y]ᵀW[Z X y]Λ + diag(I, 0, 0) (``_linalg.factorize``):

    ML:   d(θ) = log|L_Z|² + n (1 + log(2π r²/n)) − Σ log w
    REML: d(θ) = log|L_Z|² + log|L_X|² + (n−p)(1 + log(2π r²/(n−p))) − Σ log w

where r = L_yy (so r² is the penalized residual sum of squares). β, u and σ follow from the same factor.
These are Bates et al. (2015, JSS 67(1)) eqs. 34 and 41, in MixedModels.jl's blocked form.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._blocks import Blocks, RowData, Structure, cross_products, split_levels
from ._linalg import Factor, eliminate_prefix, factorize, prefix_log_terms, solve_coefficients, tail_log_terms
from ..optim._optimize import OptimResult, lbfgs_minimize
from .._compile import jit

__all__ = [
    "LinearProblem",
    "make_linear_problem",
    "make_linear_problems",
    "split_problem",
    "profiled_deviance",
    "fit_linear",
    "deviance_and_gradient",
    "linear_estimates",
    "gradients_at_points",
    "linear_diagnostics",
]

_LOG_2PI = float(np.log(2 * np.pi))


class LinearProblem(eqx.Module):
    """Everything the LMM objective needs: the structure and the statistics [Z X y]ᵀW[Z X y]."""

    structure: Structure
    blocks: Blocks
    n: jax.Array  # rows with positive weight: a leaf, so batches may differ per response (missing values)
    p: int = eqx.field(static=True)
    sum_log_w: jax.Array


@jit(once=True, static_argnames=("p",))
def _linear_statistics(structure: Structure, rows: RowData, weights, X, y, p: int) -> LinearProblem:
    """The statistics and the weights' summaries in one compiled pass (eager ops on million-row arrays each cost
    a dispatch and a pass over memory). It runs once per fit (per chunk), as do the estimates at the optimum, so
    "auto" compiles both "lean" (`_compile.jit(once=True)`): on InstEval a first fit's two compiles took 2.6 s
    instead of 7 s, the same bits (benchmarks/results/insteval_value.md)."""
    F = jnp.concatenate([X, y[:, None]], axis=1)
    positive = weights > 0
    sum_log_w = jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, weights, 1.0)), 0.0))
    return LinearProblem(structure=structure, blocks=cross_products(structure, rows, weights, F),
                         n=jnp.sum(positive).astype(F.dtype), p=p, sum_log_w=sum_log_w)


# Rows per compiled pass when forming the statistics: the pass's temporaries (per-row products such as the
# (n, q, q) outer products) stay bounded however many rows there are; the statistics of a union of row sets are
# the sums of their statistics. Every chunk has this shape (the last is padded with weight-0 rows), so one program.
STATISTICS_CHUNK_ROWS = 1 << 21


def make_linear_problem(structure: Structure, rows: RowData, weights, X, y) -> LinearProblem:
    """Form the statistics once: one pass over the rows, in chunks of STATISTICS_CHUNK_ROWS."""
    p, n = int(X.shape[1]), int(X.shape[0])
    if n <= STATISTICS_CHUNK_ROWS:
        return _linear_statistics(structure, rows, weights, X, y, p=p)
    return _chunked_statistics(structure, rows, weights, X, y, p, n)


def make_linear_problems(structure: Structure, rows: RowData, weights, X, y) -> tuple[LinearProblem, LinearProblem]:
    """The statistics and their split form (`split_problem`, what the optimizer's programs take), in one compiled
    program where the rows fit one pass: a fit needs both, and one program fewer to compile on its first call."""
    p, n = int(X.shape[1]), int(X.shape[0])
    if n <= STATISTICS_CHUNK_ROWS:
        return _statistics_and_split(structure, rows, weights, X, y, p=p)
    problem = _chunked_statistics(structure, rows, weights, X, y, p, n)
    return problem, split_problem(problem)


@jit(once=True, static_argnames=("p",))
def _statistics_and_split(structure: Structure, rows: RowData, weights, X, y, p: int):
    problem = _linear_statistics(structure, rows, weights, X, y, p=p)
    return problem, split_problem(problem)


def _chunked_statistics(structure: Structure, rows: RowData, weights, X, y, p: int, n: int) -> LinearProblem:
    weights, X, y = jnp.asarray(weights), jnp.asarray(X), jnp.asarray(y)
    total = None
    for start in range(0, n, STATISTICS_CHUNK_ROWS):
        part = _chunk_statistics(structure, rows, weights, X, y, start, p=p, size=STATISTICS_CHUNK_ROWS)
        total = part if total is None else _add_statistics(total, part)
    return total


@jit(once=True, static_argnames=("p", "size"))
def _chunk_statistics(structure: Structure, rows: RowData, weights, X, y, start, p: int, size: int) -> LinearProblem:
    """Statistics of rows [start, start + size). The last chunk's slice is shifted back to stay in range and the
    rows before `start` get weight 0, so every chunk has one shape and no row counts twice."""
    n = weights.shape[0]
    first = jnp.minimum(start, n - size)
    take = lambda a: jax.lax.dynamic_slice_in_dim(a, first, size, axis=0)  # noqa: E731
    fresh = (first + jnp.arange(size)) >= start
    return _linear_statistics(structure, jax.tree.map(take, rows), jnp.where(fresh, take(weights), 0.0), take(X),
                              take(y), p=p)


@jit
def _add_statistics(a: LinearProblem, b: LinearProblem) -> LinearProblem:
    return LinearProblem(structure=a.structure, blocks=jax.tree.map(jnp.add, a.blocks, b.blocks), n=a.n + b.n, p=a.p,
                         sum_log_w=a.sum_log_w + b.sum_log_w)


@jit
def split_problem(problem: LinearProblem) -> LinearProblem:
    """`problem` with its per-level blocks split element by element (`_blocks.split_levels`), the form the
    optimizer's programs take; one copy of the blocks."""
    return eqx.tree_at(lambda p: p.blocks, problem, split_levels(problem.blocks))


def deviance_from_factor(factor: Factor, problem: LinearProblem, reml: bool) -> jax.Array:
    m_z = problem.structure.m_z
    n, p = problem.n, problem.p
    logdet = factor.logdet_z(m_z)
    r2 = factor.tail[-1, -1] ** 2
    if reml:
        logdet_x = 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(factor.tail)[m_z : m_z + p])))
        nmp = n - p
        return logdet + logdet_x + nmp * (1.0 + _LOG_2PI + jnp.log(r2 / nmp)) - problem.sum_log_w
    return logdet + n * (1.0 + _LOG_2PI + jnp.log(r2 / n)) - problem.sum_log_w


def profiled_deviance(theta: jax.Array, problem: LinearProblem, reml: bool = False,
                      host_lapack: bool = True, reverse_only: bool = False) -> jax.Array:
    """-2 × profiled log-likelihood (ML) or the REML criterion at θ. Pure; jit/grad/vmap-able. host_lapack=False:
    the gradient of a large dense tail stays in XLA too (no host callback; `_linalg.inverse_from_cholesky`).
    reverse_only: the same value, with the cheaper hand-written reverse rules of `_linalg.prefix_log_terms`
    (grad and vjp only, no forward-mode derivatives)."""
    if reverse_only:
        prefix, terms = prefix_log_terms(theta, problem.blocks, problem.structure, problem.p, host_lapack)
    else:
        prefix, S = eliminate_prefix(theta, problem.blocks, problem.structure)
        terms = tail_log_terms(S, problem.structure.m_z, problem.p, host_lapack)
    logdet_z, logdet_x, log_r2 = terms
    return _deviance(prefix.logdet_prefix() + logdet_z, logdet_x, log_r2, problem, reml)


def _deviance(logdet, logdet_x, log_r2, problem: LinearProblem, reml: bool) -> jax.Array:
    n, p = problem.n, problem.p
    if reml:
        nmp = n - p
        return logdet + logdet_x + nmp * (1.0 + _LOG_2PI + log_r2 - jnp.log(nmp)) - problem.sum_log_w
    return logdet + n * (1.0 + _LOG_2PI + log_r2 - jnp.log(n)) - problem.sum_log_w


@jit(static_argnames=("reml", "max_iter"))
def fit_linear(theta0: jax.Array, problem: LinearProblem, reml: bool, max_iter: int = 1000) -> OptimResult:
    """Minimize the profiled deviance over θ (unconstrained: the deviance depends on T only through TTᵀ).
    In float32 the tolerances follow the precision: relative gradient 1e-6 and stall 1e-9, where float64 uses
    1e-9 and 1e-13 (below float32's resolution, they would only be met by stalling)."""
    if theta0.dtype == jnp.float32:
        return lbfgs_minimize(profiled_deviance, theta0, problem, reml, max_iter=max_iter, gtol=1e-6, ftol=1e-9)
    return lbfgs_minimize(profiled_deviance, theta0, problem, reml, max_iter=max_iter)


@jit(static_argnames=("reml",))
def deviance_and_gradient(theta: jax.Array, problem: LinearProblem, reml: bool):
    """The objective and its gradient at θ: the one program a fit runs, from a host-side optimizer loop
    (`_optimize.host_bfgs_minimize`) and for the convergence checks' gradient stencil. It compiles several times
    faster than `fit_linear`'s whole optimizer loop."""
    return jax.value_and_grad(profiled_deviance)(theta, problem, reml, True, True)


@jit(static_argnames=("reml",))
def deviance_value(theta, problem, reml):
    return profiled_deviance(theta, problem, reml)


@jit(static_argnames=("reml", "batch_size"))
def gradients_at_points(points: jax.Array, problem: LinearProblem, reml: bool, batch_size: int) -> jax.Array:
    """The objective's gradient at each row of `points` (P × k), vectorized `batch_size` points at a time."""
    return jax.lax.map(lambda t: jax.grad(profiled_deviance)(t, problem, reml, True, True), points,
                       batch_size=batch_size)


@jit(static_argnames=("reml", "with_hessian"))
def linear_diagnostics(theta: jax.Array, problem: LinearProblem, reml: bool, with_hessian: bool):
    """Gradient (and exact Hessian) of the objective at θ, for lme4's convergence checks."""
    grad = jax.grad(profiled_deviance)(theta, problem, reml)
    hess = jax.hessian(profiled_deviance)(theta, problem, reml) if with_hessian else None
    return grad, hess


@jit(once=True, static_argnames=("reml",))
def linear_estimates(theta: jax.Array, problem: LinearProblem, reml: bool):
    """β, b per term, σ, vcov(β) and the objective at θ."""
    factor = factorize(theta, problem.blocks, problem.structure)
    m_z, n, p = problem.structure.m_z, problem.n, problem.p
    beta, u, b = solve_coefficients(factor, problem.structure, p)
    r2 = factor.tail[-1, -1] ** 2
    sigma = jnp.sqrt(r2 / (n - p if reml else n))
    inv_lxx = factor.fixed_inverse(m_z, p)
    vcov = sigma**2 * inv_lxx.T @ inv_lxx
    objective = deviance_from_factor(factor, problem, reml)
    return dict(beta=beta, u=u, b=b, sigma=sigma, vcov=vcov, objective=objective, factor=factor)
