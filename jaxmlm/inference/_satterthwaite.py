"""t-tests of the fixed effects with Satterthwaite's degrees of freedom, as lmerTest computes them.

With the variance parameters ψ = (θ, σ), the deviance d(ψ) = log|L_Z|² + r²(θ)/σ² + n log(2πσ²) (β at its
conditional optimum; REML adds log|L_X|² − p log(2πσ²)) and V(ψ) = σ² (L_X L_Xᵀ)⁻¹ = vcov(β):

    A = 2 H⁻¹ (H the Hessian of d at ψ̂: the asymptotic covariance of ψ̂),  g = ∂(cᵀVc)/∂ψ,
    df = 2 (cᵀVc)² / (gᵀ A g)

for each coefficient (c a unit vector). lmerTest differentiates numerically (numDeriv); here H and ∂V/∂ψ are
exact (JAX autodiff). As lmerTest, A is the pseudo-inverse over H's positive eigenvalues, with a warning for
negative ones or ones close to zero.
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .._errors import ConvergenceWarning
from ..core._linalg import factorize
from ..core._lmm import LinearProblem

__all__ = ["satterthwaite_table"]

_LOG_2PI = float(np.log(2 * np.pi))
_EIGEN_TOL = 1e-8  # lmerTest's tolerance for a zero eigenvalue of H


def _factor(varpar, problem: LinearProblem):
    return factorize(varpar[:-1], problem.blocks, problem.structure)


def _deviance(varpar, problem: LinearProblem, reml: bool):
    """−2 log-likelihood (or REML criterion) at θ = varpar[:-1], σ = varpar[-1], β at its conditional optimum."""
    factor = _factor(varpar, problem)
    m_z, p = problem.structure.m_z, problem.p
    log_2pi_s2 = _LOG_2PI + 2.0 * jnp.log(varpar[-1])
    dev = factor.logdet_z(m_z) + factor.tail[-1, -1] ** 2 / varpar[-1] ** 2 + problem.n * log_2pi_s2
    if reml:
        dev = dev + 2.0 * jnp.sum(jnp.log(jnp.abs(jnp.diagonal(factor.tail)[m_z : m_z + p]))) - p * log_2pi_s2
    return dev


def _vcov_beta(varpar, problem: LinearProblem):
    inv = _factor(varpar, problem).fixed_inverse(problem.structure.m_z, problem.p)
    return varpar[-1] ** 2 * inv.T @ inv


@functools.partial(jax.jit, static_argnames=("reml",))
def _derivatives(varpar, problem: LinearProblem, reml: bool):
    """(Hessian of the deviance in ψ, Jacobian of vcov(β) in ψ as (p, p, k + 1))."""
    return jax.hessian(_deviance)(varpar, problem, reml), jax.jacfwd(_vcov_beta)(varpar, problem)


def _varpar_covariance(H: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh(0.5 * (H + H.T))
    negative, positive = values < -_EIGEN_TOL, values > _EIGEN_TOL
    zero = ~negative & ~positive
    for mask, text in ((negative, "Model failed to converge with {k} negative {e}: {v}"),
                       (zero, "Model may not have converged with {k} {e} close to zero: {v}")):
        if mask.any():
            k = int(mask.sum())
            listed = " ".join(f"{x:.1e}" for x in values[mask])
            warnings.warn(text.format(k=k, e="eigenvalues" if k > 1 else "eigenvalue", v=listed),
                          ConvergenceWarning, stacklevel=4)
    V = vectors[:, positive]
    return 2.0 * (V / values[positive]) @ V.T


def satterthwaite_table(fit) -> pd.DataFrame:
    """Estimate, Std. Error, df, t value and Pr(>|t|) per fixed effect (lmerTest's summary table)."""
    if not fit.is_linear:
        raise ValueError("Satterthwaite's degrees of freedom are for linear mixed models; a GLMM's fixed effects "
                         "are tested by z (see summary())")
    if fit.extra.get("solver") == "iterative":
        raise ValueError("Satterthwaite's degrees of freedom need the direct solver (solver='direct')")
    model = fit.model
    varpar = jnp.asarray(np.r_[fit.theta, fit.sigma])
    H, J = _derivatives(varpar, model.linear_problem, fit.reml)
    A = _varpar_covariance(np.asarray(H))
    J = np.asarray(J)
    names = list(model.design.x_names)
    beta, vcov = fit._beta, fit._vcov
    variance = np.diag(vcov)
    grad = np.stack([J[j, j, :] for j in range(len(names))])  # ∂ Var(β_j) / ∂ψ
    df = 2.0 * variance**2 / np.einsum("ji,ik,jk->j", grad, A, grad)
    t_value = beta / np.sqrt(variance)
    return pd.DataFrame({"Estimate": beta, "Std. Error": np.sqrt(variance), "df": df, "t value": t_value,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t_value), df)}, index=pd.Index(names))
