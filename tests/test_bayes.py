"""NUTS sampler: the collapsed Gaussian density against a dense computation, u's conditional, a short run on
sleepstudy against lme4, the posterior object, and a short binomial run."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import jaxmlm as jm
from jaxmlm.bayes._bayes import conditional_u, gaussian_log_likelihood
from jaxmlm.core._covariance import theta_to_matrices
from jaxmlm.core._linalg import factorize

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")

# lme4 1.1-31, lmer(Reaction ~ Days + (Days | Subject), sleepstudy) (REML)
LME4_FIXEF = {"(Intercept)": 251.405105, "Days": 10.467286}
LME4_SE = {"(Intercept)": 6.824597, "Days": 1.545790}


def _dense_pieces(model, theta):
    """Z Λ (n × m, terms in model order, level-major within a term), X, y, w."""
    d = model.design
    Ts = theta_to_matrices(theta, model.qs)
    cols = []
    for t, T in zip(d.terms, Ts):
        Z = np.zeros((d.n, t.n_levels * t.q))
        for j in range(t.q):
            Z[np.arange(d.n), t.codes * t.q + j] = t.z[:, j]
        cols.append(Z @ np.kron(np.eye(t.n_levels), T))
    return np.hstack(cols), d.X, d.y - d.offset, d.weights


@pytest.fixture(scope="module")
def sleep_model():
    return jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))


@pytest.fixture(scope="module")
def crossed_model():
    return jm.Model("diameter ~ 1 + (1 | plate) + (1 | sample)", jm.datasets.load("Penicillin"))


_loglik = jax.jit(gaussian_log_likelihood)


@jax.jit
def _mode(theta, beta, problem):
    factor = factorize(theta, problem.blocks, problem.structure)
    zero = tuple(jnp.zeros((l, q)) for l, q in zip(problem.structure.n_levels, problem.structure.qs))
    return conditional_u(factor, problem.structure, problem.p, beta, zero)


@pytest.mark.parametrize("which", ["sleep_model", "crossed_model"])
def test_collapsed_density_and_conditional_mode_match_dense(which, request):
    model = request.getfixturevalue(which)
    rng = np.random.default_rng(3)
    problem = model.linear_problem
    for _ in range(3):
        theta = rng.normal(size=model.n_theta) + np.where(jm.core._covariance.theta_diagonal_mask(model.qs), 1.0, 0.0)
        beta = rng.normal(scale=5.0, size=problem.p) + np.asarray(model.design.X.T @ model.design.y) / model.design.n / problem.p
        sigma = float(rng.uniform(0.5, 30.0))
        ZL, X, y, w = _dense_pieces(model, theta)
        V = sigma**2 * (ZL @ ZL.T + np.diag(1.0 / w))
        want = stats.multivariate_normal(mean=X @ beta, cov=V).logpdf(y)
        got = float(_loglik(jnp.asarray(beta), jnp.asarray(theta), sigma, problem))
        assert got == pytest.approx(want, rel=1e-10, abs=1e-8)
        # conditional mode of u given β: (ΛᵀZᵀWZΛ + I)⁻¹ ΛᵀZᵀW(y − Xβ)
        M = ZL.T @ (w[:, None] * ZL) + np.eye(ZL.shape[1])
        u_dense = np.linalg.solve(M, ZL.T @ (w * (y - X @ beta)))
        u, _ = _mode(jnp.asarray(theta), jnp.asarray(beta), problem)
        np.testing.assert_allclose(np.concatenate([np.asarray(x).ravel() for x in u]), u_dense, rtol=1e-8, atol=1e-8)


@pytest.mark.slow  # compiling the sampler
def test_sleepstudy_posterior(sleep_model):
    """One short NUTS run (compiling the sampler dominates), checked from several sides; kept in one test so
    that parallel test workers do not each compile it."""
    post = sleep_model.sample(chains=2, draws=300, warmup=300, seed=1)
    check_posterior_means_near_lme4(post)
    check_summary_layout_and_draws(post)
    check_random_effect_draws_near_conditional_modes(post, sleep_model)
    check_predict_shapes_and_population_level(post)
    check_to_arviz_or_clear_import_error(post)
    check_no_silent_nan(post)


def check_no_silent_nan(sleep_posterior):
    from test_no_silent_nan import posterior_problems

    problems = posterior_problems(sleep_posterior)
    assert not problems, "\n".join(problems)


def check_posterior_means_near_lme4(sleep_posterior):
    for name, value in LME4_FIXEF.items():
        assert abs(sleep_posterior.fixef[name] - value) < 1.5 * LME4_SE[name], name
    table = sleep_posterior.summary()
    assert (table["r_hat"] < 1.05).all(), table
    assert (table["ess_bulk"] > 100).all(), table
    # σ and the subject sds near lme4's REML values (25.59, 24.74, 5.92), well inside their posterior spread
    assert abs(table.loc["sigma", "mean"] - 25.59) < 2 * table.loc["sigma", "sd"]
    assert abs(table.loc["sd_(Intercept)|Subject", "mean"] - 24.74) < 2 * table.loc["sd_(Intercept)|Subject", "sd"]
    assert abs(table.loc["sd_Days|Subject", "mean"] - 5.92) < 2 * table.loc["sd_Days|Subject", "sd"]
    assert sleep_posterior.divergences < 10


def check_summary_layout_and_draws(sleep_posterior):
    table = sleep_posterior.summary()
    assert list(table.columns) == ["mean", "sd", "q2.5", "q97.5", "r_hat", "ess_bulk"]
    assert list(table.index) == ["(Intercept)", "Days", "sd_(Intercept)|Subject", "sd_Days|Subject",
                                 "cor_Days.(Intercept)|Subject", "sigma"]
    assert (table["q2.5"] < table["mean"]).all() and (table["mean"] < table["q97.5"]).all()
    draws = sleep_posterior.draws
    for name in table.index:
        assert draws[name].shape == (2, 300)
        assert np.isclose(draws[name].mean(), table.loc[name, "mean"])
    assert draws["beta"].shape == (2, 300, 2)
    assert draws["theta"].shape == (2, 300, 3)
    assert draws["b_Subject"].shape == (2, 300, 18, 2)
    assert np.all(np.abs(draws["cor_Days.(Intercept)|Subject"]) <= 1)
    # θ is the relative factor: its implied sd equals the sampled sd
    T11 = draws["theta"][..., 0] * draws["sigma"]
    np.testing.assert_allclose(np.abs(T11), draws["sd_(Intercept)|Subject"], rtol=1e-10)
    assert isinstance(sleep_posterior.divergences, int)
    assert "sd_Days|Subject" in repr(sleep_posterior)
    numbers = sleep_posterior.to_dict()  # what `jaxmlm fit ... --method nuts --json` writes
    assert numbers["method"] == "nuts" and list(numbers["summary"]) == list(table.index)
    assert numbers["fixef"]["Days"] == pytest.approx(table.loc["Days", "mean"])


def check_random_effect_draws_near_conditional_modes(sleep_posterior, sleep_model):
    fit = sleep_model.fit()
    b_mean = sleep_posterior.draws["b_Subject"].mean(axis=(0, 1))
    cv = fit.condvar()[0]
    sd = np.sqrt(np.stack([cv[:, 0, 0], cv[:, 1, 1]], axis=1))
    assert np.all(np.abs(b_mean - fit.ranef()["Subject"].to_numpy()) < 1.0 * sd + 1.0)


def check_predict_shapes_and_population_level(sleep_posterior):
    data = jm.datasets.load("sleepstudy").head(7)
    pred = sleep_posterior.predict(data)
    assert pred.shape == (2, 300, 7)
    pop = sleep_posterior.predict(data, re_form="~0")
    beta = sleep_posterior.draws["beta"]
    want = beta[..., 0][..., None] + beta[..., 1][..., None] * data["Days"].to_numpy()[None, None, :]
    np.testing.assert_allclose(pop, want, rtol=1e-12)
    new = data.assign(Subject="999")
    with pytest.raises(jm.NewLevelError):
        sleep_posterior.predict(new)
    np.testing.assert_allclose(sleep_posterior.predict(new, allow_new_levels=True), want, rtol=1e-12)


def check_to_arviz_or_clear_import_error(sleep_posterior):
    try:
        import arviz  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="arviz"):
            sleep_posterior.to_arviz()
    else:
        idata = sleep_posterior.to_arviz()
        assert "sigma" in idata.posterior


def test_bad_sampler_arguments(sleep_model):
    with pytest.raises(ValueError, match="chains"):
        sleep_model.sample(chains=0)
    with pytest.raises(ValueError, match="unknown prior"):
        sleep_model.sample(chains=1, draws=10, warmup=10, priors={"tau": 1.0})
    with pytest.raises(ValueError, match="positive"):
        sleep_model.sample(chains=1, draws=10, warmup=10, priors={"sigma_scale": -1.0})


@pytest.mark.slow  # compiling the sampler
def test_binomial_posterior_near_glmer():
    cbpp = jm.datasets.load("cbpp")
    model = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    post = model.sample(chains=2, draws=250, warmup=250, seed=0)
    fit = model.fit()
    table = post.summary()
    assert "sigma" not in table.index
    assert list(table.index)[-1] == "sd_(Intercept)|herd"
    assert (table["r_hat"] < 1.05).all(), table
    for name in fit.fixef.index:
        assert abs(table.loc[name, "mean"] - fit.fixef[name]) < 2 * fit.se[name], name
    pred = post.predict(cbpp.head(4))
    assert pred.shape == (2, 250, 4) and np.all((pred > 0) & (pred < 1))
