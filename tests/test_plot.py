"""jaxmlm.plot: every picture rendered to PNG with the Agg backend, and what it draws checked — the numbers behind
it against a brute-force computation (per-group least squares, R's ppoints) or lme4's profile traces."""

import json
import pathlib

import numpy as np
import pandas as pd
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

import jaxmlm as jm  # noqa: E402
from jaxmlm import plot  # noqa: E402

REFERENCE = pathlib.Path(__file__).parent / "reference"


@pytest.fixture(scope="module")
def sleepstudy():
    return jm.datasets.load("sleepstudy")


@pytest.fixture(scope="module")
def sleep_fit(sleepstudy):
    return jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _render(ax, path):
    fig = np.ravel(ax)[0].figure
    fig.savefig(path, dpi=60)
    assert path.stat().st_size > 1000


def _scatter_sizes(ax):
    return [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]


# ---------------------------------------------------------------------------------------------- shrinkage
def test_shrinkage_table_is_per_group_least_squares(sleep_fit, sleepstudy):
    table, complete = plot.shrinkage_table(sleep_fit, "Subject")
    X = np.column_stack([np.ones(len(sleepstudy)), sleepstudy["Days"]])
    y = sleepstudy["Reaction"].to_numpy()
    for level, rows in sleepstudy.groupby("Subject", observed=True).groups.items():
        own = np.linalg.lstsq(X[rows], y[rows], rcond=None)[0]
        np.testing.assert_allclose(table.loc[str(level), ["no_pooling_(Intercept)", "no_pooling_Days"]], own,
                                   rtol=1e-10)
        assert table.loc[str(level), "n"] == len(rows)
    np.testing.assert_allclose(complete.to_numpy(), np.linalg.lstsq(X, y, rcond=None)[0], rtol=1e-10)
    coef = sleep_fit.coef()["Subject"]
    np.testing.assert_allclose(table["multilevel_Days"].to_numpy(), coef["Days"].to_numpy(), rtol=1e-12)


def test_shrinkage_plot_draws_groups_and_arrows(sleep_fit, tmp_path):
    ax = plot.shrinkage(sleep_fit)
    assert _scatter_sizes(ax) == [18, 18, 1]  # no pooling, multilevel, complete pooling
    assert len(ax.texts) == 18  # one arrow per subject
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("(Intercept)", "Days")
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "no pooling (per-group fit)", "multilevel (partial pooling)", "complete pooling"]
    _render(ax, tmp_path / "shrinkage.png")


def test_shrinkage_one_column_against_group_size(sleepstudy, tmp_path):
    keep = [i for i in range(len(sleepstudy)) if i % 10 < 2 + (i // 10) % 8]  # 2 to 9 rows per subject
    data = sleepstudy.iloc[keep]
    fit = jm.lmer("Reaction ~ Days + (1 | Subject)", data)
    ax = plot.shrinkage(fit, "1 | Subject")
    assert _scatter_sizes(ax) == [18, 18]
    assert ax.get_xlabel() == "rows in Subject" and ax.get_ylabel() == "(Intercept)"
    # the dashed line: the pooled intercept of y − Days·β̂_Days
    line = [ln for ln in ax.lines if ln.get_linestyle() == "--"][0]
    pooled = np.mean(data["Reaction"] - fit.fixef["Days"] * data["Days"])
    np.testing.assert_allclose(line.get_ydata()[0], pooled, rtol=1e-10)
    # for (1 | g) with β held, the multilevel estimate is β̂₀ + λ (own − β̂₀), λ = n τ² / (n τ² + σ²)
    table, _ = plot.shrinkage_table(fit)
    tau2 = fit.varcorr()["vcov"].iloc[0]
    lam = table["n"] * tau2 / (table["n"] * tau2 + fit.sigma**2)
    beta0 = fit.fixef["(Intercept)"]
    np.testing.assert_allclose(table["multilevel_(Intercept)"] - beta0,
                               lam * (table["no_pooling_(Intercept)"] - beta0), rtol=1e-6)
    _render(ax, tmp_path / "shrinkage1.png")


def test_shrinkage_bad_input(sleep_fit):
    with pytest.raises(jm.FormulaError, match="grouped by 'herd'"):
        plot.shrinkage(sleep_fit, "herd")
    with pytest.raises(ValueError, match="columns must name"):
        plot.shrinkage(sleep_fit, columns=["Reaction"])


def test_shrinkage_of_a_glmm_is_the_per_group_glm(tmp_path):
    """cbpp: each herd's own logistic intercept (periods held at the GLMM's estimates as an offset) against a
    direct minimization of that herd's binomial deviance; the pooled one likewise over all herds."""
    from scipy import optimize

    glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                    family="binomial")
    table, complete = plot.shrinkage_table(glmm)
    d = glmm.design
    offset = d.X[:, 1:] @ glmm.fixef[d.x_names].to_numpy()[1:]
    codes = d.terms[0].codes

    def own(rows):
        def deviance(a):
            eta = a + offset[rows]
            return -np.sum(d.weights[rows] * (d.y[rows] * eta - np.logaddexp(0.0, eta)))

        return optimize.minimize_scalar(deviance, bounds=(-10, 10), method="bounded", options={"xatol": 1e-10}).x

    for h in range(0, 15, 4):
        np.testing.assert_allclose(table["no_pooling_(Intercept)"].iloc[h], own(codes == h), atol=1e-6)
    np.testing.assert_allclose(complete["(Intercept)"], own(np.ones(len(codes), dtype=bool)), atol=1e-6)
    np.testing.assert_allclose(table["weight"].sum(), d.weights.sum())
    ax = plot.shrinkage(glmm)
    assert ax.get_xlabel() == "trials in herd" and ax.get_ylabel() == "(Intercept) (link scale)"
    _render(ax, tmp_path / "shrinkage_glmm.png")


# ---------------------------------------------------------------------------------------------- random effects
def test_caterpillar_sorted_modes_with_intervals(sleep_fit, tmp_path):
    axes = plot.caterpillar(sleep_fit)
    assert len(axes) == 2
    frame = sleep_fit.ranef(long=True)
    intercept = frame[frame.term == "(Intercept)"].sort_values("condval", kind="stable")
    ax = axes[0]
    container = ax.containers[0]
    points = container.lines[0]
    np.testing.assert_allclose(points.get_xdata(), intercept["condval"].to_numpy())
    assert [t.get_text() for t in ax.get_yticklabels()] == list(intercept["grp"])
    segments = container.lines[2][0].get_segments()
    widths = np.array([s[1, 0] - s[0, 0] for s in segments])
    np.testing.assert_allclose(widths, 2 * 1.959963984540054 * intercept["condsd"].to_numpy(), rtol=1e-10)
    assert (axes[0].get_xlabel(), axes[1].get_xlabel()) == ("(Intercept)", "Days")
    _render(axes, tmp_path / "caterpillar.png")


# ---------------------------------------------------------------------------------------------- residuals
def test_residuals_against_fitted(sleep_fit, tmp_path):
    ax = plot.residuals(sleep_fit)
    offsets = ax.collections[0].get_offsets()
    np.testing.assert_allclose(offsets[:, 0], sleep_fit.fitted().to_numpy())
    np.testing.assert_allclose(offsets[:, 1], sleep_fit.residuals(type="pearson").to_numpy())
    assert ax.get_xlabel() == "Fitted values" and ax.get_ylabel() == "Pearson residuals"
    smoother = [ln for ln in ax.lines if ln.get_label() == "binned means"][0]
    assert len(smoother.get_xdata()) == 20
    np.testing.assert_allclose(np.mean(smoother.get_ydata()), np.mean(offsets[:, 1]), atol=1e-8)  # equal bins
    ax_few = plot.residuals(sleep_fit, max_points=50, smoother=False)
    assert len(ax_few.collections[0].get_offsets()) == 50 and not ax_few.lines[1:]
    _render(ax, tmp_path / "residuals.png")


def test_qq_scaled_residuals(sleep_fit, tmp_path):
    from scipy import stats

    ax = plot.qq(sleep_fit)
    offsets = ax.collections[0].get_offsets()
    scaled = np.sort(sleep_fit.residuals(type="pearson", scaled=True).to_numpy())
    n = len(scaled)
    np.testing.assert_allclose(offsets[:, 1], scaled)
    np.testing.assert_allclose(offsets[:, 0], stats.norm.ppf((np.arange(1, n + 1) - 0.5) / n))  # R's ppoints
    np.testing.assert_allclose(plot._diagnostics.normal_scores(5),
                               stats.norm.ppf((np.arange(1, 6) - 0.375) / 5.25))
    line = ax.lines[-1]  # qqline: through the quartiles
    (x0, y0), slope = line._xy1, line._slope
    q1, q3 = np.quantile(scaled, [0.25, 0.75])
    z1, z3 = stats.norm.ppf([0.25, 0.75])
    np.testing.assert_allclose([y0 + slope * (z1 - x0), y0 + slope * (z3 - x0)], [q1, q3], rtol=1e-12)
    assert ax.get_ylabel() == "Scaled residuals"
    _render(ax, tmp_path / "qq.png")


# ---------------------------------------------------------------------------------------------- profile
@pytest.fixture(scope="module")
def sleep_ml_traces(sleepstudy):
    from jaxmlm.inference._profile import profile_traces

    fit = jm.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, reml=False)
    return fit, profile_traces(fit, n_points=7)


def test_profile_zeta_matches_lme4(sleep_ml_traces, x64):
    """ζ at the values lme4's profile() evaluated (as.data.frame(profile(fit))), to 0.5% of ζ²."""
    from jaxmlm.inference._profile import profile_coordinates

    fit, _ = sleep_ml_traces
    ref = json.loads((REFERENCE / "lme4_profile_traces.json").read_text())["sleepstudy_ml"]
    coords = {c.name: c for c in profile_coordinates(fit)}
    assert set(coords) == {r["parameter"] for r in ref}
    checked = 0
    for row in ref[::3]:  # every third point of lme4's 70 keeps the test short
        coord, v = coords[row["parameter"]], row["value"]
        if (coord.kind == "cor" and abs(v) >= 1) or (coord.kind == "log" and v <= 0):
            continue  # lme4's points on the boundary (cor = ±1, sd = 0)
        u = np.arctanh(v) if coord.kind == "cor" else np.log(v) if coord.kind == "log" else v
        zeta = coord.zeta(u)
        assert abs(zeta**2 - row["zeta"] ** 2) <= 5e-3 * max(1.0, row["zeta"] ** 2), (row, zeta)
        assert np.sign(zeta) == np.sign(row["zeta"]) or abs(row["zeta"]) < 0.05
        checked += 1
    assert checked > 20


def test_profile_traces_cover_the_interval(sleep_ml_traces):
    fit, traces = sleep_ml_traces
    names = list(dict.fromkeys(traces["parameter"]))
    assert names == list(fit.confint("Wald").index)  # confint's rows, in its order
    for name, rows in traces.groupby("parameter", sort=False):
        assert np.all(np.diff(rows["value"]) > 0) and np.all(np.diff(rows["zeta"]) > 0), name
        assert rows["zeta"].min() < -2.5 and rows["zeta"].max() > 2.5
        assert (rows["zeta"] == 0).sum() == 1


def test_profile_plot_panels(sleep_ml_traces, tmp_path):
    fit, traces = sleep_ml_traces
    axes = plot.profile(fit, traces=traces)
    names = list(dict.fromkeys(traces["parameter"]))
    assert [ax.get_xlabel() for ax in axes] == names
    for ax, name in zip(axes, names):
        curve = ax.lines[0]
        assert len(curve.get_xdata()) == (traces["parameter"] == name).sum()
    # the dotted verticals sit where ζ = ±1.96: at the profile interval, to the linear interpolation of 8 points
    days = axes[names.index("Days")]
    marks = sorted(ln.get_xdata()[0] for ln in days.lines if ln.get_linestyle() == ":")
    interval = fit.confint("profile", parm=["Days"]).loc["Days"].to_numpy()
    np.testing.assert_allclose(marks, interval, atol=0.01 * (interval[1] - interval[0]))
    _render(axes, tmp_path / "profile.png")


# ---------------------------------------------------------------------------------------------- MRP
def _mrp_table():
    return pd.DataFrame({"state": ["AK", "AL", "AR", "AZ"], "estimate": [0.52, 0.31, 0.44, 0.6],
                         "sd": [0.05, 0.04, 0.03, 0.05], "lower": [0.42, 0.23, 0.38, 0.5],
                         "upper": [0.62, 0.39, 0.5, 0.7]})


def test_mrp_plot_sorted_with_raw_means(tmp_path):
    raw = pd.Series({"AK": 0.7, "AL": 0.2, "AZ": 0.55})  # no respondents in AR
    ax = plot.mrp(_mrp_table(), raw=raw)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["AL", "AR", "AK", "AZ"]
    np.testing.assert_allclose(ax.containers[0].lines[0].get_xdata(), [0.31, 0.44, 0.52, 0.6])
    raw_points = [c for c in ax.collections if isinstance(c, PathCollection)][0].get_offsets()
    np.testing.assert_allclose(raw_points, [[0.2, 0], [0.7, 2], [0.55, 3]])
    assert ax.get_ylabel() == "state"
    frame_raw = pd.DataFrame({"state": ["AK", "AL"], "raw": [0.7, 0.2]})
    ax2 = plot.mrp(_mrp_table(), raw=frame_raw)
    assert len([c for c in ax2.collections if isinstance(c, PathCollection)][0].get_offsets()) == 2
    _render(ax, tmp_path / "mrp.png")


def test_mrp_plot_bad_input():
    with pytest.raises(jm.DataError, match="poststratify"):
        plot.mrp(pd.DataFrame({"state": ["AK"], "value": [1.0]}))
    with pytest.raises(jm.DataError, match="one column of raw means"):
        plot.mrp(_mrp_table(), raw=pd.DataFrame({"state": ["AK"], "a": [1.0], "b": [2.0]}))


# ---------------------------------------------------------------------------------------------- NUTS
class _Draws:
    """What trace() and rank() use of a Posterior: to_arviz(). Sampling one here would cost a NUTS compile for
    a test of two calls into ArviZ (test_bayes checks Posterior.to_arviz itself)."""

    def __init__(self, az, draws):
        self._az, self._draws = az, draws

    def to_arviz(self):
        return self._az.from_dict(posterior=self._draws)


def test_trace_and_rank_plots(tmp_path):
    az = pytest.importorskip("arviz")
    if int(az.__version__.split(".")[0]) >= 1:
        pytest.skip("ArviZ 1.x: its plots are not matplotlib Axes")
    rng = np.random.default_rng(0)
    post = _Draws(az, {"sigma": 25 + rng.standard_normal((2, 80)), "Days": 10 + rng.standard_normal((2, 80))})
    axes = plot.trace(post, var_names=["sigma"])
    assert np.asarray(axes).shape == (1, 2)
    assert len(np.asarray(axes)[0, 1].lines) == 2  # one trace per chain
    assert "sigma" in np.asarray(axes)[0, 0].get_title()
    _render(axes, tmp_path / "trace.png")
    ranks = np.ravel(plot.rank(post, var_names=["sigma", "Days"]))
    assert len(ranks) == 2 and "sigma" in ranks[0].get_title()
    _render(ranks, tmp_path / "rank.png")
