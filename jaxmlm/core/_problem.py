"""The public objective protocol: a model's objective as a pure JAX function of one flat parameter vector.

`Model.problem(method)` builds one of these; fitting, profiling and a researcher's own code all start here:

    problem.objective(x)            the deviance (ML), REML criterion, Laplace or nAGQ deviance at x
    problem.objective(x, data)      the same on another data pytree (`problem.data`, or `with_response(y).data`)
    problem.x0, problem.lower       lme4's start and lower bounds (0 on the diagonal of each T_k)
    problem.unpack(x)               x → named parameters: θ (and β, σ profiled out for linear models; β and the
                                    dispersion for generalized ones)
    problem.names                   a name per coordinate of x (lme4's getME(fit, "theta") names, then β's)
    problem.with_response(y)        the same problem for another response (vmap over responses)

A model with cs() / ar1() terms gets a `StructuredObjective`: the same protocol over x = (ψ[, β, log d]), ψ the
structures' own parameters (`core/_structures.py`, named as `Model.psi_names`), around the θ-space problem of
the same model (objective(x) = inner.objective(θ(ψ), ...)); `unpack` adds ψ and each structure's sds and ρ.

The data are pytree leaves of the Module (`data`), so `jax.jit(lambda d, x: problem.objective(x, d))` traces
them as arguments; `jax.jit(problem.objective)` works too but folds them into the program as constants, which
compiles slowly for large data. The objective never calls back to the host, so it runs unchanged under jit,
grad, hessian and vmap on any backend. It needs JAX's float64 (`jax.enable_x64`); without it, it raises
`PrecisionError` rather than computing in single precision.
"""

from __future__ import annotations

from typing import Any, Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from .._config import require_float64
from ._agq import agq_deviance
from ._lmm import LinearProblem, linear_estimates, make_linear_problem, profiled_deviance, split_problem
from ._pirls import GlmmProblem, laplace_deviance, split_x
from ._structures import n_psi, natural_parameters, psi_to_theta

__all__ = ["LinearRows", "LinearObjective", "GlmmObjective", "StructuredObjective", "Problem"]


class LinearRows(eqx.Module):
    """What it takes to form a linear model's statistics for another response: the rows, weights, X, offset."""

    structure: Any
    rows: Any
    weights: jax.Array
    X: jax.Array
    offset: jax.Array


class LinearObjective(eqx.Module):
    """The profiled deviance (ML) or REML criterion of a linear mixed model over x = θ (β and σ profiled out)."""

    data: LinearProblem  # the statistics [Z X y]ᵀW[Z X y], split by level element
    x0: jax.Array
    lower: jax.Array
    source: LinearRows | None
    method: str = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    beta_names: tuple[str, ...] = eqx.field(static=True)

    @property
    def reml(self) -> bool:
        return self.method == "reml"

    @property
    def objective(self) -> Callable[..., jax.Array]:
        """f(x, data=None): lme4's devfun at θ = x, −2 profiled log-likelihood (ML) or the REML criterion."""
        return Partial(_linear_objective, self)

    @property
    def unpack(self) -> Callable[..., dict]:
        """f(x, data=None): θ = x, with the β̂ and σ̂ that the profiled objective implies at θ."""
        return Partial(_linear_unpack, self)

    def with_response(self, y: jax.Array) -> "LinearObjective":
        """The same model for response y (one value per model row, no missing values): the statistics are formed
        afresh from the rows, so this traces (vmap over responses: `jax.vmap(lambda y: p.with_response(y).data)`)."""
        require_float64("Problem.with_response")
        s = self.source
        if s is None:
            raise ValueError("this problem was built without its rows; build it with Model.problem()")
        y = jnp.asarray(y)
        if y.shape != s.offset.shape:
            raise ValueError(f"y must hold one value per model row ({s.offset.shape[0]}), got shape {y.shape}")
        stats = make_linear_problem(s.structure, s.rows, s.weights, s.X, y - s.offset)
        return eqx.tree_at(lambda p: p.data, self, split_problem(stats))


class GlmmObjective(eqx.Module):
    """The Laplace (nAGQ = 1) or adaptive Gauss–Hermite deviance of a GLMM over x = (θ, β[, log dispersion])."""

    data: GlmmProblem
    x0: jax.Array
    lower: jax.Array
    nodes: jax.Array | None  # Gauss–Hermite nodes and weights (agq only)
    node_weights: jax.Array | None
    method: str = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)
    log_constant: Callable | None = eqx.field(static=True, default=None)  # (y, prior weights) → c(y), on the host

    @property
    def objective(self) -> Callable[..., jax.Array]:
        """f(x, data=None): lme4's glmer objective at x, the Laplace deviance (family constants included) or for
        nAGQ > 1 the quadrature deviance (family constant left out, as lme4)."""
        return Partial(_glmm_objective, self)

    @property
    def unpack(self) -> Callable[..., dict]:
        """f(x, data=None): x → θ, β and (for a family with a free dispersion parameter) the dispersion."""
        return Partial(_glmm_unpack, self)

    def with_response(self, y: jax.Array, constant: jax.Array | float | None = None) -> "GlmmObjective":
        """The same model for response y (on the model's scale: proportions for cbind() binomial responses).
        The family constant c(y) (binomial coefficients, Poisson factorials) is computed on the host, so under
        vmap pass it as `constant` (it does not depend on the parameters: 0 only shifts the objective)."""
        require_float64("Problem.with_response")
        data = self.data
        if constant is None:
            if isinstance(y, jax.core.Tracer):
                raise ValueError("with_response under a JAX transformation needs constant= (the family constant "
                                 "c(y), or 0 to leave it out)")
            if self.log_constant is None:
                raise ValueError("this problem was built without its family constant; pass constant=")
            constant = self.log_constant(y, data.weights)
        y = jnp.asarray(y, dtype=data.y.dtype)
        if y.shape != data.y.shape:
            raise ValueError(f"y must hold one value per model row ({data.y.shape[0]}), got shape {y.shape}")
        new = eqx.tree_at(lambda d: (d.y, d.constant), data, (y, jnp.asarray(constant, dtype=y.dtype)))
        return eqx.tree_at(lambda p: p.data, self, new)



class StructuredObjective(eqx.Module):
    """A θ-space problem (`inner`) searched over the covariance structures' parameters: x = (ψ, rest), where
    rest is what follows θ in inner's x (β[, log dispersion] for a GLMM, nothing for a linear model)."""

    inner: LinearObjective | GlmmObjective
    x0: jax.Array
    lower: jax.Array
    structures: tuple = eqx.field(static=True)
    names: tuple[str, ...] = eqx.field(static=True)

    @property
    def method(self) -> str:
        return self.inner.method

    @property
    def data(self):
        return self.inner.data

    @property
    def n_psi(self) -> int:
        return n_psi(self.structures)

    def inner_x(self, x) -> jax.Array:
        """x = (ψ, rest) → inner's x = (θ(ψ), rest)."""
        x = jnp.asarray(x)
        k = self.n_psi
        return jnp.concatenate([psi_to_theta(x[:k], self.structures), x[k:]])

    @property
    def objective(self) -> Callable[..., jax.Array]:
        """f(x, data=None): inner's objective at (θ(ψ), rest)."""
        return Partial(_structured_objective, self)

    @property
    def unpack(self) -> Callable[..., dict]:
        """f(x, data=None): inner's named parameters at (θ(ψ), rest), with `psi` and `structures` (per cs/ar1
        term its `sd` on the response's scale, σ̂ times the relative sd for a linear model, and `rho`)."""
        return Partial(_structured_unpack, self)

    def with_response(self, y, *args, **kwargs) -> "StructuredObjective":
        return eqx.tree_at(lambda p: p.inner, self, self.inner.with_response(y, *args, **kwargs))


Problem = LinearObjective | GlmmObjective | StructuredObjective


# The functions behind `objective` and `unpack`. Those properties hand them out bound to the problem as a
# `jax.tree_util.Partial`, a pytree holding the problem's arrays: `jax.jit(problem.objective)` works (the arrays
# become constants), `eqx.filter_jit(problem.objective)` traces them as arguments.
def _linear_objective(problem: LinearObjective, x, data=None) -> jax.Array:
    require_float64("the objective of a Problem")
    data = problem.data if data is None else data
    return profiled_deviance(jnp.asarray(x), data, problem.reml, host_lapack=False)


def _linear_unpack(problem: LinearObjective, x, data=None) -> dict[str, jax.Array]:
    require_float64("Problem.unpack")
    est = linear_estimates(jnp.asarray(x), problem.data if data is None else data, problem.reml)
    return dict(theta=jnp.asarray(x), beta=est["beta"], sigma=est["sigma"])


def _glmm_objective(problem: GlmmObjective, x, data=None) -> jax.Array:
    require_float64("the objective of a Problem")
    data = problem.data if data is None else data
    x = jnp.asarray(x)
    if problem.nodes is None:
        return laplace_deviance(x, data)
    return agq_deviance(x, data, problem.nodes, problem.node_weights)


def _glmm_unpack(problem: GlmmObjective, x, data=None) -> dict[str, jax.Array]:
    require_float64("Problem.unpack")
    theta, beta, phi = split_x(jnp.asarray(x), problem.data if data is None else data)
    out = dict(theta=theta, beta=beta)
    if phi is not None:
        out["dispersion"] = phi
    return out


def _structured_objective(problem: StructuredObjective, x, data=None) -> jax.Array:
    return problem.inner.objective(problem.inner_x(x), data)


def _structured_unpack(problem: StructuredObjective, x, data=None) -> dict:
    out = dict(problem.inner.unpack(problem.inner_x(x), data))
    psi = jnp.asarray(x)[:problem.n_psi]
    out["psi"] = psi
    scale = out.get("sigma", 1.0)
    terms, pos = [], 0
    for s in problem.structures:
        if s.kind != "us":
            terms.append(natural_parameters(s, psi[pos:pos + s.n_params], scale))
        pos += s.n_params
    out["structures"] = tuple(terms)
    return out
