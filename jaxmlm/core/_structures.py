"""Covariance structures of a random-effects term: maps from a structure's own parameters ψ to lme4's θ block.

Every term's covariance is σ² T Tᵀ with T lower triangular, and everything downstream (the blocked factor, the
profiled deviance, PIRLS) works with θ = T's lower triangle (column-major, lme4's layout). A structure is a map
ψ ↦ θ-block, so the objective of a structured model is f(θ(ψ)) and nothing else changes:

- "us" (lme4's default, glmmTMB's `us`): ψ = θ itself, lme4's start and lower bounds.
- "cs" (glmmTMB's heterogeneous compound symmetry): Σ/σ² = D R D with D = diag(s), R = (1 - ρ) I + ρ 11ᵀ;
  ψ = (log s_1, ..., log s_q, t) with ρ = logistic(t) (1 + a) - a, a = 1 / (q - 1), glmmTMB's transform (so
  ρ ∈ (-1/(q-1), 1), where R is positive definite). q + 1 parameters (q = 1: the sd only).
- "ar1" (glmmTMB's `ar1`, levels of a factor as consecutive time points): Σ_ij/σ² = s² φ^|i-j|, ψ = (log s, t)
  with φ = t / √(1 + t²), glmmTMB's transform. T is AR(1)'s Cholesky factor in closed form:
  T_i0 = s φ^i, T_ij = s φ^(i-j) √(1 - φ²) for 1 ≤ j ≤ i.

For linear models s is relative to the residual σ (σ is profiled out); glmmTMB's parameters are then
log(s σ̂). `diag(x | g)` needs no structure: the formula layer expands it into independent scalar terms.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax.numpy as jnp
import numpy as np

from .._errors import JaxmlmError

__all__ = ["Structure", "structures_for", "psi_to_theta", "psi_start", "psi_lower", "psi_names",
           "is_structured", "n_psi", "structure_parameters", "require_unstructured", "natural_parameters",
           "psi_diagonal_mask"]

STRUCTURED = ("cs", "ar1")


def _tril(M, q: int):
    """M's lower triangle by columns (lme4's θ layout)."""
    rows, cols = zip(*[(r, c) for c in range(q) for r in range(c, q)])
    return M[jnp.asarray(rows), jnp.asarray(cols)]


@dataclass(frozen=True)
class Structure:
    kind: str  # "us", "cs", "ar1"
    q: int  # the term's number of columns

    @property
    def n_params(self) -> int:
        q = self.q
        return {"us": q * (q + 1) // 2, "cs": q + (1 if q > 1 else 0), "ar1": 2}[self.kind]

    def psi_to_theta(self, psi):
        """The term's θ block (q(q+1)/2 values) at ψ; pure JAX (traces under jit, grad, vmap)."""
        q = self.q
        if self.kind == "us":
            return psi
        if self.kind == "cs":
            s = jnp.exp(psi[:q])
            if q == 1:
                return s
            a = 1.0 / (q - 1)
            rho = 1.0 / (1.0 + jnp.exp(-psi[q])) * (1.0 + a) - a
            R = (1.0 - rho) * jnp.eye(q) + rho * jnp.ones((q, q))
            return _tril(jnp.linalg.cholesky(s[:, None] * R * s[None, :]), q)
        s, t = jnp.exp(psi[0]), psi[1]
        phi = t / jnp.sqrt(1.0 + t * t)
        i, j = np.tril_indices(q)  # T_ij = s φ^(i-j) (√(1-φ²) when j ≥ 1); i - j is a static integer power
        powers = jnp.stack([phi ** int(k) for k in (i - j)])
        T = jnp.zeros((q, q)).at[i, j].set(s * powers * jnp.where(jnp.asarray(j) == 0, 1.0,
                                                                   jnp.sqrt(1.0 - phi * phi)))
        return _tril(T, q)

    def start(self) -> np.ndarray:
        """lme4's identity start for us; for cs and ar1 unit sds and correlation 0 (glmmTMB starts at ψ = 0)."""
        q = self.q
        if self.kind == "us":
            return np.array([1.0 if r == c else 0.0 for c in range(q) for r in range(c, q)])
        if self.kind == "cs":
            return np.concatenate([np.zeros(q), [-np.log(q - 1.0)] if q > 1 else []])  # ρ = 0
        return np.zeros(2)

    def lower(self) -> np.ndarray:
        q = self.q
        if self.kind == "us":
            return np.array([0.0 if r == c else -np.inf for c in range(q) for r in range(c, q)])
        return np.full(self.n_params, -np.inf)

    def names(self, group: str, columns) -> list[str]:
        if self.kind == "us":
            return [f"{group}.{columns[r]}" if r == c else f"{group}.{columns[r]}.{columns[c]}"
                    for c in range(self.q) for r in range(c, self.q)]
        if self.kind == "cs":
            return [f"{group}.log_sd.{c}" for c in columns] + ([f"{group}.cor_transf"] if self.q > 1 else [])
        return [f"{group}.log_sd", f"{group}.cor_transf"]

    def natural(self, psi, scale: float) -> dict:
        """The structure's parameters as glmmTMB reports them: sds (on the response's scale) and ρ."""
        psi = np.asarray(psi, dtype=np.float64)
        if self.kind == "us":
            return {}
        if self.kind == "cs":
            q = self.q
            sd = np.exp(psi[:q]) * scale
            if q == 1:
                return dict(sd=sd, rho=np.nan)
            a = 1.0 / (q - 1)
            return dict(sd=sd, rho=float(1.0 / (1.0 + np.exp(-psi[q])) * (1.0 + a) - a))
        return dict(sd=np.full(self.q, np.exp(psi[0]) * scale), rho=float(psi[1] / np.sqrt(1.0 + psi[1] ** 2)))


def natural_parameters(structure: Structure, psi, scale) -> dict:
    """`Structure.natural` in JAX (traceable): the term's sds (times `scale`) and its correlation ρ."""
    q = structure.q
    if structure.kind == "cs":
        sd = jnp.exp(psi[:q]) * scale
        if q == 1:
            return dict(sd=sd, rho=jnp.asarray(jnp.nan, dtype=sd.dtype))
        a = 1.0 / (q - 1)
        return dict(sd=sd, rho=1.0 / (1.0 + jnp.exp(-psi[q])) * (1.0 + a) - a)
    if structure.kind == "ar1":
        return dict(sd=jnp.full((q,), jnp.exp(psi[0]) * scale), rho=psi[1] / jnp.sqrt(1.0 + psi[1] ** 2))
    raise ValueError("an unstructured term's parameters are θ itself")


def psi_diagonal_mask(structures) -> np.ndarray:
    """Which coordinates of ψ carry a lower bound of 0 (the diagonal of an unstructured term's T)."""
    return np.concatenate([s.lower() == 0.0 for s in structures])


def structures_for(design) -> tuple[Structure, ...]:
    """Per term of the design its structure; "us" for lme4's terms (and the scalar terms diag() expands into)."""
    kinds = [getattr(t.term, "covariance", "us") for t in design.terms]
    return tuple(Structure(k if k in STRUCTURED else "us", len(t.column_names)) for k, t in zip(kinds, design.terms))


def is_structured(structures) -> bool:
    return any(s.kind != "us" for s in structures)


def require_unstructured(structures, what: str, instead: str | None = None) -> None:
    """Refuse a path that searches or differentiates in θ itself (it would leave the structure): a clear error,
    not an unstructured answer, naming what to use instead."""
    kinds = sorted({s.kind for s in structures if s.kind != "us"})
    if kinds:
        alternative = f"; use {instead} instead" if instead else ""
        raise JaxmlmError(f"{what} is not available yet for models with {' or '.join(k + '()' for k in kinds)} "
                          f"terms{alternative} (their fit, fit_batch, problem(), summary, VarCorr, predict, "
                          "simulate, bootstrap, Wald and bootstrap intervals and Satterthwaite's t-tests are)")


def n_psi(structures) -> int:
    return sum(s.n_params for s in structures)


def psi_to_theta(psi, structures):
    """ψ (all terms, concatenated) → θ in lme4's layout; pure JAX."""
    out, pos = [], 0
    for s in structures:
        out.append(s.psi_to_theta(psi[pos:pos + s.n_params]))
        pos += s.n_params
    return jnp.concatenate(out)


def psi_start(structures) -> np.ndarray:
    return np.concatenate([s.start() for s in structures])


def psi_lower(structures) -> np.ndarray:
    return np.concatenate([s.lower() for s in structures])


def psi_names(structures, group_names, column_names) -> list[str]:
    return [n for s, g, c in zip(structures, group_names, column_names) for n in s.names(g, c)]


def structure_parameters(structures, psi, group_names, column_names, scale: float) -> list[dict]:
    """Per cs/ar1 term: its group, kind, column names, sds and correlation (as glmmTMB's VarCorr shows them)."""
    out, pos = [], 0
    for s, g, c in zip(structures, group_names, column_names):
        if s.kind != "us":
            out.append(dict(grp=g, structure=s.kind, columns=list(c), **s.natural(psi[pos:pos + s.n_params], scale)))
        pos += s.n_params
    return out
