"""model.sample(effects="laplace"): NUTS on (β, sds) with the random effects integrated out by the Laplace
approximation, against brute-force dense computations of the same density and of the effects' Gaussian."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

import jaxmlm as jm
from jaxmlm._config import float64
from jaxmlm.bayes import _bayes, _laplace
from jaxmlm.bayes._posterior import ess_bulk
from jaxmlm.fit._glmm import glmm_problem

pytestmark = pytest.mark.usefixtures("x64")


def _binomial_data(seed, n_g=8, n_h=0, cells=3, trials=40, sd=(0.9, 0.6)):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_g), cells)
    frame = pd.DataFrame({"g": [f"g{i}" for i in g], "x": rng.normal(size=g.size)})
    eta = -0.4 + sd[0] * rng.normal(size=n_g)[g]
    if n_h:
        h = rng.integers(0, n_h, size=g.size)
        frame["h"] = [f"h{i}" for i in h]
        eta = eta + 0.3 * frame["x"].to_numpy() + sd[1] * rng.normal(size=n_h)[h]
    n = rng.integers(trials // 2, trials, size=g.size)
    frame["yes"] = rng.binomial(n, special.expit(eta))
    frame["no"] = n - frame["yes"]
    return frame


def _dense_design(model):
    """Z (n × Σ levels, one column per level of each scalar term), X, trials and proportions."""
    d = model.design
    Z = np.concatenate([np.eye(t.n_levels)[t.codes] * t.z for t in d.terms], axis=1)
    return Z, d.X, d.weights, d.y


def _dense_laplace(Z, X, trials, y, sds, beta, iters=30):
    """û, H = ΛZᵀWZΛ + I and −½ (Laplace deviance up to a constant), by dense Newton steps; sds: per column of
    Z. Vectorized over a leading batch axis of sds (B × m) and beta (B × p)."""
    u = np.zeros(sds.shape)
    for _ in range(iters):
        eta = beta @ X.T + (u * sds) @ Z.T
        mu = special.expit(eta)
        W = trials * mu * (1 - mu)
        grad = ((trials * (mu - y)) @ Z) * sds + u  # ½ ∂h/∂u
        H = np.einsum("bj,jn,bn,nk,bk->bjk", sds, Z.T, W, Z, sds, optimize=True) + np.eye(sds.shape[1])
        u = u - np.linalg.solve(H, grad[..., None])[..., 0]
    eta = beta @ X.T + (u * sds) @ Z.T
    mu = special.expit(eta)
    loglik = -np.sum(trials * (y * np.logaddexp(0, -eta) + (1 - y) * np.logaddexp(0, eta)), axis=-1)
    W = trials * mu * (1 - mu)
    H = np.einsum("bj,jn,bn,nk,bk->bjk", sds, Z.T, W, Z, sds, optimize=True) + np.eye(sds.shape[1])
    return u, H, loglik - 0.5 * np.sum(u**2, axis=-1) - 0.5 * np.linalg.slogdet(H)[1]


# ---------------------------------------------------------------------------------------------- one scalar term
@pytest.fixture(scope="module")
def small():
    frame = _binomial_data(3)
    model = jm.Model("cbind(yes, no) ~ 1 + (1 | g)", frame, family="binomial")
    post = model.sample(chains=4, draws=1000, warmup=500, seed=2, effects="laplace")
    return frame, model, post


def test_posterior_matches_grid_quadrature_of_the_same_density(small):
    """(β₀, log sd): the sampler's posterior mean and sd against a 2-D grid quadrature of prior × exp(−½ D)."""
    frame, model, post = small
    hyper = _bayes.default_hyper(model)
    Z, X, trials, y = _dense_design(model)
    b0 = np.linspace(-3.5, 2.5, 121)
    log_sd = np.linspace(-8.0, 1.5, 151)
    B0, S = (a.reshape(-1) for a in np.meshgrid(b0, log_sd, indexing="ij"))
    sd = np.exp(S)
    _, _, half_dev = _dense_laplace(Z, X, trials, y, np.repeat(sd[:, None], Z.shape[1], axis=1), B0[:, None])
    s_scale = float(np.asarray(hyper.sd_scale[0])[0])
    log_prior = (stats.norm.logpdf(B0, float(hyper.beta_loc[0]), float(hyper.beta_scale[0]))
                 + stats.halfnorm.logpdf(sd / s_scale) - np.log(s_scale) + S)  # + log sd: the Jacobian
    log_post = log_prior + half_dev
    w = np.exp(log_post - log_post.max())
    w /= w.sum()
    assert w.reshape(b0.size, log_sd.size)[[0, -1], :].sum() < 1e-6  # the grid holds the posterior
    assert w.reshape(b0.size, log_sd.size)[:, [0, -1]].sum() < 1e-6
    draws = {"b0": post.draws["(Intercept)"], "log_sd": np.log(post.draws["sd_(Intercept)|g"])}
    for name, grid in (("b0", B0), ("log_sd", S)):
        mean = np.sum(w * grid)
        sd_grid = np.sqrt(np.sum(w * (grid - mean) ** 2))
        x = draws[name]
        ess = ess_bulk(x)
        assert ess > 400
        assert abs(x.mean() - mean) < 4.5 * sd_grid / np.sqrt(ess), name
        assert abs(x.std() / sd_grid - 1) < 4.5 / np.sqrt(2 * ess), name


def test_poststratify_from_the_laplace_posterior_is_the_hand_sum(small):
    frame, model, post = small
    census = frame[["g"]].drop_duplicates().assign(N=np.arange(8) + 5.0)
    census = pd.concat([census, census.assign(N=census["N"] * 2)], ignore_index=True)
    table = jm.poststratify(post, census, weight="N", by=["g"], level=0.9)
    beta = post.draws["beta"].reshape(-1, 1)
    b = post.draws["b_g"].reshape(beta.shape[0], -1)
    codes = np.asarray(pd.Categorical(census["g"], categories=model.design.terms[0].levels).codes)
    mu = special.expit(beta + b[:, codes])
    N = census["N"].to_numpy()
    for level in range(8):
        rows = codes == level
        est = (mu[:, rows] * N[rows]).sum(axis=1) / N[rows].sum()
        name = model.design.terms[0].levels[level]
        row = table.loc[table["g"].astype(str) == str(name)].iloc[0]
        np.testing.assert_allclose(row["estimate"], est.mean(), rtol=1e-10)
        np.testing.assert_allclose([row["lower"], row["upper"]], np.quantile(est, [0.05, 0.95]), rtol=1e-8)
    overall = jm.poststratify(post, census, weight="N", by=[])
    np.testing.assert_allclose(overall["estimate"].iloc[0], ((mu * N).sum(axis=1) / N.sum()).mean(), rtol=1e-10)


def test_laplace_posterior_reports_like_the_other_samplers(small):
    _, model, post = small
    table = post.summary()
    assert list(table.index) == ["(Intercept)", "sd_(Intercept)|g"]
    assert post.draws["b_g"].shape == (4, 1000, 8, 1)
    assert post.predict().shape == (4, 1000, model.design.n)
    assert np.all(np.isfinite(post.draws["b_g"]))


# ---------------------------------------------------------------------------------------------- the effects' draws
def test_effect_draws_are_the_laplace_gaussian_at_fixed_theta_beta():
    """At one (θ, β): b's draws have mean Λû and covariance Λ(ΛᵀZᵀWZΛ + I)⁻¹Λ, û and H from a dense Newton
    solve."""
    frame = _binomial_data(5, n_g=6, n_h=4, cells=4)
    model = jm.Model("cbind(yes, no) ~ 1 + x + (1 | g) + (1 | h)", frame, family="binomial")
    problem = glmm_problem(model)
    theta, beta = np.array([0.8, 0.5]), np.array([-0.3, 0.2])
    Z, X, trials, y = _dense_design(model)
    levels = [t.n_levels for t in model.design.terms]
    sds = np.repeat(theta, levels)
    u_dense, H, _ = _dense_laplace(Z, X, trials, y, sds[None], beta[None])
    from jaxmlm.core._pirls import flat_modes, pirls

    u_mode = flat_modes(pirls(jnp.asarray(theta), jnp.asarray(beta), problem)[1])
    np.testing.assert_allclose(np.asarray(u_mode), u_dense[0], atol=1e-8)
    S = 20000
    b, ok = _laplace.draw_effects(jax.random.PRNGKey(0), jnp.tile(theta, (S, 1)), jnp.tile(beta, (S, 1)), problem)
    assert np.all(np.asarray(ok))
    draws = np.concatenate([np.asarray(bk).reshape(S, -1) for bk in b], axis=1)
    mean = sds * u_dense[0]
    cov = np.diag(sds) @ np.linalg.inv(H[0]) @ np.diag(sds)
    se = np.sqrt(np.diag(cov) / S)
    assert np.all(np.abs(draws.mean(axis=0) - mean) < 4.5 * se)
    scale = np.sqrt(np.outer(np.diag(cov), np.diag(cov)))
    np.testing.assert_array_less(np.abs(np.cov(draws.T) - cov) / scale, 5.0 * np.sqrt(2.0 / S))


# ---------------------------------------------------------------------------------------------- options
@pytest.mark.parametrize("bad", ["integrated", "Laplace", None, 1])
def test_unknown_effects_are_refused_before_compiling(bad, monkeypatch):
    frame = _binomial_data(1)
    model = jm.Model("cbind(yes, no) ~ 1 + (1 | g)", frame, family="binomial")
    monkeypatch.setattr(_laplace, "sample_laplace", lambda *a, **k: pytest.fail("compiled before checking"))
    with pytest.raises(ValueError, match="unknown effects"):
        model.sample(effects=bad)


def test_laplace_options_are_checked_before_compiling(monkeypatch):
    frame = _binomial_data(1)
    model = jm.Model("cbind(yes, no) ~ 1 + (1 | g)", frame, family="binomial")
    monkeypatch.setattr(_laplace, "sample_laplace", lambda *a, **k: pytest.fail("compiled before checking"))
    with pytest.raises(ValueError, match="draws must be an integer"):
        model.sample(effects="laplace", draws=0)
    with pytest.raises(ValueError, match="unknown prior"):
        model.sample(effects="laplace", prior="flat")
    with pytest.raises(ValueError, match="chain_method"):
        model.sample(effects="laplace", chain_method="threads")


@float64
def test_pirls_starts_from_the_point_fits_modes_in_the_structures_order():
    """centring='fit' predicts the sampler's PIRLS start from the fit's spherical modes (getME(fit, "u")): at the
    fit's (θ, β) they are PIRLS's own mode, term by term in the structure's order (two crossed terms of different
    sizes), the prediction there is those modes, and PIRLS from there stops at once; 'prior' starts from 0."""
    from jaxmlm.core._mode_prediction import predict_modes
    from jaxmlm.core._pirls import laplace_deviance_from

    frame = _binomial_data(7, n_g=9, n_h=5, cells=4)
    model = jm.Model("cbind(yes, no) ~ 1 + x + (1 | h) + (1 | g)", frame, family="binomial")
    fit = model.fit(warn=False)
    x_fit, u_fit = _laplace.point_fit_modes(model, "fit")
    assert u_fit.shape == (9 + 5,) and x_fit.shape == (2 + 2,)
    assert _laplace.point_fit_modes(model, "prior") is None
    np.testing.assert_allclose(_laplace.point_fit_modes(model, fit)[1], u_fit)
    problem = glmm_problem(model)
    assert _laplace.pirls_start(model, "prior", problem) is None
    start = _laplace.pirls_start(model, fit, problem)
    x = jnp.concatenate([jnp.asarray(fit.theta), jnp.asarray(fit.fixef.to_numpy())])
    np.testing.assert_allclose(np.asarray(predict_modes(start, x, problem)), u_fit, atol=1e-12)
    pirls = jax.jit(laplace_deviance_from, static_argnums=(3, 4))  # one program, not each operation eagerly
    _, (u0, ok0, it0) = pirls(x, problem, jnp.zeros_like(jnp.asarray(u_fit)), 1, True)
    _, (u1, ok1, it1) = pirls(x, problem, jnp.asarray(u_fit), 1, True)
    np.testing.assert_allclose(np.asarray(u0), u_fit, atol=1e-6)
    assert bool(ok0) and bool(ok1) and int(it1) < int(it0)
