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

û being PIRLS's modes at that draw (found again after the run, as the deviance found them: keeping them as a
deterministic site would put a second PIRLS into the sampler's program) and the factor formed with the same
weights as the deviance's log-determinant: one PIRLS run, one factorization and one back substitution per draw,
vectorized in chunks of draws (``_joint._in_chunks``). The chains run as `_chains.run_nuts` runs them.

PIRLS starts at each (θ, β) from a first-order prediction of the modes from the point fit's
(``core._mode_prediction``, linear in b = Λu): on the 5,000-interview poll about 2.8 iterations a deviance
against 5.3 from the fit's modes themselves (docs/sampling.md).

The approximation is that of ``glmer``'s nAGQ = 1: accurate when each level's effect is determined by many
observations (the conditional posterior of u then close to Gaussian), worse with few binary observations per level
(docs/sampling.md).
"""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from .._compile import jit
from ..core._blocks import cross_products, host_to_device
from ..core._laplace_grad import laplace_deviance_fast
from ..core._linalg import factorize
from ..core._mode_prediction import mode_prediction, predict_modes
from ..core._pirls import _zlu, laplace_deviance_from, laplace_weights, row_gather, split_modes
from ._bayes import _fixed, _scales, point_fit, tril_columnwise
from ._joint import _in_chunks, _noise

__all__ = ["laplace_model", "sample_laplace", "draw_effects", "pirls_start"]

# PIRLS's tolerance inside the sampler (the fits' is 1e-11). PIRLS converges quadratically and the Newton step
# after it squares the error once more, so the deviance stays the same to ~1e-13 relative and its gradient to
# ~1e-9 (tests/test_chains.py), about one PIRLS iteration sooner. The chain stays exact either way: the Metropolis
# step reads the deviance, and the leapfrog integrator is reversible and volume-preserving for any force that is a
# function of the position (measurements: docs/sampling.md)
SAMPLER_PIRLS_TOL = 1e-6


def point_fit_modes(model, centring):
    """The point fit's spherical conditional modes u (b = Λu) — centring 'fit': the model's one point fit
    (`_bayes.point_fit`, shared with the centring powers); a fit of the model: its own — with its x = (θ, β),
    as (x, u); or None for 'prior' (PIRLS then starts from 0)."""
    if isinstance(centring, str):
        if centring == "prior":
            return None
        kept = point_fit(model)
        x, u = np.concatenate([kept["theta"], kept["beta"]]), kept["u"]
    else:
        getme = getattr(centring, "getme", None)
        if getme is None:
            return None
        x = np.concatenate([np.asarray(getme("theta"), dtype=np.float64), np.asarray(getme("beta"), dtype=np.float64)])
        u = np.asarray(getme("u"), dtype=np.float64)
    n_modes = sum(t.n_levels * t.q for t in model.design.terms)
    n_x = sum(q * (q + 1) // 2 for q in model.qs) + model.design.p
    if u.shape != (n_modes,) or x.shape != (n_x,) or not (np.all(np.isfinite(u)) and np.all(np.isfinite(x))):
        return None
    return x, u


def pirls_start(model, centring, problem):
    """Where the sampler's PIRLS starts at each (θ, β): the first-order prediction of the modes from the point
    fit's (`core._mode_prediction`; its draws stay near the fit, and PIRLS from the prediction takes about half
    the iterations it takes from the fit's modes themselves), or None (from 0) for centring 'prior'."""
    fitted = point_fit_modes(model, centring)
    if fitted is None:
        return None
    return mode_prediction(host_to_device(fitted[0]), host_to_device(fitted[1]), problem)


def _start_at(start, theta, beta, problem):
    return None if start is None else predict_modes(start, jnp.concatenate([theta, beta]), problem)


def laplace_model(problem, hyper, start, qs, likelihood: bool = True):
    """The NumPyro model: priors on (β, sds, correlations), the likelihood exp(−½ Laplace deviance) with PIRLS
    started from `start`'s prediction of the modes (`pirls_start`; None: from 0). likelihood=False: the priors
    alone (the sites of a draw, without a PIRLS run)."""
    import numpyro

    beta = _fixed(hyper, problem.p)
    factors = _scales(qs, hyper, 1.0)
    theta = numpyro.deterministic("theta", jnp.concatenate([tril_columnwise(T) for T in factors]))
    if likelihood:
        u_start = _start_at(start, theta, beta, problem)
        value = laplace_deviance_fast(jnp.concatenate([theta, beta]), problem, u_start, newton_steps=1)
        numpyro.factor("loglik", -0.5 * value)


def _effects_at(key, theta, beta, problem, gather, start=None):
    """One draw of b per term: Λ(û + L⁻ᵀε), û PIRLS's modes at (θ, β) as the deviance finds them (from the same
    start), L the factor with the log-determinant's weights at û; and whether PIRLS converged."""
    structure = problem.structure
    u_start = _start_at(start, theta, beta, problem)
    _, (u_mode, ok, _) = laplace_deviance_from(jnp.concatenate([theta, beta]), problem, u_start, 1, True)
    eta = problem.X @ beta + problem.offset + _zlu(structure, gather, theta, u_mode)
    w = laplace_weights(problem, eta)
    ones = jnp.ones((eta.shape[0], 1), dtype=eta.dtype)
    factor = factorize(theta, cross_products(structure, problem.rows, w, ones), structure)
    _, noise = _noise(factor, structure, 0, key)
    b = tuple(u @ T.T + n for u, T, n in zip(split_modes(u_mode, structure), factor.factors, noise))
    return b, ok


@jit
def _effects_chunk(keys, thetas, betas, problem, start):
    gather = row_gather(problem.structure, problem.rows)
    b, ok = jax.vmap(lambda k, th, be: _effects_at(k, th, be, problem, gather, start))(keys, thetas, betas)
    return (b, ok), None


# Draws per call of the effects' program: its vmapped PIRLS runs until the chunk's slowest draw has converged, so
# small chunks waste less (on the 5,000-interview poll 2.95 ms a draw at 16 against 5.09 at 128, 4.11 at 4)
_EFFECT_CHUNK = 16


def draw_effects(key, theta, beta, problem, start=None):
    """b per term (draws × levels × q) for draws of θ and β (leading axis: draws), and whether PIRLS converged at
    each draw; PIRLS from `start`'s prediction (`pirls_start`; None: 0), as in the sampler."""
    keys = jax.random.split(key, theta.shape[0])
    (b, ok), _ = _in_chunks(lambda k, th, be: _effects_chunk(k, th, be, problem, start), keys, theta, beta,
                            size=_EFFECT_CHUNK)
    return b, ok


def sample_laplace(model, mcmc_options: dict, hyper, family: str, link: str, key, centring="prior"):
    """Run NUTS on `laplace_model` and return the ``Posterior`` (options: ``_bayes.sample``'s, checked there;
    centring: where PIRLS's start comes from, `pirls_start`)."""
    from ..fit._glmm import glmm_problem
    from ._chains import run_nuts
    from ._posterior import Posterior

    problem = dataclasses.replace(glmm_problem(model), pirls_tol=SAMPLER_PIRLS_TOL)
    qs = model.qs
    o = dict(mcmc_options)
    dense_mass = o["dense_mass"]
    if dense_mass is None:
        dense_mass = problem.p + sum(q * (q + 1) // 2 for q in qs) <= 60
    key_mcmc, key_b = jax.random.split(key)
    start = pirls_start(model, centring, problem)
    run = run_nuts(functools.partial(laplace_model, qs=qs), (problem, hyper, start), key_mcmc, chains=o["chains"],
                   warmup=o["warmup"], draws=o["draws"], target_accept=o["target_accept"],
                   max_tree_depth=o["max_tree_depth"], dense_mass=dense_mass, chain_method=o["chain_method"],
                   sites_model=functools.partial(laplace_model, qs=qs, likelihood=False),
                   progress=o["progress_bar"])
    samples = run.samples
    chains, draws = samples["beta"].shape[:2]
    flat = lambda a: np.asarray(a).reshape((chains * draws,) + a.shape[2:])  # noqa: E731
    b_flat, ok = draw_effects(key_b, flat(samples["theta"]), flat(samples["beta"]), problem, start)
    failed = int(np.sum(~np.asarray(ok)))
    if failed:
        warnings.warn(f"PIRLS did not converge at {failed} of the {ok.size} draws: the Laplace "
                      "deviance there is approximate", RuntimeWarning, stacklevel=3)
    b = [np.asarray(x).reshape((chains, draws) + x.shape[1:]) for x in b_flat]
    sd = [samples[f"sd_{k}"] for k in range(len(qs))]
    cor = [np.einsum("...ij,...kj->...ik", samples[f"L_{k}"], samples[f"L_{k}"]) if q > 1 else None
           for k, q in enumerate(qs)]
    return Posterior(model, beta=samples["beta"], theta=samples["theta"], sigma=None, sd=sd, cor=cor, b=b,
                     diverging=run.diverging, family=family, link=link, hyper=hyper, mcmc=run)
