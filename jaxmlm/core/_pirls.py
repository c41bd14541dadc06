"""Penalized iteratively reweighted least squares (PIRLS) and the Laplace approximation, on the blocked factor.

For fixed (θ, β), the conditional modes ũ minimize the penalized deviance

    h(u) = Σ devresid(y, μ(η)) + ‖u‖²,   η = Xβ + offset + ZΛθu.

Each PIRLS step is a weighted least-squares solve with the linear model's machinery: the working weights
w = prior·μ'(η)²/V(μ) and the working response z = ZΛu + (y − μ)/μ'(η) enter `cross_products` as W and F = [z],
`factorize` gives the blocked factor of ΛᵀZᵀWZΛ + I, and `solve_modes` returns the new u. When h rises,
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
unit deviance, while the log-determinant keeps lme4's expected (Fisher) weights. Where only the gradient is needed
(the fits' search and the Laplace sampler), binomial and Poisson models take it from `_laplace_grad` instead: the
same value, its gradient written out by the implicit function theorem at the modes, with no reverse pass through
PIRLS, the factorization or the Newton step (several times cheaper).

**Families with a dispersion parameter** (negative binomial, Gamma, inverse Gaussian, beta: `_dispersion.py`).
The flat parameter vector is x = (θ, β, log d) (log d only when the family's d is estimated), and the objective is
the proper Laplace approximation of the marginal likelihood, glmmTMB's:

    −2 log L(θ, β, d) ≈ −2 Σ log p(y | μ(ũ), d) + ‖ũ‖² + log det(ΛᵀZᵀW_obs(ũ)ZΛ + I),

with the family's full log density and W_obs = −∂² log p/∂η² per row, the exact Hessian of the conditional log
density in u (for a non-canonical link it differs from the Fisher weights). PIRLS finds ũ by Fisher scoring with
the *exact* gradient of log p in η (the working response η + (y − μ)/μ' only holds for exponential families;
NB1 and beta are not), so its fixed point is the true mode; the two differentiable Newton steps use W_obs. The
problem's `laplace_weights="fisher"` keeps the Fisher weights in the log-determinant instead: lme4's glmer.nb
objective (its PIRLS works with expected information). `laplace_weights="plugin"` is lme4's glmer objective for
Gamma and inverse Gaussian: no dispersion coordinate; the mode and the Fisher-weight log-determinant at d = 1 (the
penalized deviance Σ devresid + ‖u‖²), plus the family's AIC term with σ² = Σ devresid / Σ w plugged in (R's
`family$aic`, its +2 included), which is lme4's −2 logLik (not a likelihood: docs/families.md).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._blocks import RowData, Structure, cross_products, same_q_runs
from ._linalg import factorize, scale_modes, solve_modes

__all__ = [
    "GlmmProblem",
    "random_part",
    "pirls",
    "newton_step",
    "laplace_deviance",
    "laplace_deviance_from",
    "mode_at",
    "modes_and_pirls",
    "split_x",
    "row_terms",
    "laplace_weights",
    "flat_modes",
    "split_modes",
    "row_gather",
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
    # dispersion families: "observed" (exact Laplace, glmmTMB) or "fisher" (lme4's glmer.nb) weights in log det,
    # or "plugin" (lme4's Gamma / inverse Gaussian glmer objective, see the module docstring)
    laplace_weights: str = eqx.field(static=True, default="observed")
    # PIRLS's tolerance (relative change of the penalized deviance) where a Newton step follows it: the fits keep
    # lme4's strict one; a sampler, whose draws move the deviance by units, may stop one iteration sooner (the
    # Newton step after it leaves value and gradient the same to rounding)
    pirls_tol: float = eqx.field(static=True, default=1e-11)

    @property
    def p(self) -> int:
        return int(self.X.shape[1])

    @property
    def n_dispersion(self) -> int:
        """1 when the family's dispersion parameter is estimated (the last coordinate of x, on the log scale)."""
        fam = self.family
        if self.laplace_weights == "plugin":
            return 0
        return int(getattr(fam, "has_dispersion", False) and fam.dispersion is None)


def split_x(x, problem: GlmmProblem):
    """x → (θ, β, d): d is None for binomial and Poisson, the family's fixed value or exp(last coordinate)."""
    nt, p = problem.structure.n_theta, problem.p
    fam = problem.family
    if not getattr(fam, "has_dispersion", False):
        return x[:nt], x[nt:nt + p], None
    if problem.laplace_weights == "plugin":  # lme4's Gamma / inverse Gaussian: the mode at d = 1
        return x[:nt], x[nt:nt + p], jnp.asarray(1.0, dtype=x.dtype)
    if fam.dispersion is not None:
        return x[:nt], x[nt:nt + p], jnp.asarray(fam.dispersion, dtype=x.dtype)
    return x[:nt], x[nt:nt + p], jnp.exp(x[nt + p])


def flat_modes(u_terms) -> jax.Array:
    """All terms' modes as one vector (term by term, level by level, component fastest); a vector as it is.
    PIRLS and the Newton steps carry this one vector, so that their step-halving, penalty and step size are single
    operations whatever the number of terms."""
    if isinstance(u_terms, jax.Array):
        return u_terms
    return jnp.concatenate([jnp.reshape(u, (-1,)) for u in u_terms])


def split_modes(u: jax.Array, structure: Structure) -> tuple:
    """The flat modes as per-term (l_k, q_k) arrays."""
    out, pos = [], 0
    for l, q in zip(structure.n_levels, structure.qs):
        out.append(u[pos : pos + l * q].reshape(l, q))
        pos += l * q
    return tuple(out)


def _term_offsets(structure: Structure) -> np.ndarray:
    return np.concatenate([[0], np.cumsum([l * q for l, q in zip(structure.n_levels, structure.qs)])]).astype(np.int32)


def row_gather(structure: Structure, rows: RowData):
    """What ZΛu reads per row, built once per program and shared by every ZΛu in it: (index, z), both (n, Σ q),
    each row's positions in the flat b = Λu and its Z values, one stacked array per run of same-q terms; or, when
    the rows' tail levels come in combinations (`_blocks._tail_groups`: scalar intercept tail terms), the prefix
    terms' (index, z), the rows' combination and each combination's (G, K) positions in b, so that the tail part
    of ZΛu is summed once per combination and gathered once per row (n·K gathers become G·K + n)."""
    offsets = _term_offsets(structure)
    D = structure.n_prefix if _grouped(structure, rows) else structure.n_terms
    index = []
    for a, e, q in same_q_runs(structure.qs, 0, D):
        codes = jnp.stack(rows.codes[a:e], axis=1).astype(jnp.int32)  # (n, K)
        first = codes * q + jnp.asarray(offsets[a:e])[None, :]
        index.append((first[:, :, None] + jnp.arange(q, dtype=jnp.int32)[None, None, :]).reshape(codes.shape[0], -1))
    index = index[0] if len(index) == 1 else jnp.concatenate(index, axis=1)
    z = jnp.concatenate(rows.z[:D], axis=1)
    if D == structure.n_terms:
        return index, z
    # a tail column's position in the flat modes: the tail's columns are laid out as the flat modes' tail terms
    return index, z, rows.tail_group, structure.tail_groups + int(offsets[D])


def _grouped(structure: Structure, rows: RowData) -> bool:
    return rows.tail_group is not None and structure.tail_groups is not None and structure.m_z > 0


def _zlu(structure: Structure, gather, theta, u) -> jax.Array:
    b = scale_modes(theta, structure.qs, structure.n_levels, u)
    index, z = gather[:2]
    part = jnp.sum(z * b[index], axis=1)
    if len(gather) == 2:
        return part
    group, columns = gather[2:]
    return part + jnp.sum(b[columns], axis=1)[group]


def random_part(structure: Structure, rows: RowData, theta, u_terms, gather=None) -> jax.Array:
    """ZΛθu per row; u per term or flat (`flat_modes`). gather: `row_gather`'s arrays, when already built."""
    gather = row_gather(structure, rows) if gather is None else gather
    return _zlu(structure, gather, theta, flat_modes(u_terms))


def _penalty(u) -> jax.Array:
    return jnp.sum(flat_modes(u) ** 2)


def _entry_terms(structure: Structure) -> jax.Array:
    """The term of each entry of the flat modes (from the K − 1 boundaries, not a per-entry constant)."""
    bounds = jnp.asarray(_term_offsets(structure)[1:-1])
    m = int(_term_offsets(structure)[-1])
    return jnp.sum(jnp.arange(m, dtype=jnp.int32)[:, None] >= bounds[None, :], axis=1)


def _step_size(u, u_new, terms, n_terms: int) -> jax.Array:
    """Σ over terms of the largest change of a term's modes (lme4's criterion, summed per term)."""
    change = jnp.abs(u - u_new)
    if n_terms == 1:
        return jnp.max(change)
    return jnp.sum(jax.ops.segment_max(change, terms, num_segments=n_terms, indices_are_sorted=True))


def row_terms(problem: GlmmProblem, eta, phi=None) -> jax.Array:
    """Per row: the deviance residuals (binomial, Poisson), or −2 w log p(y | μ, d) for a dispersion family."""
    fam = problem.family
    mu = fam.linkinv(eta)
    if phi is None:
        return fam.deviance_residuals(problem.y, mu, problem.weights)
    return fam.neg2_logp(problem.y, mu, problem.weights, phi)


def _deviance(problem: GlmmProblem, eta, phi=None) -> jax.Array:
    return jnp.sum(row_terms(problem, eta, phi))


def fisher_weights(problem: GlmmProblem, eta, phi=None):
    fam = problem.family
    mu = fam.linkinv(eta)
    d = fam.mu_eta(eta)
    if phi is None:
        return problem.weights * d**2 / fam.variance(mu), mu, d
    return d**2 / fam.conditional_variance(mu, problem.weights, phi), mu, d


def eta_derivatives(problem: GlmmProblem, eta, phi):
    """First and second derivatives in η of each row's −log p (half its `row_terms`), by autodiff."""
    fam = problem.family

    def half(e, y, pw):
        return 0.5 * fam.neg2_logp(y, fam.linkinv(e), pw, phi)

    g = jax.vmap(jax.grad(half))(eta, problem.y, problem.weights)
    h = jax.vmap(jax.grad(jax.grad(half)))(eta, problem.y, problem.weights)
    return g, h


def _away_from_zero(w, delta: float = 1e-8):
    return jnp.where(jnp.abs(w) < delta, jnp.where(w < 0, -delta, delta), w)


def laplace_weights(problem: GlmmProblem, eta, phi=None):
    """The weights of the Laplace log-determinant: lme4's Fisher weights for binomial and Poisson; for a
    dispersion family the observed ones (exact Hessian), or Fisher's under laplace_weights="fisher"."""
    if phi is None or problem.laplace_weights in ("fisher", "plugin"):
        return fisher_weights(problem, eta, phi)[0]
    return eta_derivatives(problem, eta, phi)[1]


def _scoring_residual(problem: GlmmProblem, eta, phi):
    """Fisher-scoring weights and working residual: (y − μ)/μ' for binomial and Poisson; −g/w with the exact
    gradient g for a dispersion family (the same thing for an exponential family, the right one for NB1, beta)."""
    w, mu, d = fisher_weights(problem, eta, phi)
    if phi is None:
        return w, jnp.where(w > 0, (problem.y - mu) / d, 0.0)
    g, _ = eta_derivatives(problem, eta, phi)
    return w, jnp.where(w > 0, -g / jnp.where(w > 0, w, 1.0), 0.0)


def _unused_tail_positive(blocks):
    """Blocks whose F-by-F entry is replaced by a huge constant. With observed weights (negative in some rows)
    FᵀWF minus its Schur correction can be negative: the unused last pivot of the factor would be NaN and, though
    u and log det never read it, reverse-mode derivatives would pick the NaN up through it."""
    f = blocks.tail_ff.shape[0]
    return eqx.tree_at(lambda b: b.tail_ff, blocks, 1e150 * jnp.eye(f, dtype=blocks.tail_ff.dtype))


def _solve_u(problem: GlmmProblem, theta, w, z, observed: bool = False):
    """u = (ΛᵀZᵀWZΛ + I)⁻¹ΛᵀZᵀWz on the blocked factor (flat modes)."""
    blocks = cross_products(problem.structure, problem.rows, w, z[:, None])
    if observed:
        blocks = _unused_tail_positive(blocks)
    factor = factorize(theta, blocks, problem.structure)
    return solve_modes(factor, problem.structure, 0, theta)[1]


def _solve_joint(problem: GlmmProblem, theta, w, z):
    """(β, u) from the penalized weighted least squares with X in the system (lme4's nAGQ = 0 step)."""
    F = jnp.concatenate([problem.X, z[:, None]], axis=1)
    blocks = cross_products(problem.structure, problem.rows, w, F)
    factor = factorize(theta, blocks, problem.structure)
    return solve_modes(factor, problem.structure, problem.p, theta)


def pirls(theta, beta, problem: GlmmProblem, joint: bool = False, tol: float = 1e-11, phi=None):
    """Conditional modes by PIRLS with step-halving. joint=True also updates β (lme4's first stage). phi: the
    dispersion family's d (None for binomial and Poisson).

    Returns (beta, u per term, penalized deviance, converged, iterations). Not differentiated (see module
    docstring).
    """
    b, u, pd, ok, it = _pirls_flat(theta, beta, problem, row_gather(problem.structure, problem.rows), joint, tol,
                                   phi)
    return b, split_modes(u, problem.structure), pd, ok, it


def _pirls_flat(theta, beta, problem: GlmmProblem, gather, joint: bool = False, tol: float = 1e-11, phi=None,
                u_start=None):
    """`pirls` on the flat modes (`flat_modes`), with `row_gather`'s arrays built by the caller. u_start: the modes
    to start from (default 0; not with joint=True), e.g. those at a nearby (θ, β). Should PIRLS get stuck from
    there (a start far from this (θ, β)'s mode can saturate the weights), it starts again from 0, once.

    The loop carries ZΛu beside u: a step's solve reads it, and a halved step's is the same interpolation of the
    two ends' (ZΛu is linear in u), so that an iteration computes ZΛu once, for the new modes."""
    fam = problem.family
    structure = problem.structure
    terms = _entry_terms(structure) if structure.n_terms > 1 else None

    def zlu(u):
        return _zlu(structure, gather, theta, u)

    def pdev_of(b, u, zu):
        return _deviance(problem, problem.X @ b + problem.offset + zu, phi) + _penalty(u)

    def step(b, zu, eta):
        w, resid = _scoring_residual(problem, eta, phi)
        if joint:
            return _solve_joint(problem, theta, w, eta - problem.offset + resid)
        return b, _solve_u(problem, theta, w, zu + resid)

    u0 = jnp.zeros((int(_term_offsets(structure)[-1]),), dtype=theta.dtype) if u_start is None else u_start
    if joint:
        # R's glm start: η from the family's mustart, then the first solve is taken whole
        eta0 = fam.linkfun(fam.mustart(problem.y, problem.weights))
        beta, u0 = step(beta, None, eta0)
    zu0 = zlu(u0)
    pd0 = pdev_of(beta, u0, zu0)

    def cond(carry):
        return (carry[4] < _MAX_PIRLS) & ~carry[5]

    def from_zero(b, u, zu, pd):
        zero = jnp.zeros_like(u)
        return b, zero, jnp.zeros_like(zu), pdev_of(b, zero, jnp.zeros_like(zu))

    def body(carry):
        b, u, zu, pd, it, _, _, restarted = carry
        b_new, u_new = step(b, zu, problem.X @ b + problem.offset + zu)
        zu_new = zlu(u_new)

        def halve_cond(c):
            k, bc, uc, zc, pdc = c
            return (k < _MAX_HALVING) & ~(pdc <= pd)

        def halve_body(c):
            k = c[0]
            f = 0.5 ** (k + 1)
            bc, uc, zc = b + f * (b_new - b), u + f * (u_new - u), zu + f * (zu_new - zu)
            return k + 1, bc, uc, zc, pdev_of(bc, uc, zc)

        k, bc, uc, zc, pdc = jax.lax.while_loop(halve_cond, halve_body,
                                                (0, b_new, u_new, zu_new, pdev_of(b_new, u_new, zu_new)))
        improved = pdc <= pd
        change = jnp.abs(pd - pdc) / (0.1 + jnp.abs(pdc))
        step_size = _step_size(u, uc, terms, structure.n_terms) + jnp.max(jnp.abs(b - bc), initial=0.0)
        converged = improved & ((change < tol) | (step_size < 1e-10))
        stuck = ~improved  # halving could not lower h: we are at the mode to machine precision, or failing
        ok = converged | (stuck & (change < 1e-8))
        keep = lambda new, old: jnp.where(improved, new, old)  # noqa: E731
        out = keep(bc, b), keep(uc, u), keep(zc, zu), keep(pdc, pd)
        again = jnp.asarray(False)
        if u_start is not None:
            again = stuck & ~ok & ~restarted
            out = jax.lax.cond(again, from_zero, lambda *a: a, *out)
        return *out, it + 1, (converged | stuck) & ~again, ok, restarted | again

    b, u, _, pd, it, _, ok, _ = jax.lax.while_loop(
        cond, body, (beta, u0, zu0, pd0, jnp.asarray(0), jnp.asarray(False), jnp.asarray(False), jnp.asarray(False))
    )
    return b, u, pd, ok & jnp.isfinite(pd), it


def newton_step(u_terms, theta, beta, problem: GlmmProblem, phi=None, gather=None):
    """One exact Newton step for the conditional modes (differentiable in u, θ, β and the dispersion phi). u per
    term or flat; returns the flat modes (`split_modes` gives them per term)."""
    fam = problem.family
    gather = row_gather(problem.structure, problem.rows) if gather is None else gather
    eta_z = _zlu(problem.structure, gather, theta, flat_modes(u_terms))
    eta = problem.X @ beta + problem.offset + eta_z
    if phi is not None:
        # observed curvature, which may be negative in some rows (the sum with I stays positive near the mode).
        # A row's weight that crosses 0 (inverse Gaussian's at y = μ/2) is kept 1e-8 away from it: the working
        # residual −g/w, whose derivative g/w² would overflow there, stays finite; the Hessian moves by ≤ 1e-8
        w, g = _away_from_zero(eta_derivatives(problem, eta, phi)[1]), eta_derivatives(problem, eta, phi)[0]
        resid = -g / w
    elif fam.canonical:
        w, mu, d = fisher_weights(problem, eta)
        resid = jnp.where(w > 0, (problem.y - mu) / d, 0.0)
    else:
        # observed information: derivatives of the unit half-deviance in η
        def half_dev(e, y, pw):
            return 0.5 * fam.deviance_residuals(y, fam.linkinv(e), pw)

        g = jax.vmap(jax.grad(half_dev))(eta, problem.y, problem.weights)
        w = jax.vmap(jax.grad(jax.grad(half_dev)))(eta, problem.y, problem.weights)
        resid = jnp.where(w > 0, -g / jnp.where(w > 0, w, 1.0), 0.0)
    return _solve_u(problem, theta, w, eta_z + resid, observed=phi is not None)


def _pirls_mode(theta, beta, problem: GlmmProblem, phi, gather, u_start=None):
    """PIRLS's converged modes (flat) on stop-gradient inputs, its status and iteration count: (u*, ok, iters).
    u_start: where PIRLS starts (default 0)."""
    phi_fixed = None if phi is None else jax.lax.stop_gradient(phi)
    u_start = None if u_start is None else jax.lax.stop_gradient(u_start)
    _, u_star, _, ok, it = _pirls_flat(jax.lax.stop_gradient(theta), jax.lax.stop_gradient(beta), problem, gather,
                                       tol=problem.pirls_tol, phi=phi_fixed, u_start=u_start)
    return jax.lax.stop_gradient(u_star), ok, it


def _mode_flat(theta, beta, problem: GlmmProblem, phi, gather, newton_steps: int = 2, u_start=None):
    """(u, (u*, ok, iters)): `newton_steps` differentiable Newton steps from PIRLS's modes u* (`_pirls_mode`)."""
    pirls_state = _pirls_mode(theta, beta, problem, phi, gather, u_start)
    u = pirls_state[0]
    for _ in range(newton_steps):
        u = newton_step(u, theta, beta, problem, phi, gather)
    return u, pirls_state


def mode_at(theta, beta, problem: GlmmProblem, phi=None, newton_steps: int = 2):
    """The conditional modes (per term) as a differentiable function of (θ, β, phi): PIRLS (not traced) +
    `newton_steps` Newton steps. Two give exact first and second derivatives (module docstring), one exact first
    derivatives (all a gradient-based search needs), none the mode without derivatives in (θ, β)."""
    u, pirls_state = modes_and_pirls(theta, beta, problem, phi, newton_steps)
    return u, pirls_state[1], pirls_state[2]


def modes_and_pirls(theta, beta, problem: GlmmProblem, phi=None, newton_steps: int = 2, u_start=None):
    """`mode_at`'s modes (per term) and PIRLS's own (u* flat, converged, iterations), which a caller can return
    beside a deviance so that the state at a point needs no second PIRLS run. u_start: PIRLS's start (flat modes,
    default 0): a search passes the modes of its previous point, a few PIRLS iterations fewer for the same mode
    to PIRLS's tolerance."""
    u, pirls_state = _mode_flat(theta, beta, problem, phi, row_gather(problem.structure, problem.rows), newton_steps,
                                u_start)
    return split_modes(u, problem.structure), pirls_state


def laplace_parts(theta, beta, problem: GlmmProblem, phi=None, newton_steps: int = 2, u_start=None):
    """Pieces of the Laplace deviance at the mode: (deviance, ‖u‖², log det, u (flat), log-det weights, PIRLS's
    (u*, ok, iters)). For a dispersion family "deviance" is −2 Σ log p(y | μ, d), constants included. u_start as
    in `modes_and_pirls`."""
    gather = row_gather(problem.structure, problem.rows)
    u, pirls_state = _mode_flat(theta, beta, problem, phi, gather, newton_steps, u_start)
    eta = problem.X @ beta + problem.offset + _zlu(problem.structure, gather, theta, u)
    dev = _deviance(problem, eta, phi)
    w = laplace_weights(problem, eta, phi)
    # only the Z part of L is used; a ones column stays positive definite against ΛᵀZᵀWZΛ + I (the +I)
    ones = jnp.ones((eta.shape[0], 1), dtype=eta.dtype)
    blocks = cross_products(problem.structure, problem.rows, w, ones)
    if phi is not None:
        blocks = _unused_tail_positive(blocks)
    factor = factorize(theta, blocks, problem.structure)
    logdet = factor.logdet_z(problem.structure.m_z)
    return dev, _penalty(u), logdet, u, w, pirls_state


def laplace_deviance(x, problem: GlmmProblem, newton_steps: int = 2, with_pirls: bool = False):
    """lme4's Laplace objective at x = (θ, β), or the proper Laplace −2 log L at x = (θ, β, log d) for a
    dispersion family. Pure; jit/grad/hessian-able. newton_steps=1 (`mode_at`) keeps the value and the gradient
    exact with a smaller program, for searches that never take second derivatives by autodiff. with_pirls: returns
    (deviance, PIRLS's (u*, ok, iters)) (`modes_and_pirls`), for `jax.value_and_grad(..., has_aux=True)`."""
    return laplace_deviance_from(x, problem, None, newton_steps, with_pirls)


def laplace_deviance_from(x, problem: GlmmProblem, u_start, newton_steps: int = 2, with_pirls: bool = False):
    """`laplace_deviance` with PIRLS started from the flat modes u_start (None: 0), as in `modes_and_pirls`: the
    same function of x to PIRLS's tolerance (its mode, then the Newton steps)."""
    theta, beta, phi = split_x(x, problem)
    dev, pen, logdet, u, _, pirls_state = laplace_parts(theta, beta, problem, phi, newton_steps, u_start)
    if problem.laplace_weights == "plugin":
        value = pen + logdet + plugin_aic(problem, theta, beta, u)[0]
    else:
        value = dev + pen + logdet + problem.constant
    return (value, pirls_state) if with_pirls else value


def plugin_aic(problem: GlmmProblem, theta, beta, u):
    """lme4's Gamma / inverse Gaussian likelihood term: R's family$aic with σ² = Σ devresid / Σ w, and that σ."""
    fam = problem.family
    mu = fam.linkinv(problem.X @ beta + problem.offset + random_part(problem.structure, problem.rows, theta, u))
    sigma = jnp.sqrt(jnp.sum(fam.deviance_residuals(problem.y, mu, problem.weights)) / jnp.sum(problem.weights))
    return jnp.sum(fam.neg2_logp(problem.y, mu, problem.weights, sigma)) + 2.0, mu
