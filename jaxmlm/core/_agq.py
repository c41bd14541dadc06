"""Adaptive Gauss–Hermite quadrature (lme4's nAGQ > 1) for a model with one scalar random-effects term.

Given (θ, β) the groups are independent: group i contributes ∫ p(y_i | u) φ(u) du. Around the conditional mode ũ_i
(from PIRLS) with scale s_i = 1/L_ii (L_ii² = 1 + θ² Σ_rows w z², the group's diagonal of the Laplace factor), the
substitution u = ũ_i + s_i z and a K-node Gauss–Hermite rule for the N(0, 1) weight give

    −2 log ∫ ≈ g_i(ũ_i) − 2 log s_i − 2 log Σ_k w_k exp(−(g_i(ũ_i + s_i z_k) − g_i(ũ_i))/2 + z_k²/2),

with g_i(u) = Σ_{rows of i} devresid + u². Summed over groups this is lme4's glmerAGQ deviance exactly (lme4
leaves the family constant c(y) out of it); one node gives the Laplace deviance. All groups and nodes are
evaluated at once: an (n × K) array of linear predictors, summed per group with one segment sum. Gradients through
the mode are taken as in `_pirls` (two differentiable Newton steps from the converged mode).

For a family with a dispersion parameter (x = (θ, β, log d)) g_i uses the full −2 log p(y | μ, d) and the scale
the observed curvature, so that one node gives `_pirls`' exact Laplace value and the constant is included.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._pirls import GlmmProblem, laplace_weights, modes_and_pirls, row_terms, split_x

__all__ = ["gauss_hermite", "agq_deviance", "MAX_NAGQ"]

MAX_NAGQ = 25


@functools.lru_cache(maxsize=None)
def gauss_hermite(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ∫ f(z) φ(z) dz (weights sum to 1), as lme4's GHrule(k) (symmetrized)."""
    z, w = np.polynomial.hermite_e.hermegauss(k)
    w = w / np.sqrt(2.0 * np.pi)
    z = (z - z[::-1]) / 2.0
    w = (w + w[::-1]) / 2.0
    return z, w


def agq_deviance(x, problem: GlmmProblem, nodes, weights, newton_steps: int = 2, with_pirls: bool = False,
                 u_start=None):
    """lme4's nAGQ deviance at x = (θ, β) (no family constant). nodes/weights from `gauss_hermite`; newton_steps
    as in `_pirls.mode_at`; with_pirls as in `_pirls.laplace_deviance`; u_start (PIRLS's start) as in
    `_pirls.modes_and_pirls`."""
    structure, rows = problem.structure, problem.rows
    theta, beta, phi = split_x(x, problem)
    u_terms, pirls_state = modes_and_pirls(theta, beta, problem, phi, newton_steps, u_start)
    u = u_terms[0][:, 0]
    codes = rows.codes[0]
    n_groups = structure.n_levels[0]
    zt = rows.z[0][:, 0] * theta[0]
    eta_fixed = problem.X @ beta + problem.offset
    eta0 = eta_fixed + zt * u[codes]
    w = laplace_weights(problem, eta0, phi)
    L2 = 1.0 + jax.ops.segment_sum(w * zt**2, codes, num_segments=n_groups)
    sd = 1.0 / jnp.sqrt(L2)

    def group_dev(eta):  # (n, K) → (G, K)
        dr = jax.vmap(lambda e: row_terms(problem, e, phi), in_axes=1, out_axes=1)(eta)
        return jax.ops.segment_sum(dr, codes, num_segments=n_groups)

    g0 = group_dev(eta0[:, None])[:, 0] + u**2
    u_k = u[:, None] + sd[:, None] * nodes[None, :]  # (G, K)
    g_k = group_dev(eta_fixed[:, None] + zt[:, None] * u_k[codes]) + u_k**2
    log_mult = jax.scipy.special.logsumexp(
        -0.5 * (g_k - g0[:, None]) + 0.5 * nodes[None, :] ** 2, b=weights[None, :], axis=1
    )
    value = jnp.sum(g0) + jnp.sum(jnp.log(L2)) - 2.0 * jnp.sum(log_mult)
    return (value, pirls_state) if with_pirls else value
