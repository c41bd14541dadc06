"""Bounded memory: batches, bootstrap samples and posterior predictions run in chunks sized to the machine
(`jaxmlm._memory`), the chunking changes no number, and a 100k-response batch keeps its peak memory bounded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm import _memory
from jaxmlm.bayes._posterior import Posterior


# ------------------------------------------------------------------------------------------------ the helper
def test_available_memory_and_chunk_sizes(monkeypatch):
    monkeypatch.delenv("JAXMLM_MEMORY_BYTES", raising=False)
    assert _memory.available_bytes() > 0
    monkeypatch.setenv("JAXMLM_MEMORY_BYTES", str(400 * 2**20))
    assert _memory.available_bytes() == 400 * 2**20
    # a quarter of the memory at 1 MiB per item, capped by the items and by `maximum`; an override wins
    assert _memory.chunk_size(10_000, 2**20) == 100
    assert _memory.chunk_size(30, 2**20) == 30
    assert _memory.chunk_size(10_000, 2**20, maximum=64) == 64
    assert _memory.chunk_size(10_000, 2**40) == 1
    assert _memory.chunk_size(10_000, 2**20, override=7) == 7
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="chunk_size"):
            _memory.chunk_size(10, 8, override=bad)
    monkeypatch.setenv("JAXMLM_MEMORY_BYTES", "lots")
    with pytest.raises(ValueError, match="JAXMLM_MEMORY_BYTES"):
        _memory.available_bytes()


# ------------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def dyestuff():
    model = jm.Model("Yield ~ 1 + (1 | Batch)", jm.datasets.load("Dyestuff"))
    fit = model.fit("reml")
    return model, fit


def test_default_chunks_follow_the_memory(monkeypatch, dyestuff):
    from jaxmlm.fit._batch import _CHUNK_MAX, _default_chunk
    from jaxmlm.fit._batch_glmm import _bytes_per_column
    from jaxmlm.fit._glmm import glmm_problem

    model, _ = dyestuff
    monkeypatch.setenv("JAXMLM_MEMORY_BYTES", str(2**40))
    assert _default_chunk(model, True, workers=2) == _CHUNK_MAX
    monkeypatch.setenv("JAXMLM_MEMORY_BYTES", str(2**20))
    assert _default_chunk(model, True, workers=2) < _CHUNK_MAX
    assert _default_chunk(model, False, workers=2) <= _default_chunk(model, True, workers=2)
    glmm = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                    family="binomial")
    per_column = _bytes_per_column(glmm_problem(glmm), glmm.n_theta)
    assert _memory.chunk_size(10_000, per_column, maximum=64) == max(1, min(64, 2**18 // int(per_column)))


def test_batch_chunking_changes_no_number(dyestuff):
    model, fit = dyestuff
    Y = fit.simulate(8, seed=4).to_numpy()
    whole = model.fit_batch(Y, chunk_size=8, progress=False)
    pieces = model.fit_batch(Y, chunk_size=2, progress=False)
    for field in ("theta", "beta", "se_beta", "sigma", "objective"):
        np.testing.assert_allclose(getattr(pieces, field), getattr(whole, field), rtol=1e-9, atol=1e-12)
    assert (pieces.nobs == whole.nobs).all() and (pieces.converged == whole.converged).all()


def test_bootstrap_blocks_draw_and_fit_the_same_samples(dyestuff):
    _, fit = dyestuff
    one = fit.bootstrap(6, seed=9, chunk_size=2, progress=False)
    blocks = fit.bootstrap(6, seed=9, chunk_size=2, block_size=4, progress=False)
    np.testing.assert_allclose(blocks.draws.to_numpy(), one.draws.to_numpy(), rtol=1e-9)
    # and the samples are the fit's own simulations, in order
    sims = fit.simulate(6, seed=9).to_numpy()
    refit = fit.model.fit_batch(sims, start=fit.theta, chunk_size=2, progress=False)
    np.testing.assert_allclose(one.batch.beta, refit.beta, rtol=1e-9)
    with pytest.raises(ValueError, match="block_size"):
        fit.bootstrap(6, block_size=0)


def _synthetic_posterior(model, chains=2, draws=15, seed=0):
    """A Posterior of made-up draws (predict only combines them: no sampler needed)."""
    rng = np.random.default_rng(seed)
    d = model.design
    p, k = d.X.shape[1], model.n_theta
    b = [rng.normal(size=(chains, draws, t.n_levels, t.q)) for t in d.terms]
    sd = [np.abs(rng.normal(size=(chains, draws, t.q))) for t in d.terms]
    return Posterior(model, beta=rng.normal(size=(chains, draws, p)), theta=rng.normal(size=(chains, draws, k)),
                     sigma=np.abs(rng.normal(size=(chains, draws))), sd=sd, cor=[None] * len(d.terms), b=b,
                     diverging=np.zeros((chains, draws), bool), family="gaussian", link="identity")


def test_posterior_prediction_in_chunks_against_a_dense_sum(monkeypatch):
    model = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    post = _synthetic_posterior(model)
    d = model.design
    t = d.terms[0]
    dense = np.einsum("csp,np->csn", post._beta, d.X) + d.offset
    dense += np.einsum("csnq,nq->csn", post._b[0][:, :, t.codes, :], t.z)
    np.testing.assert_allclose(post.predict(chunk_size=4), dense, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(post.predict(), dense, rtol=1e-12, atol=1e-12)
    # a result larger than the memory is refused before anything is computed
    monkeypatch.setenv("JAXMLM_MEMORY_BYTES", str(2**14))  # the result alone is 43 kB
    with pytest.raises(MemoryError, match="predict"):
        post.predict()


# ------------------------------------------------------------------------------------------------ 100k responses
_BIG_BATCH = textwrap.dedent("""
    import json, resource, sys, warnings
    import numpy as np
    import jaxmlm as jm

    model = jm.Model("Yield ~ 1 + (1 | Batch)", jm.datasets.load("Dyestuff"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit = model.fit("reml")
    m = int(sys.argv[1])
    rng = np.random.default_rng(5)
    Y = fit.simulate(16, seed=6).to_numpy()[:, rng.integers(0, 16, size=m)]
    Y += rng.normal(scale=5.0, size=Y.shape)
    model.fit_batch(Y[:, :256], progress=False)  # compiled, and the runtime's pools in place
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    batch = model.fit_batch(Y, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    picks = [0, 1, m // 2, m - 1]
    json.dump(dict(before=before, after=after, y_bytes=Y.nbytes, picks=picks, Y=Y[:, picks].T.tolist(),
                   objective=batch.objective[picks].tolist(), theta=batch.theta[picks].tolist(),
                   beta=batch.beta[picks].tolist(), converged=int(batch.converged.sum())), sys.stdout)
""")


@pytest.mark.slow
def test_hundred_thousand_responses_in_bounded_memory():
    """100k responses on a small design: every one converges, a few equal their single fits, and the batch's
    peak memory grows by less than the budget it was given (JAXMLM_MEMORY_BYTES) beyond Y itself."""
    m, budget = 100_000, 256 * 2**20
    env = dict(os.environ, JAXMLM_MEMORY_BYTES=str(budget))
    done = subprocess.run([sys.executable, "-c", _BIG_BATCH, str(m)], capture_output=True, text=True, env=env,
                          check=True)
    out = json.loads(done.stdout)
    assert out["converged"] == m
    assert out["after"] - out["before"] < budget + 2 * out["y_bytes"], out
    data = jm.datasets.load("Dyestuff")
    for j, column in enumerate(out["Y"]):
        frame = data.assign(Yield=column)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = jm.lmer("Yield ~ 1 + (1 | Batch)", frame)
        assert out["objective"][j] == pytest.approx(single.objective, rel=1e-8)
        np.testing.assert_allclose(out["theta"][j], single.theta, atol=1e-4)
        np.testing.assert_allclose(out["beta"][j], single.fixef.to_numpy(), rtol=1e-6)


def test_batch_columns_leave_the_boundary_saddle(dyestuff):
    """Columns whose search stops at θ = 0 where the optimum is interior (found by the 100k batch): each batch
    column is as good as its single fit, which probes off the boundary."""
    model, fit = dyestuff
    rng = np.random.default_rng(5)
    Y = fit.simulate(16, seed=6).to_numpy()[:, rng.integers(0, 16, size=48)] + rng.normal(scale=5.0, size=(30, 48))
    batch = model.fit_batch(Y, chunk_size=8, progress=False)
    data = jm.datasets.load("Dyestuff")
    interior_found = 0
    for j in range(Y.shape[1]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            single = jm.lmer("Yield ~ 1 + (1 | Batch)", data.assign(Yield=Y[:, j]))
        assert batch.objective[j] <= single.objective + 1e-8 * abs(single.objective), j
        interior_found += single.theta[0] > 0
    assert interior_found < Y.shape[1]  # the sample holds boundary fits too
