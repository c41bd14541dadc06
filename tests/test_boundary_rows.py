"""The row-wise snap and saddle rules (`fit/_boundary.py`), which the batch drivers run, against the single-fit
rules on the same rows: the same points kept or moved, the same probes chosen, with the same tolerances.

The objectives are sleepstudy's profiled ML deviance (θ of one intercept-and-slope term: two bounded
coordinates and one free) through the public problem, and a small function whose minimum in a bounded
coordinate lies off the bound, so that some rows are at a saddle and others at a genuine boundary optimum.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.fit import _boundary


@pytest.fixture(scope="module")
def sleepstudy_ml():
    """θ = (θ₁₁, θ₂₁, θ₂₂): lower bounds (0, -inf, 0)."""
    problem = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy")).problem("ml")
    assert np.array_equal(np.asarray(problem.lower), [0.0, -np.inf, 0.0])
    return problem


def _host(problem):
    fun = jax.jit(problem.objective)

    def objective(x):
        return float(fun(jnp.asarray(x, dtype=jnp.float64)))

    def rows(points):
        return np.array([objective(p) for p in points])

    return objective, rows


def _saddle_function():
    """f(a, b, c) = (a² − 1)² + (b² + 0.5)² + (c − 1)²: in a and b even (as the deviance is in a column of T); in a
    the bound a = 0 is a saddle (the minimum is at a = 1), in b it is the minimum."""
    def f(x):
        a, b, c = x
        return float((a * a - 1.0) ** 2 + (b * b + 0.5) ** 2 + (c - 1.0) ** 2)

    return f, lambda points: np.array([f(p) for p in points])


def test_snap_rows_is_the_single_snap_row_by_row(x64, sleepstudy_ml):
    lower = np.asarray(sleepstudy_ml.lower)
    objective, rows = _host(sleepstudy_ml)
    X = np.array([[0.93, 0.02, 0.23],     # interior: nothing to snap
                  [0.93, 1e-7, 0.23],     # a free coordinate tiny: not snapped (no bound)
                  [1e-7, 0.5, 0.2],       # tiny, but its column of T is not: 0 raises the deviance, left
                  [0.0, 0.0, 0.0],        # already on the bounds
                  [0.9, 0.3, -2e-7],      # tiny and negative (the deviance is even in the sign): snapped
                  [0.9, 0.3, 1e-3],       # small but above the tolerance: left
                  [1e-7, 0.0, 0.2]])      # a tiny column: snapped
    snapped, value = _boundary.snap_rows(X, lower, rows)
    assert value.shape == (len(X),)
    for x, s in zip(X, snapped):
        np.testing.assert_array_equal(s, _boundary.snap_to_boundary(x, lower, objective))
    np.testing.assert_array_equal(snapped[[0, 1, 2, 3, 5]], X[[0, 1, 2, 3, 5]])
    assert snapped[4, 2] == 0.0 and snapped[6, 0] == 0.0
    np.testing.assert_allclose(value, rows(snapped), rtol=1e-13)


def test_snap_rows_snaps_where_the_objective_allows(x64):
    """On the saddle function the bound b = 0 is b's optimum: a tiny b goes to 0, and the value returned is the
    objective there; a tiny a (whose optimum is a = 1) raises f by ~1e-13 when set to 0: within 1e-10 relative,
    so it is snapped too, as the single rule snaps it."""
    f, rows = _saddle_function()
    lower = np.array([0.0, 0.0, -np.inf])
    X = np.array([[1.0, 3e-7, 1.0], [2e-7, 0.4, 1.0], [1.0, 0.4, 1.0]])
    snapped, value = _boundary.snap_rows(X, lower, rows, value=rows(X))
    expected = np.stack([_boundary.snap_to_boundary(x, lower, f) for x in X])
    np.testing.assert_array_equal(snapped, expected)
    assert snapped[0, 1] == 0.0 and snapped[1, 0] == 0.0 and np.array_equal(snapped[2], X[2])
    np.testing.assert_array_equal(value, rows(snapped))


def test_snap_rows_traced_is_the_host_rule(x64, sleepstudy_ml):
    """Inside a traced, vmapped fit (jax.numpy) the same rule gives the same points."""
    lower = np.asarray(sleepstudy_ml.lower)
    _, rows = _host(sleepstudy_ml)
    X = np.array([[0.93, 0.02, 0.23], [1e-7, 0.5, 0.2], [0.9, 0.3, -2e-7], [0.0, 0.0, 0.0], [1e-7, 0.0, 0.2]])

    def one(x):
        return _boundary.snap_rows(x, lower, sleepstudy_ml.objective, value=sleepstudy_ml.objective(x), xp=jnp)

    traced, traced_value = jax.jit(jax.vmap(one))(jnp.asarray(X))
    host, _ = _boundary.snap_rows(X, lower, rows)
    np.testing.assert_array_equal(np.asarray(traced), host)
    np.testing.assert_allclose(np.asarray(traced_value), rows(host), rtol=1e-12)


def test_saddle_probes_in_the_single_rules_order():
    lower = np.array([0.0, 0.0, -np.inf])
    x = np.array([[0.0, 0.0, 0.3], [0.0, 0.5, 0.0], [0.2, 0.5, 0.3]])
    points, valid = _boundary.saddle_probes(x, lower)
    assert points.shape == (4, 3, 3) and valid.shape == (4, 3)
    np.testing.assert_array_equal(valid, [[True, True, False], [True, False, False], [False, False, False],
                                          [True, False, False]])
    np.testing.assert_array_equal(points[0, 0], [0.01, 0.0, 0.3])
    np.testing.assert_array_equal(points[1, 0], [0.0, 0.01, 0.3])
    np.testing.assert_array_equal(points[3, 0], [0.01, 0.01, 0.3])
    np.testing.assert_array_equal(points[0, 1], [0.01, 0.5, 0.0])  # a free coordinate at 0 is no bound


def test_saddle_starts_are_the_single_rules_starts(x64):
    """Row by row, the rows whose probe lowers the objective and the probe chosen are those the single rule
    refits from (its `refit` sees the start): a saddle in a, a genuine boundary optimum in b, both, neither."""
    f, rows = _saddle_function()
    lower = np.array([0.0, 0.0, -np.inf])
    X = np.array([[0.0, 0.7, 1.0], [1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 0.7, 1.0], [0.0, 0.0, 3.0]])
    which, starts = _boundary.saddle_starts(X, lower, rows, rows(X))
    for i, x in enumerate(X):
        seen = []

        def refit(start):
            seen.append(np.array(start))
            return start, None

        messages = []
        _boundary.leave_boundary_saddle(x, None, lower, f, refit, messages)
        assert bool(which[i]) == bool(seen), i
        if seen:
            np.testing.assert_array_equal(starts[i], seen[0])
    np.testing.assert_array_equal(which, [True, False, True, False, True])
    np.testing.assert_array_equal(starts[2], [0.01, 0.0, 1.0])  # the single probe off a beats off both


def test_saddle_starts_on_sleepstudy_rows(x64, sleepstudy_ml):
    """θ = 0 is a saddle of sleepstudy's deviance; lme4's optimum is interior: every zero row finds a start,
    the optimum's row none; the kept refit ends lower (`refit_is_lower`), as the single rule keeps it."""
    lower = np.asarray(sleepstudy_ml.lower)
    objective, rows = _host(sleepstudy_ml)
    fit = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy")).fit(method="ml", warn=False)
    theta = np.asarray(fit.theta)
    X = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 0.2], [theta[0], theta[1], 0.0], theta])
    which, starts = _boundary.saddle_starts(X, lower, rows, rows(X))
    np.testing.assert_array_equal(which, [True, True, True, False])
    for i in np.flatnonzero(which):
        seen = []
        _boundary.leave_boundary_saddle(X[i], None, lower, objective, lambda s: (seen.append(s), (X[i], None))[1],
                                        [])
        np.testing.assert_array_equal(starts[i], seen[0])
    values = rows(X)
    ends = np.full(len(X), values[-1])
    np.testing.assert_array_equal(_boundary.refit_is_lower(values, ends), [True, True, True, False])


def test_return_codes_are_the_single_records_rule():
    from jaxmlm.optim._optimize import OptimResult
    from jaxmlm.optim._summary import _return_code, return_codes

    cases = [(True, 1.0, 5), (False, np.nan, 5), (False, 1.0, 10), (False, 1.0, 3)]
    rows = return_codes([c for c, _, _ in cases], [v for _, v, _ in cases], [n for _, _, n in cases], 10)
    for (c, v, n), code in zip(cases, rows):
        res = OptimResult(x=None, value=np.asarray(v), grad=None, n_iter=np.asarray(n), n_eval=np.asarray(n),
                          converged=np.asarray(c))
        assert _return_code(res, 10) == code
    assert list(rows) == ["converged", "not_finite", "max_evaluations", "stalled"]


def _halves():
    data = jm.datasets.load("sleepstudy").copy()
    data["half"] = data["Subject"].astype("category").cat.codes.to_numpy() % 2
    return data


def test_groups_leave_a_saddle_start_as_single_fits_do():
    """From θ = 0 (a saddle of every group's deviance) each group's search leaves the boundary as its single fit
    does: the same optimum, and the record says so, row by row as the single fit's OptSummary."""
    from jaxmlm.fit._boundary import SADDLE_MESSAGE

    data, formula = _halves(), "Reaction ~ Days + (Days | Subject)"
    res = jm.fit_groups(formula, data, by="half", method="ml", start=np.zeros(3))
    assert len(res.optsum) == 2 and list(res.optsum.return_code) == ["converged"] * 2
    for i, g in enumerate(res.groups):
        single = jm.Model(formula, data[data["half"] == g]).fit(method="ml", start=np.zeros(3), warn=False)
        assert res.objective_values[i] == pytest.approx(single.objective, rel=1e-10)
        assert (SADDLE_MESSAGE in res.optsum.messages[i]) == (SADDLE_MESSAGE in single.optsum.messages)
        assert SADDLE_MESSAGE in res.optsum.messages[i]
        assert res.optsum.evaluations[i] >= res.optsum.iterations[i] > 0


def test_batch_leaves_a_saddle_start_as_single_fits_do():
    from jaxmlm.fit._boundary import SADDLE_MESSAGE

    data, formula = jm.datasets.load("sleepstudy"), "Reaction ~ Days + (Days | Subject)"
    rng = np.random.default_rng(4)
    Y = np.column_stack([data["Reaction"], data["Reaction"] + rng.normal(0, 15, len(data))])
    batch = jm.Model(formula, data).fit_batch(Y, method="ml", start=np.zeros(3), progress=False)
    assert batch.optsum.row(0)["return_code"] == "converged"
    for j in range(2):
        column = data.assign(Reaction=Y[:, j])
        single = jm.Model(formula, column).fit(method="ml", start=np.zeros(3), warn=False)
        assert batch.objective[j] == pytest.approx(single.objective, rel=1e-9)
        assert SADDLE_MESSAGE in batch.optsum.messages[j] and SADDLE_MESSAGE in single.optsum.messages


@pytest.mark.filterwarnings("ignore::jaxmlm.ConvergenceWarning")
def test_glmm_batch_leaves_a_saddle_on_the_boundary_as_a_single_fit_does():
    """Started at θ = 0 (a stationary point whatever the data), a GLMM batch column searches again from just off
    the boundary and ends at the single fit's optimum, with the record's saddle message."""
    cbpp = jm.datasets.load("cbpp")
    model = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    batch = model.fit_batch(np.column_stack([cbpp.incidence / cbpp["size"]] * 2), start={"theta": [0.0]})
    single = model.fit()
    np.testing.assert_allclose(batch.objective, single.objective, rtol=1e-9)
    np.testing.assert_allclose(batch.theta[:, 0], float(np.asarray(single.theta)[0]), rtol=1e-4)
    assert all(any("saddle" in msg for msg in row) for row in batch.optsum.messages)
