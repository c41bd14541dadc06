"""`import jaxmlm` is light: its public names load on first use (PEP 562), and nothing heavy comes with it."""

import subprocess
import sys

import jaxmlm as jm

_HEAVY = ("jax", "numpyro", "matplotlib", "formulaic", "optax", "equinox", "pandas", "scipy")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sys.modules))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_loads_no_heavy_dependency():
    loaded = _modules_after("import jaxmlm")
    assert not loaded & set(_HEAVY), sorted(loaded & set(_HEAVY))


def test_fitting_names_do_not_import_numpyro_or_matplotlib():
    loaded = _modules_after("import jaxmlm as jm\njm.lmer, jm.glmer, jm.Model, jm.anova, jm.plot")
    assert "numpyro" not in loaded and "matplotlib" not in loaded
    assert "jax" in loaded and "jaxmlm.fit._model" in loaded


def test_every_public_name_resolves_and_is_listed():
    for name in jm.__all__:
        assert getattr(jm, name) is not None, name
    assert set(jm.__all__) <= set(dir(jm))
    assert jm.datasets.load("sleepstudy").shape == (180, 3)
    assert callable(jm.plot.shrinkage)


def test_unknown_name_raises_attribute_error():
    try:
        jm.no_such_thing
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("jm.no_such_thing resolved")
