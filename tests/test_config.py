"""jaxmlm leaves the process's JAX settings as the user had them: float64 only inside its own calls, the
compilation cache only where asked, never over a directory the user set; a damaged cache never stops a fit."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxmlm as jm
from jaxmlm import _config

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(script: str, env_update: dict | None = None, drop=("JAXMLM_CACHE_DIR", "JAXMLM_NO_CACHE")) -> dict:
    """Run `script` in a fresh interpreter; it prints one JSON line last."""
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env.update(env_update or {})
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


_SETTINGS = """
    import json, jax, jax.numpy as jnp, numpy as np
    def settings():
        c = jax.config
        return dict(x64=c.jax_enable_x64, cache=c.jax_compilation_cache_dir,
                    min_time=c.jax_persistent_cache_min_compile_time_secs,
                    min_size=c.jax_persistent_cache_min_entry_size_bytes)
    """


def test_import_and_fits_leave_jax_config_as_the_user_set_it(tmp_path):
    """A user with float64 off and their own cache directory imports
    jaxmlm with JAXMLM_CACHE_DIR pointing elsewhere, fits an LMM and a GLMM: every setting is as before, their
    float32 program still computes in float32, and jaxmlm's numbers are float64 (the same as in this process)."""
    other = tmp_path / "not-used"
    users_own = tmp_path / "users-own"
    script = _SETTINGS + f"""
    jax.config.update("jax_compilation_cache_dir", {str(users_own)!r})
    before = settings()
    import jaxmlm as jm
    after_import = settings()
    fit = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
    g = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                 family="binomial")
    after_fit = settings()
    user = jax.jit(lambda x: jnp.sum(x * 0.1))(jnp.ones(3))
    print(json.dumps(dict(before=before, after_import=after_import, after_fit=after_fit, user=str(user.dtype),
                          user_array=str(jnp.asarray(np.float64(1.0)).dtype), lmm=fit.objective, glmm=g.objective,
                          theta=str(fit.theta.dtype), after=settings())))
    """
    got = _run(script, {"JAXMLM_CACHE_DIR": str(other)}, drop=())
    assert got["before"]["x64"] is False
    assert got["after_import"] == got["before"] == got["after_fit"] == got["after"]
    assert got["user"] == "float32" and got["user_array"] == "float32"
    assert not other.exists()  # the user's own directory was kept
    assert got["theta"] == "float64"
    with jax.enable_x64(True):
        lmm = jm.lmer("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy"))
        glmm = jm.glmer("cbind(incidence, size - incidence) ~ period + (1 | herd)", jm.datasets.load("cbpp"),
                        family="binomial")
    assert got["lmm"] == pytest.approx(lmm.objective, rel=1e-12)
    assert got["glmm"] == pytest.approx(glmm.objective, rel=1e-10)


def test_pristine_process_gets_no_cache_directory(tmp_path):
    """No JAXMLM_CACHE_DIR: importing and computing leaves the cache off; asked for a directory that cannot be
    created, enable_compilation_cache leaves it off too, and the fit goes on."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    got = _run(_SETTINGS + f"""
    before = settings()
    import jaxmlm as jm
    after_import = settings()
    used = jm.enable_compilation_cache({str(blocker / "cache")!r})
    value = jm.Model("Reaction ~ Days + (Days | Subject)", jm.datasets.load("sleepstudy")).deviance([1.0, 0.0, 1.0])
    print(json.dumps(dict(before=before, after_import=after_import, used=used, after=settings(), value=float(value))))
    """)
    assert got["before"] == got["after_import"] == got["after"] and got["after"]["cache"] is None
    assert got["used"] is None and np.isfinite(got["value"])


def test_enable_compilation_cache_keeps_a_directory_the_user_set(tmp_path):
    current = jax.config.jax_compilation_cache_dir
    theirs = current or str(tmp_path / "theirs")
    jax.config.update("jax_compilation_cache_dir", theirs)
    try:
        assert _config.enable_compilation_cache(tmp_path / "elsewhere") == theirs
        assert jax.config.jax_compilation_cache_dir == theirs and not (tmp_path / "elsewhere").exists()
    finally:
        jax.config.update("jax_compilation_cache_dir", current)


@pytest.mark.slow
def test_damaged_or_read_only_cache_never_stops_a_fit(tmp_path):
    """A cache filled by one process, then every entry overwritten with garbage, then made read-only: later
    processes still fit, to the same numbers (JAX reports the bad entries and compiles afresh)."""
    cache = tmp_path / "cache"
    fit_script = _SETTINGS + """
    import warnings
    warnings.simplefilter("ignore")
    import jaxmlm as jm
    fit = jm.lmer("Reaction ~ Days + (1 | Subject)", jm.datasets.load("sleepstudy"))
    print(json.dumps(dict(objective=fit.objective, cache=settings()["cache"])))
    """
    first = _run(fit_script, {"JAXMLM_CACHE_DIR": str(cache)})
    assert first["cache"] == str(cache)
    entries = [p for p in cache.rglob("*") if p.is_file()]
    assert entries, "the first process wrote no cache entries"
    for p in entries:
        p.write_bytes(b"garbage" * 7)
    damaged = _run(fit_script, {"JAXMLM_CACHE_DIR": str(cache)})
    for p in [cache, *cache.rglob("*")]:
        p.chmod(0o555 if p.is_dir() else 0o444)
    try:
        read_only = _run(fit_script, {"JAXMLM_CACHE_DIR": str(cache)})
    finally:
        for p in [cache, *cache.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
    assert damaged["objective"] == pytest.approx(first["objective"], rel=1e-12)
    assert read_only["objective"] == pytest.approx(first["objective"], rel=1e-12)


def test_float64_methods_wraps_public_methods_and_properties():
    @_config.float64_methods
    class Probe:
        def __init__(self):
            self.dtype_at_init = jnp.asarray(1.0).dtype

        def method(self):
            return jnp.asarray(1.0).dtype

        @property
        def prop(self):
            return jnp.asarray(1.0).dtype

        def _private(self):
            return jnp.asarray(1.0).dtype

    probe = Probe()
    outside = jnp.asarray(1.0).dtype
    assert probe.dtype_at_init == probe.method() == probe.prop == jnp.float64
    assert probe._private() == outside  # private helpers run inside a public call, under its setting
    assert jnp.asarray(1.0).dtype == outside


def test_require_float64_names_the_function():
    if jax.config.jax_enable_x64:
        pytest.skip("the process runs with float64 on")
    with pytest.raises(jm.PrecisionError, match="objective"):
        _config.require_float64("the objective")


def test_allocator_is_left_alone_unless_asked(monkeypatch):
    calls = []
    monkeypatch.setattr(_config, "_mallopt", lambda: (lambda param, value: calls.append((param, value)) or 1))
    monkeypatch.delenv("JAXMLM_MALLOPT", raising=False)
    with _config.fit_allocations():
        assert calls == []
    monkeypatch.setenv("JAXMLM_MALLOPT", "1")
    with _config.fit_allocations():
        assert calls[:2] == [(_config._M_MMAP_MAX, 0), (_config._M_TRIM_THRESHOLD, 1 << 30)]
    assert calls[2:] == list(_config._GLIBC_DEFAULTS.items())
