"""The iterative path (`solver="iterative"`): conjugate gradients + stochastic Lanczos quadrature, against the
dense brute force and the direct (factoring) path."""

import warnings

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from brute_force import dense_criterion
from jaxmlm.core._iterative import iterative_deviance, make_iterative_problem

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")


def _crossed(n=3000, n_users=120, n_items=90, seed=3):
    """Two crossed intercept factors with uneven counts, a covariate, and an item slope on x."""
    rng = np.random.default_rng(seed)
    user = rng.integers(0, n_users, n)
    item = np.minimum(rng.zipf(1.6, n) - 1, n_items - 1)  # heavy-tailed item counts
    x = rng.normal(size=n)
    y = (1.0 + 0.5 * x + rng.normal(0, 0.8, n_users)[user] + rng.normal(0, 0.5, n_items)[item]
         + 0.3 * rng.normal(size=n_items)[item] * x + rng.normal(size=n))
    return pd.DataFrame(dict(y=y, x=x, user=pd.Categorical(user), item=pd.Categorical(item)))


def _fit(model, method, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit(method=method, solver="iterative", solver_options=options or None)


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_one_term_is_exact(method):
    """One grouping factor: A is block diagonal, the log-determinant needs no estimate."""
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    direct = model.fit(method=method)
    fit = _fit(model, method)
    assert fit.extra["objective_se"] == 0.0
    np.testing.assert_allclose(fit.objective, direct.objective, rtol=1e-10)
    np.testing.assert_allclose(fit.theta, direct.theta, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(fit.fixef.to_numpy(), direct.fixef.to_numpy(), rtol=1e-6)
    np.testing.assert_allclose(fit.vcov, direct.vcov, rtol=1e-4)
    np.testing.assert_allclose(fit.sigma, direct.sigma, rtol=1e-6)
    np.testing.assert_allclose(fit.ranef()["Subject"].to_numpy(), direct.ranef()["Subject"].to_numpy(), rtol=1e-4,
                               atol=1e-6)


def test_sketch_spanning_the_schur_complement_is_exact():
    """Penicillin: 24 plates × 6 samples. The 6-column Schur complement is inside the 32-vector sketch, so Hutch++
    leaves nothing to estimate and the fit is lme4's."""
    model = jm.Model("diameter ~ 1 + (1|plate) + (1|sample)", jm.datasets.load("Penicillin"))
    direct = model.fit(method="reml")
    fit = _fit(model, "reml")
    assert fit.extra["objective_se"] < 1e-10
    np.testing.assert_allclose(fit.objective, direct.objective, rtol=1e-10)
    np.testing.assert_allclose(fit.theta, direct.theta, rtol=1e-5)
    np.testing.assert_allclose(fit.fixef.to_numpy(), direct.fixef.to_numpy(), rtol=1e-8)


def test_lanczos_breakdown_is_harmless():
    """Without the sketch, Penicillin's 6-column Schur complement exhausts each probe's Krylov space after 6 of the
    30 Lanczos steps: the tridiagonal decouples, and the estimate stays finite and unbiased."""
    model = jm.Model("diameter ~ 1 + (1|plate) + (1|sample)", jm.datasets.load("Penicillin"))
    theta = np.array([1.5, 3.2])
    exact = model.deviance(theta)
    d = model.design
    for steps in (4, 30):
        problem = make_iterative_problem([t.codes for t in d.terms], [t.z for t in d.terms],
                                         [t.n_levels for t in d.terms], d.X, d.y - d.offset, d.weights,
                                         n_probes=64, seed=1, sketch_size=0)
        value, se, _ = (float(v) for v in iterative_deviance(jnp.asarray(theta), problem, False,
                                                             lanczos_steps=steps))
        assert np.isfinite(value) and 0 < se
        assert abs(value - exact) < 4 * se


@pytest.mark.slow  # two probe counts, each its own program
@pytest.mark.parametrize("reml, weighted", [(False, False), (True, True)])
def test_estimated_objective_against_dense_brute_force(reml, weighted):
    """A crossed design whose Schur complement (90 item columns × 2) exceeds the sketch: the objective is an
    estimate, within a few of its standard errors of the dense V = ZΛΛᵀZᵀ + W⁻¹ value, and closer with more
    probes."""
    data = _crossed()
    data["w"] = np.random.default_rng(0).uniform(0.5, 2.0, len(data))
    model = jm.Model("y ~ x + (1|user) + (x|item)", data, weights="w" if weighted else None)
    theta = np.array([0.8, 0.5, 0.1, 0.3])
    exact = dense_criterion(model.design, theta, reml)
    errors = []
    d = model.design
    for n_probes in (32, 128):
        problem = make_iterative_problem([t.codes for t in d.terms], [t.z for t in d.terms],
                                         [t.n_levels for t in d.terms], d.X, d.y - d.offset, d.weights,
                                         n_probes=n_probes, seed=0, sketch_size=n_probes // 2)
        value, se, residual = (float(v) for v in iterative_deviance(jnp.asarray(theta), problem, reml))
        assert residual < 1e-9
        assert 0 < se < 2.0
        assert abs(value - exact) < 4 * se + 1e-8
        errors.append(abs(value - exact))
    assert errors[1] < 0.1 < errors[0] * 10  # a tenth of a deviance unit at 128 probes (measured: 0.12 → 0.01)


@pytest.mark.slow  # an optimization of a stochastic objective
def test_crossed_fit_close_to_direct():
    model = jm.Model("y ~ x + (1|user) + (1|item)", _crossed())
    direct = model.fit(method="ml")
    fit = _fit(model, "ml", n_probes=64)
    se = fit.extra["objective_se"]
    assert 0 < se < 1.0
    assert abs(fit.objective - direct.objective) < 4 * se
    np.testing.assert_allclose(fit.theta, direct.theta, rtol=0.05)
    np.testing.assert_allclose(fit.fixef.to_numpy(), direct.fixef.to_numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(fit.sigma, direct.sigma, rtol=1e-3)
    assert fit.optinfo.method == "COBYQA (iterative)"
    text = str(fit.summary())
    assert "Linear mixed model" in text and "log-determinant estimated, standard error" in text


def test_iterative_fit_never_builds_the_block_structure():
    model = jm.Model("y ~ x + (1|user) + (1|item)", _crossed(n=500, n_users=40, n_items=30))
    _fit(model, "ml", n_probes=8)
    assert model._structure is None


def test_solver_arguments_are_checked_before_fitting():
    model = jm.Model("Reaction ~ Days + (1 | Subject)", jm.datasets.load("sleepstudy"))
    with pytest.raises(ValueError, match="solver must be"):
        model.fit(method="ml", solver="cg")
    with pytest.raises(ValueError, match="unknown solver_options"):
        model.fit(method="ml", solver="iterative", solver_options=dict(probes=3))
    with pytest.raises(ValueError, match="solver_options are for"):
        model.fit(method="ml", solver_options=dict(n_probes=8))
    with pytest.raises(ValueError, match="at least 2"):
        model.fit(method="ml", solver="iterative", solver_options=dict(n_probes=1))
    with pytest.raises(ValueError, match="products must be"):
        model.fit(method="ml", solver="iterative", solver_options=dict(products="sparse"))
    glmm = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                    family="binomial")
    with pytest.raises(ValueError, match="linear mixed models"):
        glmm.fit(solver="iterative")


@pytest.mark.parametrize("formula, theta", [("y ~ x + (1|user) + (x|item)", [0.8, 0.5, 0.1, 0.3]),
                                            ("y ~ x + (1|user) + (1|item) + (1|block)", [0.8, 0.5, 0.7])])
def test_products_by_rows_and_by_dense_cross_products_agree(formula, theta):
    """Small designs form the first term's cross-products with the others once (θ-free) and apply them as matrix
    products; large ones gather and segment-sum over the rows. Same probes, same estimate: they agree to
    rounding, on a slope term with prior weights and on two terms besides the first (whose block couples)."""
    data = _crossed(n=800, n_users=50, n_items=30)
    data["block"] = pd.Categorical(np.random.default_rng(1).integers(0, 12, len(data)))
    data["w"] = np.random.default_rng(0).uniform(0.5, 2.0, len(data))
    d = jm.Model(formula, data, weights="w").design
    values = {}
    for products in ("rows", "dense"):
        problem = make_iterative_problem([t.codes for t in d.terms], [t.z for t in d.terms],
                                         [t.n_levels for t in d.terms], d.X, d.y - d.offset, d.weights,
                                         n_probes=16, seed=0, sketch_size=8, products=products)
        assert (problem.cross is None) == (products == "rows")
        values[products] = [float(v) for v in iterative_deviance(jnp.asarray(theta), problem, True)]
    np.testing.assert_allclose(values["dense"][:2], values["rows"][:2], rtol=1e-11)
    assert values["rows"][2] < 1e-9 and values["dense"][2] < 1e-9
    exact = dense_criterion(d, np.asarray(theta), True)
    assert abs(values["dense"][0] - exact) < 4 * values["dense"][1] + 1e-8


def test_products_option_is_checked():
    with pytest.raises(ValueError, match="products must be"):
        make_iterative_problem([np.zeros(3, int)], [np.ones((3, 1))], [1], np.ones((3, 1)), np.zeros(3), np.ones(3),
                               n_probes=2, seed=0, sketch_size=0, products="sparse")


def test_fit_products_option_gives_the_same_fit_either_way():
    """solver_options products: the fit by rows' gathers and by the cross-products formed once agree."""
    model = jm.Model("y ~ x + (1|user) + (1|item)", _crossed(n=500, n_users=40, n_items=30))
    rows, dense = (_fit(model, "ml", n_probes=8, products=p) for p in ("rows", "dense"))
    assert rows.objective == pytest.approx(dense.objective, rel=1e-9)
    np.testing.assert_allclose(rows.theta, dense.theta, rtol=1e-5)
