"""Faults survived: a fit interrupted in the middle (KeyboardInterrupt from inside the optimizer's objective)
leaves the process usable and the next fit gives the same numbers; fits from several threads at once give the
numbers each gives alone."""

from __future__ import annotations

import concurrent.futures
import warnings

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm import _config
from jaxmlm.fit import _glmm, _linear

LMM = ("Reaction ~ Days + (Days | Subject)", "sleepstudy", "gaussian")
GLMM = ("cbind(incidence, size - incidence) ~ period + (1 | herd)", "cbpp", "binomial")


def _fit(spec, model=None):
    formula, data, family = spec
    model = model or jm.Model(formula, jm.datasets.load(data), family=family)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.fit()


def _numbers(fit) -> np.ndarray:
    return np.concatenate([fit.theta, fit.fixef.to_numpy(), fit.se.to_numpy(), [fit.objective]])


@pytest.fixture(scope="module")
def alone():
    return {name: _numbers(_fit(spec)) for name, spec in (("lmm", LMM), ("glmm", GLMM))}


def _interrupt_after(calls: int, function):
    """function, raising KeyboardInterrupt on its calls-th call (as Ctrl-C in the middle of a fit would)."""
    count = {"n": 0}

    def wrapped(*args, **kwargs):
        count["n"] += 1
        if count["n"] == calls:
            raise KeyboardInterrupt
        return function(*args, **kwargs)

    return wrapped, count


@pytest.mark.parametrize("name,spec,module,function", [
    ("lmm", LMM, _linear, "deviance_and_gradient"),
    ("glmm", GLMM, _glmm, "_value_and_grad"),
])
def test_interrupted_fit_leaves_the_process_usable(alone, monkeypatch, name, spec, module, function,):
    formula, data, family = spec
    model = jm.Model(formula, jm.datasets.load(data), family=family)
    wrapped, count = _interrupt_after(4, getattr(module, function))
    monkeypatch.setattr(module, function, wrapped)
    with pytest.raises(KeyboardInterrupt):
        _fit(spec, model)
    assert count["n"] == 4  # it stopped in the middle of the optimizer's search
    monkeypatch.undo()
    assert _config._heap_depth == 0  # the allocator's settings are back
    np.testing.assert_array_equal(_numbers(_fit(spec, model)), alone[name])  # the same Model, refitted
    np.testing.assert_array_equal(_numbers(_fit(spec)), alone[name])


def test_interrupted_batch_leaves_the_process_usable(monkeypatch):
    from jaxmlm.fit import _batch

    model = jm.Model("Yield ~ 1 + (1 | Batch)", jm.datasets.load("Dyestuff"))
    fit = _fit(("Yield ~ 1 + (1 | Batch)", "Dyestuff", "gaussian"), model)
    Y = fit.simulate(8, seed=1).to_numpy()
    whole = model.fit_batch(Y, chunk_size=2, progress=False)
    wrapped, count = _interrupt_after(3, _batch._fit_chunk)  # the third of four chunks, on a worker thread
    monkeypatch.setattr(_batch, "_fit_chunk", wrapped)
    with pytest.raises(KeyboardInterrupt):
        model.fit_batch(Y, chunk_size=2, progress=False)
    monkeypatch.undo()
    again = model.fit_batch(Y, chunk_size=2, progress=False)
    np.testing.assert_array_equal(again.objective, whole.objective)
    np.testing.assert_array_equal(again.beta, whole.beta)


def test_fits_from_four_threads_equal_fits_alone(alone):
    """Two LMM and two GLMM fits at once, on fresh models and on one shared Model of each (its caches are
    built by whichever thread comes first)."""
    shared = {"lmm": jm.Model(*LMM[:1], jm.datasets.load(LMM[1])),
              "glmm": jm.Model(GLMM[0], jm.datasets.load(GLMM[1]), family=GLMM[2])}
    jobs = [("lmm", LMM, None), ("glmm", GLMM, None), ("lmm", LMM, shared["lmm"]), ("glmm", GLMM, shared["glmm"]),
            ("lmm", LMM, shared["lmm"]), ("glmm", GLMM, shared["glmm"])]
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = [(name, pool.submit(_fit, spec, model)) for name, spec, model in jobs]
        results = [(name, future.result()) for name, future in futures]
    for name, fit in results:
        np.testing.assert_array_equal(_numbers(fit), alone[name])
