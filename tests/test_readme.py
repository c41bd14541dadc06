"""Every ```python block of README.md runs as written: in order, in one fresh interpreter, with matplotlib's
non-interactive Agg backend, in an empty working directory (so files the tour writes land there)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import pytest
from conftest import run_cache_reader_env

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

# each block is compiled and run in one namespace; a failure names its block and the block's first line
_DRIVER = """
import json, sys, traceback
blocks = json.load(sys.stdin)
namespace = {"__name__": "__main__"}
for k, (line, code) in enumerate(blocks):
    try:
        exec(compile(code, f"README.md block {k + 1} (line {line})", "exec"), namespace)
    except Exception:
        traceback.print_exc()
        sys.exit(f"README.md block {k + 1} (line {line}) failed")
print(f"ran {len(blocks)} blocks")
"""


def readme_blocks(text: str) -> list[tuple[int, str]]:
    """(line number, code) of every ```python block."""
    return [(text[: m.start()].count("\n") + 2, m.group(1)) for m in _BLOCK.finditer(text)]


def test_readme_has_python_blocks():
    blocks = readme_blocks(README.read_text())
    assert len(blocks) >= 5
    assert any("import jaxmlm as jm" in code for _, code in blocks[:1])


@pytest.mark.slow
def test_every_readme_snippet_runs(tmp_path):
    blocks = readme_blocks(README.read_text())
    env = dict(os.environ, MPLBACKEND="Agg", **run_cache_reader_env())  # programs the run compiled already
    result = subprocess.run([sys.executable, "-c", _DRIVER], input=json.dumps(blocks), capture_output=True,
                            text=True, cwd=tmp_path, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    assert f"ran {len(blocks)} blocks" in result.stdout
