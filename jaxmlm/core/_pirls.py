"""Penalized iteratively reweighted least squares (PIRLS) and the Laplace approximation, on the blocked factor.

For fixed (θ, β), the conditional modes ũ minimize the penalized deviance

    h(u) = Σ devresid(y, μ(η)) + ‖u‖²,   η = Xβ + offset + ZΛθu.

Each PIRLS step is a weighted least-squares solve with the linear model's machinery: the working weights
w = prior·μ'(η)²/V(μ) and the working response z = ZΛu + (y − μ)/μ'(η) enter `cross_products` as W and F = [z],
`factorize` gives the blocked factor of ΛᵀZᵀWZΛ + I, and `solve_coefficients` returns the new u. When h rises,
the step is halved (up to 10 times), as lme4's pwrssUpdate does.

The Laplace deviance (lme4's nAGQ = 1 objective) is

    −2 log L(θ, β) ≈ Σ devresid(ũ) + ‖ũ‖² + log det(ΛᵀZᵀW(ũ)ZΛ + I) + c(y),

with c(y) the family's constant (binomial coefficients, Poisson factorials), so that it is −2 log-likelihood on
lme4's scale.

**How the gradient passes through the inner solve.** PIRLS runs to convergence in a `lax.while_loop` on
stop-gradient inputs, so autodiff never unrolls its iterations. From that mode u* we then take two *exact Newton*
steps, u₂ = N(N(u*; θ, β); θ, β), with autodiff on. Newton's method converges quadratically, so as a function of
(θ, β) near the current point, u₂ differs from the true mode ũ(θ, β) by O(‖Δ(θ, β)‖⁴): the first, second and third
derivatives of u₂ equal those of ũ. This is implicit differentiation done by the Newton map itself: one step
already gives dũ = −H⁻¹ ∂(∇h), the second makes the exact Hessian of the Laplace deviance (for lme4's standard
errors) come out of `jax.hessian` too. It costs two extra factorizations per evaluation and works for every block
kind without a hand-written adjoint. For canonical links (logit, log) the PIRLS weights are Newton's; for probit
and cloglog the Newton steps use the observed weights ∂²(deviance/2)/∂η², obtained by autodiff of the family's
unit deviance, while the log-determinant keeps lme4's expected (Fisher) weights.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from ._blocks import RowData, Structure, cross_products
from ._linalg import factorize, solve_coefficients, theta_to_factors

__all__ = [
    "GlmmProblem",
    "random_part",
    "pirls",
    "newton_step",
    "laplace_deviance",
    "mode_at",
]

_MAX_PIRLS = 60
_MAX_HALVING = 10


class GlmmProblem(eqx.Module):
    """What a GLMM objective needs: structure, per-row data and the family (static)."""

    structure: Structure
    rows: RowData
    X: jax.Array
    y: jax.Array
    weights: jax.Array  # prior weights (binomial: trials × user weights)
    offset: jax.Array
    constant: jax.Array  # family constant c(y), see module docstring
    family: object = eqx.field(static=True)

    @property
    def p(self) -> int:
        return int(self.X.shape[1])


def random_part(structure: Structure, rows: RowData, theta, u_terms) -> jax.Array:
    """ZΛθu per row."""
    factors = theta_to_factors(theta, structure.qs)
    out = jnp.zeros(rows.codes[0].shape[0], dtype=theta.dtype)
    for k in range(structure.n_terms):
        b = u_terms[k] @ factors[k].T
        out = out + jnp.sum(rows.z[k] * b[rows.codes[k]], axis=1)
    return out


def _penalty(u_terms) -> jax.Array:
    return sum(jnp.sum(u**2) for u in u_terms)


def _deviance(problem: GlmmProblem, eta) -> jax.Array:
    fam = problem.family
    return jnp.sum(fam.deviance_residuals(problem.y, fam.linkinv(eta), problem.weights))


def fisher_weights(problem: GlmmProblem, eta):
    fam = problem.family
    mu = fam.linkinv(eta)
    d = fam.mu_eta(eta)
    return problem.weights * d**2 / fam.variance(mu), mu, d


def _solve_u(problem: GlmmProblem, theta, w, z):
    """u = (ΛᵀZᵀWZΛ + I)⁻¹ΛᵀZᵀWz on the blocked factor."""
    blocks = cross_products(problem.structure, problem.rows, w, z[:, None])
    factor = factorize(theta, blocks, problem.structure)
    _, u, _ = solve_coefficients(factor, problem.structure, 0)
    return u


def _solve_joint(problem: GlmmProblem, theta, w, z):
    """(β, u) from the penalized weighted least squares with X in the system (lme4's nAGQ = 0 step)."""
    F = jnp.concatenate([problem.X, z[:, None]], axis=1)
    blocks = cross_products(problem.structure, problem.rows, w, F)
    factor = factorize(theta, blocks, problem.structure)
    beta, u, _ = solve_coefficients(factor, problem.structure, problem.p)
    return beta, u


def zero_modes(structure: Structure, dtype=jnp.float64):
    return tuple(jnp.zeros((l, q), dtype=dtype) for l, q in zip(structure.n_levels, structure.qs))


def pirls(theta, beta, problem: GlmmProblem, joint: bool = False, tol: float = 1e-11):
    """Conditional modes by PIRLS with step-halving. joint=True also updates β (lme4's first stage).

    Returns (beta, u, penalized deviance, converged, iterations). Not differentiated (see module docstring).
    """
    fam = problem.family
    structure, rows = problem.structure, problem.rows

    def eta_of(b, u):
        return problem.X @ b + problem.offset + random_part(structure, rows, theta, u)

    def pdev_of(b, u):
        return _deviance(problem, eta_of(b, u)) + _penalty(u)

    def step(b, u, eta):
        w, mu, d = fisher_weights(problem, eta)
        resid = jnp.where(w > 0, (problem.y - mu) / d, 0.0)
        if joint:
            return _solve_joint(problem, theta, w, eta - problem.offset + resid)
        return b, _solve_u(problem, theta, w, random_part(structure, rows, theta, u) + resid)

    u0 = zero_modes(structure, theta.dtype)
    if joint:
        # R's glm start: η from the family's mustart, then the first solve is taken whole
        eta0 = fam.linkfun(fam.mustart(problem.y, problem.weights))
        b1, u1 = step(beta, u0, eta0)
        pd1 = pdev_of(b1, u1)
        beta, u0, pd0 = b1, u1, pd1
    else:
        pd0 = pdev_of(beta, u0)

    def cond(carry):
        b, u, pd, it, done, ok = carry
        return (it < _MAX_PIRLS) & ~done

    def body(carry):
        b, u, pd, it, _, _ = carry
        b_new, u_new = step(b, u, eta_of(b, u))

        def halve_cond(c):
            k, bc, uc, pdc = c
            return (k < _MAX_HALVING) & ~(pdc <= pd)

        def halve_body(c):
            k, _, _, _ = c
            f = 0.5 ** (k + 1)
            bc = b + f * (b_new - b)
            uc = tuple(a + f * (n - a) for a, n in zip(u, u_new))
            return k + 1, bc, uc, pdev_of(bc, uc)

        k, bc, uc, pdc = jax.lax.while_loop(halve_cond, halve_body, (0, b_new, u_new, pdev_of(b_new, u_new)))
        improved = pdc <= pd
        change = jnp.abs(pd - pdc) / (0.1 + jnp.abs(pdc))
        step_size = sum(jnp.max(jnp.abs(a - n)) for a, n in zip(u, uc)) + jnp.max(jnp.abs(b - bc), initial=0.0)
        converged = improved & ((change < tol) | (step_size < 1e-10))
        stuck = ~improved  # halving could not lower h: we are at the mode to machine precision, or failing
        b_out = jnp.where(improved, bc, b)
        u_out = tuple(jnp.where(improved, n, a) for a, n in zip(u, uc))
        pd_out = jnp.where(improved, pdc, pd)
        ok = converged | (stuck & (change < 1e-8))
        return b_out, u_out, pd_out, it + 1, converged | stuck, ok

    b, u, pd, it, _, ok = jax.lax.while_loop(
        cond, body, (beta, u0, pd0, jnp.asarray(0), jnp.asarray(False), jnp.asarray(False))
    )
    return b, u, pd, ok & jnp.isfinite(pd), it


def newton_step(u_terms, theta, beta, problem: GlmmProblem):
    """One exact Newton step for the conditional modes (differentiable in u, θ, β)."""
    fam = problem.family
    eta_z = random_part(problem.structure, problem.rows, theta, u_terms)
    eta = problem.X @ beta + problem.offset + eta_z
    if fam.canonical:
        w, mu, d = fisher_weights(problem, eta)
        resid = jnp.where(w > 0, (problem.y - mu) / d, 0.0)
    else:
        # observed information: derivatives of the unit half-deviance in η
        def half_dev(e, y, pw):
            return 0.5 * fam.deviance_residuals(y, fam.linkinv(e), pw)

        g = jax.vmap(jax.grad(half_dev))(eta, problem.y, problem.weights)
        w = jax.vmap(jax.grad(jax.grad(half_dev)))(eta, problem.y, problem.weights)
        resid = jnp.where(w > 0, -g / jnp.where(w > 0, w, 1.0), 0.0)
    return _solve_u(problem, theta, w, eta_z + resid)


def mode_at(theta, beta, problem: GlmmProblem):
    """The conditional modes as a differentiable function of (θ, β): PIRLS (not traced) + two Newton steps."""
    _, u_star, _, ok, it = pirls(jax.lax.stop_gradient(theta), jax.lax.stop_gradient(beta), problem)
    u_star = jax.lax.stop_gradient(u_star)
    u = newton_step(u_star, theta, beta, problem)
    u = newton_step(u, theta, beta, problem)
    return u, ok, it


def laplace_parts(theta, beta, problem: GlmmProblem):
    """Pieces of the Laplace deviance at the mode: (deviance, ‖u‖², log det, u, Fisher weights, PIRLS ok)."""
    u, ok, _ = mode_at(theta, beta, problem)
    eta = problem.X @ beta + problem.offset + random_part(problem.structure, problem.rows, theta, u)
    dev = _deviance(problem, eta)
    w, _, _ = fisher_weights(problem, eta)
    # only the Z part of L is used; a ones column stays positive definite against ΛᵀZᵀWZΛ + I (the +I)
    ones = jnp.ones((eta.shape[0], 1), dtype=eta.dtype)
    factor = factorize(theta, cross_products(problem.structure, problem.rows, w, ones), problem.structure)
    logdet = factor.logdet_z(problem.structure.m_z)
    return dev, _penalty(u), logdet, u, w, ok


def laplace_deviance(x, problem: GlmmProblem) -> jax.Array:
    """lme4's Laplace objective at x = (θ, β). Pure; jit/grad/hessian-able."""
    nt = problem.structure.n_theta
    dev, pen, logdet, _, _, _ = laplace_parts(x[:nt], x[nt:], problem)
    return dev + pen + logdet + problem.constant
