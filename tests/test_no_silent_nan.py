"""No silent NaN: every number a fitted model exposes is finite, or its absence is explained by a warning or an
error (as lme4 warns when the Hessian is not positive definite).

The accessors are found by introspection (every public property, attribute and method of the result types), so a
new accessor is covered without editing this file. Methods that need arguments, or that refit the model, are called
through the explicit tables (`FIT_CALLS`, `DEAR_CALLS`, `POSTERIOR_CALLS`); a public name that is neither callable
without arguments nor in a table fails the test, so it cannot slip past unchecked. Models: linear (REML, ML,
singular, rank-deficient), binomial (Laplace, AGQ, perfectly separated), Poisson, batches and bootstraps of both kinds; the posterior's walk runs in
test_bayes on the posterior sampled there.
"""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import jaxmlm as jm
from jaxmlm.bayes._posterior import Posterior
from jaxmlm.core._covariance import theta_diagonal_mask
from jaxmlm.fit._batch import BatchResult
from jaxmlm.inference._bootstrap import BootstrapResult
from jaxmlm.results._getme import GETME_NAMES
from jaxmlm.results._results import MixedModelResult

# ------------------------------------------------------------------------------------------------ the models


def _singular_data():
    """A grouping factor that explains nothing: lme4 fits its variance as exactly 0."""
    rng = np.random.default_rng(11)
    g = np.repeat(np.arange(8), 6)
    x = rng.normal(size=g.size)
    return pd.DataFrame({"y": 1.0 + 0.5 * x + rng.normal(size=g.size), "x": x, "g": g.astype(str)})


def _hard_data():
    """Perfect separation (y = 1 exactly where x > 0) and a rank-deficient fixed part (x2 = 2 x)."""
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(10), 8)
    x = rng.normal(size=g.size)
    y = rng.normal(size=g.size) + rng.normal(size=10)[g]
    return pd.DataFrame({"y": y, "s": (x > 0).astype(float), "x": x, "x2": 2 * x, "g": g.astype(str)})


@pytest.fixture(scope="module")
def fits():
    sleep = jm.datasets.load("sleepstudy")
    cbpp = jm.datasets.load("cbpp")
    grouse = jm.datasets.load("grouseticks")
    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the singular fit warns; the walk below checks what is exposed
        out["lmm_reml"] = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep)
        out["lmm_ml"] = jm.lmer("Reaction ~ Days + (Days | Subject)", sleep, reml=False)
        out["lmm_singular"] = jm.lmer("y ~ x + (1 | g)", _singular_data())
        out["glmm_laplace"] = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp)
        out["glmm_agq"] = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, nagq=5)
        out["glmm_poisson"] = jm.glmer("TICKS ~ YEAR + cHEIGHT + (1 | BROOD)", grouse, family="poisson")
        hard = _hard_data()
        out["glmm_separated"] = jm.glmer("s ~ x + (1 | g)", hard, family="binomial")
        out["lmm_rank_deficient"] = jm.lmer("y ~ x + x2 + (1 | g)", hard)
    return out


@pytest.fixture(scope="module")
def batches(fits):
    """Eight simulated responses per model: the bootstrap of 8 samples below reuses the same compiled chunk."""
    out = {}
    for name in ("lmm_reml", "glmm_laplace"):
        fit = fits[name]
        out[name] = fit.model.fit_batch(fit.simulate(8, seed=2).to_numpy(), method=fit.method, progress=False)
    return out


# ------------------------------------------------------------------------------------------------ the walk
def _numbers(value, path="") -> list[tuple[str, float]]:
    """Every non-finite number inside value (scalars, arrays, pandas objects, dicts, lists, sparse matrices),
    with where it sits."""
    if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
        return []
    if isinstance(value, (int, float, np.number)):
        return [] if np.isfinite(value) else [(path, value)]
    if sp.issparse(value):
        return _numbers(value.data, path)
    if isinstance(value, pd.DataFrame):
        bad = []
        for col in value.columns:
            bad += _numbers(value[col], f"{path}[{col!r}]")
        return bad + _numbers(value.attrs, f"{path}.attrs")
    if isinstance(value, pd.Series):
        if value.dtype == object:
            return [x for i, v in value.items() for x in _numbers(v, f"{path}[{i!r}]")]
        if not (pd.api.types.is_numeric_dtype(value.dtype) and not pd.api.types.is_bool_dtype(value.dtype)):
            return []
        arr = value.to_numpy(dtype=np.float64)
        return [(f"{path}[{value.index[i]!r}]", arr[i]) for i in np.flatnonzero(~np.isfinite(arr))]
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return [x for i, v in enumerate(value.ravel()) for x in _numbers(v, f"{path}[{i}]")]
        if not np.issubdtype(value.dtype, np.number):
            return []
        bad = np.argwhere(~np.isfinite(value))
        return [(f"{path}{list(i)}", value[tuple(i)]) for i in bad[:5]]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _numbers(v, f"{path}[{k!r}]")]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in _numbers(v, f"{path}[{i}]")]
    if hasattr(value, "__array__") and hasattr(value, "shape"):  # JAX arrays
        return _numbers(np.asarray(value), path)
    return _numbers(str(value), path)  # printed objects (summaries): they must at least print


def _call(obj, name, how):
    """(value, warnings raised, error) of one accessor."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = how(obj) if callable(how) else getattr(obj, name)
            if callable(value) and not callable(how):
                value = value()
            return value, caught, None
        except Exception as exc:  # an error explains the absence; the test below checks it is jaxmlm's or clear
            return None, caught, exc


def _public_names(obj) -> list[str]:
    names = {n for n in dir(type(obj)) if not n.startswith("_")}
    names |= {n for n in vars(obj) if not n.startswith("_")}
    return sorted(names)


def _needs_arguments(obj, name) -> bool:
    attr = inspect.getattr_static(obj, name)
    if isinstance(attr, property) or not callable(getattr(obj, name)):
        return False
    params = inspect.signature(getattr(obj, name)).parameters.values()
    return any(p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def walk(obj, calls: dict, skip: set) -> list[str]:
    """Every accessor of obj: its problems (non-finite numbers without a warning, unexpected errors)."""
    problems = []
    for name in _public_names(obj):
        if name in skip:
            continue
        hows = calls.get(name)
        if hows is None:
            if _needs_arguments(obj, name):
                problems.append(f"{name}: needs arguments but has no entry in CALLS")
                continue
            hows = {name: None}
        for label, how in hows.items():
            value, caught, error = _call(obj, name, how)
            if error is not None:
                if not isinstance(error, (ValueError, TypeError, FloatingPointError, ImportError)):
                    problems.append(f"{label}: {type(error).__name__}: {error}")
                continue
            if label in NA_BY_CONVENTION:
                value = NA_BY_CONVENTION[label](obj, value)
            bad = _numbers(value, label)
            if bad and not caught:
                problems.append(f"{label}: non-finite without a warning: {bad[:3]}")
    return problems


# what needs arguments (or is dear), by result type: label → function of the object
FIT_CALLS = {
    "getme": {f"getme({n!r})": (lambda f, n=n: f.getme(n)) for n in GETME_NAMES},
    "confint": {"confint(wald)": lambda f: f.confint(method="wald")},
    "simulate": {"simulate(2)": lambda f: f.simulate(2)},
    "predict": {"predict()": lambda f: f.predict(),
                "predict(newdata)": lambda f: f.predict(f.model._source["data"].head(5)),
                "predict(re_form=~0)": lambda f: f.predict(re_form="~0")},
    "anova": {"anova()": lambda f: f.anova()},
    "residuals": {f"residuals({t!r})": (lambda f, t=t: f.residuals(t))
                  for t in ("response", "pearson", "deviance", "working")},
    "ranef": {"ranef()": lambda f: f.ranef(), "ranef(long)": lambda f: f.ranef(long=True)},
    "summary": {"summary()": lambda f: str(f.summary())},
}
# the model's structure (not results), and what refits the model many times (the slow test below)
FIT_SKIP = {"model", "design", "family", "extra", "optinfo", "bootstrap", "drop1", "t_tests", "emmeans"}



def _is_variance_parameter(name) -> bool:
    return str(name).startswith(("sd_", "cor_")) or name == "sigma"


# Entries that are NA by lme4's own convention, not by failure, and only those: label → (object, value) → the
# value without them. Wald intervals of the variance parameters (lme4 returns NA), tidy()'s std.error and
# statistic of the variance parameters (broom.mixed leaves them NA), and lme4's lower bound -Inf on θ's
# off-diagonal entries.
def _dropped(f) -> list[str]:
    """Fixed-effect columns dropped for rank deficiency (lme4's fixef(add.dropped = TRUE) shows them as NA, after
    the RankDeficiencyWarning of the fit)."""
    d = f.model.design
    return [n for n in d.x_names_all if n not in d.x_names]


def _tidy(f, v):
    v = v.loc[~v["term"].isin(_dropped(f))]
    return v.loc[v["effect"] == "fixed"], v.loc[v["effect"] != "fixed", "estimate"]


def _drop1(f, v):
    """drop1's first row is the model itself (nothing dropped, no test; R prints it blank), and a term whose
    columns another term spans drops no parameter, so it has no test either (R's NA)."""
    v = v.drop(index="<none>")
    return v.drop(columns=["Pr(Chi)"]), v.loc[v["npar"] > 0, "Pr(Chi)"]


NA_BY_CONVENTION = {
    "confint(wald)": lambda f, v: v.loc[[n for n in v.index if not _is_variance_parameter(n)]],
    "tidy": _tidy,
    "fixef": lambda f, v: v.drop(index=_dropped(f), errors="ignore"),
    "se": lambda f, v: v.drop(index=_dropped(f), errors="ignore"),
    "getme('fixef')": lambda f, v: v.drop(index=_dropped(f), errors="ignore"),
    "coef": lambda f, v: {k: frame.drop(columns=_dropped(f)) for k, frame in v.items()},
    "getme('lower')": lambda f, v: v[theta_diagonal_mask(f.model.qs)],
    # varcorr's var1 / var2 hold names (all NA, so read as numbers, when no term has a correlation)
    "varcorr": lambda f, v: v.drop(columns=["var1", "var2"]),
    "drop1(Chisq)": _drop1,
    # a binomial or Poisson batch has no σ, as a single fit's sigma is None
    "sigma": lambda f, v: v[~np.isnan(v)] if isinstance(v, np.ndarray) and not f.model.is_gaussian else v,
}


@pytest.mark.parametrize("name", ["lmm_reml", "lmm_ml", "lmm_singular", "glmm_laplace", "glmm_agq",
                                  "glmm_poisson", "glmm_separated", "lmm_rank_deficient"])
def test_fitted_model_accessors_are_finite_or_explained(fits, name):
    problems = walk(fits[name], FIT_CALLS, FIT_SKIP)
    assert not problems, "\n".join(problems)


def test_fit_internals_are_finite(fits):
    """What the accessors are computed from: the optimizer's report and the state kept at the optimum."""
    for name, fit in fits.items():
        assert not _numbers(fit.optinfo.hessian_eigenvalues), name
        assert not _numbers({k: v for k, v in fit.extra.items() if not isinstance(v, str)}), name


DEAR_CALLS = {
    "confint": {"confint(profile)": lambda f: f.confint()},
    "t_tests": {"t_tests()": lambda f: f.t_tests()},
    "drop1": {"drop1(Chisq)": lambda f: f.drop1(test="Chisq")},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", ["lmm_reml", "lmm_singular", "glmm_laplace", "glmm_agq", "glmm_separated"])
def test_dear_accessors_are_finite_or_explained(fits, name):
    fit = fits[name]
    calls = {k: v for k, v in DEAR_CALLS.items() if fit.is_linear or k != "t_tests"}
    problems = walk(fit, calls, set(_public_names(fit)) - set(calls))
    assert not problems, "\n".join(problems)


BATCH_SKIP = {"model", "method", "columns"}


@pytest.mark.parametrize("name", ["lmm_reml", "glmm_laplace"])
def test_batch_and_bootstrap_accessors_are_finite_or_explained(fits, batches, name):
    assert not walk(batches[name], {}, BATCH_SKIP)
    boot = fits[name].bootstrap(8, progress=False)
    problems = walk(boot, {}, {"batch"}) + walk(boot.batch, {}, BATCH_SKIP)
    assert not problems, "\n".join(problems)


POSTERIOR_CALLS = {
    "predict": {"predict()": lambda p: p.predict(),
                "predict(newdata)": lambda p: p.predict(p.model._source["data"].head(5))},
    "summary": {"summary()": lambda p: p.summary()},
}


def posterior_problems(posterior) -> list[str]:
    """The walk of a posterior. Sampling is dear to compile, so test_bayes runs this on the posterior it samples
    (`test_sleepstudy_posterior`) rather than this file sampling one of its own."""
    return walk(posterior, POSTERIOR_CALLS, {"model", "design", "family", "link", "hyper", "mcmc"})
