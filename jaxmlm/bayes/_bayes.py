"""Bayesian multilevel models by NUTS (NumPyro), on the same design and blocked factor as the fits.

Gaussian models are sampled *collapsed*: the random effects are integrated out, using the factor L of
Λᵀ[Z X y]ᵀW[Z X y]Λ + diag(I, 0, 0) that the LMM uses (``_linalg.factorize``). Writing L_F for the lower-right
(p+1)×(p+1) block of L (the X and y rows after eliminating Z), the penalized residual sum of squares at β is

    r²(β) = min_u ‖W^½(y − Xβ − ZΛu)‖² + ‖u‖² = ‖L_Fᵀ [−β; 1]‖² = r²_min + ‖L_XXᵀ(β − β̂)‖²,

and the marginal log-likelihood of y ~ N(Xβ, σ²(ZΛΛᵀZᵀ + W⁻¹)) is

    log p(y | β, θ, σ) = −½ [n log(2πσ²) − Σ log w + log|L_Z|² + r²(β)/σ²].

NUTS samples (β, per-term standard deviations and LKJ correlation factors, σ), and u is drawn afterwards from its
Gaussian conditional u | y, β, θ, σ ~ N(û(β), σ²(L_Z L_Zᵀ)⁻¹) by one back substitution, vectorized over draws.

Binomial and Poisson models keep the random effects in the sampler, on the data merged into cells: vector terms
non-centred (u_k ~ N(0, I), b_k = u_k (diag(sd_k) Ω_k)ᵀ), scalar terms stacked, their means split off and each
coordinate partially centred by the share of its precision the data give at the term's sd in a point fit
(``_scalar_effects``, ``_cells_reparam``; docs/sampling.md).

Priors (all scaled to the data, in the spirit of rstanarm; every sampled coordinate is standardized so that NUTS
sees unit scales):
* β_j ~ N(0, (2.5 s_y / sd(x_j))²) for non-constant columns of X; an intercept column gets N(ȳ, s₀²) with
  s₀² = (2.5 s_y)² + Σ_j (x̄_j · 2.5 s_y / sd(x_j))², the prior that a N(ȳ, (2.5 s_y)²) intercept on centered
  predictors implies for the uncentered one. s_y = sd(y) for Gaussian models, 1 (the link scale) otherwise, and
  ȳ = 0 for non-Gaussian models.
* the standard deviation of each random-effect column: half-normal with scale s_y / sd(z_j) (s_y for constant z).
* correlations: LKJ(η = 1, uniform) on each term's correlation matrix, through its Cholesky factor.
* σ (Gaussian): half-normal with scale s_y.
``priors=dict(beta_loc=..., beta_scale=..., sd_scale=..., sigma_scale=..., lkj_eta=...)`` overrides them (scalars
or arrays; ``sd_scale`` may also be a dict keyed by group name).
"""

from __future__ import annotations

import functools
import weakref

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from .._errors import FamilyError
from ..core._linalg import Factor, factorize, solve_left_lower_t
from .._compile import jit

__all__ = ["sample", "gaussian_log_likelihood", "conditional_u", "Hyper"]

_LOG_2PI = float(np.log(2 * np.pi))
_LINKS = ("logit", "probit", "cloglog", "log", "identity")


class Hyper(eqx.Module):
    """Prior hyperparameters (leaves, so that new data of the same shape reuse the compiled sampler)."""

    beta_loc: jax.Array  # (p,)
    beta_scale: jax.Array  # (p,)
    sd_scale: tuple[jax.Array, ...]  # per term (q_k,)
    sigma_scale: jax.Array  # ()
    lkj_eta: float = eqx.field(static=True)
    kind: str = eqx.field(static=True, default="default")  # 'default' or 'rstanarm'


class GlmmData(eqx.Module):
    """The likelihood's cells (rows with equal covariates, codes and offset merged: exact for binomial and Poisson
    likelihoods) and the stacked coordinates of the scalar terms (see ``_scalar_effects``)."""

    X: jax.Array  # (n, p)
    y: jax.Array  # (n,) weighted mean response of the cell
    weights: jax.Array  # (n,) summed prior weights
    offset: jax.Array  # (n,)
    index: jax.Array  # (n, K) position of each scalar term's level in the stacked effects b
    zs: jax.Array  # (n, K) z of each scalar term
    codes: tuple[jax.Array, ...]  # vector terms: (n,) level codes
    z: tuple[jax.Array, ...]  # vector terms: (n, q)
    power: jax.Array  # (N,) partial-centring power of each sampled coordinate w
    coef: jax.Array  # (N,) Helmert weight 1/√(j(j+1)) of the coordinate (1 for a term without its mean split off)
    coord_term: jax.Array  # (N,) scalar term of each coordinate
    coord_pos: jax.Array  # (N,) position in b the coordinate is scattered to
    pos_term: jax.Array  # (B,) scalar term of each position of b
    pos_rank: jax.Array  # (B,) level's rank within its term
    pos_end: jax.Array  # (B,) first position after its term
    pos_split: jax.Array  # (B,) whether its term's mean is split off
    shift: jax.Array  # (K,) z of a term that moves the intercept, else 0
    split: tuple[int, ...] = eqx.field(static=True)  # the scalar terms whose mean is split off
    n_levels: tuple[int, ...] = eqx.field(static=True)
    scalar: tuple[int, ...] = eqx.field(static=True)  # term indices of the scalar terms (order of index/zs)
    intercept: int = eqx.field(static=True, default=-1)  # column of X that is constant (−1: none)
    intercept_value: float = eqx.field(static=True, default=1.0)


# ---------------------------------------------------------------------------------------------- the mathematics
def tril_columnwise(T: jax.Array) -> jax.Array:
    """Lower triangle of T, column-major: θ's layout."""
    q = T.shape[-1]
    rows = [r for c in range(q) for r in range(c, q)]
    cols = [c for c in range(q) for r in range(c, q)]
    return T[..., jnp.array(rows), jnp.array(cols)]


def gaussian_log_likelihood(beta, theta, sigma, problem) -> jax.Array:
    """log p(y | β, θ, σ) with u integrated out, from the blocked factor (see the module docstring)."""
    factor = factorize(theta, problem.blocks, problem.structure)
    m_z = problem.structure.m_z
    L_F = factor.tail[m_z:, m_z:]
    v = L_F.T @ jnp.concatenate([-beta, jnp.ones((1,), dtype=beta.dtype)])
    r2 = jnp.sum(v**2)
    logdet = factor.logdet_z(m_z)
    n = problem.n
    return -0.5 * (n * (_LOG_2PI + 2.0 * jnp.log(sigma)) - problem.sum_log_w + logdet + r2 / sigma**2)


def conditional_u(factor: Factor, structure, n_fixed: int, beta, noise):
    """u solving L_Zᵀ u = l_yZ − L_XZᵀ β + noise (noise per term (l_k, q_k)); returns (u, b) per term.

    noise = 0 gives the conditional mode û(β); noise = σ·N(0, I) gives a draw from u | y, β, θ, σ, whose
    covariance is σ²(L_Z L_Zᵀ)⁻¹. Same back substitution as ``_linalg.solve_coefficients``, with β given.
    """
    D, m_z = structure.n_prefix, structure.m_z
    tail = factor.tail
    n_terms = structure.n_terms
    u_terms: list = [None] * n_terms
    b_terms: list = [None] * n_terms
    b_tail = None
    if m_z:
        rhs = tail[-1, :m_z] - tail[m_z : m_z + n_fixed, :m_z].T @ beta
        rhs = rhs + jnp.concatenate([noise[k].reshape(-1) for k in range(D, n_terms)])
        x = jax.scipy.linalg.solve_triangular(tail[:m_z, :m_z], rhs, lower=True, trans="T")
        for i, k in enumerate(range(D, n_terms)):
            q, l = structure.qs[k], structure.n_levels[k]
            off = structure.tail_offsets[i]
            u_terms[k] = x[off : off + l * q].reshape(l, q)
            b_terms[k] = u_terms[k] @ factor.factors[k].T
        b_tail = jnp.concatenate([b_terms[k].reshape(-1) for k in range(D, n_terms)])
    for t in reversed(range(D)):
        Lf = factor.fixed[t]
        r = Lf[:, -1, :] - jnp.einsum("lpq,p->lq", Lf[:, :n_fixed, :], beta) + noise[t]
        for i, k in enumerate(range(t + 1, D)):
            r = r - jnp.einsum("lrq,lr->lq", factor.offdiag[t][i], u_terms[k][structure.parents[t][i]])
        if m_z and factor.entries[t].shape[0]:
            contrib = factor.entries[t] * b_tail[structure.entry_row[t]][:, None]
            r = r - jax.ops.segment_sum(contrib, structure.entry_level[t], structure.n_levels[t])
        u_terms[t] = solve_left_lower_t(factor.diag[t], r)
        b_terms[t] = u_terms[t] @ factor.factors[t].T
    return tuple(u_terms), tuple(b_terms)


@jit
def _draw_b(key, beta, theta, sigma, problem):
    """Random effects b for each posterior draw (leading axis), from their Gaussian conditional."""
    structure = problem.structure

    def one(key, beta, theta, sigma):
        factor = factorize(theta, problem.blocks, structure)
        keys = jax.random.split(key, structure.n_terms)
        noise = tuple(
            sigma * jax.random.normal(keys[k], (structure.n_levels[k], structure.qs[k]), dtype=beta.dtype)
            for k in range(structure.n_terms)
        )
        return conditional_u(factor, structure, problem.p, beta, noise)[1]

    keys = jax.random.split(key, beta.shape[0])
    return jax.vmap(one)(keys, beta, theta, sigma)


def inverse_link(eta, link: str):
    if link == "logit":
        return jax.nn.sigmoid(eta)
    if link == "probit":
        return jax.scipy.stats.norm.cdf(eta)
    if link == "cloglog":
        return -jnp.expm1(-jnp.exp(eta))
    if link == "log":
        return jnp.exp(eta)
    return eta


def _glm_log_likelihood(eta, data: GlmmData, family: str, link: str):
    """Σ w × (log-likelihood of y given η), without the constants that do not depend on η."""
    y, w = data.y, data.weights
    if family == "binomial":
        if link == "logit":
            log_mu, log_1m = jax.nn.log_sigmoid(eta), jax.nn.log_sigmoid(-eta)
        elif link == "probit":
            log_mu, log_1m = jax.scipy.stats.norm.logcdf(eta), jax.scipy.stats.norm.logcdf(-eta)
        else:  # cloglog: μ = 1 − exp(−exp η)
            log_1m = -jnp.exp(eta)
            log_mu = jnp.log(-jnp.expm1(log_1m))
        return jnp.sum(w * (y * log_mu + (1.0 - y) * log_1m))
    mu = inverse_link(eta, link)
    log_mu = eta if link == "log" else jnp.log(mu)
    return jnp.sum(w * (y * log_mu - mu))


# ---------------------------------------------------------------------------------------------- NumPyro models
def _scales(qs, hyper: Hyper, sigma, terms=None):
    """Per-term sds and correlation factors → relative factors T_k (covariance σ²T_kT_kᵀ; σ = 1 for GLMMs).

    'default': sd ~ half-normal(sd_scale) per column, LKJ(lkj_eta) correlations. 'rstanarm' (decov(η, 1, 1, s)):
    the term's covariance is σ²·q τ² diag(π) in its sds (trace q τ²), τ ~ exponential(1/s) (gamma(1, s)),
    π ~ Dirichlet(1), LKJ(η) correlations; a scalar term's sd is τσ.
    """
    import numpyro
    import numpyro.distributions as dist

    factors = []
    for k, q in zip(range(len(qs)) if terms is None else terms, qs):
        if hyper.kind == "rstanarm":
            tau = numpyro.sample(f"sd_z_{k}", dist.Exponential(1.0))
            share = numpyro.sample(f"pi_{k}", dist.Dirichlet(jnp.ones(q))) if q > 1 else jnp.ones(1)
            rel = hyper.sd_scale[k] * tau * jnp.sqrt(q * share)
            sd = numpyro.deterministic(f"sd_{k}", rel * sigma)
        else:
            sd_z = numpyro.sample(f"sd_z_{k}", dist.HalfNormal(jnp.ones(q)).to_event(1))
            sd = numpyro.deterministic(f"sd_{k}", sd_z * hyper.sd_scale[k])
        if q > 1:
            L = numpyro.sample(f"L_{k}", dist.LKJCholesky(q, concentration=hyper.lkj_eta))
        else:
            L = jnp.ones((1, 1), dtype=sd.dtype)
        factors.append(sd[:, None] * L / sigma)
    return factors


def _fixed(hyper: Hyper, p: int):
    import numpyro
    import numpyro.distributions as dist

    beta_z = numpyro.sample("beta_z", dist.Normal(jnp.zeros(p), 1.0).to_event(1))
    return numpyro.deterministic("beta", hyper.beta_loc + hyper.beta_scale * beta_z)


def _sigma(hyper: Hyper):
    import numpyro
    import numpyro.distributions as dist

    prior = dist.Exponential(1.0) if hyper.kind == "rstanarm" else dist.HalfNormal(1.0)
    return numpyro.deterministic("sigma", hyper.sigma_scale * numpyro.sample("sigma_z", prior))


def _gaussian_model(problem, hyper: Hyper, qs):
    import numpyro

    beta = _fixed(hyper, problem.p)
    sigma = _sigma(hyper)
    factors = _scales(qs, hyper, sigma)
    theta = numpyro.deterministic("theta", jnp.concatenate([tril_columnwise(T) for T in factors]))
    numpyro.factor("loglik", gaussian_log_likelihood(beta, theta, sigma, problem))


def _scalar_sds(hyper: Hyper, data: GlmmData):
    """sd of every scalar term, one sample site for all of them (the program does not grow with their number)."""
    import numpyro
    import numpyro.distributions as dist

    scale = jnp.concatenate([hyper.sd_scale[k] for k in data.scalar])
    prior = dist.Exponential(jnp.ones(len(data.scalar))) if hyper.kind == "rstanarm" else \
        dist.HalfNormal(jnp.ones(len(data.scalar)))
    return numpyro.deterministic("sd_scalar", scale * numpyro.sample("sd_z", prior.to_event(1)))


def _scalar_effects(data: GlmmData, sd):
    """Stacked b of all scalar terms, b_k = sd_k·u_k with u_k ~ N(0, I), sampled as: u_k = m_k·1/√L_k + H v_k
    when the term's mean is split off (m_k ~ N(0, 1), non-centred; H: the orthonormal Helmert basis of the vectors summing to
    zero, column j: 1 on rows 1..j, −j on row j+1, over √(j(j+1)), applied in O(L) by a reversed cumulative sum), else u_k = v_k; each
    coordinate of sd·v is sampled as w_j = sd^(c_j)·v_j ~ N(0, sd^(2c_j)), c_j ∈ [0, 1] its partial-centring
    power. Returns (b, Σ_k z_k·mean(b_k), the part of η that the intercept absorbs)."""
    import numpyro
    import numpyro.distributions as dist

    sd_c = sd[data.coord_term]
    w = numpyro.sample("w", dist.Normal(jnp.zeros_like(data.power), sd_c ** data.power).to_event(1))
    v = w * sd_c ** (1.0 - data.power) * data.coef
    placed = jnp.zeros(data.pos_term.shape[0] + 1, dtype=v.dtype).at[data.coord_pos].set(v)
    if not data.split:
        return placed[:-1], 0.0
    tail = jnp.cumsum(placed[::-1])[::-1]
    helm = tail[:-1] - tail[data.pos_end] - data.pos_rank * jnp.concatenate([placed[:1] * 0, placed[:-2]])
    split = jnp.asarray(data.split)
    n = jnp.asarray([float(data.n_levels[data.scalar[i]]) for i in data.split])
    m = numpyro.sample("m", dist.Normal(jnp.zeros(len(data.split)), 1.0).to_event(1))
    mean = jnp.zeros(len(data.scalar), dtype=v.dtype).at[split].set(sd[split] * m / jnp.sqrt(n))
    b = jnp.where(data.pos_split, helm + mean[data.pos_term], placed[:-1])
    return b, jnp.sum(data.shift * mean)


def _intercept_and_slopes(hyper: Hyper, data: GlmmData, absorbed):
    """β, with the intercept sampled as α = c·β₀ + Σ_k z_k·mean(b_k), the level of η the data fix (c: the
    intercept column's value); β₀ = (α − Σ)/c keeps its own prior (unit-Jacobian shear)."""
    import numpyro
    import numpyro.distributions as dist

    p, j = data.X.shape[1], data.intercept
    if j < 0:
        return _fixed(hyper, p)
    rest = [i for i in range(p) if i != j]
    beta_z = numpyro.sample("beta_z", dist.Normal(jnp.zeros(p - 1), 1.0).to_event(1))
    c = data.intercept_value
    alpha_z = numpyro.sample("alpha_z", dist.ImproperUniform(dist.constraints.real, (), ()))
    alpha = c * hyper.beta_loc[j] + abs(c) * hyper.beta_scale[j] * alpha_z
    beta0 = (alpha - absorbed) / c
    numpyro.factor("intercept_prior", dist.Normal(hyper.beta_loc[j], hyper.beta_scale[j]).log_prob(beta0))
    others = hyper.beta_loc[jnp.array(rest, dtype=int)] + hyper.beta_scale[jnp.array(rest, dtype=int)] * beta_z
    beta = jnp.zeros(p, dtype=beta_z.dtype).at[jnp.array(rest, dtype=int)].set(others).at[j].set(beta0)
    return numpyro.deterministic("beta", beta)


def _glmm_model(data: GlmmData, hyper: Hyper, qs, family: str, link: str):
    import numpyro
    import numpyro.distributions as dist

    vector = [k for k in range(len(qs)) if k not in data.scalar]
    factors = dict(zip(vector, _scales([qs[k] for k in vector], hyper, 1.0, terms=vector)))
    b_scalar, absorbed = None, 0.0
    if data.scalar:
        sd = _scalar_sds(hyper, data)
        b_scalar, absorbed = _scalar_effects(data, sd)
        numpyro.deterministic("b_scalar", b_scalar)
        factors.update({k: sd[i].reshape(1, 1) for i, k in enumerate(data.scalar)})
    numpyro.deterministic("theta", jnp.concatenate([tril_columnwise(factors[k]) for k in range(len(qs))]))
    beta = _intercept_and_slopes(hyper, data, absorbed)
    eta = data.X @ beta + data.offset
    if data.scalar:  # one gather for all scalar terms
        eta = eta + jnp.sum(b_scalar[data.index] * data.zs, axis=-1)
    for i, k in enumerate(vector):
        u = numpyro.sample(f"u_{k}", dist.Normal(jnp.zeros((data.n_levels[k], qs[k])), 1.0).to_event(2))
        b = numpyro.deterministic(f"b_{k}", u @ factors[k].T)
        eta = eta + jnp.sum(data.z[i] * b[data.codes[i]], axis=-1)
    numpyro.factor("loglik", _glm_log_likelihood(eta, data, family, link))


# ---------------------------------------------------------------------------------------------- priors
PRIORS = ("default", "rstanarm")


def check_prior(prior) -> str:
    if not isinstance(prior, str) or prior not in PRIORS:
        raise ValueError(f"unknown prior {prior!r}; known: 'default' (jaxmlm's scaled half-normal sds) and "
                         "'rstanarm' (stan_glmer's defaults: decov(1, 1, 1, 1), exponential σ)")
    return prior


def _sd_scales(d, keep, s_y):
    """Half-normal scale of each random-effect column: s_y / sd(z_j) (s_y / |z| for constant z)."""
    out = []
    for t in d.terms:
        zs = t.z[keep].std(axis=0)
        zm = np.abs(t.z[keep].mean(axis=0))
        out.append(np.where(zs > 1e-12 * np.maximum(1.0, zm), s_y / np.maximum(zs, 1e-300),
                            s_y / np.where(zm > 0, zm, 1.0)))
    return out


def default_hyper(model, priors: dict | None = None, kind: str = "default") -> Hyper:
    """Prior hyperparameters of `kind` ('default' or 'rstanarm', see the module docstring), `priors` overriding."""
    d = model.design
    kind = check_prior(kind)
    priors = dict(priors or {})
    unknown = set(priors) - {"beta_loc", "beta_scale", "sd_scale", "sigma_scale", "lkj_eta"}
    if unknown:
        raise ValueError(f"unknown prior setting(s) {sorted(unknown)}; known: beta_loc, beta_scale, sd_scale, "
                         "sigma_scale, lkj_eta")
    keep = d.weights > 0
    gaussian = model.is_gaussian
    y = (d.y - d.offset)[keep]
    s_y = float(np.std(y)) if gaussian else 1.0
    if not np.isfinite(s_y) or s_y <= 0:
        s_y = 1.0
    y_bar = float(np.mean(y)) if gaussian else 0.0
    X = d.X[keep]
    x_mean, x_sd = X.mean(axis=0), X.std(axis=0)
    const = x_sd <= 1e-12 * np.maximum(1.0, np.abs(x_mean))
    loc = np.zeros(d.p)
    scale = np.where(const, 1.0, 2.5 * s_y / np.where(const, 1.0, x_sd))
    intercepts = np.flatnonzero(const & (np.abs(x_mean) > 0))
    if intercepts.size:
        j = intercepts[0]
        c = x_mean[j]
        implied = (2.5 * s_y) ** 2 + np.sum((x_mean[~const] * scale[~const]) ** 2)
        loc[j], scale[j] = y_bar / c, np.sqrt(implied) / abs(c)
    sd_scale = _sd_scales(d, keep, s_y) if kind == "default" else [np.ones(t.q) for t in d.terms]
    if "beta_loc" in priors:
        loc = np.broadcast_to(np.asarray(priors["beta_loc"], dtype=np.float64), (d.p,)).copy()
    if "beta_scale" in priors:
        scale = np.broadcast_to(np.asarray(priors["beta_scale"], dtype=np.float64), (d.p,)).copy()
    if "sd_scale" in priors:
        given = priors["sd_scale"]
        names = d.group_names
        for k, t in enumerate(d.terms):
            value = given.get(names[k], given.get(t.group_name)) if isinstance(given, dict) else given
            if value is not None:
                sd_scale[k] = np.broadcast_to(np.asarray(value, dtype=np.float64), (t.q,)).copy()
    sigma_scale = float(priors.get("sigma_scale", s_y))
    eta = float(priors.get("lkj_eta", 1.0))
    for name, arr in [("beta_scale", scale), ("sigma_scale", np.asarray(sigma_scale))] + [
        ("sd_scale", s) for s in sd_scale
    ]:
        if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise ValueError(f"prior {name} must be positive and finite")
    if not eta > 0:
        raise ValueError("prior lkj_eta must be positive")
    return Hyper(
        beta_loc=jnp.asarray(loc),
        beta_scale=jnp.asarray(scale),
        sd_scale=tuple(jnp.asarray(s) for s in sd_scale),
        sigma_scale=jnp.asarray(sigma_scale),
        lkj_eta=eta,
        kind=kind,
    )


# ---------------------------------------------------------------------------------------------- cells
def _merge_cells(d):
    """Rows with equal covariates, offset, level codes and z merged: summed weights, weighted mean y. The binomial
    and Poisson log-likelihoods Σ w (y log μ + …) are sums over rows, so the merged one is the same function."""
    keep = d.weights > 0
    cols = [d.X[keep], d.offset[keep, None]] + [t.codes[keep, None] for t in d.terms] + [t.z[keep] for t in d.terms]
    key = np.column_stack(cols).astype(np.float64)
    _, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    w = np.bincount(inv, weights=d.weights[keep])
    y = np.bincount(inv, weights=d.weights[keep] * d.y[keep]) / w
    rows = np.flatnonzero(keep)[first]
    return rows, y, w


def _partial_power(info, s):
    """Centring power c = I s²/(1 + I s²): the share of a coordinate's precision that the data give (I: its
    Fisher information at the mean response, s: a typical sd), 1 = centred, 0 = non-centred."""
    return info * s**2 / (1.0 + info * s**2)


def _term_coordinates(t, rows, w, var, z, split: bool, s: float):
    """One scalar term's sampled coordinates: (power, Helmert weight) per coordinate, from the Fisher information
    of each level at the mean response (of each Helmert contrast when the mean is split off)."""
    info = np.bincount(t.codes[rows], weights=w * var * z**2, minlength=t.n_levels)
    if not split:
        return _partial_power(info, s), np.ones(t.n_levels)
    j = np.arange(1, t.n_levels, dtype=np.float64)
    info = (np.cumsum(info)[:-1] + j**2 * info[1:]) / (j * (j + 1.0))
    return _partial_power(info, s), 1.0 / np.sqrt(j * (j + 1.0))


def _cells_reparam(model, hyper: Hyper, family: str, typical=None) -> GlmmData:
    """The cells and the stacked coordinates of the scalar terms (``_scalar_effects``): a term whose z is one
    constant moves the intercept, and its mean is split off when X has an intercept; every coordinate gets its
    own centring power from its information and its term's typical sd (`typical`, one per scalar term in term
    order; None: half the sd prior's scale)."""
    d = model.design
    rows, y, w = _merge_cells(d)
    X = d.X[rows]
    x_sd, x_mean = X.std(axis=0), X.mean(axis=0)
    constant = np.flatnonzero((x_sd <= 1e-12 * np.maximum(1.0, np.abs(x_mean))) & (np.abs(x_mean) > 0))
    j = int(constant[0]) if constant.size else -1
    mu = float(np.sum(w * y) / np.sum(w))
    var = mu * (1.0 - mu) if family == "binomial" else mu
    scalar = tuple(k for k, t in enumerate(d.terms) if t.q == 1)
    vector = [k for k in range(len(d.terms)) if k not in scalar]
    levels = [d.terms[k].n_levels for k in scalar]
    starts = np.cumsum([0] + levels)
    index = np.stack([d.terms[k].codes[rows] + starts[i] for i, k in enumerate(scalar)], axis=1) if scalar else \
        np.zeros((len(rows), 0), dtype=np.int64)
    zs = np.stack([d.terms[k].z[rows, 0] for k in scalar], axis=1) if scalar else np.zeros((len(rows), 0))
    shift = np.array([float(zs[0, i]) if len(rows) and j >= 0 and levels[i] > 1 and np.all(zs[:, i] == zs[0, i])
                      else 0.0 for i in range(len(scalar))])
    if typical is None:
        typical = [0.5 * float(np.asarray(hyper.sd_scale[k])[0]) for k in scalar]
    power, coef, coord_term, coord_pos = [], [], [], []
    for i, k in enumerate(scalar):
        c, a = _term_coordinates(d.terms[k], rows, w, var, zs[:, i], bool(shift[i]), float(typical[i]))
        power.append(c), coef.append(a), coord_term.append(np.full(c.size, i)), coord_pos.append(starts[i] + np.arange(c.size))
    pos_term = np.repeat(np.arange(len(scalar)), levels)
    cat = (lambda parts, dtype: jnp.asarray(np.concatenate(parts) if parts else np.zeros(0), dtype=dtype))
    return GlmmData(
        X=jnp.asarray(X), y=jnp.asarray(y), weights=jnp.asarray(w), offset=jnp.asarray(d.offset[rows]),
        index=jnp.asarray(index, dtype=jnp.int32), zs=jnp.asarray(zs),
        codes=tuple(jnp.asarray(d.terms[k].codes[rows]) for k in vector),
        z=tuple(jnp.asarray(d.terms[k].z[rows]) for k in vector),
        power=cat(power, jnp.float64), coef=cat(coef, jnp.float64), coord_term=cat(coord_term, jnp.int32),
        coord_pos=cat(coord_pos, jnp.int32), pos_term=jnp.asarray(pos_term, dtype=jnp.int32),
        pos_rank=jnp.asarray(np.arange(pos_term.size) - starts[pos_term], dtype=jnp.float64),
        pos_end=jnp.asarray(starts[1:][pos_term], dtype=jnp.int32), pos_split=jnp.asarray(shift[pos_term] != 0),
        shift=jnp.asarray(shift), split=tuple(int(i) for i in np.flatnonzero(shift)),
        n_levels=tuple(t.n_levels for t in d.terms), scalar=scalar, intercept=j,
        intercept_value=float(X[0, j]) if j >= 0 else 1.0,
    )


_POINT_FITS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def point_fit(model) -> dict:
    """One point fit per model, whatever the number of sample() calls and samplers: its θ (the centring powers'
    typical sds), β and spherical modes u (where the Laplace sampler's PIRLS starts from), as float64 arrays; no
    reference to the model is kept."""
    kept = _POINT_FITS.get(model)
    if kept is None:
        fit = model.fit(warn=False)
        kept = _POINT_FITS[model] = dict(theta=np.asarray(fit.theta, dtype=np.float64),
                                         beta=np.asarray(fit.getme("beta"), dtype=np.float64),
                                         u=np.asarray(fit.getme("u"), dtype=np.float64))
    return kept


def check_centring(model, centring):
    """'fit', 'prior' or a point fit of `model` (anything else is refused before compiling)."""
    if isinstance(centring, str):
        if centring not in ("fit", "prior"):
            raise ValueError(f"unknown centring {centring!r}; known: 'fit' (the typical sd of each term from a "
                             "point fit), 'prior' (half the sd prior's scale), or a fit of this model")
        return centring
    theta = getattr(centring, "theta", None)
    n_theta = sum(q * (q + 1) // 2 for q in model.qs)
    if theta is None or np.shape(theta) != (n_theta,) or not np.all(np.isfinite(theta)):
        raise ValueError(f"centring must be 'fit', 'prior' or a fit of this model (finite θ of length {n_theta}), "
                         f"got {type(centring).__name__}")
    return centring


def _typical_sds(model, centring):
    """Each scalar term's typical sd for its centring powers: its sd in a point fit (θ; σ = 1 for binomial and
    Poisson models), where the data and the prior of the effects meet. A term the fit puts near zero is then
    non-centred, as the posterior wants when its sd is small against the data's precision; 'prior': None."""
    if (isinstance(centring, str) and centring == "prior") or all(q > 1 for q in model.qs):
        return None
    if not isinstance(centring, str):
        theta = np.asarray(centring.theta, dtype=np.float64)
    else:
        theta = point_fit(model)["theta"]
    if not np.all(np.isfinite(theta)):
        return None
    offsets = np.cumsum([0] + [q * (q + 1) // 2 for q in model.qs])
    return [float(abs(theta[offsets[k]])) for k, q in enumerate(model.qs) if q == 1]


# ---------------------------------------------------------------------------------------------- driver
EFFECTS = ("sampled", "laplace")


def check_effects(effects) -> str:
    """'sampled' or 'laplace' (anything else is refused before compiling)."""
    if not isinstance(effects, str) or effects not in EFFECTS:
        raise ValueError(f"unknown effects {effects!r}; known: 'sampled' (the random effects are sampled by NUTS) "
                         "and 'laplace' (integrated out by the Laplace approximation, as tmbstan(laplace = TRUE); "
                         "a Gaussian model's are integrated exactly either way)")
    return effects


def _glmm_spec(model):
    fam = model.family
    name = getattr(fam, "name", None)
    link = getattr(fam, "link", None)
    link = getattr(link, "name", link)
    if name not in ("binomial", "poisson") or link not in _LINKS:
        raise FamilyError(f"sampling supports gaussian, binomial and poisson families; got {name!r} ({link!r} link)")
    if name == "binomial" and link not in ("logit", "probit", "cloglog"):
        raise FamilyError(f"binomial sampling supports logit, probit and cloglog links, got {link!r}")
    if name == "poisson" and link != "log":
        raise FamilyError(f"poisson sampling supports the log link, got {link!r}")
    return name, link


def _split_terms(samples, data: GlmmData):
    """Per-term b (chains × draws × levels × q) and sd (chains × draws × q) from the stacked scalar sites."""
    b, sd, i, start = [], [], 0, 0
    for k, n in enumerate(data.n_levels):
        if k in data.scalar:
            b.append(samples["b_scalar"][..., start : start + n, None])
            sd.append(samples["sd_scalar"][..., i : i + 1])
            i, start = i + 1, start + n
        else:
            b.append(samples[f"b_{k}"])
            sd.append(samples[f"sd_{k}"])
    return b, sd


def sample(model, chains: int = 4, draws: int = 1000, warmup: int = 1000, seed: int = 0, *,
           priors: dict | None = None, target_accept: float = 0.8, max_tree_depth: int = 10,
           chain_method: str | None = None, dense_mass: bool | None = None, progress_bar: bool = False,
           prior: str = "default", centring="fit", effects: str = "sampled"):
    """Posterior draws by NUTS. Returns a ``Posterior`` (see ``_posterior.py``). prior='default' or 'rstanarm'
    (see the module docstring); ``priors`` overrides single hyperparameters of either. centring (binomial and
    Poisson models): where each scalar term's typical sd for its centring powers comes from, 'fit' (a point fit,
    run here), a fit of this model (its θ), or 'prior' (half the sd prior's scale); with effects='laplace' the
    point fit's conditional modes are where PIRLS starts ('prior': from 0). effects (binomial and Poisson
    models): 'sampled' (the random effects are NUTS coordinates) or 'laplace' (integrated out by the Laplace
    approximation, NUTS on β and the covariance parameters only, b drawn afterwards: ``_laplace.py``); for a
    Gaussian model both mean its exact collapsed sampler. chain_method (``_chains.py``): 'parallel' (the chains
    side by side, one per core or device), 'vectorized' (one program over all chains) or 'sequential'; None
    (default): 'parallel' on a CPU, 'vectorized' on an accelerator. progress_bar: a line per finished chain."""
    check_prior(prior)
    check_effects(effects)
    check_centring(model, centring)
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("warmup", warmup, 0)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if chain_method not in (None, "vectorized", "sequential", "parallel"):
        raise ValueError(f"chain_method must be 'vectorized', 'sequential' or 'parallel' (or None: 'parallel' on "
                         f"a CPU, 'vectorized' on an accelerator), got {chain_method!r}")
    if not 0 < target_accept < 1:
        raise ValueError(f"target_accept must lie in (0, 1), got {target_accept!r}")
    try:
        import numpyro  # noqa: F401
    except ImportError as exc:  # pragma: no cover - numpyro is a dependency
        raise ImportError("model.sample needs numpyro (pip install numpyro)") from exc
    from ._chains import default_chain_method, run_nuts
    from ._posterior import Posterior

    chain_method = default_chain_method() if chain_method is None else chain_method

    hyper = default_hyper(model, priors, prior)
    qs = model.qs
    if effects == "laplace" and not model.is_gaussian:
        from ._laplace import sample_laplace

        family, link = _glmm_spec(model)
        options = dict(chains=chains, draws=draws, warmup=warmup, target_accept=target_accept,
                       max_tree_depth=max_tree_depth, chain_method=chain_method, dense_mass=dense_mass,
                       progress_bar=progress_bar)
        return sample_laplace(model, options, hyper, family, link, jax.random.PRNGKey(seed), centring)
    if model.is_gaussian:
        problem = model.linear_problem
        kernel_model = functools.partial(_gaussian_model, qs=qs)
        args = (problem, hyper)
        family, link = "gaussian", "identity"
        n_params = problem.p + 1 + sum(q * (q + 1) // 2 for q in qs)
    else:
        family, link = _glmm_spec(model)
        data = _cells_reparam(model, hyper, family, _typical_sds(model, centring))
        d = model.design
        kernel_model = functools.partial(_glmm_model, qs=qs, family=family, link=link)
        args = (data, hyper)
        n_params = d.p + sum(q * (q + 1) // 2 + t.n_levels * q for q, t in zip(qs, d.terms))
    if dense_mass is None:
        dense_mass = n_params <= 60  # a dense metric absorbs the β–intercept correlations of uncentered X
    key = jax.random.PRNGKey(seed)
    key_mcmc, key_b = jax.random.split(key)
    run = run_nuts(kernel_model, args, key_mcmc, chains=chains, warmup=warmup, draws=draws,
                   target_accept=target_accept, max_tree_depth=max_tree_depth, dense_mass=dense_mass,
                   chain_method=chain_method, progress=progress_bar)
    samples, diverging = run.samples, run.diverging
    beta, theta = samples["beta"], samples["theta"]
    if model.is_gaussian:
        sigma = samples["sigma"]
        flat = (chains * draws,)
        b_flat = _draw_b(key_b, jnp.asarray(beta.reshape(flat + beta.shape[2:])),
                         jnp.asarray(theta.reshape(flat + theta.shape[2:])), jnp.asarray(sigma.reshape(flat)), problem)
        b = [np.asarray(x).reshape((chains, draws) + x.shape[1:]) for x in b_flat]
        sd = [samples[f"sd_{k}"] for k in range(len(qs))]
    else:
        sigma = None
        b, sd = _split_terms(samples, data)
    cor = [np.einsum("...ij,...kj->...ik", samples[f"L_{k}"], samples[f"L_{k}"]) if q > 1 else None
           for k, q in enumerate(qs)]
    return Posterior(model, beta=beta, theta=theta, sigma=sigma, sd=sd, cor=cor, b=b, diverging=diverging,
                     family=family, link=link, hyper=hyper, mcmc=run)
