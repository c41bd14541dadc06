"""Kenward–Roger's adjusted covariance of β̂ and degrees of freedom (Kenward & Roger 1997), as pbkrtest 0.5.2.

The variance parameters τ are those of pbkrtest: per random-effects term the lower triangle of its covariance
matrix Σ_k (σ² T_k T_kᵀ), then the residual variance σ², so that V(τ) = Σ_k Z_k (I ⊗ Σ_k) Z_kᵀ + σ² W⁻¹ is linear
in τ (Kenward–Roger's second-derivative term vanishes). With Σ = V(τ̂), Σ_i = ∂V/∂τ_i (autodiff of the dense V),
Φ = vcov(β̂) = (XᵀΣ⁻¹X)⁻¹:

    P_i = −XᵀΣ⁻¹Σ_iΣ⁻¹X,   Q_ij = XᵀΣ⁻¹Σ_iΣ⁻¹Σ_jΣ⁻¹X,
    I_ij = tr(Σ⁻¹Σ_iΣ⁻¹Σ_j) − 2 tr(ΦQ_ij) + tr(ΦP_iΦP_j),   W = 2 I⁻¹ (pseudo-inverse if I is near singular),
    Φ_A = Φ + 2Φ [Σ_ij W_ij (Q_ij − P_iΦP_j)] Φ.

For H0: Lβ = 0 with q = rank L, Θ = Lᵀ(LΦLᵀ)⁻¹L, A1 = Σ_ij W_ij tr(ΘΦP_iΦ) tr(ΘΦP_jΦ), A2 = Σ_ij W_ij
tr(ΘΦP_iΦΘΦP_jΦ) give the denominator df m = 4 + (q + 2)/(qρ − 1) and the scale λ of the Wald F =
(Lβ̂)ᵀ(LΦ_ALᵀ)⁻¹(Lβ̂)/q (pbkrtest's .KR_adjust); a t test uses Φ_A's variance and the df with q = 1 (Lb_ddf).

V is dense (n × n, and one n × n derivative per parameter), so the method is for data of up to MAX_ROWS rows.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
from scipy import stats

from .._errors import DataError
from .._compile import jit

__all__ = ["kr_vcov", "kr_contrast_df", "kr_f_test", "kr_table", "MAX_ROWS"]

MAX_ROWS = 4000  # the dense V and its derivatives take (parameters + 2) n² doubles: ~0.8 GB at 4000 rows, 3 terms


def _check(fit) -> None:
    from ..core._structures import require_unstructured

    if not fit.is_linear:
        raise DataError("Kenward-Roger's method is for linear mixed models")
    # τ here is each term's unstructured covariance: a cs() / ar1() term's would be another model's
    require_unstructured(fit.model.structures, "Kenward-Roger's method", instead="ddf='satterthwaite'")
    if not fit.reml:
        raise DataError("Kenward-Roger's method is only available for REML fits (fit with reml=True)")
    if fit.extra.get("solver") == "iterative":
        raise DataError("Kenward-Roger's method needs the direct solver's fit (solver='direct')")
    if fit.nobs > MAX_ROWS:
        raise DataError(f"Kenward-Roger's method works on the dense {fit.nobs} × {fit.nobs} covariance of y here, "
                        f"which is limited to {MAX_ROWS} rows; use ddf='satterthwaite' for larger data")


def _tau(fit) -> np.ndarray:
    """pbkrtest's variance parameters: each term's covariance lower triangle (column-major), then σ²."""
    parts = []
    for cov in fit._covariances():
        r, c = np.tril_indices(cov.shape[0])
        order = np.lexsort((r, c))  # column-major
        parts.append(cov[r[order], c[order]])
    return np.concatenate(parts + [np.array([fit.sigma**2])])


def _covariance_of_y(tau, zs, same_level, inverse_weights, qs):
    """V(τ) = Σ_k (z_k Σ_k z_kᵀ) ∘ [rows share the level of term k] + σ² W⁻¹, dense."""
    V = tau[-1] * jnp.diag(inverse_weights)
    pos = 0
    for z, same, q in zip(zs, same_level, qs):
        r, c = np.tril_indices(q)
        order = np.lexsort((r, c))
        k = q * (q + 1) // 2
        S = jnp.zeros((q, q), dtype=tau.dtype).at[r[order], c[order]].set(tau[pos : pos + k])
        S = S + S.T - jnp.diag(jnp.diag(S))
        V = V + (z @ S @ z.T) * same
        pos += k
    return V


@jit(static_argnames=("qs",))
def _adjustment(tau, X, Phi, zs, same_level, inverse_weights, qs):
    """(P (k, p, p), Q (k, k, p, p), the information I (k, k)) at τ̂."""
    V = _covariance_of_y(tau, zs, same_level, inverse_weights, qs)
    G = jnp.moveaxis(jax.jacfwd(_covariance_of_y)(tau, zs, same_level, inverse_weights, qs), -1, 0)
    chol = jax.scipy.linalg.cho_factor(V, lower=True)
    V_inv = jax.scipy.linalg.cho_solve(chol, jnp.eye(V.shape[0], dtype=V.dtype))
    H = jnp.einsum("kij,jl->kil", G, V_inv)  # Σ_i Σ⁻¹
    O = jnp.einsum("kij,jp->kip", H, X)  # Σ_i Σ⁻¹ X
    VX = V_inv @ X
    P = -jnp.einsum("kip,iq->kpq", O, VX)
    Q = jnp.einsum("kip,lir->klpr", O, jnp.einsum("ij,ljr->lir", V_inv, O))
    trace_HH = jnp.einsum("kab,lba->kl", H, H)
    info = (trace_HH - 2.0 * jnp.einsum("pq,klqp->kl", Phi, Q)
            + jnp.einsum("ab,kbc,cd,lda->kl", Phi, P, Phi, P))
    return P, Q, info


def _pieces(fit):
    """(Φ, Φ_A, P, W), computed once per fit."""
    cached = fit.__dict__.get("_kenward_roger_pieces")
    if cached is not None:
        return cached
    _check(fit)
    d = fit.design
    zs = tuple(jnp.asarray(t.z) for t in d.terms)
    same = tuple(jnp.asarray((t.codes[:, None] == t.codes[None, :]).astype(np.float64)) for t in d.terms)
    Phi = fit._vcov
    P, Q, info = _adjustment(jnp.asarray(_tau(fit)), jnp.asarray(d.X), jnp.asarray(Phi), zs, same,
                             jnp.asarray(1.0 / d.weights), tuple(fit.model.qs))
    P, Q, info = np.asarray(P), np.asarray(Q), np.asarray(info)
    smallest = np.min(np.abs(np.linalg.eigvalsh(info)))
    W = 2.0 * (np.linalg.inv(info) if smallest > 1e-10 else np.linalg.pinv(info))
    U = np.einsum("kl,klpr->pr", W, Q) - np.einsum("kl,kpq,qs,lsr->pr", W, P, Phi, P)
    Phi_A = Phi + 2.0 * Phi @ U @ Phi
    cached = (Phi, 0.5 * (Phi_A + Phi_A.T), P, W)
    fit.__dict__["_kenward_roger_pieces"] = cached
    return cached


def kr_vcov(fit) -> np.ndarray:
    """The adjusted covariance Φ_A of β̂ (pbkrtest's vcovAdj)."""
    return _pieces(fit)[1].copy()


def _ddf_and_scale(fit, L: np.ndarray, q: int) -> tuple[float, float]:
    """pbkrtest's denominator df and F scaling for the rows of L (q = their rank)."""
    Phi, _, P, W = _pieces(fit)
    Theta = L.T @ np.linalg.solve(L @ Phi @ L.T, L)
    u = np.einsum("ab,bc,kcd,de->kae", Theta, Phi, P, Phi)  # ΘΦP_iΦ
    traces = np.einsum("kaa->k", u)
    A1 = float(np.einsum("kl,k,l->", W, traces, traces))
    A2 = float(np.einsum("kl,kab,lba->", W, u, u))
    B = (A1 + 6.0 * A2) / (2.0 * q)
    g = ((q + 1) * A1 - (q + 4) * A2) / ((q + 2) * A2)
    denom = 3 * q + 2 * (1 - g)
    c1, c2, c3 = g / denom, (q - g) / denom, (q + 2 - g) / denom
    V0, V1, V2 = 1 + c1 * B, 1 - c2 * B, 1 - c3 * B
    V0 = 0.0 if abs(V0) < 1e-10 else V0
    ratio = (1 - A2 / q) / V1 if V1 != 0 else 0.0  # pbkrtest's .divZero
    rho = ratio**2 * V0 / V2 / q
    ddf = 4 + (q + 2) / (q * rho - 1)
    scale = 1.0 if abs(ddf - 4) < 1e-2 else ddf * (1 - A2 / q) / (ddf - 2)
    return float(ddf), float(scale)


def kr_contrast_df(fit, L) -> np.ndarray:
    """Kenward–Roger df of each row of L taken alone (pbkrtest's Lb_ddf)."""
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    return np.array([_ddf_and_scale(fit, row[None, :], 1)[0] for row in L])


def kr_f_test(fit, L) -> dict:
    """lmerTest's anova row with ddf='Kenward-Roger' (pbkrtest's KRmodcomp for H0: Lβ = 0): Sum Sq and Mean Sq
    from the unscaled Wald F, F value scaled by λ."""
    L = np.atleast_2d(np.asarray(L, dtype=np.float64))
    _, Phi_A, _, _ = _pieces(fit)
    q = int(np.linalg.matrix_rank(L))
    estimate = L @ fit._beta
    wald = float(estimate @ np.linalg.solve(L @ Phi_A @ L.T, estimate)) / q
    ddf, scale = _ddf_and_scale(fit, L, q)
    mean_sq = wald * fit.sigma**2
    return {"Sum Sq": mean_sq * q, "Mean Sq": mean_sq, "NumDF": q, "DenDF": ddf, "F value": wald * scale,
            "Pr(>F)": float(stats.f.sf(wald * scale, q, ddf))}


def kr_table(fit) -> pd.DataFrame:
    """lmerTest's summary(fit, ddf='Kenward-Roger') table: SEs from Φ_A, Kenward–Roger df per coefficient."""
    names = list(fit.design.x_names)
    se = np.sqrt(np.diag(kr_vcov(fit)))
    df = kr_contrast_df(fit, np.eye(len(names)))
    t_value = fit._beta / se
    return pd.DataFrame({"Estimate": fit._beta, "Std. Error": se, "df": df, "t value": t_value,
                         "Pr(>|t|)": 2.0 * stats.t.sf(np.abs(t_value), df)}, index=pd.Index(names))
