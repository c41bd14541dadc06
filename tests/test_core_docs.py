"""docs/core.md's examples run as written (one namespace, in order), with their own assertions."""

import pathlib
import re

import pytest

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "core.md"


@pytest.mark.slow  # compiles two optax L-BFGS loops and a GLMM gradient
def test_core_page_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 6
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)  # noqa: S102
    assert namespace["found"] < namespace["fit"].objective * (1 + 1e-6)
