"""t-tests of the fixed effects with Satterthwaite's degrees of freedom, as lmerTest computes them.

With the variance parameters ψ = (θ, σ), the deviance d(ψ) = log|L_Z|² + r²(θ)/σ² + n log(2πσ²) (β at its
conditional optimum; REML adds log|L_X|² − p log(2πσ²)) and V(ψ) = σ² (L_X L_Xᵀ)⁻¹ = vcov(β):

    A = 2 H⁻¹ (H the Hessian of d at ψ̂: the asymptotic covariance of ψ̂),  g = ∂(cᵀVc)/∂ψ,
    df = 2 (cᵀVc)² / (gᵀ A g)

for each coefficient (c a unit vector), and for any contrast c (`contrast_df`, emmeans' linear functions). An F
test of the q rows of L (`f_test`, lmerTest's contestMD) decomposes LVLᵀ = PDPᵀ into q independent t
contrasts (rows of PᵀL) with df ν_m, and takes DenDF = 2E/(E − q), E = Σ ν_m/(ν_m − 2) (2 if any ν_m ≤ 2).
lmerTest differentiates numerically (numDeriv); here H and ∂V/∂ψ are
exact (JAX autodiff). As lmerTest, A is the pseudo-inverse over H's positive eigenvalues, with a warning for
negative ones or ones close to zero.

A model with cs() / ar1() terms has ψ = (ψ_structures, σ) with θ = θ(ψ_structures) (`core/_structures.py`): the
same formulas with H and ∂V/∂ψ taken through the structures' map, so the df are those of the structured model
(its fewer variance parameters), not of an unstructured one.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .._errors import ConvergenceWarning
from .._warn import user_stacklevel
from ..core._linalg import factorize
from ..core._lmm import LinearProblem
from ..core._structures import is_structured, psi_to_theta
from .._compile import jit

__all__ = ["satterthwaite_table", "contrast_df", "f_test", "ddf_method"]


def ddf_method(ddf) -> str:
    """'satterthwaite' or 'kenward-roger' from the spellings lmerTest and emmeans accept."""
    text = str(ddf).lower().replace("_", "-").replace(" ", "-")
    if text == "satterthwaite":
        return text
    if text in ("kenward-roger", "kr"):
        return "kenward-roger"
    raise ValueError(f"ddf must be 'satterthwaite' or 'kenward-roger', got {ddf!r}")

_LOG_2PI = float(np.log(2 * np.pi))
_EIGEN_TOL = 1e-8  # lmerTest's tolerance for a zero eigenvalue of H


def _factor(varpar, problem: LinearProblem, structures=None):
    theta = varpar[:-1] if structures is None else psi_to_theta(varpar[:-1], structures)
    return factorize(theta, problem.blocks, problem.structure)


def _deviance(varpar, problem: LinearProblem, reml, structures=None):
    """−2 log-likelihood (or REML criterion) at θ = varpar[:-1], σ = varpar[-1], β at its conditional optimum.
    reml: a bool, or a traced one (ML and REML then share one program)."""
    factor = _factor(varpar, problem, structures)
    m_z, p = problem.structure.m_z, problem.p
    log_2pi_s2 = _LOG_2PI + 2.0 * jnp.log(varpar[-1])
    dev = factor.logdet_z(m_z) + factor.tail[-1, -1] ** 2 / varpar[-1] ** 2 + problem.n * log_2pi_s2
    # under ML the logs are of ones, whose derivatives (reverse mode included) are the zeros the REML terms'
    # absence has
    diag_x = jnp.where(reml, jnp.abs(jnp.diagonal(factor.tail)[m_z : m_z + p]), 1.0)
    return dev + jnp.where(reml, 2.0 * jnp.sum(jnp.log(diag_x)) - p * log_2pi_s2, 0.0)


def _vcov_beta(varpar, problem: LinearProblem, structures=None):
    inv = _factor(varpar, problem, structures).fixed_inverse(problem.structure.m_z, problem.p)
    return varpar[-1] ** 2 * inv.T @ inv


# Up to this many variance parameters the Hessian is taken forward over forward: the same exact derivatives as
# jax.hessian's forward over reverse, whose transposed factorization compiles several times slower (an ar1() model,
# 3 parameters: 6.5 -> 2.3 s); its k² directional derivatives cost little to run for few parameters, beyond them
# forward over reverse's k passes are the cheaper program to run.
_FORWARD_HESSIAN_MAX = 4


@jit(static_argnames=("structures",))
def _derivatives(varpar, problem: LinearProblem, reml, structures=None):
    """(Hessian of the deviance in ψ, Jacobian of vcov(β) in ψ as (p, p, k + 1)); reml is traced: the ML and the
    REML fit of one model share the program."""
    hessian = jax.jacfwd(jax.jacfwd(_deviance)) if varpar.shape[0] <= _FORWARD_HESSIAN_MAX else jax.hessian(_deviance)
    return (hessian(varpar, problem, reml, structures), jax.jacfwd(_vcov_beta)(varpar, problem, structures))


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
                          ConvergenceWarning, stacklevel=user_stacklevel())
    V = vectors[:, positive]
    return 2.0 * (V / values[positive]) @ V.T


def _pieces(fit):
    """(A, J): the covariance of ψ̂ and ∂vcov(β)/∂ψ, computed once per fit."""
    cached = fit.__dict__.get("_satterthwaite_pieces")
    if cached is None:
        if not fit.is_linear:
            raise ValueError("Satterthwaite's degrees of freedom are for linear mixed models; a GLMM's fixed "
                             "effects are tested by z (see summary())")
        if fit.extra.get("solver") == "iterative":
            raise ValueError("Satterthwaite's degrees of freedom need the direct solver (solver='direct')")
        structures = fit.model.structures if is_structured(fit.model.structures) else None
        varpar = jnp.asarray(np.r_[fit.theta if structures is None else fit.extra["psi"], fit.sigma])
        H, J = _derivatives(varpar, fit.model.linear_problem, np.bool_(fit.reml), structures)
        cached = (_varpar_covariance(np.asarray(H)), np.asarray(J))
        fit.__dict__["_satterthwaite_pieces"] = cached
    return cached


def contrast_df(fit, L) -> np.ndarray:
    """Satterthwaite's df of each row c of L (rows × p): 2 (cᵀVc)² / (gᵀAg), g_k = cᵀ (∂V/∂ψ_k) c."""
    A, J = _pieces(fit)
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    variance = np.einsum("ri,ij,rj->r", L, fit._vcov, L)
    grad = np.einsum("ri,ijk,rj->rk", L, J, L)
    return 2.0 * variance**2 / np.einsum("ri,ik,rk->r", grad, A, grad)


def f_test(fit, L, eps: float = np.sqrt(np.finfo(float).eps)) -> dict:
    """lmerTest's contestMD for H0: Lβ = 0 — F, NumDF, DenDF, Pr(>F) and the sums of squares (σ² F NumDF)."""
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    values, vectors = np.linalg.eigh(L @ fit._vcov @ L.T)
    order = np.argsort(values)[::-1]  # R's eigen(): decreasing
    values, vectors = values[order], vectors[:, order]
    keep = values > max(eps * values[0], 0.0)
    q = int(keep.sum())
    PtL = (vectors.T @ L)[:q]
    t2 = (PtL @ fit._beta) ** 2 / values[:q]
    F = float(t2.sum() / q)
    nu = contrast_df(fit, PtL)
    return _f_row(fit, F, q, _combined_df(nu))


def _combined_df(nu: np.ndarray, tol: float = 1e-8) -> float:
    if len(nu) == 1:
        return float(nu[0])
    if np.all(np.abs(np.diff(nu)) < tol):
        return float(np.mean(nu))
    if np.any(nu <= 2):
        return 2.0
    E = float(np.sum(nu / (nu - 2)))
    return 2.0 * E / (E - len(nu))


def _f_row(fit, F: float, q: int, ddf: float, scale: float = 1.0) -> dict:
    mean_sq = F * fit.sigma**2
    return {"Sum Sq": mean_sq * q, "Mean Sq": mean_sq, "NumDF": q, "DenDF": ddf, "F value": F * scale,
            "Pr(>F)": float(stats.f.sf(F * scale, q, ddf))}


def satterthwaite_table(fit) -> pd.DataFrame:
    """Estimate, Std. Error, df, t value and Pr(>|t|) per fixed effect (lmerTest's summary table)."""
    names = list(fit.model.design.x_names)
    beta, vcov = fit._beta, fit._vcov
    variance = np.diag(vcov)
    df = contrast_df(fit, np.eye(len(names)))
    t_value = beta / np.sqrt(variance)
    return pd.DataFrame({"Estimate": beta, "Std. Error": np.sqrt(variance), "df": df, "t value": t_value,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t_value), df)}, index=pd.Index(names))
