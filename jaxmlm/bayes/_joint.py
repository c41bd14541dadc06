"""Joint draws of (β, b) from their approximate posterior at a point fit, through the blocked factor.

For a linear mixed model at θ the spherical random effects u and β are jointly Gaussian given y:

    (u, β) | y, θ, σ ~ N((û, β̂), σ² M⁻¹),   M = [[ΛᵀZᵀWZΛ + I, ΛᵀZᵀWX], [XᵀWZΛ, XᵀWX]],

and M = L Lᵀ with L the Z and X rows of the blocked Cholesky factor the fit itself uses (`core._linalg`). So a
draw is (û, β̂) + σ L⁻ᵀ ε with ε standard normal: one back substitution per draw, no inverse, no dense matrix of
the random effects. For a GLMM the same holds with the Fisher weights at the optimum in W and σ = 1 (the Laplace
approximation's Gaussian at the conditional mode). b = Λ u per term.

With `theta_uncertainty`, θ is first drawn from a normal approximation and (β, b) drawn jointly given each θ:
* linear models: θ ~ N(θ̂, 2 H⁻¹), H the Hessian of the profiled deviance (lme4's devfun, −2 log L) at θ̂, and every
  draw re-solves (û, β̂, σ̂) at its own θ;
* GLMMs: θ ~ N(θ̂, 2 S⁻¹), S = H_θθ − H_θβ H_ββ⁻¹ H_βθ the Schur complement of the Hessian H of the Laplace (or
  AGQ) deviance in (θ, β) at the optimum (the θ block of lme4's 2 H⁻¹, the Hessian of the deviance profiled over
  β), H by central differences of the fit's own exact gradient. Given θ, the GLMM is replaced by its linear model
  at the optimum: the working response z = η̂ + (y − μ̂)/μ'(η̂) with the Fisher weights, whose penalized least
  squares solution at θ is one Fisher-scoring step from the optimum's modes. Each draw solves it at its own θ
  (one factorization of the statistics formed once), shifted so that θ̂ gives the fit's (β̂, b̂) exactly, plus
  L_θ⁻ᵀ ε (σ = 1) as at θ̂.
"""

from __future__ import annotations


import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..core._blocks import cross_products, host_to_device
from ..core._linalg import Factor, factorize, solve_left_lower_t
from ..core._lmm import LinearProblem, linear_estimates, make_linear_problem, profiled_deviance
from ..core._pirls import _scoring_residual, laplace_weights, mode_at, random_part, split_x
from ..optim._optimize import central_difference_hessian
from .._compile import jit

__all__ = ["back_substitute", "point_fit_draws", "batch_draws", "glmm_batch_draws"]


def back_substitute(factor: Factor, structure, p: int, rhs_prefix, rhs_tail):
    """x with Lᵀ x = r, L the blocked factor's rows of Z and of the first p F columns (X); a response row of the
    factor, if any, is ignored. rhs_prefix: per prefix term (l_t, q_t); rhs_tail: (m_z + p,).
    Returns (β part (p,), u per term (l_k, q_k), b = T_k u per term)."""
    D, m_z = structure.n_prefix, structure.m_z
    top = factor.tail[: m_z + p, : m_z + p]
    x_tail = jax.scipy.linalg.solve_triangular(top, rhs_tail, lower=True, trans="T")
    beta = x_tail[m_z:]
    u_terms: list = [None] * structure.n_terms
    b_terms: list = [None] * structure.n_terms
    for i, k in enumerate(range(D, structure.n_terms)):
        q, l = structure.qs[k], structure.n_levels[k]
        off = structure.tail_offsets[i]
        u_terms[k] = x_tail[off : off + l * q].reshape(l, q)
        b_terms[k] = u_terms[k] @ factor.factors[k].T
    b_tail = jnp.concatenate([b_terms[k].reshape(-1) for k in range(D, structure.n_terms)]) if m_z else None
    for t in reversed(range(D)):
        r = rhs_prefix[t] - jnp.einsum("lpq,p->lq", factor.fixed[t][:, :p, :], beta)
        for i, k in enumerate(range(t + 1, D)):
            r = r - jnp.einsum("lrq,lr->lq", factor.offdiag[t][i], u_terms[k][structure.parents[t][i]])
        if m_z and factor.entries[t].shape[0]:  # entries are unscaled on the tail side: they meet b, not u
            contrib = factor.entries[t] * b_tail[structure.entry_row[t]][:, None]
            r = r - jax.ops.segment_sum(contrib, structure.entry_level[t], structure.n_levels[t])
        u_terms[t] = solve_left_lower_t(factor.diag[t], r)
        b_terms[t] = u_terms[t] @ factor.factors[t].T
    return beta, tuple(u_terms), tuple(b_terms)


def _noise(factor: Factor, structure, p: int, key):
    """One draw of L⁻ᵀ ε: (δβ, δb per term) with covariance M⁻¹ (b = Λ u)."""
    D = structure.n_prefix
    keys = jax.random.split(key, D + 1)
    rhs_prefix = [jax.random.normal(keys[t], (structure.n_levels[t], structure.qs[t]), factor.tail.dtype)
                  for t in range(D)]
    rhs_tail = jax.random.normal(keys[D], (structure.m_z + p,), factor.tail.dtype)
    beta, _, b = back_substitute(factor, structure, p, rhs_prefix, rhs_tail)
    return beta, b


DRAW_CHUNK = 128  # draws per compiled call: one program serves any number of draws


def _in_chunks(one_chunk, keys, *per_draw, size: int = DRAW_CHUNK):
    """Run one_chunk(keys_c, *per_draw_c) → (draws, mode) over chunks of `size` draws of the leading (draw) axis:
    (the draws concatenated, as NumPy arrays, and the first chunk's mode). The last chunk is padded (its extra
    draws dropped). The padding, slicing and joining are NumPy's, on the host where every caller takes the draws:
    done eagerly in JAX, each slice and join would compile a small program per shape, and each chunk's draws leave
    the device as soon as they are made."""
    keys = np.asarray(keys)
    per_draw = [np.asarray(a) for a in per_draw]
    n = keys.shape[0]
    pad = -n % size
    if pad:
        wrap = np.arange(n + pad) % n
        keys, per_draw = keys[wrap], [a[wrap] for a in per_draw]
    parts = [one_chunk(keys[i : i + size], *(a[i : i + size] for a in per_draw)) for i in range(0, n + pad, size)]
    draws = jax.tree.map(lambda *xs: np.concatenate([np.asarray(x) for x in xs])[:n], *[part[0] for part in parts])
    return draws, parts[0][1]


@jit(static_argnames=("reml",))
def _lmm_mode(theta, problem, reml: bool):
    est = linear_estimates(theta, problem, reml)
    return dict(beta=est["beta"], b=tuple(est["b"]))


def _lmm_at(theta, problem, key, reml: bool):
    """One draw at θ: the modes and σ from the factor (as the fit's), plus σ L⁻ᵀ ε."""
    est = linear_estimates(theta, problem, reml)
    d_beta, d_b = _noise(est["factor"], problem.structure, problem.p, key)
    return dict(beta=est["beta"] + est["sigma"] * d_beta,
                b=tuple(bk + est["sigma"] * nk for bk, nk in zip(est["b"], d_b)), sigma=est["sigma"])


@jit(static_argnames=("reml",))
def _lmm_chunk(keys, theta, problem, reml: bool):
    """Draws at one θ (the factor formed once for the chunk)."""
    est = linear_estimates(theta, problem, reml)
    d_beta, d_b = jax.vmap(lambda k: _noise(est["factor"], problem.structure, problem.p, k))(keys)
    draws = dict(beta=est["beta"][None] + est["sigma"] * d_beta,
                 b=tuple(bk[None] + est["sigma"] * nk for bk, nk in zip(est["b"], d_b)))
    return draws, dict(beta=est["beta"], b=tuple(est["b"]))


@jit(static_argnames=("reml",))
def _lmm_theta_chunk(keys, thetas, problem, reml: bool):
    """One draw at each of the chunk's θ (no mode: it is the one at θ̂)."""
    return jax.vmap(lambda k, th: _lmm_at(th, problem, k, reml))(keys, thetas), None


@jit(static_argnames=("reml",))
def _deviance_hessian(theta, problem, reml: bool):
    return jax.hessian(lambda th: profiled_deviance(th, problem, reml))(theta)


def _theta_draws(theta_hat: np.ndarray, problem, reml: bool, n: int, seed: int) -> np.ndarray:
    """θ ~ N(θ̂, 2 H⁻¹), H the Hessian of the profiled deviance (−2 log L) at θ̂."""
    H = np.asarray(_deviance_hessian(jnp.asarray(theta_hat), problem, reml))
    return _wald_draws(theta_hat, H, n, seed)


def _wald_draws(theta_hat: np.ndarray, H: np.ndarray, n: int, seed: int) -> np.ndarray:
    """n draws of N(θ̂, 2 H⁻¹). A boundary fit (a θ at 0) can leave a flat or negative direction there: the
    covariance's negative eigenvalues are set to 0."""
    evals, evecs = np.linalg.eigh(0.5 * (H + H.T))
    inv_evals = np.where(evals > 1e-10 * max(evals.max(), 1e-300), 1.0 / np.where(evals > 0, evals, 1.0), 0.0)
    root = evecs * np.sqrt(2.0 * inv_evals)[None, :]
    eps = np.random.default_rng(seed).standard_normal((n, theta_hat.shape[0]))
    return theta_hat[None] + eps @ root.T


def glmm_theta_hessian(fit) -> np.ndarray:
    """S = H_θθ − H_θβ H_ββ⁻¹ H_βθ: the Hessian in θ of the fit's deviance profiled over β, from H in (θ, β) by
    central differences of the exact gradient (the fit's own compiled program: nothing new to compile)."""
    from ..core._agq import gauss_hermite
    from ..fit._glmm import _value_and_grad, glmm_problem

    problem, nt = glmm_problem(fit.model), fit._theta.shape[0]
    nagq = int(fit.extra.get("nagq", 1) or 1)
    nodes = weights = None
    if nagq > 1:
        z, w = gauss_hermite(nagq)
        nodes, weights = jnp.asarray(z), jnp.asarray(w)
    x = np.concatenate([fit._theta, fit._beta])
    H = central_difference_hessian(
        lambda pts: np.stack([np.asarray(_value_and_grad(pt, problem, nodes, weights)[1]) for pt in pts]), x)
    H_tt, H_tb, H_bb = H[:nt, :nt], H[:nt, nt:], H[nt:, nt:]
    return H_tt - H_tb @ np.linalg.solve(H_bb, H_tb.T)


@jit
def _working_response(x, problem):
    """Fisher weights and working response z = η − offset + (y − μ)/μ' at the modes of x = (θ, β)."""
    theta, beta, _ = split_x(x, problem)
    u, _, _ = mode_at(theta, beta, problem, None)
    eta = problem.X @ beta + problem.offset + random_part(problem.structure, problem.rows, theta, u)
    w, r = _scoring_residual(problem, eta, None)
    return w, eta - problem.offset + r


def glmm_working_problem(fit) -> LinearProblem:
    """The linear model of a GLMM fit's working response with its Fisher weights (σ = 1)."""
    from ..fit._glmm import glmm_problem

    problem = glmm_problem(fit.model)
    w, z = _working_response(jnp.asarray(np.concatenate([fit._theta, fit._beta])), problem)
    return make_linear_problem(problem.structure, problem.rows, w, problem.X, z)


@jit
def _glmm_theta_chunk(keys, thetas, problem, shift_beta, shift_b):
    """One draw at each θ of the chunk: the working model's solution at θ plus the shift, plus L_θ⁻ᵀ ε."""

    def one(key, theta):
        est = linear_estimates(theta, problem, False)
        d_beta, d_b = _noise(est["factor"], problem.structure, problem.p, key)
        return dict(beta=est["beta"] + shift_beta + d_beta,
                    b=tuple(bk + sk + nk for bk, sk, nk in zip(est["b"], shift_b, d_b)))

    return jax.vmap(one)(keys, thetas), None


def _glmm_theta_draws(fit, keys, n_draws: int, seed: int):
    """(β, b) draws of a GLMM fit over θ's normal approximation; the θ draws too."""
    thetas = _wald_draws(fit._theta, glmm_theta_hessian(fit), n_draws, seed)
    problem = glmm_working_problem(fit)
    at_hat = _lmm_mode(jnp.asarray(fit._theta), problem, False)
    shift_beta = jnp.asarray(fit._beta) - at_hat["beta"]
    shift_b = tuple(jnp.asarray(b) - bh for b, bh in zip(fit._b, at_hat["b"]))
    draws, _ = _in_chunks(lambda k, th: _glmm_theta_chunk(k, th, problem, shift_beta, shift_b), keys,
                          jnp.asarray(thetas))
    return dict(draws, theta=thetas)


@jit
def _fisher_factor(theta, structure, rows, weights, X):
    """The factor of [Z X] with the Fisher weights at a GLMM's optimum."""
    return factorize(theta, cross_products(structure, rows, weights, X), structure)


@jit
def _glmm_chunk(keys, factor, structure, beta_hat, b_hat):
    """Draws around the fit's (β̂, b̂) from the Laplace approximation's Gaussian (σ = 1)."""
    d_beta, d_b = jax.vmap(lambda k: _noise(factor, structure, beta_hat.shape[0], k))(keys)
    return dict(beta=beta_hat[None] + d_beta, b=tuple(bk[None] + nk for bk, nk in zip(b_hat, d_b))), None


def point_fit_draws(fit, n_draws: int, seed: int, theta_uncertainty: bool = False):
    """(draws, mode) for a fitted model: dicts of beta (S × p / p) and b (per term S × l × q / l × q), as JAX
    arrays. Linear models re-solve at θ̂ (the fit's own numbers); GLMMs use the fit's modes and Fisher weights.
    With theta_uncertainty the draws also hold theta (S × k) and, for a linear model, sigma (S,)."""
    model = fit.model
    keys = jax.random.split(jax.random.PRNGKey(seed), n_draws)
    theta = host_to_device(fit._theta)
    if model.is_gaussian:
        reml = fit.method == "reml"
        problem = model.linear_problem
        if theta_uncertainty:
            thetas = jnp.asarray(_theta_draws(fit._theta, problem, reml, n_draws, seed))
            draws, _ = _in_chunks(lambda k, th: _lmm_theta_chunk(k, th, problem, reml), keys, thetas)
            return dict(draws, theta=thetas), _lmm_mode(theta, problem, reml)
        return _in_chunks(lambda k: _lmm_chunk(k, theta, problem, reml), keys)
    beta_hat, b_hat = host_to_device(fit._beta), tuple(host_to_device(b) for b in fit._b)
    if theta_uncertainty:
        return _glmm_theta_draws(fit, keys, n_draws, seed), dict(beta=beta_hat, b=b_hat)
    weights, X = host_to_device(fit.extra["working_weights"]), host_to_device(model.design.X)
    factor = _fisher_factor(theta, model.structure, model.rows, weights, X)
    draws, _ = _in_chunks(lambda k: _glmm_chunk(k, factor, model.structure, beta_hat, b_hat), keys)
    return draws, dict(beta=beta_hat, b=b_hat)


def _outcome_problem(structure, rows, weights, X, y) -> LinearProblem:
    """One outcome's statistics (missing values: weight 0 for that outcome)."""
    observed = ~jnp.isnan(y)
    w = jnp.where(observed, weights, 0.0)
    F = jnp.concatenate([X, jnp.where(observed, y, 0.0)[:, None]], axis=1)
    positive = w > 0
    return LinearProblem(structure=structure, blocks=cross_products(structure, rows, w, F),
                         n=jnp.sum(positive).astype(X.dtype), p=X.shape[1],
                         sum_log_w=jnp.sum(jnp.where(positive, jnp.log(jnp.where(positive, w, 1.0)), 0.0)))


@jit(static_argnames=("reml",))
def _batch_chunk(keys, thetas, Y, structure, rows, weights, X, reml: bool):
    """`_lmm_chunk` for every column of Y at its own θ; keys: draws × outcomes × 2. Draw-first output."""

    def one(theta, y, keys_j):
        return _lmm_chunk(keys_j, theta, _outcome_problem(structure, rows, weights, X, y), reml=reml)

    draws, modes = jax.vmap(one, in_axes=(0, 1, 1))(thetas, Y, keys)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), draws), modes


def batch_draws(batch, responses: np.ndarray, n_draws: int, seed: int):
    """Per outcome of a linear `fit_batch` result (responses: n × m, the batch's Y): (draws, mode), draws with
    axes draws × outcomes × …, modes outcomes × …; each outcome at its own θ̂."""
    model = batch.model
    d = model.design
    m = responses.shape[1]
    keys = jax.random.split(jax.random.PRNGKey(seed), n_draws * m).reshape(n_draws, m, -1)
    args = (jnp.asarray(batch.theta), jnp.asarray(responses - d.offset[:, None]), model.structure, model.rows,
            jnp.asarray(d.weights), jnp.asarray(d.X))
    reml = batch.method == "reml"
    return _in_chunks(lambda k: _batch_chunk(k, *args, reml=reml), keys)


@jit
def _glmm_batch_modes(xs, problem, Y, W, constants):
    """Per outcome at its optimum x = (θ, β): β, the modes b per term and the factor with the Fisher weights."""

    def one(x, y, w, c):
        prob = eqx.tree_at(lambda p: (p.y, p.weights, p.constant), problem, (y, w, c))
        theta, beta, _ = split_x(x, prob)
        u, _, _ = mode_at(theta, beta, prob, None)
        eta = prob.X @ beta + prob.offset + random_part(prob.structure, prob.rows, theta, u)
        fisher = laplace_weights(prob, eta, None)
        factor = factorize(theta, cross_products(prob.structure, prob.rows, fisher, prob.X), prob.structure)
        return beta, tuple(uk @ T.T for uk, T in zip(u, factor.factors)), factor

    return jax.vmap(one, in_axes=(0, 1, 1, 0))(xs, Y, W, constants)


@jit
def _glmm_batch_chunk(keys, factors, structure, betas, bs):
    """`_glmm_chunk` for every outcome (keys: draws × outcomes × 2). Draw-first output."""
    draws = jax.vmap(lambda k, f, be, b: _glmm_chunk(k, f, structure, be, b)[0], in_axes=(1, 0, 0, 0))(
        keys, factors, betas, bs)
    return jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), draws), None


def glmm_batch_draws(batch, responses: np.ndarray, n_draws: int, seed: int):
    """Per outcome of a binomial or Poisson `fit_batch` result (responses: n × m, on the model's response scale as
    the batch was fitted): (draws, mode) as `batch_draws`; each outcome from the Laplace Gaussian at its optimum."""
    from ..fit._batch_glmm import glmm_columns
    from ..fit._glmm import glmm_problem

    model = batch.model
    problem = glmm_problem(model)
    Y, W, constants, _ = glmm_columns(model, responses, list(batch.columns))
    xs = jnp.asarray(np.concatenate([batch.theta, batch.beta], axis=1))
    betas, bs, factors = _glmm_batch_modes(xs, problem, jnp.asarray(Y), jnp.asarray(W), jnp.asarray(constants))
    m = responses.shape[1]
    keys = jax.random.split(jax.random.PRNGKey(seed), n_draws * m).reshape(n_draws, m, -1)
    draws, _ = _in_chunks(lambda k: _glmm_batch_chunk(k, factors, model.structure, betas, bs), keys)
    return draws, dict(beta=betas, b=bs)
