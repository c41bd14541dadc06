"""Compile effort: XLA's optimization level for jaxmlm's own programs, which changes time and never numbers."""

import concurrent.futures
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm._compile import carry_effort, current_effort


_BOTH_EFFORTS = """
import json, os
import numpy as np
import jaxmlm as jm
flags = os.environ.get("XLA_FLAGS")
out = {}
for effort in ("fast", "default"):
    with jm.compile_effort(effort):
        lmm = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                        family="binomial")
    out[effort] = [{"objective": float(f.objective), **{k: np.asarray(getattr(f, k)).tolist()
                                                         for k in ("theta", "fixef", "se")}} for f in (lmm, glmm)]
out["flags_kept"] = os.environ.get("XLA_FLAGS") == flags
print("RESULT" + json.dumps(out))
"""


def test_both_efforts_give_the_same_estimates():
    """The objective agrees to rounding; θ, β and their standard errors to the optimizer's tolerance (its path
    may end a step apart when the last digits of a gradient differ). The process's XLA_FLAGS stay as they were:
    the level is each program's own compile option. Run in a process with the flags the suite was started with
    (the test processes themselves ask XLA for its lowest level, which would make both efforts the same)."""
    env = dict(os.environ, XLA_FLAGS=os.environ.get("JAXMLM_TEST_USER_XLA_FLAGS", ""))
    env.pop("JAXMLM_COMPILE", None)
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    proc = subprocess.run([sys.executable, "-c", _BOTH_EFFORTS], capture_output=True, text=True, timeout=600,
                          env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT"))[len("RESULT"):])
    assert out["flags_kept"]
    for fast, default in zip(out["fast"], out["default"]):
        assert fast["objective"] == pytest.approx(default["objective"], rel=1e-10)
        for name in ("theta", "fixef", "se"):
            np.testing.assert_allclose(fast[name], default[name], rtol=1e-5, err_msg=name)


def test_effort_is_scoped_and_reaches_worker_threads(monkeypatch):
    monkeypatch.setenv("JAXMLM_COMPILE", "default")
    assert current_effort() == "default"
    with jm.compile_effort("fast"):
        assert current_effort() == "fast"
        with jm.compile_effort("default"):
            assert current_effort() == "default"
        assert current_effort() == "fast"
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            assert list(pool.map(lambda _: current_effort(), range(2))) == ["default"] * 2  # threads start afresh
            assert list(pool.map(carry_effort(lambda _: current_effort()), range(2))) == ["fast"] * 2
    assert current_effort() == "default"


def test_unknown_effort_is_refused_by_name(monkeypatch):
    with pytest.raises(ValueError, match="compile effort must be one of"):
        with jm.compile_effort("turbo"):
            pass
    monkeypatch.setenv("JAXMLM_COMPILE", "O3")
    with pytest.raises(ValueError, match="JAXMLM_COMPILE"):
        current_effort()


def test_a_jaxmlm_program_inside_another_trace_compiles_with_it():
    """JAX refuses compiler options on a jit nested in another trace: the nested call is inlined and works."""
    import jax
    import jax.numpy as jnp

    from jaxmlm._compile import jit

    @jit
    def inner(x):
        return jnp.sin(x) * 2.0

    with jm.compile_effort("fast"):
        outer = jax.jit(lambda x: inner(x) + 1.0)
        np.testing.assert_allclose(outer(0.5), np.sin(0.5) * 2.0 + 1.0, rtol=1e-6)
        np.testing.assert_allclose(jax.grad(inner)(0.5), 2.0 * np.cos(0.5), rtol=1e-6)
        np.testing.assert_allclose(inner(0.5), np.sin(0.5) * 2.0, rtol=1e-6)


def test_compiled_programs_stay_bounded_in_a_long_session(monkeypatch):
    """Each CPU program holds ~9 memory mappings of the 65,530 Linux allows a process: past a bound jaxmlm drops its
    compiled programs, and later fits compile again and give the same numbers."""
    from jaxmlm import _compile

    data = jm.datasets.load("sleepstudy")
    first = jm.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert _compile.compiled_programs() > 0
    monkeypatch.setattr(_compile, "PROGRAM_LIMIT", 0)
    monkeypatch.setattr(_compile, "CHECK_EVERY", 1)
    sizes = []
    for rows in (150, 160, 170):  # new shapes: new programs, each time dropped again
        fit = jm.lmer("Reaction ~ Days + (1 | Subject)", data.iloc[:rows])
        assert np.isfinite(fit.objective)
        sizes.append(_compile.compiled_programs())
    again = jm.lmer("Reaction ~ Days + (1 | Subject)", data)
    assert again.objective == pytest.approx(first.objective, rel=1e-12)
    assert max(sizes) < 40  # only what one fit compiles between two checks, never the sum over shapes
    _compile.release_programs()
    assert _compile.compiled_programs() == 0


_UNKNOWN_OPTION = """
import numpy as np
import jax.numpy as jnp
import jaxmlm as jm
from jaxmlm import _compile

_compile._OPTIONAL_OPTIONS += ("xla_cpu_no_such_option_anywhere",)
_compile.EFFORTS["fast"]["xla_cpu_no_such_option_anywhere"] = 1
double = _compile.jit(lambda x: 2.0 * x)
with jm.compile_effort("fast"):
    print("RESULT", float(double(np.float64(1.5))), "xla_cpu_no_such_option_anywhere" in _compile.EFFORTS["fast"])
    fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
print("OBJECTIVE", float(fit.objective))
"""


def test_a_compile_option_this_jaxlib_refuses_is_dropped_not_fatal():
    """jaxmlm's "fast" effort asks for code-generation options that some jaxlib versions lack: the first
    refusal drops them for every program of the process, and the call that met it goes on."""
    proc = subprocess.run([sys.executable, "-c", _UNKNOWN_OPTION], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("RESULT", "OBJECTIVE")))
    assert lines["RESULT"] == "3.0 False"
    here = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    assert float(lines["OBJECTIVE"]) == pytest.approx(float(here.objective), rel=1e-10)
