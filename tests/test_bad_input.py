"""The catalogue of bad inputs (docs/errors.md): each raises a catchable jaxmlm error that names the column or
term at fault, within a second and before JAX traces or compiles anything."""

import warnings

import jax
import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm

# ---------------------------------------------------------------------------------------------- compile watch
# Every JAX trace (jit, or an eager primitive) records this event; a bad input must fail before the first one.
_TRACE_EVENT = "/jax/core/compile/jaxpr_trace_duration"
_traces = {"count": 0}


def _on_event(event, duration, **kwargs):
    if event == _TRACE_EVENT:
        _traces["count"] += 1


jax.monitoring.register_event_duration_secs_listener(_on_event)


def _data(n=30, seed=0):
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "y": rng.normal(size=n) + np.repeat(rng.normal(size=5), n // 5),
            "x": rng.normal(size=n),
            "g": np.repeat([f"g{i}" for i in range(5)], n // 5),
            "h": np.tile(["u", "v", "w"], n // 3),
            "w": 1.0 + rng.uniform(size=n),
        }
    )


DF = _data()
N = len(DF)


def _with(**cols):
    return DF.assign(**cols)


COUNTS = DF.assign(n=np.arange(N) % 4 + 1)


def _first_inf(col):
    v = DF[col].to_numpy().copy()
    v[0] = np.inf
    return v


# (formula, data, keyword arguments, exception type, words the message must contain)
CATALOGUE = {
    # unknown names
    "unknown response": ("yy ~ x + (1 | g)", DF, {}, jm.FormulaError, ["'yy'", "response"]),
    "unknown fixed-effect": ("y ~ xx + (1 | g)", DF, {}, jm.FormulaError, ["'xx'", "fixed"]),
    "unknown slope": ("y ~ x + (z | g)", DF, {}, jm.FormulaError, ["'z'", "(z | g)"]),
    "unknown grouping factor": ("y ~ x + (1 | gg)", DF, {}, jm.FormulaError, ["'gg'", "(1 | gg)"]),
    "unknown offset variable": ("y ~ x + offset(log(q)) + (1 | g)", DF, {}, jm.FormulaError, ["'q'", "offset"]),
    "unknown weights column": ("y ~ x + (1 | g)", DF, {"weights": "ww"}, jm.FormulaError, ["'ww'", "weights"]),
    "unknown offset column": ("y ~ x + (1 | g)", DF, {"offset": "oo"}, jm.FormulaError, ["'oo'", "offset"]),
    # formula syntax
    "unbalanced '('": ("y ~ x + (1 | g", DF, {}, jm.FormulaError, ["unbalanced", "(1 | g"]),
    "unbalanced ')'": ("y ~ x + (1 | g))", DF, {}, jm.FormulaError, ["unbalanced", "(1 | g))"]),
    "missing '~'": ("y x + (1 | g)", DF, {}, jm.FormulaError, ["'~'"]),
    "two '~'": ("y ~ x ~ (1 | g)", DF, {}, jm.FormulaError, ["'~'"]),
    "no response": ("~ x + (1 | g)", DF, {}, jm.FormulaError, ["response"]),
    "nothing after '~'": ("y ~ ", DF, {}, jm.FormulaError, ["right"]),
    "empty left of bar": ("y ~ x + ( | g)", DF, {}, jm.FormulaError, ["| g)", "before the bar"]),
    "empty right of bar": ("y ~ x + (1 | )", DF, {}, jm.FormulaError, ["(1 |", "grouping factor"]),
    "bar without parentheses": ("y ~ x + 1 | g", DF, {}, jm.FormulaError, ["1 | g", "parentheses"]),
    "python syntax error": ("y ~ x + * + (1 | g)", DF, {}, jm.FormulaError, ["cannot parse"]),
    "formula not a string": (42, DF, {}, jm.FormulaError, ["string"]),
    # impossible models
    "same variable both sides of bar": ("y ~ x + (g | g)", DF, {}, jm.FormulaError, ["'g'", "(g | g)"]),
    "no random term": ("y ~ x", DF, {}, jm.FormulaError, ["random-effects term", "'y ~ x'"]),
    "grouping factor with one level": (
        "y ~ x + (1 | one)", _with(one="a"), {}, jm.DataError, ["'one'", "1 level"]),
    "as many levels as rows": (
        "y ~ x + (1 | id)", _with(id=np.arange(N)), {}, jm.DataError, ["'id'", "number of observations"]),
    "more random effects than rows": (
        "y ~ x + (x + w | h)", DF.iloc[:8], {}, jm.DataError, ["(x + w | h)", "unidentifiable"]),
    # data
    "empty data": ("y ~ x + (1 | g)", DF.iloc[:0], {}, jm.DataError, ["no rows"]),
    "all rows missing": ("y ~ x + (1 | g)", _with(x=np.nan), {}, jm.DataError, ["missing"]),
    "data not a data frame": ("y ~ x + (1 | g)", [1, 2, 3], {}, jm.DataTypeError, ["DataFrame"]),
    "string response": ("s ~ x + (1 | g)", _with(s=DF.g), {}, jm.DataTypeError, ["'s'", "numeric"]),
    "categorical response": (
        "s ~ x + (1 | g)", _with(s=DF.g.astype("category")), {}, jm.DataTypeError, ["'s'", "numeric"]),
    "inf in response": ("y ~ x + (1 | g)", _with(y=_first_inf("y")), {}, jm.DataError, ["'y'", "non-finite"]),
    "inf in predictor": ("y ~ x + (1 | g)", _with(x=_first_inf("x")), {}, jm.DataError, ["'x'", "non-finite"]),
    "inf in slope": ("y ~ 1 + (w | g)", _with(w=_first_inf("w")), {}, jm.DataError, ["'w'", "non-finite"]),
    "inf from an expression": (
        "y ~ log(w) + (1 | g)", _with(w=np.r_[0.0, DF.w[1:]]), {}, jm.DataError, ["log(w)", "non-finite"]),
    "constant response": ("y ~ x + (1 | g)", _with(y=1.5), {}, jm.DataError, ["'y'", "constant"]),
    # weights and offsets
    "weights of the wrong length": (
        "y ~ x + (1 | g)", DF, {"weights": np.ones(3)}, jm.DataError, ["weights", f"({N})"]),
    "negative weights": ("y ~ x + (1 | g)", DF, {"weights": -DF.w.to_numpy()}, jm.DataError, ["weights", "negative"]),
    "infinite weights": (
        "y ~ x + (1 | g)", DF, {"weights": np.r_[np.inf, DF.w[1:]]}, jm.DataError, ["weights", "finite"]),
    "string weights": ("y ~ x + (1 | g)", DF, {"weights": np.array(["1"] * N)}, jm.DataTypeError, ["weights"]),
    "string weights column": ("y ~ x + (1 | g)", DF, {"weights": "g"}, jm.DataTypeError, ["weights", "numeric"]),
    "offset of the wrong length": (
        "y ~ x + (1 | g)", DF, {"offset": np.ones(4)}, jm.DataError, ["offset", f"({N})"]),
    # missing values refused on request
    "missing values with na_action='raise'": (
        "y ~ x + (1 | g)", _with(x=np.r_[np.nan, DF.x[1:]]), {"na_action": "raise"}, jm.DataError,
        ["'x'", "na_action"]),
    "unknown na_action": ("y ~ x + (1 | g)", DF, {"na_action": "pass"}, jm.JaxmlmError, ["na_action", "'pass'"]),
    # families
    "unknown family": ("y ~ x + (1 | g)", DF, {"family": "gamma-ish"}, jm.FamilyError, ["'gamma-ish'"]),
    "family of the wrong type": ("y ~ x + (1 | g)", DF, {"family": 3.0}, jm.FamilyError, ["family"]),
    "unknown link": ("y ~ x + (1 | g)", DF, {"family": "gaussian", "link": "probit"}, jm.FamilyError, ["'probit'"]),
    "link the family lacks": ("n ~ x + (1 | g)", COUNTS, {"family": "poisson", "link": "logit"}, jm.FamilyError,
                              ["poisson", "'logit'"]),
    # family-specific responses
    "binomial response outside [0, 1]": (
        "n ~ x + (1 | g)", COUNTS, {"family": "binomial"}, jm.ResponseError, ["'n'", "[0, 1]"]),
    "more successes than trials": (
        "cbind(n, size - n) ~ x + (1 | g)", COUNTS.assign(size=COUNTS["n"] - 1), {"family": "binomial"},
        jm.ResponseError, ["'size - n'", "negative"]),
    "negative Poisson count": (
        "n ~ x + (1 | g)", COUNTS.assign(n=-COUNTS["n"]), {"family": "poisson"}, jm.ResponseError,
        ["'n'", "non-negative"]),
    "cbind response for a linear model": (
        "cbind(n, size - n) ~ x + (1 | g)", COUNTS.assign(size=COUNTS["n"] + 2), {}, jm.FormulaError, ["cbind"]),
}


def _raise_case(formula, data, kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return jm.Model(formula, data, **kwargs)


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_bad_input_raises_clear_error_before_compiling(case):
    formula, data, kwargs, exc_type, words = CATALOGUE[case]
    traces_before = _traces["count"]
    with pytest.raises(exc_type) as info:
        _raise_case(formula, data, kwargs)
    message = str(info.value)
    # before compiling: nothing was traced (a count, not a clock, which a loaded machine would make flaky)
    assert _traces["count"] == traces_before, f"{case}: JAX traced something before raising"
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"
    assert "tracer" not in message.lower() and "jax" not in message.lower()
    # users can catch every one of them broadly
    assert isinstance(info.value, (ValueError, TypeError))
    assert isinstance(info.value, (jm.JaxmlmError, jm.DataTypeError))


def test_error_types_form_a_catchable_hierarchy():
    for cls in (jm.FormulaError, jm.DataError, jm.ResponseError, jm.FamilyError, jm.NewLevelError):
        assert issubclass(cls, jm.JaxmlmError) and issubclass(cls, ValueError)
    assert issubclass(jm.DataTypeError, TypeError)
    assert issubclass(jm.ResponseError, jm.DataError)


def test_glmer_allows_one_level_per_row_only_for_non_gaussian_checks():
    """'as many levels as rows' is lme4's check for linear models; glmer with the gaussian family is a linear model."""
    with pytest.raises(jm.DataError, match="'id'"):
        jm.glmer("y ~ x + (1 | id)", _with(id=np.arange(N)), family="gaussian")


# ---------------------------------------------------------------------------------------------- missing values
@pytest.fixture(scope="module")
def fit_with_missing():
    data = DF.copy()
    data.loc[[2, 7], "x"] = np.nan
    data.loc[11, "g"] = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = jm.lmer("y ~ x + (1 | g)", data)
    return fit, caught


def test_missing_values_are_dropped_with_a_warning_and_counted(fit_with_missing):
    fit, caught = fit_with_missing
    assert any(issubclass(w.category, jm.MissingValuesWarning) and "3" in str(w.message) for w in caught)
    assert fit.nobs == N - 3
    assert "(3 observations deleted due to missingness)" in str(fit.summary())
    complete = DF.drop(index=[2, 7, 11])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = jm.lmer("y ~ x + (1 | g)", complete)
    np.testing.assert_allclose(fit.fixef.to_numpy(), ref.fixef.to_numpy(), rtol=1e-10)
    np.testing.assert_allclose(fit.theta, ref.theta, rtol=1e-8)


def test_missing_values_in_unused_columns_are_ignored():
    data = DF.assign(unused=np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("error", jm.MissingValuesWarning)
        model = jm.Model("y ~ x + (1 | g)", data)
    assert model.design.n == N and model.design.n_dropped == 0


# ---------------------------------------------------------------------------------------------- predict
def test_new_levels_in_predict_need_allow_new_levels(fit_with_missing):
    fit, _ = fit_with_missing
    new = pd.DataFrame({"x": [0.1, 0.2], "g": ["g0", "zz"]})
    traces_before = _traces["count"]
    with pytest.raises(jm.NewLevelError) as info:
        fit.predict(new)
    assert _traces["count"] == traces_before
    assert "'zz'" in str(info.value) and "'g'" in str(info.value) and "allow_new_levels" in str(info.value)
    pred = np.asarray(fit.predict(new, allow_new_levels=True))
    population = np.asarray(fit.predict(new, re_form=False))
    assert pred[1] == pytest.approx(population[1], rel=1e-12)  # a new level predicts at the population level
    assert pred[0] != pytest.approx(population[0], rel=1e-6)
