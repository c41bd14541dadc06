"""Post-stratification: hand computations of the weighted cell means, for point fits and posteriors."""

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.bayes._posterior import Posterior


def _poll(seed=0):
    rng = np.random.default_rng(seed)
    n = 240
    state = rng.choice(["A", "B", "C", "D"], size=n, p=[0.4, 0.3, 0.2, 0.1])
    age = rng.choice(["18-29", "30-44", "45+"], size=n)
    effect = {"A": -1.0, "B": 0.0, "C": 0.7, "D": 1.5}
    y = 2.0 + np.vectorize(effect.get)(state) + 0.5 * (age == "45+") + rng.normal(size=n)
    return pd.DataFrame(dict(y=y, state=state, age=age))


@pytest.fixture(scope="module")
def fit():
    return jm.lmer("y ~ age + (1 | state)", _poll())


@pytest.fixture(scope="module")
def frame():
    cells = pd.MultiIndex.from_product([["A", "B", "C", "D", "E"], ["18-29", "30-44", "45+"]],
                                       names=["state", "age"]).to_frame(index=False)
    cells["N"] = np.arange(1, len(cells) + 1) * 10.0
    return cells


def test_point_fit_equals_hand_computation(fit, frame):
    out = jm.poststratify(fit, frame, weight="N", by=["state"], draws=500, seed=1)
    assert list(out.columns) == ["state", "estimate", "sd", "lower", "upper"]
    assert list(out["state"]) == ["A", "B", "C", "D", "E"]  # E is not in the poll: population-level cells
    pred = fit.predict(frame, allow_new_levels=True).to_numpy()
    for _, row in out.iterrows():
        cells = frame["state"] == row["state"]
        want = np.sum(frame.loc[cells, "N"] * pred[cells]) / frame.loc[cells, "N"].sum()
        assert row["estimate"] == pytest.approx(want, rel=1e-12)
    assert (out["sd"] > 0).all()
    assert (out["lower"] < out["estimate"]).all() and (out["estimate"] < out["upper"]).all()
    overall = jm.poststratify(fit, frame, weight="N", by=None)
    assert len(overall) == 1 and list(overall.columns) == ["estimate", "sd", "lower", "upper"]
    assert overall["estimate"].iloc[0] == pytest.approx(np.sum(frame["N"] * pred) / frame["N"].sum(), rel=1e-12)
    assert jm.poststratify(fit, frame, weight="N", by=[])["estimate"].iloc[0] == overall["estimate"].iloc[0]


def test_point_fit_simulation_sd_matches_the_joint_covariance(fit, frame):
    """Gaussian model, one state's cells: the estimate gᵀβ + b_B is linear in (β, b), so its sd under the joint
    draws is √(aᵀ C a), C = σ² S M⁻¹ Sᵀ the dense joint covariance (S = diag(Λ, I)), a = (e_B, g)."""
    from brute_force import dense_z_lambda

    out = jm.poststratify(fit, frame, weight="N", by="state", draws=20000, seed=2)
    sub = frame[frame["state"] == "B"]
    w = sub["N"].to_numpy() / sub["N"].sum()
    X = np.column_stack([np.ones(3), sub["age"] == "30-44", sub["age"] == "45+"]).astype(float)
    d = fit.model.design
    ZL = dense_z_lambda(d, fit.theta)
    A = np.hstack([ZL, d.X])
    M = A.T @ A + np.diag(np.r_[np.ones(ZL.shape[1]), np.zeros(d.X.shape[1])])
    S = np.diag(np.r_[np.full(ZL.shape[1], fit.theta[0]), np.ones(d.X.shape[1])])
    C = fit.sigma**2 * S @ np.linalg.inv(M) @ S.T
    a = np.r_[np.eye(ZL.shape[1])[list(fit.ranef()["state"].index).index("B")], w @ X]
    got = out.set_index("state").loc["B", "sd"]
    assert got == pytest.approx(np.sqrt(a @ C @ a), rel=0.03)  # Monte Carlo: 20000 draws, sd within 3%


def test_posterior_uses_draws(fit, frame):
    """A Posterior built from given draws: estimates are the mean over draws of the weighted cell means. (Its
    random-effect sds are 0, so state E, not in the poll, gets zero effects in every draw as predict() gives.)"""
    model = fit.model
    rng = np.random.default_rng(0)
    c, s, p = 2, 50, len(fit.fixef)
    beta = fit.fixef.to_numpy()[None, None, :] + 0.1 * rng.normal(size=(c, s, p))
    b = fit.ranef()["state"].to_numpy()[None, None] + 0.2 * rng.normal(size=(c, s, 4, 1))
    post = Posterior(model, beta=beta, theta=np.ones((c, s, 1)), sigma=np.ones((c, s)), sd=[np.zeros((c, s, 1))],
                     cor=[None], b=[b], diverging=np.zeros((c, s), bool), family="gaussian", link="identity")
    out = jm.poststratify(post, frame, weight="N", by=["state"])
    pred = post.predict(frame, allow_new_levels=True).reshape(c * s, -1)
    for _, row in out.iterrows():
        cells = (frame["state"] == row["state"]).to_numpy()
        per_draw = pred[:, cells] @ frame.loc[cells, "N"].to_numpy() / frame.loc[cells, "N"].sum()
        assert row["estimate"] == pytest.approx(per_draw.mean(), rel=1e-12)
        assert row["sd"] == pytest.approx(per_draw.std(ddof=1), rel=1e-10)
        assert row["lower"] == pytest.approx(np.quantile(per_draw, 0.025), rel=1e-12)
        assert row["upper"] == pytest.approx(np.quantile(per_draw, 0.975), rel=1e-12)


def test_bad_frames(fit, frame):
    with pytest.raises(jm.DataError, match="'M'"):
        jm.poststratify(fit, frame, weight="M", by=["state"])
    with pytest.raises(jm.DataError, match="region"):
        jm.poststratify(fit, frame, by=["region"])
    with pytest.raises(jm.DataError, match="non-negative"):
        jm.poststratify(fit, frame.assign(N=-frame["N"]), by=["state"])
    with pytest.raises(jm.DataError, match="sum to zero"):
        jm.poststratify(fit, frame.assign(N=np.where(frame["state"] == "A", 0.0, frame["N"])), by=["state"])
    with pytest.raises(TypeError, match="Posterior"):
        jm.poststratify("not a fit", frame, by=["state"])
    with pytest.raises(jm.JaxmlmError, match="needs by="):
        jm.poststratify(fit, frame)
