"""jaxmlm's warnings name the user's line (the first frame outside the package), not jaxmlm's internals."""

import warnings

import numpy as np
import pandas as pd
import pytest

import jaxmlm as jm
from jaxmlm._warn import user_stacklevel


def _caught(fn, category):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [w for w in caught if issubclass(w.category, category)]


def test_user_stacklevel_outside_the_package_is_one():
    assert user_stacklevel() == 1


def test_poisson_warning_points_at_the_caller():
    data = jm.datasets.load("cbpp")
    data = data.assign(n=data["incidence"] + 0.5)
    caught = _caught(lambda: jm.glmer("n ~ period + (1 | herd)", data, family="poisson"), UserWarning)
    assert caught and all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]


def test_anova_warning_points_at_the_caller():
    data = jm.datasets.load("sleepstudy")
    m0 = jm.lmer("Reaction ~ 1 + (1 | Subject)", data)
    m1 = jm.lmer("Reaction ~ Days + (1 | Subject)", data)
    caught = _caught(lambda: jm.anova(m0, m1, refit=False), UserWarning)
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize("depth", [1, 3])
def test_nested_calls_inside_the_package_are_skipped(depth, monkeypatch):
    """A helper inside the package, however deep: the level counts up to the first outside frame."""
    import jaxmlm._warn as warn_module

    monkeypatch.setattr(warn_module, "_PACKAGE_DIR", __file__)  # treat this file as the package

    def inner(k):
        return user_stacklevel() if k == 0 else inner(k - 1)

    # inner's frames (depth + 1 of them) and this test's frame all lie "inside"; pytest's caller is the first out
    assert inner(depth) == depth + 3


def test_singular_and_missing_value_warnings_point_at_the_caller():
    data = jm.datasets.load("sleepstudy").copy()
    data.loc[3, "Days"] = float("nan")
    caught = _caught(lambda: jm.lmer("Reaction ~ Days + (1 | Subject)", data), jm.MissingValuesWarning)
    assert [w.filename for w in caught] == [__file__]
    rng = np.random.default_rng(5)
    flat = pd.DataFrame({"y": rng.normal(size=40), "g": np.tile(list("abcde"), 8)})
    flat["y"] -= flat.groupby("g")["y"].transform("mean")  # no variation between groups: a zero variance
    caught = _caught(lambda: jm.lmer("y ~ 1 + (1 | g)", flat), jm.SingularFitWarning)
    assert [w.filename for w in caught] == [__file__]
    assert "docs/errors.md" in str(caught[0].message)


def test_batch_warning_points_at_the_caller():
    model = jm.Model("Reaction ~ Days + (1 | Subject)", jm.datasets.load("sleepstudy"))
    Y = np.column_stack([model.design.y, np.full(model.design.n, np.nan)])  # the second column has no rows
    caught = _caught(lambda: model.fit_batch(Y), jm.ConvergenceWarning)
    assert caught and all(w.filename == __file__ for w in caught), [(w.filename, w.lineno) for w in caught]
