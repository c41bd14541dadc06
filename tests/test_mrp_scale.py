"""Post-stratification as one compiled program: joint draws of (β, b) against dense computations, several `by`
columns, batches, interaction terms, and a small simulation study of interval coverage."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.bayes import _joint
from jaxmlm.bayes._posterior import Posterior
from jaxmlm.core._blocks import cross_products
from jaxmlm.core._linalg import factorize

from brute_force import dense_z_lambda

STATES = [f"S{i:02d}" for i in range(12)]
AGES = ["18-29", "30-44", "45-64", "65+"]
SEXES = ["f", "m"]
RACES = ["w", "b", "h", "o"]


def _poll(seed=0, n=400, state_sd=0.6):
    """A skewed Gaussian poll: every state and age present (fixed shapes across seeds)."""
    rng = np.random.default_rng(seed)
    state = np.concatenate([STATES, rng.choice(STATES, size=n - len(STATES))])
    age = rng.choice(AGES, size=n, p=[0.55, 0.25, 0.15, 0.05])
    sex = rng.choice(SEXES, size=n, p=[0.2, 0.8])
    race = rng.choice(RACES, size=n)
    effect = dict(zip(STATES, rng.normal(0.0, state_sd, len(STATES))))
    age_effect = dict(zip(AGES, [-0.4, 0.0, 0.3, 0.6]))
    mean = 1.0 + pd.Series(state).map(effect).to_numpy() + pd.Series(age).map(age_effect).to_numpy()
    y = mean + rng.normal(size=n)
    return pd.DataFrame(dict(y=y, state=state, age=age, sex=sex, race=race)), effect, age_effect


def _population(extra_state=True):
    states = STATES + (["S99"] if extra_state else [])  # S99: a state nobody was polled in
    cells = pd.MultiIndex.from_product([states, AGES, SEXES, RACES], names=["state", "age", "sex", "race"])
    cells = cells.to_frame(index=False)
    cells["N"] = np.random.default_rng(7).integers(50, 5000, size=len(cells)).astype(float)
    return cells


def _hand_many(frame, mu, by):
    """Σ N μ / Σ N per group for every row of mu (draws × cells), groups in sorted order, by a dense one-hot."""
    codes = (pd.MultiIndex.from_frame(frame[by]).factorize(sort=True)[0] if by else np.zeros(len(frame), int))
    onehot = np.eye(codes.max() + 1)[codes] * frame["N"].to_numpy()[:, None]
    return mu @ onehot / onehot.sum(axis=0)


def _hand(frame, mu, by):
    """Σ N μ / Σ N per group, by pandas."""
    w = frame.assign(num=frame["N"] * mu)
    if not by:
        return np.array([w["num"].sum() / w["N"].sum()])
    g = w.groupby(by, sort=True)[["num", "N"]].sum()
    return (g["num"] / g["N"]).to_numpy()


@pytest.fixture(scope="module")
def poll():
    return _poll()[0]


@pytest.fixture(scope="module")
def crossed_fit(poll):
    return jm.lmer("y ~ age + (1 | state) + (1 | state:age) + (1 | sex:race)", poll)


# ------------------------------------------------------------------------ joint draws against dense algebra
def _dense_precision(design, theta, weights):
    """M = [[ΛᵀZᵀWZΛ + I, ΛᵀZᵀWX], [XᵀWZΛ, XᵀWX]] in u-space, columns (term, level, component) then β."""
    ZL = dense_z_lambda(design, theta)
    A = np.hstack([ZL, design.X])
    M = A.T @ (weights[:, None] * A)
    m = ZL.shape[1]
    M[:m, :m] += np.eye(m)
    return M


@jax.jit
def _map_of_back_substitution(factor, structure, eye):
    """The matrix of ε ↦ L⁻ᵀ ε (u-space and β), by back substitution of every unit vector (rows of eye)."""
    D = structure.n_prefix
    sizes = [structure.n_levels[t] * structure.qs[t] for t in range(D)]
    p = eye.shape[0] - sum(sizes) - structure.m_z

    def column(e):
        rhs_prefix, off = [], 0
        for t in range(D):
            rhs_prefix.append(e[off : off + sizes[t]].reshape(structure.n_levels[t], structure.qs[t]))
            off += sizes[t]
        beta, u, _ = _joint.back_substitute(factor, structure, p, rhs_prefix, e[off:])
        return jnp.concatenate([x.reshape(-1) for x in u] + [beta])

    return jax.vmap(column)(eye).T


@jax.jit
def _factor(theta, structure, rows, weights, F):
    return factorize(theta, cross_products(structure, rows, weights, F), structure)


@pytest.fixture(scope="module")
def slope_model():
    rng = np.random.default_rng(3)
    n = 150
    data = pd.DataFrame(dict(g1=rng.integers(0, 9, n).astype(str), g2=rng.integers(0, 5, n).astype(str),
                             x=rng.normal(size=n)))
    data["y"] = data["x"] + rng.normal(size=n)
    return jm.Model("y ~ x + (1 + x | g1) + (1 | g2)", data)


@pytest.mark.parametrize("weights", ["model", "random"])
def test_back_substitution_gives_the_dense_inverse(slope_model, weights):
    """L⁻ᵀ L⁻¹ = M⁻¹ exactly, for a vector-valued prefix term and a crossed tail term, with the model's weights
    (a linear model) and with arbitrary positive ones (a GLMM's Fisher weights)."""
    model = slope_model
    d = model.design
    theta = np.array([0.8, 0.3, 0.5, 1.2])
    w = d.weights if weights == "model" else np.random.default_rng(1).uniform(0.2, 3.0, d.n)
    with jax.enable_x64(True):
        F = np.column_stack([d.X, d.y])  # the response row is ignored
        factor = _factor(jnp.asarray(theta), model.structure, model.rows, jnp.asarray(w), jnp.asarray(F))
        total = sum(t.n_levels * t.q for t in d.terms) + d.X.shape[1]
        A = np.asarray(_map_of_back_substitution(factor, model.structure, jnp.eye(total)))
    want = np.linalg.inv(_dense_precision(d, theta, np.asarray(w)))
    np.testing.assert_allclose(A @ A.T, want, rtol=1e-9, atol=1e-12)


def test_point_fit_draws_have_the_joint_covariance(crossed_fit):
    """The draws' mean is (β̂, b̂) and their covariance σ² [Λ 0; 0 I] M⁻¹ [Λ 0; 0 I]ᵀ (Monte Carlo: 8192 draws;
    correlations within 0.06, variances within 8%: about four standard errors)."""
    fit = crossed_fit
    d = fit.model.design
    with jax.enable_x64(True):
        draws, mode = _joint.point_fit_draws(fit, 8192, seed=5)
    sims = np.hstack([np.asarray(b).reshape(8192, -1) for b in draws["b"]] + [np.asarray(draws["beta"])])
    centre = np.concatenate([b.reshape(-1) for b in fit._b] + [fit._beta])
    np.testing.assert_allclose(np.concatenate([np.asarray(b).reshape(-1) for b in mode["b"]]
                                              + [np.asarray(mode["beta"])]), centre, rtol=1e-7, atol=1e-9)
    ZL = dense_z_lambda(d, fit.theta)
    m = ZL.shape[1]
    lam = np.diag(np.repeat(fit.theta, [t.n_levels for t in d.terms]))  # Λ of scalar terms
    scale = np.eye(m + d.X.shape[1])
    scale[:m, :m] = lam
    want = fit.sigma**2 * scale @ np.linalg.inv(_dense_precision(d, fit.theta, d.weights)) @ scale.T
    got = np.cov(sims, rowvar=False)
    sd_want, sd_got = np.sqrt(np.diag(want)), np.sqrt(np.diag(got))
    np.testing.assert_allclose(sd_got, sd_want, rtol=0.08)
    corr = lambda c, s: c / np.outer(s, s)  # noqa: E731
    assert np.max(np.abs(corr(got, sd_got) - corr(want, sd_want))) < 0.06
    assert np.max(np.abs(sims.mean(axis=0) - centre) / sd_want) < 0.06
    np.testing.assert_allclose(np.sqrt(np.diag(want))[m:], fit.se.to_numpy(), rtol=1e-6)  # marginal: vcov(β)


# ------------------------------------------------------------------------ estimates: fit, posterior, hand
@pytest.mark.parametrize("by", [["state"], ["state", "age"], []])
def test_fit_posterior_and_hand_computation_agree(crossed_fit, by):
    """Interaction terms in the model and the frame; an unpolled state; any `by` columns. The plug-in equals
    Σ N μ / Σ N from predict(); a Posterior made of the point fit's own joint draws (its sds 0: unseen levels at
    0 in every draw, as predict() has them) gives the same mean as the hand computation on its draws, and
    (Gaussian: the estimate is linear in (β, b)) the plug-in within Monte Carlo error."""
    fit = crossed_fit
    frame = _population()
    out = jm.poststratify(fit, frame, weight="N", by=by, draws=256, seed=1)
    assert list(out.columns) == by + ["estimate", "sd", "lower", "upper"]
    mu = fit.predict(frame, allow_new_levels=True).to_numpy()
    np.testing.assert_allclose(out["estimate"].to_numpy(), _hand(frame, mu, by), rtol=1e-10)
    assert (out["lower"] < out["estimate"]).all() and (out["estimate"] < out["upper"]).all()

    with jax.enable_x64(True):
        draws, _ = _joint.point_fit_draws(fit, 256, seed=1)
    post = Posterior(fit.model, beta=np.asarray(draws["beta"])[None], theta=np.ones((1, 256, 3)),
                     sigma=np.ones((1, 256)), sd=[np.zeros((1, 256, 1))] * 3, cor=[None] * 3,
                     b=[np.asarray(b)[None] for b in draws["b"]], diverging=np.zeros((1, 256), bool),
                     family="gaussian", link="identity")
    from_post = jm.poststratify(post, frame, weight="N", by=by)
    per_draw = _hand_many(frame, post.predict(frame, allow_new_levels=True)[0], by)
    np.testing.assert_allclose(from_post["estimate"].to_numpy(), per_draw.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(from_post["sd"].to_numpy(), per_draw.std(axis=0, ddof=1), rtol=1e-8)
    np.testing.assert_allclose(from_post["lower"].to_numpy(), np.quantile(per_draw, 0.025, axis=0), rtol=1e-10)
    assert np.all(np.abs(from_post["estimate"] - out["estimate"]) < 4 * out["sd"] / np.sqrt(256))


def test_an_unpolled_state_draws_its_effect(poll):
    """S99 has no respondents: its plug-in effect is 0, and in the draws its effect is N(0, σ²θ²), independent of
    β, so the estimate's variance is gᵀ vcov(β) g + σ²θ² (g: the weighted mean of its cells' X rows). Monte
    Carlo: 20000 draws, sd within 3%."""
    fit = jm.lmer("y ~ age + (1 | state)", poll)
    frame = _population()
    out = jm.poststratify(fit, frame, weight="N", by=["state"], draws=20000, seed=6).set_index("state")
    cells = frame[frame["state"] == "S99"]
    X = fit.model.design.x_spec.get_model_matrix(cells, output="pandas").to_numpy(dtype=float)
    g = cells["N"].to_numpy() @ X / cells["N"].sum()
    assert out.loc["S99", "estimate"] == pytest.approx(g @ fit.fixef.to_numpy(), rel=1e-10)
    var = g @ fit.vcov.to_numpy() @ g + (fit.sigma * fit.theta[0]) ** 2
    assert out.loc["S99", "sd"] == pytest.approx(np.sqrt(var), rel=0.03)


def test_chunking_does_not_change_the_numbers(crossed_fit):
    frame = _population()
    whole = jm.poststratify(crossed_fit, frame, weight="N", by=["state"], draws=300, seed=2)
    small = jm.poststratify(crossed_fit, frame, weight="N", by=["state"], draws=300, seed=2, chunk_cells=100,
                            chunk_draws=7)
    np.testing.assert_allclose(small[["estimate", "sd", "lower", "upper"]].to_numpy(),
                               whole[["estimate", "sd", "lower", "upper"]].to_numpy(), rtol=1e-10)


@pytest.mark.slow
def test_batch_gives_one_block_per_outcome(poll):
    """A linear fit_batch result: each outcome's block equals the post-stratification of that outcome's own fit
    (plug-in to the batch's tolerance; sd within Monte Carlo error of 1000 draws)."""
    model = jm.Model("y ~ age + (1 | state)", poll)
    rng = np.random.default_rng(4)
    Y = np.column_stack([poll["y"], poll["y"] + rng.normal(size=len(poll))])
    batch = model.fit_batch(pd.DataFrame(Y, columns=["a", "b"]))
    frame = _population()
    with pytest.raises(jm.JaxmlmError, match="responses="):
        jm.poststratify(batch, frame, weight="N", by=["state"])
    with pytest.raises(jm.JaxmlmError, match="400 × 2"):
        jm.poststratify(batch, frame, weight="N", by=["state"], responses=Y[:, :1])
    out = jm.poststratify(batch, frame, weight="N", by=["state"], draws=1000, seed=3, responses=Y)
    assert list(out.columns) == ["outcome", "state", "estimate", "sd", "lower", "upper"]
    assert list(out["outcome"].unique()) == ["a", "b"]
    for j, name in enumerate(["a", "b"]):
        single = jm.lmer("y ~ age + (1 | state)", poll.assign(y=Y[:, j]))
        want = jm.poststratify(single, frame, weight="N", by=["state"], draws=1000, seed=9)
        got = out[out["outcome"] == name]
        np.testing.assert_allclose(got["estimate"].to_numpy(), want["estimate"].to_numpy(), rtol=1e-5)
        np.testing.assert_allclose(got["sd"].to_numpy(), want["sd"].to_numpy(), rtol=0.12)


def test_theta_draws_follow_the_wald_approximation(poll):
    """θ ~ N(θ̂, 2/H) with H the second derivative of the REML criterion: H against central differences of the
    dense criterion, the draws' variance within 5% (20000 draws: about four standard errors); the plug-in stays
    at θ̂."""
    from brute_force import dense_criterion

    fit = jm.lmer("y ~ age + (1 | state)", poll)
    d, theta = fit.model.design, fit.theta
    h = 1e-3
    f = [dense_criterion(d, theta + k * h, reml=True) for k in (-1, 0, 1)]
    H_dense = (f[0] - 2 * f[1] + f[2]) / h**2
    with jax.enable_x64(True):
        H = float(_joint._deviance_hessian(jnp.asarray(theta), fit.model.linear_problem, True)[0, 0])
        thetas = _joint._theta_draws(theta, fit.model.linear_problem, True, 20000, seed=3)
    assert H == pytest.approx(H_dense, rel=1e-4)
    assert thetas.var() == pytest.approx(2.0 / H, rel=0.05)
    frame = _population()
    fixed = jm.poststratify(fit, frame, weight="N", by=["state"], draws=256, seed=4)
    varying = jm.poststratify(fit, frame, weight="N", by=["state"], draws=256, seed=4, theta_uncertainty=True)
    np.testing.assert_allclose(varying["estimate"], fixed["estimate"], rtol=1e-12)
    assert np.all(np.isfinite(varying["sd"])) and np.all(varying["lower"] < varying["upper"])


# ------------------------------------------------------------------------ bad input
def test_bad_input_names_what_is_wrong(crossed_fit):
    frame = _population()
    with pytest.raises(jm.JaxmlmError, match="needs by="):
        jm.poststratify(crossed_fit, frame, weight="N")
    with pytest.raises(jm.DataError, match="'race'.*sex:race"):
        jm.poststratify(crossed_fit, frame.drop(columns="race"), weight="N", by=["state"])
    with pytest.raises(jm.DataError, match="'state'.*by"):
        jm.poststratify(crossed_fit, frame.assign(state=frame["state"].where(frame.index > 3)), weight="N",
                        by=["state"])
    with pytest.raises(jm.DataError, match="'region'"):
        jm.poststratify(crossed_fit, frame, weight="N", by=["state", "region"])


# ------------------------------------------------------------------------ simulation study
def _coverage(replicates, seed0, draws):
    frame = _population(extra_state=False)
    age_mean = dict(zip(AGES, [-0.4, 0.0, 0.3, 0.6]))
    hits, total = 0, 0
    for r in range(replicates):
        poll, effect, _ = _poll(seed=seed0 + r, n=400)
        fit = jm.lmer("y ~ age + (1 | state)", poll)
        truth_mu = 1.0 + frame["state"].map(effect).to_numpy() + frame["age"].map(age_mean).to_numpy()
        truth = _hand(frame, truth_mu, ["state"])
        out = jm.poststratify(fit, frame, weight="N", by=["state"], draws=draws, seed=r)
        hits += int(np.sum((out["lower"].to_numpy() <= truth) & (truth <= out["upper"].to_numpy())))
        total += len(truth)
    return hits / total


@pytest.mark.slow  # 20 fits and post-stratifications
def test_point_fit_intervals_cover_the_true_state_values():
    """20 replicate polls of 400 (12 states, state effects redrawn each time), 240 state intervals: coverage of
    the 95% intervals within [0.89, 0.99]. Monte Carlo: were the intervals independent, the standard error of the
    coverage would be 1.4 points; states of one poll share β̂ and θ̂, so the band allows about four below. 400
    draws per poll: the quantiles' own Monte Carlo error moves the coverage by well under a point."""
    coverage = _coverage(20, 100, draws=400)
    assert 0.89 <= coverage <= 0.99, coverage


# ------------------------------------------------------------------------ a binomial GLMM (conftest.cbpp_fit)
def test_glmm_draws_have_the_laplace_covariance(cbpp_fit):
    """GLMM: the draws centre on (β̂, b̂) with covariance S M(W)⁻¹ Sᵀ, W the Fisher weights at the optimum
    (dense; its β block is lme4's RX-based vcov); Monte Carlo as for the linear model (8192 draws)."""
    fit = cbpp_fit
    d = fit.model.design
    with jax.enable_x64(True):
        draws, _ = _joint.point_fit_draws(fit, 8192, seed=8)
    sims = np.hstack([np.asarray(draws["b"][0]).reshape(8192, -1), np.asarray(draws["beta"])])
    m = d.terms[0].n_levels
    scale = np.diag(np.r_[np.full(m, fit.theta[0]), np.ones(d.X.shape[1])])
    want = scale @ np.linalg.inv(_dense_precision(d, fit.theta, fit.extra["working_weights"])) @ scale.T
    np.testing.assert_allclose(want[m:, m:], fit.extra["vcov_rx"], rtol=1e-6)
    got = np.cov(sims, rowvar=False)
    sd_want, sd_got = np.sqrt(np.diag(want)), np.sqrt(np.diag(got))
    np.testing.assert_allclose(sd_got, sd_want, rtol=0.08)
    assert np.max(np.abs(got / np.outer(sd_got, sd_got) - want / np.outer(sd_want, sd_want))) < 0.06
    centre = np.r_[fit._b[0].reshape(-1), fit._beta]
    assert np.max(np.abs(sims.mean(axis=0) - centre) / sd_want) < 0.06


def test_glmm_estimates_equal_the_hand_computation(cbpp_fit):
    """Binomial: the plug-in is Σ N expit(η) / Σ N per herd (an unpolled herd included), and the intervals hold
    it."""
    herds = list(cbpp_fit.ranef()["herd"].index) + ["99"]
    frame = pd.MultiIndex.from_product([herds, ["1", "2", "3", "4"]], names=["herd", "period"]).to_frame(index=False)
    frame["N"] = np.random.default_rng(2).integers(5, 50, size=len(frame)).astype(float)
    out = jm.poststratify(cbpp_fit, frame, weight="N", by=["herd"], draws=500, seed=3)
    mu = cbpp_fit.predict(frame, allow_new_levels=True).to_numpy()
    np.testing.assert_allclose(out["estimate"].to_numpy(), _hand(frame, mu, ["herd"]), rtol=1e-10)
    assert ((out["lower"] < out["estimate"]) & (out["estimate"] < out["upper"])).all()
    assert out.set_index("herd").loc["99", "sd"] > out["sd"].iloc[:-1].max()  # its effect is drawn from N(0, σ²)


def test_glmm_draws_given_a_drawn_theta_match_the_dense_working_model(cbpp_fit):
    """Given θ ≠ θ̂, the draws centre on the dense penalized least-squares solution of the working response
    (Fisher weights at the optimum) plus the shift that makes θ̂ give (β̂, b̂), with covariance S M(θ)⁻¹ Sᵀ (4096
    draws: sds within 8%, means within 0.08 sd)."""
    from jaxmlm.fit._glmm import glmm_problem

    fit = cbpp_fit
    d = fit.model.design
    m, p = d.terms[0].n_levels, d.X.shape[1]
    theta1 = fit.theta * 1.4
    with jax.enable_x64(True):
        w, z = (np.asarray(a) for a in _joint._working_response(jnp.asarray(np.r_[fit._theta, fit._beta]),
                                                                  glmm_problem(fit.model)))
        problem = _joint.glmm_working_problem(fit)
        at_hat = _joint._lmm_mode(jnp.asarray(fit._theta), problem, False)
        shift_beta = jnp.asarray(fit._beta) - at_hat["beta"]
        shift_b = (jnp.asarray(fit._b[0]) - at_hat["b"][0],)
        keys = jax.random.split(jax.random.PRNGKey(0), 4096)
        draws, _ = _joint._glmm_theta_chunk(keys, jnp.tile(jnp.asarray(theta1), (4096, 1)), problem, shift_beta,
                                            shift_b)
    def dense_solution(theta):
        A = np.hstack([dense_z_lambda(d, theta), d.X])
        M = _dense_precision(d, theta, w)
        return np.linalg.solve(M, A.T @ (w * z)), M

    sol1, M1 = dense_solution(theta1)
    sol0, _ = dense_solution(fit.theta)
    want_mean = np.r_[theta1[0] * sol1[:m] - fit.theta[0] * sol0[:m] + fit._b[0].reshape(-1),
                      sol1[m:] - sol0[m:] + fit._beta]
    scale = np.diag(np.r_[np.full(m, theta1[0]), np.ones(p)])
    want_sd = np.sqrt(np.diag(scale @ np.linalg.inv(M1) @ scale.T))
    sims = np.hstack([np.asarray(draws["b"][0]).reshape(4096, -1), np.asarray(draws["beta"])])
    np.testing.assert_allclose(sims.std(axis=0), want_sd, rtol=0.08)
    assert np.max(np.abs(sims.mean(axis=0) - want_mean) / want_sd) < 0.08


def _binomial_poll(seed):
    """Fixed cells (12 states × 4 ages, young people over-sampled) and fixed trials; new state effects and
    responses per seed."""
    rng = np.random.default_rng(seed)
    cells = pd.MultiIndex.from_product([STATES, AGES], names=["state", "age"]).to_frame(index=False)
    cells["n"] = np.tile([40.0, 15.0, 8.0, 3.0], len(STATES))
    effect = dict(zip(STATES, rng.normal(0.0, 0.5, len(STATES))))
    age_effect = dict(zip(AGES, [0.6, 0.1, -0.2, -0.5]))
    eta = -0.2 + cells["state"].map(effect).to_numpy() + cells["age"].map(age_effect).to_numpy()
    cells["yes"] = rng.binomial(cells["n"].astype(int), 1 / (1 + np.exp(-eta))).astype(float)
    cells["no"] = cells["n"] - cells["yes"]
    return cells, effect, age_effect


def test_glmm_theta_draws_follow_the_profiled_hessian(cbpp_fit):
    """GLMM θ uncertainty: S (central differences of the fit's exact gradient, Schur complement over β) equals the
    Schur complement of the Hessian of the Laplace deviance in (θ, β) by second differences of its values (h =
    1e-3); the θ draws' variance is 2/S (20000 draws: within 5%, about four standard errors)."""
    from jaxmlm.fit._glmm import _value_and_grad, glmm_problem

    fit = cbpp_fit
    problem = glmm_problem(fit.model)
    x0, h = np.r_[fit._theta, fit._beta], 1e-3
    k = x0.size
    with jax.enable_x64(True):
        f = lambda x: float(_value_and_grad(x, problem, None, None)[0])  # noqa: E731
        E = h * np.eye(k)
        H = np.array([[(f(x0 + E[i] + E[j]) - f(x0 + E[i] - E[j]) - f(x0 - E[i] + E[j]) + f(x0 - E[i] - E[j]))
                       / (4 * h * h) for j in range(k)] for i in range(k)])
        S = _joint.glmm_theta_hessian(fit)
        thetas = _joint._wald_draws(fit._theta, S, 20000, seed=2)
    want = H[:1, :1] - H[:1, 1:] @ np.linalg.solve(H[1:, 1:], H[1:, :1])
    np.testing.assert_allclose(S, want, rtol=1e-4)
    assert thetas.var() == pytest.approx(2.0 / S[0, 0], rel=0.05)
    assert thetas.mean() == pytest.approx(fit._theta[0], abs=4 * np.sqrt(2.0 / S[0, 0] / 20000))


def test_glmm_theta_uncertainty_keeps_the_mode_and_draws_around_it(cbpp_fit):
    """At θ̂ the working model, shifted, gives the fit's (β̂, b̂) exactly; with θ drawn the plug-in is unchanged,
    the draws' mean stays at (β̂, b̂) within Monte Carlo error, and the draws carry each draw's own θ."""
    fit = cbpp_fit
    with jax.enable_x64(True):
        draws, mode = _joint.point_fit_draws(fit, 4000, seed=4, theta_uncertainty=True)
        fixed, _ = _joint.point_fit_draws(fit, 4000, seed=4)
    np.testing.assert_allclose(np.asarray(mode["beta"]), fit._beta, rtol=1e-12)
    assert np.asarray(draws["theta"]).shape == (4000, 1) and np.asarray(draws["theta"]).std() > 0
    sims = np.hstack([np.asarray(draws["b"][0]).reshape(4000, -1), np.asarray(draws["beta"])])
    base = np.hstack([np.asarray(fixed["b"][0]).reshape(4000, -1), np.asarray(fixed["beta"])])
    centre = np.r_[fit._b[0].reshape(-1), fit._beta]
    assert np.max(np.abs(sims.mean(axis=0) - centre) / sims.std(axis=0)) < 0.1
    # θ's spread widens the herd effects' draws (their scale is θ)
    assert np.mean(sims[:, :15].std(axis=0)) > np.mean(base[:, :15].std(axis=0))


@pytest.fixture(scope="module")
def binomial_study():
    """30 replicate binomial polls of 792 interviews in 48 cells, each fitted once and post-stratified twice (θ
    at θ̂ and θ drawn, 400 draws each: the Monte Carlo error of a 95% quantile's coverage is small against the
    band below): per setting (hits, intervals, mean interval width)."""
    frame = _population(extra_state=False)
    out = {False: [0, 0, 0.0], True: [0, 0, 0.0]}
    for r in range(30):
        cells, effect, age_effect = _binomial_poll(200 + r)
        fit = jm.glmer("cbind(yes, no) ~ age + (1 | state)", cells, family="binomial")
        eta = -0.2 + frame["state"].map(effect).to_numpy() + frame["age"].map(age_effect).to_numpy()
        truth = _hand(frame, 1 / (1 + np.exp(-eta)), ["state"])
        for theta_uncertainty in (False, True):
            table = jm.poststratify(fit, frame, weight="N", by=["state"], draws=400, seed=r,
                                    theta_uncertainty=theta_uncertainty)
            lower, upper = table["lower"].to_numpy(), table["upper"].to_numpy()
            acc = out[theta_uncertainty]
            acc[0] += int(np.sum((lower <= truth) & (truth <= upper)))
            acc[1] += len(truth)
            acc[2] += float(np.sum(upper - lower))
    return {k: (h, n, w / n) for k, (h, n, w) in out.items()}


@pytest.mark.slow  # 30 glmer fits, 60 post-stratifications
def test_binomial_point_fit_intervals_cover_the_true_state_values(binomial_study):
    """The glmer point fit's 95% state intervals (θ at θ̂) cover the true post-stratified state shares in [0.88,
    0.99] of 360 intervals (the band as in the linear study, a little wider below: the Laplace Gaussian and the
    fixed θ̂ both narrow the interval)."""
    hits, total, _ = binomial_study[False]
    assert 0.88 <= hits / total <= 0.99, hits / total


@pytest.mark.slow  # 30 glmer fits, 60 post-stratifications
def test_binomial_theta_uncertainty_widens_and_covers(binomial_study):
    """With θ drawn (12 states: θ̂ itself is uncertain) the intervals are wider on average and cover within
    [0.90, 0.99], no less than with θ fixed."""
    hits0, total, width0 = binomial_study[False]
    hits1, _, width1 = binomial_study[True]
    print(f"coverage {hits0 / total:.3f} (θ fixed), {hits1 / total:.3f} (θ drawn); widths {width0:.4f}, {width1:.4f}")
    assert width1 > width0
    assert hits1 >= hits0
    assert 0.90 <= hits1 / total <= 0.99, hits1 / total


@pytest.mark.slow
def test_glmm_batch_gives_one_block_per_outcome():
    """A binomial fit_batch result (two outcomes, proportions with the trials as weights): each outcome's block
    equals the post-stratification of that outcome's own glmer fit (plug-in to 1e-6; sd within the Monte Carlo
    error of two independent 1000-draw sets, 12%)."""
    polls = [_binomial_poll(200)[0], _binomial_poll(201)[0]]
    Y = pd.DataFrame({name: c["yes"] / c["n"] for name, c in zip(["a", "b"], polls)})
    batch = jm.Model("cbind(yes, no) ~ age + (1 | state)", polls[0], family="binomial").fit_batch(Y)
    frame = _population()
    with pytest.raises(jm.JaxmlmError, match="theta_uncertainty"):
        jm.poststratify(batch, frame, weight="N", by=["state"], responses=Y, theta_uncertainty=True)
    out = jm.poststratify(batch, frame, weight="N", by=["state"], draws=1000, seed=3, responses=Y)
    assert list(out["outcome"].unique()) == ["a", "b"]
    for name, cells in zip(["a", "b"], polls):
        single = jm.glmer("cbind(yes, no) ~ age + (1 | state)", cells, family="binomial")
        want = jm.poststratify(single, frame, weight="N", by=["state"], draws=1000, seed=9)
        got = out[out["outcome"] == name]
        np.testing.assert_allclose(got["estimate"].to_numpy(), want["estimate"].to_numpy(), rtol=1e-6)
        np.testing.assert_allclose(got["sd"].to_numpy(), want["sd"].to_numpy(), rtol=0.12)


@pytest.mark.slow
def test_posterior_intervals_cover_the_true_state_values():
    """The same linear study with the posterior (collapsed NUTS, 2 chains × 200 draws after 200 warmup): 6
    replicate polls, 72 state intervals, coverage within [0.85, 1.0] (the standard error of independent intervals
    is 2.6 points; states of one poll share their draws of β and θ; 400 draws put a 2.5% quantile within about
    0.8 percentile points, small against that band). The poststratified posterior estimate also agrees with the
    point fit's plug-in within the posterior sd."""
    frame = _population(extra_state=False)
    age_mean = dict(zip(AGES, [-0.4, 0.0, 0.3, 0.6]))
    hits = total = 0
    for r in range(6):
        poll, effect, _ = _poll(seed=300 + r, n=400)
        model = jm.Model("y ~ age + (1 | state)", poll)
        post = model.sample(chains=2, draws=200, warmup=200, seed=r)
        truth = _hand(frame, 1.0 + frame["state"].map(effect).to_numpy() + frame["age"].map(age_mean).to_numpy(),
                      ["state"])
        out = jm.poststratify(post, frame, weight="N", by=["state"])
        hits += int(np.sum((out["lower"].to_numpy() <= truth) & (truth <= out["upper"].to_numpy())))
        total += len(truth)
        plug_in = jm.poststratify(model.fit(), frame, weight="N", by=["state"], draws=64, seed=r)
        assert np.all(np.abs(out["estimate"] - plug_in["estimate"]) < out["sd"])
    assert 0.85 <= hits / total <= 1.0, hits / total
