"""The Laplace deviance's hand-written gradient (`core._laplace_grad`): the same value as `laplace_deviance`, and a
gradient equal to autodiff's through the Newton steps and to central differences of the value, on binomial and
Poisson models with nested, crossed and vector terms, a non-canonical link and the Xbox-shaped poll; dispersion
families keep the autodiff path."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core import _laplace_grad as lg
from jaxmlm.core._pirls import laplace_deviance
from jaxmlm.fit._glmm import glmm_problem


def _crossed_binomial(seed=0, n=400):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"a": rng.integers(0, 25, n), "b": rng.integers(0, 6, n), "x": rng.normal(size=n),
                          "size": rng.integers(1, 8, n)})
    eta = 0.3 + 0.5 * frame.x + 0.8 * rng.normal(size=25)[frame.a] + 0.6 * rng.normal(size=6)[frame.b]
    frame["k"] = rng.binomial(frame["size"], 1 / (1 + np.exp(-eta)))
    frame["a"], frame["b"] = frame.a.astype(str), frame.b.astype(str)
    return frame


def _slopes_poisson(seed=1, groups=12, per=10):
    """Counts with a correlated random intercept and slope per group ((Days | Subject)-style)."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(groups), per)
    days = np.tile(np.arange(per) / per, groups)
    b = rng.multivariate_normal([0, 0], [[0.4, 0.1], [0.1, 0.2]], size=groups)
    eta = 1.0 + 0.5 * days + b[g, 0] + b[g, 1] * days
    return pd.DataFrame({"y": rng.poisson(np.exp(eta)), "days": days, "g": g.astype(str)})


def _xbox_small():
    from jaxmlm.datasets.simulate import xbox_formula, xbox_poll

    return xbox_formula(), xbox_poll(n=800, seed=1).cells


CASES = {
    "cbpp": lambda: ("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                     "binomial"),
    "cbpp_probit": lambda: ("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                            jm.families.binomial(link="probit")),
    "crossed_binomial": lambda: ("cbind(k, size - k) ~ x + (1 | a) + (1 | b)", _crossed_binomial(), "binomial"),
    "grouseticks_poisson": lambda: ("TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | INDEX) + (1 | LOCATION)",
                                    jm.datasets.load("grouseticks"), "poisson"),
    "slopes_poisson": lambda: ("y ~ days + (days | g)", _slopes_poisson(), "poisson"),
    "xbox_small": lambda: (*_xbox_small(), "binomial"),
}


def _problem_and_point(case):
    formula, data, family = CASES[case]()
    problem = glmm_problem(jm.Model(formula, data, family=family))
    nt, p = problem.structure.n_theta, problem.p
    rng = np.random.default_rng(7)
    # away from the optimum (a gradient with every coordinate of some size), θ's diagonal positive
    theta = 0.4 + 0.6 * rng.random(nt)
    beta = 0.2 * rng.normal(size=p)
    return problem, jnp.asarray(np.concatenate([theta, beta]))


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request):
    with jax.enable_x64(True):
        problem, x = _problem_and_point(request.param)
        fast = jax.jit(jax.value_and_grad(lambda x: lg.laplace_deviance_fast(x, problem, newton_steps=1)))
        value, grad = fast(x)
        auto = jax.jit(jax.value_and_grad(lambda x: laplace_deviance(x, problem, newton_steps=2)))
        auto_value, auto_grad = auto(x)
        yield dict(name=request.param, problem=problem, x=x, value=value, grad=np.asarray(grad),
                   auto_value=auto_value, auto_grad=np.asarray(auto_grad), auto=auto)


def test_every_case_takes_the_hand_written_rule(case):
    assert lg.supported(case["problem"])


def test_value_is_the_laplace_deviance(case):
    with jax.enable_x64(True):
        plain = jax.jit(lambda x: laplace_deviance(case["x"], case["problem"], newton_steps=1))(case["x"])
    np.testing.assert_allclose(float(case["value"]), float(plain), rtol=1e-12)
    np.testing.assert_allclose(float(case["value"]), float(case["auto_value"]), rtol=1e-12)


def test_gradient_equals_autodiff_through_the_newton_steps(case):
    g, ref = case["grad"], case["auto_grad"]
    assert np.max(np.abs(g - ref)) <= 1e-6 * np.max(np.abs(ref)), (case["name"], g, ref)
    assert np.all(np.abs(g - ref) <= 1e-6 * np.abs(ref) + 1e-9 * np.max(np.abs(ref))), (case["name"], g, ref)


def test_gradient_equals_central_differences(case):
    x = np.asarray(case["x"])
    with jax.enable_x64(True):
        def value(point):  # autodiff's program of the fixture, whose value is laplace_deviance's (two steps)
            return float(case["auto"](jnp.asarray(point))[0])

        h = 1e-5
        fd = np.array([(value(x + h * e) - value(x - h * e)) / (2 * h) for e in np.eye(x.size)])
    g = case["grad"]
    assert np.max(np.abs(g - fd)) <= 1e-6 * np.max(np.abs(g)), (case["name"], g, fd)


def test_gradient_under_vmap_is_each_points():
    """Vectorized NUTS chains call the rule under vmap: each point's gradient, as alone."""
    with jax.enable_x64(True):
        problem, x = _problem_and_point("crossed_binomial")
        xs = jnp.stack([x, x * 0.9, x * 1.1])
        vg = jax.value_and_grad(lambda x: lg.laplace_deviance_fast(x, problem))
        values, grads = jax.jit(jax.vmap(vg))(xs)
        for i in range(3):
            v, g = jax.jit(vg)(xs[i])
            np.testing.assert_allclose(float(values[i]), float(v), rtol=1e-12)
            np.testing.assert_allclose(np.asarray(grads[i]), np.asarray(g), rtol=1e-10, atol=1e-12)


def test_pirls_state_and_start_pass_through():
    """with_pirls returns PIRLS's modes and status as laplace_deviance_from does; a start near the mode gives the
    same value and gradient."""
    from jaxmlm.core._pirls import laplace_deviance_from

    with jax.enable_x64(True):
        problem, x = _problem_and_point("cbpp")
        f = lambda x, u0: lg.laplace_deviance_fast(x, problem, u0, with_pirls=True)  # noqa: E731
        (value, (u_star, ok, _)), grad = jax.jit(jax.value_and_grad(f, has_aux=True))(x, None)
        _, (u_ref, ok_ref, _) = laplace_deviance_from(x, problem, None, 1, True)
        assert bool(ok) and bool(ok_ref)
        np.testing.assert_allclose(np.asarray(u_star), np.asarray(u_ref), atol=1e-12)
        (v2, _), g2 = jax.jit(jax.value_and_grad(f, has_aux=True))(x, u_star + 1e-3)
        np.testing.assert_allclose(float(v2), float(value), rtol=1e-12)
        np.testing.assert_allclose(np.asarray(g2), np.asarray(grad), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("family", ["nbinom2", "Gamma_plugin"])
def test_dispersion_families_keep_the_autodiff_path(family):
    """Negative binomial (the dispersion coordinate) and lme4's plug-in Gamma objective are not `supported`:
    `laplace_deviance_fast` is `laplace_deviance_from` there, its gradient autodiff's."""
    from jaxmlm.core._pirls import laplace_deviance_from

    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(10), 8)
    mu = np.exp(1.0 + 0.5 * rng.normal(size=10)[g])
    if family == "nbinom2":
        y, fam, weights = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)), jm.families.negative_binomial(), "observed"
    else:
        y, fam, weights = rng.gamma(2.0, mu / 2.0), jm.families.Gamma(link="log"), "plugin"
    frame = pd.DataFrame({"y": y, "g": g.astype(str)})
    with jax.enable_x64(True):
        model = jm.Model("y ~ 1 + (1 | g)", frame, family=fam)
        problem = glmm_problem(model, "lme4" if weights == "plugin" else "laplace")
        assert problem.laplace_weights == weights
        assert not lg.supported(problem)
        x = jnp.asarray(np.r_[0.6, 1.0, np.zeros(problem.n_dispersion)])
        got = jax.jit(jax.value_and_grad(lambda x: lg.laplace_deviance_fast(x, problem)))(x)
        ref = jax.jit(jax.value_and_grad(lambda x: laplace_deviance_from(x, problem, None, 1)))(x)
    np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(ref[1]))
    assert float(got[0]) == float(ref[0])
