"""lme4's getME(): the pieces of a fitted model by lme4's names, in lme4's layouts.

Random-effects columns are ordered as lme4 orders them: terms in θ's order (most levels first), within a term
level by level, within a level the term's columns (so Z's columns for `(Days | Subject)` run Subject 1
(Intercept), Subject 1 Days, Subject 2 (Intercept), ...). Z and Λ are SciPy sparse (CSC) matrices, as lme4's are
Matrix package sparse matrices; b = Λ u and, for a linear model, fitted = Xβ + Zb + offset.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..core._covariance import theta_diagonal_mask, theta_to_matrices

__all__ = ["getme", "hatvalues", "GETME_NAMES"]

GETME_NAMES = ("X", "Z", "Zt", "Lambda", "Lambdat", "Tlist", "theta", "beta", "fixef", "b", "u", "sigma", "y",
               "mu", "offset", "weights", "flist", "cnms", "Gp", "lower", "is_REML", "n_rtrms")


def _z(design) -> sp.csc_matrix:
    blocks = []
    for t in design.terms:
        rows = np.repeat(np.arange(design.n), t.q)
        cols = (t.codes[:, None] * t.q + np.arange(t.q)[None, :]).ravel()
        blocks.append(sp.csc_matrix((t.z.ravel(), (rows, cols)), shape=(design.n, t.n_levels * t.q)))
    return sp.hstack(blocks, format="csc")


def _lambda(fit) -> sp.csc_matrix:
    """Block diagonal, T_k once per level; its lower triangles stored even where θ is 0 (lme4's fixed pattern)."""
    d = fit.design
    blocks = []
    for t, T in zip(d.terms, theta_to_matrices(fit.theta, fit.model.qs)):
        r, c = np.tril_indices(t.q)
        T_pattern = sp.csc_matrix((T[r, c], (r, c)), shape=T.shape)
        blocks.append(sp.kron(sp.identity(t.n_levels, format="csc"), T_pattern, format="csc"))
    return sp.block_diag(blocks, format="csc")


def getme(fit, name: str):
    """One piece of `fit` by lme4's getME() name (see GETME_NAMES)."""
    d, qs = fit.design, fit.model.qs
    if name not in GETME_NAMES:
        raise ValueError(f"getME name {name!r} is not available; known: {', '.join(GETME_NAMES)}")
    if name == "X":
        return d.X.copy()
    if name in ("Z", "Zt"):
        Z = _z(d)
        return Z if name == "Z" else Z.T.tocsc()
    if name in ("Lambda", "Lambdat"):
        L = _lambda(fit)
        return L if name == "Lambda" else L.T.tocsc()
    if name == "Tlist":
        return dict(zip(d.group_names, theta_to_matrices(fit.theta, qs)))
    if name == "theta":
        return fit.theta
    if name in ("beta", "fixef"):
        return fit._beta.copy() if name == "beta" else fit.fixef
    if name == "b":
        return np.concatenate([b.ravel() for b in fit._b])  # level-major within each term, as Z's columns
    if name == "u":  # spherical: b = Λ u (a zero column of T leaves its u at 0, the penalized solution)
        return np.concatenate([(b @ np.linalg.pinv(T).T).ravel()
                               for b, T in zip(fit._b, theta_to_matrices(fit.theta, qs))])
    if name == "sigma":
        return fit.sigma if fit.sigma is not None else 1.0
    if name == "y":
        return d.y.copy()
    if name == "mu":
        return fit.fitted().to_numpy()
    if name == "offset":
        return d.offset.copy()
    if name == "weights":
        return d.weights.copy()
    if name == "flist":
        return {grp: pd.Categorical.from_codes(t.codes, categories=t.levels.astype(str))
                for grp, t in zip(d.group_names, d.terms)}
    if name == "cnms":
        return {grp: list(t.column_names) for grp, t in zip(d.group_names, d.terms)}
    if name == "Gp":
        return np.concatenate([[0], np.cumsum([t.n_levels * t.q for t in d.terms])]).astype(np.int64)
    if name == "lower":
        return np.where(theta_diagonal_mask(qs), 0.0, -np.inf)
    if name == "is_REML":
        return bool(fit.reml)
    return len(d.terms)  # n_rtrms


# Rows per block when solving for the leverages: the block's (q + p) × rows dense solution stays ~100 MB at most.
_HAT_BLOCK_ELEMENTS = 12_500_000


def hatvalues(fit) -> np.ndarray:
    """Leverages hᵢ = mᵢᵀ A⁻¹ mᵢ of a linear mixed model, as lme4's hatvalues(): M = W^½ [ZΛ X] (rows mᵢ) and
    A = MᵀM + diag(I, 0), the diagonal of H = M A⁻¹ Mᵀ (W^½ ŷ = H W^½ y). A is factored once (SciPy's sparse LU)
    and solved against blocks of rows."""
    import scipy.sparse.linalg as spla

    if not fit.is_linear:
        raise ValueError("hatvalues are for linear mixed models (lme4 warns that the hat matrix may not make sense "
                         "for GLMMs)")
    d = fit.design
    root_w = sp.diags(np.sqrt(d.weights))
    M = (root_w @ sp.hstack([_z(d) @ _lambda(fit), sp.csc_matrix(d.X)], format="csc")).tocsc()
    q = M.shape[1] - d.p
    A = (M.T @ M + sp.diags(np.r_[np.ones(q), np.zeros(d.p)])).tocsc()
    solve = spla.splu(A).solve
    Mt = M.T.tocsc()
    block = max(1, _HAT_BLOCK_ELEMENTS // M.shape[1])
    out = np.empty(d.n)
    for start in range(0, d.n, block):
        part = Mt[:, start : start + block].toarray()
        out[start : start + block] = np.sum(part * solve(part), axis=0)
    return out
