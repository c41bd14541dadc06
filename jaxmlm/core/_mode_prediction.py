"""A first-order prediction of the conditional modes û(θ, β) from those at one point, for PIRLS's start.

Where many Laplace deviances are evaluated near one point x̂ = (θ̂, β̂) whose modes û are known (a sampler's
draws around the point fit), PIRLS converges in fewer iterations from a prediction of û(x) than from û itself.
The derivative of the modes comes from the Newton map N(u; x) = u − (∇²_u h)⁻¹ ∇_u h: at its fixed point
∂N/∂u = 0, so ∂N(û; x)/∂x = ∂û/∂x, the implicit function theorem's derivative, by forward-mode autodiff of one
Newton step (`_pirls.newton_step`).

The prediction is linear in the effects b = Λθ u rather than in u. When the data determine a level's effect,
b moves little with θ while u = Λθ⁻¹ b scales with 1/θ, which a line in u follows badly; so

    b(x) ≈ b̂ + ∂b/∂x (x − x̂),   u(x) = Λθ⁻¹ b(x),   b̂ = Λθ̂ û,

level by level, and where a level's factor is nearly singular (a diagonal element below 1e-3 in absolute value,
where Λθ⁻¹ would blow the start up) the line in u, û + ∂û/∂x (x − x̂). Only the start changes: PIRLS runs to its
own tolerance from there and reaches the same modes (tests/test_mode_prediction.py).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp

from .._compile import jit
from ._blocks import same_q_runs
from ._linalg import level_factors, scale_modes
from ._pirls import GlmmProblem, newton_step, row_gather, split_x

__all__ = ["ModePrediction", "mode_prediction", "predict_modes", "unscale_modes"]

# a level whose factor has a diagonal element below this (in absolute value) takes the line in u
_MIN_DIAGONAL = 1e-3


class ModePrediction(eqx.Module):
    """The modes at x̂ and their derivatives there: what `predict_modes` extrapolates from (flat modes, as
    `_pirls.flat_modes` lays them out; derivatives (modes, len(x)))."""

    x: jax.Array  # x̂ = (θ̂, β̂)
    u: jax.Array  # û
    b: jax.Array  # Λθ̂ û
    du: jax.Array  # ∂û/∂x at x̂
    db: jax.Array  # ∂(Λθ û(x))/∂x at x̂


@jit
def _derivatives(x_hat, u_hat, problem: GlmmProblem):
    structure = problem.structure
    gather = row_gather(structure, problem.rows)

    def step(x):
        theta, beta, phi = split_x(x, problem)
        u = newton_step(u_hat, theta, beta, problem, phi, gather)
        return u, scale_modes(theta, structure.qs, structure.n_levels, u)

    theta_hat = split_x(x_hat, problem)[0]
    du, db = jax.jacfwd(step)(x_hat)
    return scale_modes(theta_hat, structure.qs, structure.n_levels, u_hat), du, db


def mode_prediction(x_hat, u_hat, problem: GlmmProblem) -> ModePrediction:
    """The prediction from the modes u_hat (flat) at x_hat = (θ̂, β̂[, log d]). u_hat must be the modes at x_hat
    (PIRLS converged there): the Newton map's derivative is û's only at its fixed point."""
    x_hat, u_hat = jnp.asarray(x_hat), jnp.asarray(u_hat)
    b_hat, du, db = _derivatives(x_hat, u_hat, problem)
    return ModePrediction(x=x_hat, u=u_hat, b=b_hat, du=du, db=db)


def unscale_modes(theta, qs: tuple[int, ...], n_levels: tuple[int, ...], b, fallback):
    """Λθ⁻¹ b for the flat effects b (`_linalg.scale_modes`'s inverse), level by level; a level whose factor has a
    diagonal element below `_MIN_DIAGONAL` in absolute value takes its entries of `fallback` instead."""
    pieces, pos = [], 0
    for a, e, q in same_q_runs(qs):
        n = sum(n_levels[a:e])
        b_run = b[pos : pos + n * q].reshape(n, q)
        fallback_run = fallback[pos : pos + n * q].reshape(n, q)
        pos += n * q
        T = jnp.broadcast_to(level_factors(theta, qs, n_levels, a, e), (n, q, q))
        regular = jnp.all(jnp.abs(jnp.diagonal(T, axis1=1, axis2=2)) >= _MIN_DIAGONAL, axis=1)
        T = jnp.where(regular[:, None, None], T, jnp.eye(q, dtype=T.dtype))
        if q == 1:
            u_run = b_run / T[:, 0, :]
        else:
            u_run = jax.scipy.linalg.solve_triangular(T, b_run[..., None], lower=True)[..., 0]
        pieces.append(jnp.where(regular[:, None], u_run, fallback_run).reshape(-1))
    return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces)


def predict_modes(prediction: ModePrediction, x, problem: GlmmProblem):
    """PIRLS's start at x = (θ, β[, log d]): the module docstring's prediction from `prediction`'s point (flat
    modes; not differentiated: PIRLS's inputs are stop-gradient)."""
    structure = problem.structure
    prediction = jax.lax.stop_gradient(prediction)
    x = jax.lax.stop_gradient(x)
    dx = x - prediction.x
    theta = split_x(x, problem)[0]
    return unscale_modes(theta, structure.qs, structure.n_levels, prediction.b + prediction.db @ dx,
                         prediction.u + prediction.du @ dx)
