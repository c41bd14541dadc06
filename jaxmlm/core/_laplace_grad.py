"""The Laplace deviance with a hand-written gradient: implicit differentiation at the conditional modes.

For binomial and Poisson GLMMs (any link, no dispersion parameter) the Laplace deviance is

    D(θ, β) = Σ dev_i(η_i(û)) + ‖û‖² + log det H,   H = ΛᵀZᵀW(η(û))ZΛ + I,   η = Xβ + offset + ZΛu,

with û(θ, β) the minimizer of the penalized deviance h(u) = Σ dev_i + ‖u‖² and W lme4's Fisher weights.
`_pirls.laplace_deviance` differentiates it by autodiff through one or two Newton steps and the factorization;
here the gradient is written out instead (`laplace_deviance_fast`, a `jax.custom_vjp`), with the same value:

* ∇ₓh = 0 at the mode, so the penalized deviance contributes its partial derivative in x = (θ, β) at û fixed.
* log det H depends on x directly (Λ) and through each row's weight w_i(η_i). Its derivatives in (θ, w) come
  from the linear model's hand-written reverse rules (`_linalg.prefix_log_terms`: the prefix elimination and the
  tail's closed-form log-determinant derivative), one reverse pass: ∂ log det/∂w_i = (ZΛH⁻¹ΛᵀZᵀ)_ii, the rows'
  leverages, and ∂ log det/∂θ at W fixed. Per row s_i = ∂ log det/∂w_i · w'_i(η_i) is then the log-determinant's
  derivative in η_i, which carries it to β and θ (η's ZΛu) and to u: r = ΛᵀZᵀs.
* û moves with x by the implicit function theorem, ∂û/∂x = −(∇²_u h)⁻¹ ∂ₓ∇_u h, with ∇²_u h = 2 H_obs, H_obs the
  same matrix with the observed weights ½ dev_i'' (Fisher's for a canonical link). One adjoint solve
  v = H_obs⁻¹ r (ΛᵀZᵀW_obs z with z = s / w_obs as the working response of one more factorization) gives the
  term −½ vᵀ ∂ₓ∇_u h, the x-gradient of a directional derivative of h (a JVP of cheap row-wise terms).

Nothing is differentiated through PIRLS, a factorization or a Newton step. The value is the Newton-refined
modes' deviance as in `_pirls.laplace_deviance` (the log-determinant from `prefix_log_terms`, equal to
`factorize`'s to rounding); the gradient is D's exact gradient at those modes. Families with a dispersion
parameter and lme4's plug-in Gamma objective keep the autodiff path (`supported`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ._blocks import cross_products
from ._linalg import prefix_log_terms
from ._pirls import (GlmmProblem, _deviance, _mode_flat, _penalty, _solve_u, _zlu, fisher_weights,
                     laplace_deviance_from, row_gather, split_x)

__all__ = ["supported", "laplace_deviance_fast", "laplace_value_and_grad"]


def supported(problem: GlmmProblem) -> bool:
    """Whether `laplace_deviance_fast` has its own gradient for this problem (binomial and Poisson, any link);
    the others (dispersion families, lme4's plug-in Gamma / inverse Gaussian) differentiate the Newton steps."""
    return not getattr(problem.family, "has_dispersion", False) and problem.laplace_weights != "plugin"


def _logdet(theta, w, problem: GlmmProblem):
    """log det(ΛᵀZᵀWZΛ + I) as a function of (θ, w) with the hand-written reverse rules (grad and vjp only)."""
    ones = jnp.ones((w.shape[0], 1), dtype=w.dtype)
    blocks = cross_products(problem.structure, problem.rows, w, ones)
    prefix, terms = prefix_log_terms(theta, blocks, problem.structure, 0, False)
    return prefix.logdet_prefix() + terms[0]


def _observed_weights(problem: GlmmProblem, eta):
    """½ dev_i''(η_i), the penalized deviance's curvature per row (the Fisher weights for a canonical link)."""
    fam = problem.family
    if fam.canonical:
        return fisher_weights(problem, eta)[0]

    def half_dev(e, y, pw):
        return 0.5 * fam.deviance_residuals(y, fam.linkinv(e), pw)

    return jax.vmap(jax.grad(jax.grad(half_dev)))(eta, problem.y, problem.weights)


def laplace_value_and_grad(x, problem: GlmmProblem, u_start=None, newton_steps: int = 1):
    """(D(x), ∇D(x), PIRLS's (u*, ok, iters)) by the rule of the module docstring; nothing in it is meant to be
    differentiated again (`laplace_deviance_fast` wraps it for jax.grad)."""
    structure = problem.structure
    x = jax.lax.stop_gradient(x)
    theta, beta, _ = split_x(x, problem)
    gather = row_gather(structure, problem.rows)
    u, pirls_state = _mode_flat(theta, beta, problem, None, gather, newton_steps, u_start)
    u = jax.lax.stop_gradient(u)

    def eta_of(th, be, uu):
        return problem.X @ be + problem.offset + _zlu(structure, gather, th, uu)

    eta = eta_of(theta, beta, u)
    w, dw = jax.jvp(lambda e: fisher_weights(problem, e)[0], (eta,), (jnp.ones_like(eta),))
    logdet, (g_theta, g_w) = jax.value_and_grad(_logdet, (0, 1))(theta, w, problem)
    s = g_w * dw  # ∂ log det/∂η per row
    w_obs = _observed_weights(problem, eta)
    z = jnp.where(w_obs != 0, s / jnp.where(w_obs != 0, w_obs, 1.0), 0.0)
    v = _solve_u(problem, theta, w_obs, z)  # H_obs⁻¹ ΛᵀZᵀ s

    def surrogate(xx):
        th, be, _ = split_x(xx, problem)
        h = lambda uu: _deviance(problem, eta_of(th, be, uu)) + _penalty(uu)  # noqa: E731
        direction = jax.jvp(h, (u,), (v,))[1]
        return (_deviance(problem, eta_of(th, be, u)) + jnp.vdot(s, eta_of(th, be, u)) + jnp.vdot(g_theta, th)
                - 0.5 * direction)

    grad = jax.grad(surrogate)(x)
    value = _deviance(problem, eta) + _penalty(u) + logdet + problem.constant
    return value, grad, pirls_state


def laplace_deviance_fast(x, problem: GlmmProblem, u_start=None, newton_steps: int = 1, with_pirls: bool = False):
    """`_pirls.laplace_deviance_from(x, problem, u_start, newton_steps, with_pirls)` whose reverse-mode derivative
    is `laplace_value_and_grad`'s (grad and vjp only, no forward mode). Problems without the rule (`supported`)
    get `laplace_deviance_from` itself."""
    if not supported(problem):
        return laplace_deviance_from(x, problem, u_start, newton_steps, with_pirls)

    @jax.custom_vjp
    def f(x, problem, u_start):
        value, pirls_state = laplace_deviance_from(x, problem, u_start, newton_steps, True)
        return value, pirls_state

    def fwd(x, problem, u_start):
        value, grad, pirls_state = laplace_value_and_grad(x, problem, u_start, newton_steps)
        return (value, pirls_state), grad

    def bwd(grad, cotangents):
        return cotangents[0] * grad, None, None

    f.defvjp(fwd, bwd)
    value, pirls_state = f(x, problem, u_start)
    return (value, pirls_state) if with_pirls else value
