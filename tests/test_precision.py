"""dtype='float32': a single-precision search on double-precision statistics, polished in double precision."""

import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm.core._lmm import fit_linear
from jaxmlm.fit._linear import _cast_problem

# these tests call the core directly: float64 as jaxmlm's entry points set it (conftest.x64)
pytestmark = pytest.mark.usefixtures("x64")

SLEEP = "Reaction ~ Days + (Days | Subject)"


@pytest.fixture(scope="module")
def model():
    return jm.Model(SLEEP, jm.datasets.load("sleepstudy"))


def test_search_runs_in_single_precision(model):
    problem32 = _cast_problem(model.linear_problem, jnp.float32)
    assert problem32.blocks.tail_ff.dtype == jnp.float32 and problem32.n.dtype == jnp.float32
    assert problem32.structure.pair_a[0].dtype == model.linear_problem.structure.pair_a[0].dtype  # indices kept
    res = fit_linear(jnp.asarray(model.theta_start(), dtype=jnp.float32), problem32, False)
    assert res.x.dtype == jnp.float32 and bool(res.converged)
    # single precision alone gets close, not to float64's optimum
    f64 = model.fit("ml")
    assert abs(model.deviance(np.asarray(res.x, dtype=np.float64)) - f64.objective) < 1e-6 * f64.objective


@pytest.mark.parametrize("method", ["ml", "reml"])
def test_float32_fit_equals_float64_fit(model, method):
    """The polished optimum is float64's: the objective to 1e-12, which at sleepstudy's curvature (Hessian
    eigenvalues ~14 and up) fixes θ to ~1e-5 relative, so θ and β are compared at that precision."""
    f64 = model.fit(method)
    f32 = model.fit(method, dtype="float32")
    assert f32.converged
    assert f32.objective == pytest.approx(f64.objective, rel=1e-12)
    np.testing.assert_allclose(f32.theta, f64.theta, rtol=5e-5, atol=1e-7)
    np.testing.assert_allclose(f32.fixef, f64.fixef, rtol=1e-6)
    assert f32.optinfo.n_eval > f64.optinfo.n_eval  # the search and the polish both ran


def test_float32_is_checked(model):
    with pytest.raises(ValueError, match="dtype"):
        model.fit("ml", dtype="float16")
    cbpp = jm.datasets.load("cbpp")
    glmm = jm.Model("cbind(incidence, size - incidence) ~ period + (1 | herd)", cbpp, family="binomial")
    with pytest.raises(ValueError, match="linear mixed models"):
        glmm.fit(dtype="float32")
