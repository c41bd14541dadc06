"""jm.fit_groups: one formula on every group of a long frame, in padded, vmapped buckets.

Each group's fit must be its single fit's (`jm.lmer` on that group's rows): same objective to 1e-8 relative,
close θ, β, σ. The single fits are the expensive side (each new shape compiles), so the datasets repeat a few
shapes for them; the dense brute-force criterion checks the padded objective on many more shapes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm.core._blocks import RowData, build_structure, cross_products
from jaxmlm.core._covariance import theta_names
from jaxmlm.core._lmm import LinearProblem, profiled_deviance
from jaxmlm.core._padding import _complete_codes, complete_statistics, complete_structure, padded_row_index, round_up
from tests.brute_force import dense_criterion


def _dataset(rng, n, levels, slope_sd=0.4, extra_levels=None):
    g = np.concatenate([np.arange(levels), rng.integers(0, levels, n - levels)])  # every level present
    x = rng.normal(size=n)
    b = rng.normal(size=(levels, 2)) * [1.0, slope_sd]
    y = 1.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(size=n)
    frame = pd.DataFrame(dict(y=y, x=x, g=[f"g{v}" for v in g]))
    if extra_levels:
        h = np.concatenate([np.arange(extra_levels), rng.integers(0, extra_levels, n - extra_levels)])
        frame["h"] = [f"h{v}" for v in rng.permutation(h)]
        frame["y"] += rng.normal(size=extra_levels)[h] * 0.7
    return frame


def _long_frame(parts):
    return pd.concat([p.assign(experiment=f"e{i:03d}") for i, p in enumerate(parts)], ignore_index=True)


def _single_fits(formula, parts, reml):
    return [jm.lmer(formula, p, reml=reml, warn=False) for p in parts]


def _theta_by_name(fit):
    d = fit.model.design
    names = theta_names(d.group_names, [t.column_names for t in d.terms])
    return pd.Series(fit.theta, index=names)


def _check_against_single(result, fits, parts):
    assert list(result.groups) == [f"e{i:03d}" for i in range(len(parts))]
    assert result.converged.all()
    for label, fit in zip(result.groups, fits):
        assert result.objective[label] == pytest.approx(fit.objective, rel=1e-8, abs=0)
        theta = _theta_by_name(fit)
        np.testing.assert_allclose(result.theta.loc[label, theta.index].to_numpy(), theta.to_numpy(), atol=2e-4)
        np.testing.assert_allclose(result.fixef.loc[label, fit.fixef.index].to_numpy(), fit.fixef.to_numpy(),
                                   rtol=1e-4, atol=1e-5)
        assert result.sigma[label] == pytest.approx(fit.sigma, rel=1e-4)
        assert result.nobs[label] == fit.nobs


def test_slopes_ml_equal_single_fits():
    """Intercept and slope, ML: 12 groups of 3 shapes (rows and levels differ), over three level buckets."""
    rng = np.random.default_rng(1)
    shapes = [(40, 5), (64, 8), (90, 12)]
    parts = [_dataset(rng, n, l) for n, l in shapes * 4]
    result = jm.fit_groups("y ~ x + (x | g)", _long_frame(parts), by="experiment", method="ml", min_bucket=1)
    assert result.buckets == [((8,), 8), ((16,), 4)]  # levels 5-8 → 8, 9-16 → 16: powers of two
    _check_against_single(result, _single_fits("y ~ x + (x | g)", parts, reml=False), parts)
    assert (result.ngroups["g"].to_numpy() == [l for _, l in shapes * 4]).all()


def test_intercepts_reml_weighted_equal_single_fits():
    """Random intercepts, REML, prior weights (one of them 0: that row counts in neither n nor Σ log w)."""
    rng = np.random.default_rng(2)
    parts = [_dataset(rng, n, l) for n, l in [(30, 6), (45, 6), (60, 11)] * 4]
    for p in parts:
        p["w"] = rng.uniform(0.5, 2.0, len(p))
        p.loc[p.index[-1], "w"] = 0.0
    result = jm.fit_groups("y ~ x + (1 | g)", _long_frame(parts), by="experiment", weights="w")
    assert result.method == "reml"
    fits = [jm.lmer("y ~ x + (1 | g)", p, reml=True, weights="w", warn=False) for p in parts]
    _check_against_single(result, fits, parts)


@pytest.mark.slow
def test_crossed_factors_equal_single_fits():
    """Two crossed grouping factors: the second term in the padded dense tail, coupled to every level of the
    first (ML; the dense-criterion test covers REML on crossed designs)."""
    rng = np.random.default_rng(3)
    parts = [_dataset(rng, n, l, extra_levels=h) for n, l, h in [(60, 8, 3), (70, 10, 3)] * 3]
    result = jm.fit_groups("y ~ x + (1 | g) + (1 | h)", _long_frame(parts), by="experiment", method="ml",
                           min_bucket=1)
    assert len(result.buckets) == 2
    _check_against_single(result, _single_fits("y ~ x + (1 | g) + (1 | h)", parts, False), parts)


def test_padded_objective_is_the_dense_criterion():
    """50 groups of many shapes (one and two grouping factors): each objective equals the dense criterion at the
    θ found (so padded rows and levels add nothing), and the dense criterion is stationary there."""
    rng = np.random.default_rng(4)
    parts = [_dataset(rng, int(rng.integers(30, 120)), int(rng.integers(4, 14)),
                      extra_levels=int(rng.integers(2, 5)) if i % 2 else None) for i in range(50)]
    frame = _long_frame(parts)
    # growth=4: levels padded to 4 or 16 (fewer buckets, more padding)
    one = jm.fit_groups("y ~ x + (x | g)", frame, by="experiment", method="ml", errors="skip", growth=4)
    two = jm.fit_groups("y ~ x + (1 | g) + (1 | h)", frame.dropna(subset=["h"]), by="experiment", method="reml",
                        growth=4)
    assert one.skipped.empty and len(two) == 25
    for result, formula, reml in [(one, "y ~ x + (x | g)", False), (two, "y ~ x + (1 | g) + (1 | h)", True)]:
        for label in result.groups:
            part = parts[int(label[1:])]
            design = jm.Model(formula, part).design
            names = theta_names(design.group_names, [t.column_names for t in design.terms])
            theta = result.theta.loc[label, names].to_numpy()
            assert result.objective[label] == pytest.approx(dense_criterion(design, theta, reml), rel=1e-10)
            for j in np.flatnonzero(theta > 1e-3):  # stationary in every interior direction
                step = np.zeros_like(theta)
                step[j] = 1e-5
                slope = (dense_criterion(design, theta + step, reml) - dense_criterion(design, theta - step, reml))
                assert abs(slope / 2e-5) < 1e-3


def test_fit_of_returns_the_single_fit():
    rng = np.random.default_rng(5)
    parts = [_dataset(rng, 40, 5), _dataset(rng, 50, 6)]
    result = jm.fit_groups("y ~ x + (x | g)", _long_frame(parts), by="experiment", method="ml")
    fit = result.fit_of("e001")
    assert isinstance(fit, jm.MixedModelResult)
    assert fit.objective == pytest.approx(result.objective["e001"], rel=1e-10)
    assert fit.nobs == 50
    with pytest.raises(KeyError, match="no group"):
        result.fit_of("e999")


# ---------------------------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def small_frame():
    rng = np.random.default_rng(6)
    return _long_frame([_dataset(rng, 30, 5), _dataset(rng, 40, 6)])


def test_missing_by_column(small_frame):
    with pytest.raises(jm.DataError, match="by column 'site' is not in the data"):
        jm.fit_groups("y ~ x + (1 | g)", small_frame, by="site")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda f: f[(f.experiment != "e001") | (f.index < 33)], r"group 'e001': 3 rows, too few"),
        (lambda f: f.assign(g=np.where(f.experiment == "e001", "same", f.g)),
         r"group 'e001': grouping factor 'g' has 1 level"),
        (lambda f: f.assign(g=np.where(f.experiment == "e001", np.arange(len(f)).astype(str), f.g)),
         r"group 'e001': number of levels of grouping factor 'g' \(40\) must be < number of observations \(40\)"),
        (lambda f: f.assign(y=np.where(f.experiment == "e000", 2.0, f.y)), r"group 'e000': response 'y' is constant"),
        (lambda f: f.assign(x=np.where(f.experiment == "e000", 1.0, f.x)), r"group 'e000': its fixed-effects model "
                                                                           "matrix is rank deficient"),
    ],
)
def test_groups_a_single_fit_would_refuse(small_frame, edit, message):
    with pytest.raises(jm.DataError, match=message):
        jm.fit_groups("y ~ x + (1 | g)", edit(small_frame), by="experiment")


def test_factor_level_absent_in_a_group_is_named(small_frame):
    frame = small_frame.assign(f=np.where(small_frame.experiment == "e000", "a", np.where(small_frame.index % 2, "a", "b")))
    with pytest.raises(jm.DataError, match="group 'e000': its fixed-effects model matrix is rank deficient"):
        jm.fit_groups("y ~ x + f + (1 | g)", frame, by="experiment")


def test_skip_leaves_refused_groups_out(small_frame):
    frame = small_frame.assign(y=np.where(small_frame.experiment == "e000", 2.0, small_frame.y))
    result = jm.fit_groups("y ~ x + (1 | g)", frame, by="experiment", errors="skip")
    assert list(result.skipped.index) == ["e000"] and "constant" in result.skipped["e000"]
    assert np.isnan(result.objective["e000"]) and np.isfinite(result.objective["e001"])
    assert not result.converged["e000"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(formula="y ~ poly(x, 2) + (1 | g)"), jm.FormulaError, "poly\\(\\) or scale\\(\\)"),
        (dict(family="binomial"), jm.JaxmlmError, "fits linear mixed models"),
        (dict(method="laplace"), ValueError, "method must be 'reml' or 'ml'"),
        (dict(errors="ignore"), ValueError, "errors must be 'raise' or 'skip'"),
        (dict(start=[1.0, 0.0]), ValueError, "start must have 1 values"),
    ],
)
def test_bad_arguments(small_frame, kwargs, error, message):
    args = dict(formula="y ~ x + (1 | g)", data=small_frame, by="experiment") | kwargs
    with pytest.raises(error, match=message):
        jm.fit_groups(**args)


# ---------------------------------------------------------------------------------------------- padding
def test_small_buckets_join_larger_ones():
    from jaxmlm.fit._groups import _bucket_levels

    levels = np.array([[5, 3], [6, 3], [12, 3], [13, 3], [14, 3], [30, 2], [7, 9]])
    padded = _bucket_levels(levels, np.arange(7), 2.0, min_bucket=3)
    # (8, 4) has 2 groups: into (16, 4), which holds it on both terms; (32, 4) and (8, 16) have no larger bucket
    np.testing.assert_array_equal(padded, [[16, 4]] * 5 + [[32, 4], [8, 16]])
    np.testing.assert_array_equal(_bucket_levels(levels, np.arange(7), 2.0, min_bucket=1),
                                  [[8, 4], [8, 4], [16, 4], [16, 4], [16, 4], [32, 4], [8, 16]])


def test_round_up_ladder():
    assert [round_up(n) for n in (1, 4, 5, 8, 9, 33)] == [4, 4, 8, 8, 16, 64]
    assert [round_up(n, 1.5) for n in (5, 7, 10, 14)] == [6, 9, 14, 14]


@pytest.mark.parametrize("qs, levels", [((2,), (8,)), ((1, 1), (8, 4)), ((2, 1, 2), (4, 3, 5))])
def test_padded_row_index_matches_build_structure(qs, levels):
    codes = _complete_codes(levels)
    structure, index = build_structure(codes, list(qs), list(levels))
    mine = padded_row_index(complete_structure(qs, levels), codes)
    for a, b in zip(index["tail_row"], mine["tail_row"]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(index["row_entry"][0], mine["row_entry"][0]):
        np.testing.assert_array_equal(a, b)


def test_padded_statistics_and_levels_add_nothing(x64):
    """The NumPy statistics of a padded bucket equal `cross_products` on the same rows, and the objective with
    levels padded (8 → 16 of the first term, 3 → 8 of the second) equals the unpadded one."""
    rng = np.random.default_rng(7)
    n, qs = 50, (2, 1)
    codes = [np.concatenate([np.arange(8), rng.integers(0, 8, n - 8)]), rng.integers(0, 3, n)]
    zs = [np.column_stack([np.ones(n), rng.normal(size=n)]), np.ones((n, 1))]
    w = rng.uniform(0.5, 2.0, n)
    F = np.column_stack([np.ones(n), rng.normal(size=n), rng.normal(size=n)])
    theta = np.array([0.8, 0.3, 0.5, 0.7])
    values = []
    for levels in [(8, 3), (16, 8)]:
        structure = complete_structure(qs, levels)
        blocks, n_pos, sum_log_w = complete_statistics(structure, np.zeros(n, np.int64), codes, zs, w, F, 2)
        index = padded_row_index(structure, codes)
        rows = RowData(codes=tuple(jnp.asarray(c) for c in codes), z=tuple(jnp.asarray(z) for z in zs),
                       tail_row=tuple(jnp.asarray(r) for r in index["tail_row"]),
                       row_entry=tuple(tuple(jnp.asarray(r) for r in part) for part in index["row_entry"]))
        expected = jax.jit(cross_products)(structure, rows, jnp.asarray(w), jnp.asarray(F))
        for got, want in zip(jax.tree.leaves(blocks), jax.tree.leaves(expected)):
            np.testing.assert_allclose(got[1], np.asarray(want), rtol=1e-12, atol=1e-12)  # slot 1 copies slot 0
        problem = LinearProblem(structure=structure, blocks=jax.tree.map(lambda a: jnp.asarray(a[0]), blocks),
                                n=jnp.asarray(n_pos[0]), p=2, sum_log_w=jnp.asarray(sum_log_w[0]))
        values.append(float(jax.jit(profiled_deviance, static_argnames="reml")(jnp.asarray(theta), problem, True)))
    assert values[1] == pytest.approx(values[0], rel=1e-13)


def test_by_several_columns_and_missing_by_values(small_frame):
    frame = small_frame.assign(site=small_frame.experiment.astype(object), year=2020)
    frame.loc[3, "site"] = None
    with pytest.warns(jm.MissingValuesWarning, match="1 row"):
        several = jm.fit_groups("y ~ x + (1 | g)", frame, by=["site", "year"])
    assert list(several.groups) == [("e000", 2020), ("e001", 2020)]
    one = jm.fit_groups("y ~ x + (1 | g)", frame.drop(index=3), by="site")
    np.testing.assert_allclose(several.objective.to_numpy(), one.objective.to_numpy(), rtol=1e-12)
    assert one.nobs["e000"] == 29


def test_batch_bfgs_runs_host_bfgs_per_problem():
    """The batched host BFGS takes, problem by problem, the passes of `host_bfgs_minimize` (same points, values
    and evaluation counts), each problem stopping on its own test while the others go on."""
    from jaxmlm.optim._batch_bfgs import host_batch_bfgs_minimize
    from jaxmlm.optim._optimize import host_bfgs_minimize

    centres = np.array([[1.0, -2.0], [0.5, 3.0], [-1.0, 0.2]])
    scales = np.array([[1.0, 30.0], [4.0, 1.0], [1.0, 1.0]])

    def one(x, c, s):  # a curved valley: not quadratic, so the line search and the BFGS update both work
        d = x - c
        return float(np.sum(s * d**2) + 0.1 * np.sum(d**4)), 2 * s * d + 0.4 * d**3

    def batch(X):
        out = [one(x, c, s) for x, c, s in zip(X, centres, scales)]
        return np.array([v for v, _ in out]), np.array([g for _, g in out])

    starts = np.zeros((3, 2))
    together = host_batch_bfgs_minimize(batch, starts)
    for i in range(3):
        alone = host_bfgs_minimize(lambda x: one(x, centres[i], scales[i]), starts[i])
        np.testing.assert_allclose(together.x[i], alone.x, rtol=1e-12, atol=1e-14)
        assert together.n_eval[i] == alone.n_eval and together.n_iter[i] == alone.n_iter
        assert bool(together.converged[i]) and bool(alone.converged)
    np.testing.assert_allclose(together.x, centres, atol=1e-6)
