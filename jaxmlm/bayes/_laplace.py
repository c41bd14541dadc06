"""Bayesian binomial and Poisson GLMMs with the random effects integrated out by the Laplace approximation.

This is glmmTMB's ``tmbstan(laplace = TRUE)`` (and the idea of INLA): NUTS moves only the hyperparameters and β,

    (β, sd, correlation factors) ~ prior × exp(−½ D(θ, β)),

with D the Laplace deviance that ``glmer`` minimizes (``core._pirls.laplace_deviance``: PIRLS to the conditional
modes û(θ, β), then one Newton step), its gradient written out by implicit differentiation at the modes
(``core._laplace_grad``: no reverse pass through PIRLS, the factorization or the Newton step),

    D(θ, β) = Σ devresid(y, μ(û)) + ‖û‖² + log det(ΛᵀZᵀW(û)ZΛ + I) + c(y),

and θ the relative covariance factor built from the sds and correlations (σ = 1: for a scalar term θ is its sd).
The priors are ``_bayes``'s (``Hyper``: prior='default' or 'rstanarm'), on the same standardized coordinates:
β = loc + scale·β_z, each term's sd through its positive (log-scale) transform, LKJ Cholesky factors for vector
terms. The NUTS state has p + Σ q(q+1)/2 coordinates however many levels the terms have.

The random effects are then drawn for every (θ, β) draw from the Laplace approximation's Gaussian,

    u | θ, β, y ≈ N(û, (L Lᵀ)⁻¹),   L Lᵀ = ΛᵀZᵀW(û)ZΛ + I,   b = Λu,

û being PIRLS's modes at that draw (kept by the sampler as a deterministic site, so no PIRLS is run again) and the
factor formed with the same weights as the deviance's log-determinant: one factorization and one back
substitution per draw, vectorized in chunks of draws (``_joint._in_chunks``).

The approximation is that of ``glmer``'s nAGQ = 1: accurate when each level's effect is determined by many
observations (the conditional posterior of u then close to Gaussian), worse with few binary observations per level
(docs/sampling.md).
"""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import jit
from ..core._blocks import cross_products
from ..core._laplace_grad import laplace_deviance_fast
from ..core._linalg import factorize
from ..core._pirls import _zlu, laplace_weights, row_gather, split_modes
from ._bayes import _fixed, _scales, tril_columnwise
from ._joint import _in_chunks, _noise

__all__ = ["laplace_model", "sample_laplace", "draw_effects"]


def laplace_model(problem, hyper, qs):
    """The NumPyro model: priors on (β, sds, correlations), the likelihood exp(−½ Laplace deviance)."""
    import numpyro

    beta = _fixed(hyper, problem.p)
    factors = _scales(qs, hyper, 1.0)
    theta = numpyro.deterministic("theta", jnp.concatenate([tril_columnwise(T) for T in factors]))
    value, (u_mode, ok, _) = laplace_deviance_fast(jnp.concatenate([theta, beta]), problem, newton_steps=1,
                                                   with_pirls=True)
    numpyro.deterministic("u_mode", u_mode)  # PIRLS's modes at the draw: the centre of b's Gaussian
    numpyro.deterministic("pirls_ok", ok)
    numpyro.factor("loglik", -0.5 * value)


def _effects_at(key, theta, beta, u_mode, problem, gather):
    """One draw of b per term: Λ(û + L⁻ᵀε), L the factor with the log-determinant's weights at û."""
    structure = problem.structure
    eta = problem.X @ beta + problem.offset + _zlu(structure, gather, theta, u_mode)
    w = laplace_weights(problem, eta)
    ones = jnp.ones((eta.shape[0], 1), dtype=eta.dtype)
    factor = factorize(theta, cross_products(structure, problem.rows, w, ones), structure)
    _, noise = _noise(factor, structure, 0, key)
    return tuple(u @ T.T + n for u, T, n in zip(split_modes(u_mode, structure), factor.factors, noise))


@jit
def _effects_chunk(keys, thetas, betas, u_modes, problem):
    gather = row_gather(problem.structure, problem.rows)
    return jax.vmap(lambda k, th, be, u: _effects_at(k, th, be, u, problem, gather))(keys, thetas, betas,
                                                                                       u_modes), None


def draw_effects(key, theta, beta, u_mode, problem):
    """b per term (draws × levels × q) for draws of θ, β and PIRLS's modes (leading axis: draws)."""
    keys = jax.random.split(key, theta.shape[0])
    b, _ = _in_chunks(lambda k, th, be, u: _effects_chunk(k, th, be, u, problem), keys, jnp.asarray(theta),
                      jnp.asarray(beta), jnp.asarray(u_mode))
    return b


def sample_laplace(model, mcmc_options: dict, hyper, family: str, link: str, key):
    """Run NUTS on `laplace_model` and return the ``Posterior`` (options: ``_bayes.sample``'s, checked there)."""
    from numpyro.infer import MCMC, NUTS

    from ..fit._glmm import glmm_problem
    from ._posterior import Posterior

    problem = glmm_problem(model)
    qs = model.qs
    o = dict(mcmc_options)
    dense_mass = o["dense_mass"]
    if dense_mass is None:
        dense_mass = problem.p + sum(q * (q + 1) // 2 for q in qs) <= 60
    kernel = NUTS(functools.partial(laplace_model, qs=qs), target_accept_prob=o["target_accept"],
                  max_tree_depth=o["max_tree_depth"], dense_mass=dense_mass)
    mcmc = MCMC(kernel, num_warmup=o["warmup"], num_samples=o["draws"], num_chains=o["chains"],
                chain_method=o["chain_method"], progress_bar=o["progress_bar"], jit_model_args=True)
    key_mcmc, key_b = jax.random.split(key)
    mcmc.run(key_mcmc, problem, hyper, extra_fields=("diverging", "num_steps"))
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    failed = int(np.sum(~samples["pirls_ok"]))
    if failed:
        warnings.warn(f"PIRLS did not converge at {failed} of the {samples['pirls_ok'].size} draws: the Laplace "
                      "deviance there is approximate", RuntimeWarning, stacklevel=3)
    chains, draws = samples["beta"].shape[:2]
    flat = lambda a: jnp.asarray(a.reshape((chains * draws,) + a.shape[2:]))  # noqa: E731
    b_flat = draw_effects(key_b, flat(samples["theta"]), flat(samples["beta"]), flat(samples["u_mode"]), problem)
    b = [np.asarray(x).reshape((chains, draws) + x.shape[1:]) for x in b_flat]
    sd = [samples[f"sd_{k}"] for k in range(len(qs))]
    cor = [np.einsum("...ij,...kj->...ik", samples[f"L_{k}"], samples[f"L_{k}"]) if q > 1 else None
           for k, q in enumerate(qs)]
    return Posterior(model, beta=samples["beta"], theta=samples["theta"], sigma=None, sd=sd, cor=cor, b=b,
                     diverging=diverging, family=family, link=link, hyper=hyper, mcmc=mcmc)
