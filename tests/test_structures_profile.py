"""Profile-likelihood intervals for models with cs() / ar1() terms, on the structures' own coordinates: against
glmmTMB 1.1.5's profile intervals (uniroot) for an ar1() fit (tests/reference/structures_profile.R, .json), and a
Laplace fit's correlation interval against a brute-force recomputation of its ends on the public objective."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import optimize, stats

import jaxmlm as jm
from tests.test_covariance_structures import REF_DIR, _ar1_data
from tests.test_structures_problem import _cs2_data

REF = json.loads((REF_DIR / "structures_profile.json").read_text())["ar1_gaussian"]


def _phi(t):
    return np.asarray(t) / np.sqrt(1.0 + np.asarray(t) ** 2)


@pytest.fixture(scope="module")
def ar1_ml():
    return jm.Model(REF["formula"], _ar1_data()).fit(method="ml")


def test_ar1_profile_intervals_match_glmmtmb(ar1_ml):
    ci = ar1_ml.confint()  # method="profile", lme4's default
    assert list(ci.index) == list(ar1_ml.confint(method="wald").index)
    log_sd, cor_t = np.asarray(REF["theta"]["lower"]), np.asarray(REF["theta"]["upper"])
    sd_ref = np.exp([log_sd[0], cor_t[0]])
    phi_ref = _phi([log_sd[1], cor_t[1]])
    for level in range(1, 5):  # one sd for every time point
        np.testing.assert_allclose(ci.loc[f"sd_ftime{level}|g"].to_numpy(), sd_ref, rtol=2e-3)
    np.testing.assert_allclose(ci.loc["cor_ftime2.ftime1|g"].to_numpy(), phi_ref, rtol=2e-3)
    np.testing.assert_allclose(ci.loc["cor_ftime4.ftime2|g"].to_numpy(), phi_ref**2, rtol=4e-3)
    np.testing.assert_allclose(ci.loc["cor_ftime4.ftime1|g"].to_numpy(), phi_ref**3, rtol=6e-3)
    for name, lo, hi in zip(REF["beta"]["rows"], REF["beta"]["lower"], REF["beta"]["upper"]):
        np.testing.assert_allclose(ci.loc[name].to_numpy(), [lo, hi], rtol=1e-3)
    lo, hi = ci.loc["sigma"]
    assert lo < ar1_ml.sigma < hi
    # parm= selects rows, computing only the coordinates they need
    one = ar1_ml.confint(parm="cor_ftime3.ftime1|g")
    np.testing.assert_allclose(one.to_numpy(), ci.loc[["cor_ftime3.ftime1|g"]].to_numpy(), rtol=1e-8)


def test_ar1_profile_of_a_reml_fit_profiles_the_ml_deviance(ar1_ml):
    reml = ar1_ml.model.fit(method="reml")
    np.testing.assert_allclose(reml.confint(parm="theta_").to_numpy(), ar1_ml.confint(parm="theta_").to_numpy(),
                               rtol=1e-6)


@pytest.mark.slow  # Laplace profiles of a 2 × 2 term
def test_cs_poisson_correlation_interval_ends_where_the_deviance_rises_by_z2():
    model = jm.Model("count ~ x + cs(0 + f | g)", _cs2_data(), family="poisson")
    fit = model.fit()
    ci = fit.confint(parm="cor_fb.fa|g")
    lo, hi = ci.iloc[0]
    rho_hat = fit.extra["structures"][0]["rho"]
    assert lo < rho_hat < hi
    problem = model.problem("laplace")
    target = stats.norm.ppf(0.975) ** 2
    with jax.enable_x64(True):
        f = jax.jit(problem.objective)
        g = jax.jit(jax.grad(problem.objective))
        x_hat = np.r_[fit.extra["psi"], fit.fixef.to_numpy()]
        assert -1.0 < lo and hi <= 1.0
        # an end at ρ's limit (1) says the deviance never rises by z² on that side: checked just inside it
        for rho, at_limit in ((lo, lo == -1.0), (min(hi, 1.0 - 1e-6), hi == 1.0)):
            t = np.log((rho + 1.0) / (1.0 - rho))  # cs with q = 2: ρ = 2 logistic(t) − 1
            free = np.r_[:2, 3:x_hat.size]

            def held(v, t=t):
                return np.insert(v, 2, t)

            res = optimize.minimize(lambda v: float(f(jnp.asarray(held(v)))), x_hat[free],
                                    jac=lambda v: np.asarray(g(jnp.asarray(held(v))))[free], method="BFGS",
                                    options=dict(gtol=1e-8))
            if at_limit:
                assert 0.0 < res.fun - fit.objective < target
            else:
                assert res.fun - fit.objective == pytest.approx(target, rel=2e-3)


def test_ar1_profile_traces_on_the_structure_coordinates(ar1_ml):
    """profile_traces (lme4's as.data.frame(profile(fit))): ζ = 0 at the estimate, increasing through it, and the
    correlation's values on ρ's scale; a row an ar1() coordinate determines names that coordinate."""
    from jaxmlm.inference import _profile

    with jax.enable_x64(True):
        traces = _profile.profile_traces(ar1_ml, names=["sd_ftime3|g", "cor_ftime2.ftime1|g"], n_points=7)
    assert sorted(set(traces["parameter"])) == ["cor_ftime2.ftime1|g", "sd_ftime1|g"]
    (term,) = ar1_ml.extra["structures"]
    for name, estimate in (("sd_ftime1|g", term["sd"][0]), ("cor_ftime2.ftime1|g", term["rho"])):
        t = traces[traces["parameter"] == name]
        assert np.all(np.diff(t["zeta"].to_numpy()) > 0)
        at = t[t["zeta"] == 0.0]["value"].to_numpy()
        assert at == pytest.approx([estimate], rel=1e-6)
    cor = traces[traces["parameter"] == "cor_ftime2.ftime1|g"]["value"]
    assert cor.between(-1, 1).all()
