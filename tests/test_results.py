"""The results layer against lme4: ranef with conditional SDs, coef, fitted, predict (new levels, re_form),
simulate, summary text and tidy()."""

import json
import pathlib
import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm

EXTRA = json.loads((pathlib.Path(__file__).parent / "reference" / "lme4_results_extra.json").read_text())


@pytest.fixture(scope="module")
def fits():
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for key, ref in EXTRA.items():
            out[key] = jm.lmer(ref["formula"], jm.datasets.load(ref["dataset"]), reml=ref["reml"])
    return out


@pytest.mark.parametrize("key", sorted(EXTRA))
def test_ranef_and_condsd_match_lme4(fits, key):
    ref = pd.DataFrame(EXTRA[key]["ranef"])
    got = fits[key].ranef(condvar=True, long=True)
    merged = ref.merge(got, on=["grpvar", "term", "grp"], suffixes=("_ref", ""))
    assert len(merged) == len(ref) == len(got)
    scale = np.abs(ref["condval"]).max()
    np.testing.assert_allclose(merged["condval"], merged["condval_ref"], atol=2e-4 * scale)
    np.testing.assert_allclose(merged["condsd"], merged["condsd_ref"], rtol=2e-3)


def test_coef_fitted_predict_match_lme4(fits):
    ref = EXTRA["sleepstudy_reml"]
    fit = fits["sleepstudy_reml"]
    coef = fit.coef()["Subject"]
    np.testing.assert_allclose(coef["(Intercept)"], ref["coef"]["(Intercept)"], rtol=1e-5)
    np.testing.assert_allclose(coef["Days"], ref["coef"]["Days"], rtol=1e-4)
    np.testing.assert_allclose(fit.fitted().to_numpy()[:5], ref["fitted_head"], rtol=1e-6)
    newdata = pd.DataFrame(ref["newdata"])
    np.testing.assert_allclose(fit.predict(newdata, allow_new_levels=True), ref["predict_new_levels"], rtol=1e-6)
    np.testing.assert_allclose(fit.predict(newdata, re_form="~0"), ref["predict_population"], rtol=1e-9)
    np.testing.assert_allclose(fit.predict(newdata, re_form=np.nan), ref["predict_population"], rtol=1e-9)
    with pytest.raises(jm.NewLevelError, match="999"):
        fit.predict(newdata)


def test_predict_without_newdata_is_fitted_and_residuals_add_up(fits):
    fit = fits["sleepstudy_reml"]
    np.testing.assert_allclose(fit.predict(), fit.fitted())
    data = jm.datasets.load("sleepstudy")
    np.testing.assert_allclose(fit.fitted() + fit.residuals(), data["Reaction"], rtol=1e-12)


@pytest.mark.parametrize("case", ["cbpp_binomial", "cbpp_poisson"])
def test_glmm_residuals_of_every_type_match_lme4(case):
    """reference/residuals.R: lme4 at the exact Laplace optimum; deviance residuals are signed roots of the unit
    deviances, and a GLMM's default type is 'deviance' (a linear model's, 'response'), as lme4."""
    ref = json.loads((pathlib.Path(__file__).parent / "reference" / "lme4_residuals.json").read_text())[case]
    fit = jm.glmer(ref["formula"], jm.datasets.load(ref["dataset"]), family=ref["family"])
    for kind in ["response", "pearson", "deviance", "working", "default"]:
        want = np.asarray(ref[kind])
        got = fit.residuals(None if kind == "default" else kind).to_numpy()
        # the estimates agree to ~1e-5 relative (fixef tolerance 1e-4), so residuals near 0 to that times their scale
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=2e-5 * np.max(np.abs(want)), err_msg=kind)
    with pytest.raises(ValueError, match="'working'"):
        fit.residuals("partial")


def test_predict_with_a_subset_of_terms(fits):
    fit = fits["sleepstudy_uncorr_ml"]  # (1 | Subject) + (0 + Days | Subject)
    data = jm.datasets.load("sleepstudy").head(20)
    only_intercepts = fit.predict(data, re_form="~ (1 | Subject)")
    b0 = fit.ranef(condvar=False)["Subject"]["(Intercept)"]
    expected = fit.predict(data, re_form="~0") + b0.loc[data["Subject"].astype(str)].to_numpy()
    np.testing.assert_allclose(only_intercepts, expected, rtol=1e-12)


def test_simulate_reproduces_the_model_moments(fits):
    fit = fits["sleepstudy_reml"]
    sims = fit.simulate(400, seed=3)
    assert sims.shape == (180, 400)
    again = fit.simulate(400, seed=3)
    pd.testing.assert_frame_equal(sims, again)
    # marginal variance of one observation: z' Σ z + σ² (day 0: intercept variance + σ²)
    vc = fit.varcorr()
    day0 = jm.datasets.load("sleepstudy")["Days"].to_numpy() == 0
    var_expected = vc["vcov"].iloc[0] + fit.sigma**2
    var_sim = sims.to_numpy()[day0].var(axis=1).mean()
    assert var_sim == pytest.approx(var_expected, rel=0.1)
    mean_sim = sims.to_numpy().mean(axis=1)
    # standard error of a mean of 400 draws is at most ~3.3 here (day 9: sd ≈ 65); allow 4.5 of them
    np.testing.assert_allclose(mean_sim, fit.predict(re_form="~0"), atol=15.0)


def test_summary_reads_like_lme4(fits):
    text = str(fits["sleepstudy_reml"].summary())
    for piece in [
        "Linear mixed model fit by REML ['lmerMod']",
        "Formula: Reaction ~ Days + (Days | Subject)",
        "REML criterion at convergence: 1743.6",
        "Scaled residuals:",
        "Random effects:",
        "Number of obs: 180, groups:  Subject, 18",
        "Fixed effects:",
        "t value",
        "Correlation of Fixed Effects:",
    ]:
        assert piece in text, piece
    ml_text = str(fits["sleepstudy_uncorr_ml"].summary())
    assert "maximum likelihood" in ml_text and "AIC" in ml_text and "df.resid" in ml_text
    assert "Subject.1" in ml_text


def test_tidy_has_broom_mixed_rows(fits):
    tidy = fits["sleepstudy_reml"].tidy()
    assert list(tidy.columns) == ["effect", "group", "term", "estimate", "std.error", "statistic"]
    assert list(tidy["term"]) == [
        "(Intercept)", "Days", "sd__(Intercept)", "sd__Days", "cor__(Intercept).Days", "sd__Observation"
    ]
    fit = fits["sleepstudy_reml"]
    assert tidy["estimate"].iloc[-1] == pytest.approx(fit.sigma)
    assert tidy["statistic"].iloc[0] == pytest.approx(fit.fixef.iloc[0] / fit.se.iloc[0])


def test_to_dict_is_json_ready(fits):
    record = fits["penicillin_reml"].to_dict()
    text = json.dumps(record)
    assert json.loads(text)["ngroups"] == {"plate": 24, "sample": 6}


def test_getme_pieces_fit_together(fits):
    """lme4's getME layouts: Z's columns term by term, level by level, component by component (b = Λu in that
    order); y = Xβ + Zb + residuals; ZΛΛᵀZᵀσ² + σ²I is the model's covariance (checked against the dense
    brute-force Z Λ); flist, cnms and Gp as lme4's."""
    from brute_force import dense_z_lambda

    fit = fits["sleepstudy_reml"]
    d = fit.design
    Z, Lam, b, u = fit.getme("Z"), fit.getme("Lambda"), fit.getme("b"), fit.getme("u")
    assert Z.shape == (180, 36) and Lam.shape == (36, 36) and Lam.nnz == 18 * 3
    np.testing.assert_allclose((Z @ Lam).toarray(), dense_z_lambda(d, fit.theta), rtol=0, atol=1e-12)
    np.testing.assert_allclose(Lam @ u, b, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(b[:2], fit.ranef()["Subject"].iloc[0].to_numpy(), rtol=1e-12)
    np.testing.assert_allclose(fit.getme("X") @ fit.getme("beta") + Z @ b + fit.residuals().to_numpy(),
                               fit.getme("y"), rtol=1e-12)
    assert (fit.getme("Zt") != Z.T).nnz == 0 and (fit.getme("Lambdat") != Lam.T).nnz == 0
    assert fit.getme("cnms") == {"Subject": ["(Intercept)", "Days"]} and fit.getme("n_rtrms") == 1
    assert list(fit.getme("Gp")) == [0, 36] and fit.getme("is_REML") is True
    np.testing.assert_array_equal(fit.getme("lower"), [0.0, -np.inf, 0.0])
    assert list(fit.getme("flist")["Subject"].categories[:2]) == ["308", "309"]
    with pytest.raises(ValueError, match="known:"):
        fit.getme("devfun")


@pytest.mark.parametrize("case", ["sleepstudy", "sleepstudy_weighted"])
def test_hatvalues_match_lme4_and_the_dense_hat_matrix(case):
    """reference/hatvalues.R (θ agrees to ~1e-5 on this flat optimum, so the leverages to 1e-3); and exactly the
    diagonal of the dense H = M (MᵀM + diag(I, 0))⁻¹ Mᵀ, M = W^½ [ZΛ X], formed from the brute-force ZΛ."""
    from brute_force import dense_z_lambda

    ref = json.loads((pathlib.Path(__file__).parent / "reference" / "lme4_hatvalues.json").read_text())[case]
    data = jm.datasets.load("sleepstudy")
    weights = (1 + data["Days"] / 10).to_numpy() if ref["weights"] else None
    fit = jm.lmer(ref["formula"], data, weights=weights)
    h = fit.hatvalues()
    np.testing.assert_allclose(h, ref["hat"], rtol=1e-3)
    d = fit.design
    M = np.sqrt(d.weights)[:, None] * np.hstack([dense_z_lambda(d, fit.theta), d.X])
    q = M.shape[1] - d.p
    H = M @ np.linalg.solve(M.T @ M + np.diag(np.r_[np.ones(q), np.zeros(d.p)]), M.T)
    np.testing.assert_allclose(h, np.diag(H), rtol=1e-10)
    glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                    family="binomial")
    with pytest.raises(ValueError, match="linear mixed models"):
        glmm.hatvalues()
