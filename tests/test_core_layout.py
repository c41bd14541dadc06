"""The package's layout (docs/architecture.md): no import circles among jaxmlm's modules, each layer imports only
the layers below it (module-level imports; imports inside functions are deliberate late bindings), and each
subpackage imports on its own in a process where no other jaxmlm module is loaded."""

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "jaxmlm"
SUBPACKAGES = ("formula", "optim", "core", "results", "fit", "inference", "bayes", "plot")
# a module may import modules of its own layer's package or of a lower rank (docs/architecture.md)
RANK = {"base": 0, "formula": 1, "optim": 1, "core": 2, "families": 2, "results": 3, "fit": 4, "inference": 5,
        "bayes": 6, "plot": 7, "datasets": 0, "cli": 8, "jaxmlm": 9}


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_level_imports(path: pathlib.Path, name: str, known: set) -> set:
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for statement in ast.parse(path.read_text()).body:
        for node in ast.walk(statement) if isinstance(statement, (ast.If, ast.Try)) else [statement]:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:  # `from . import x` may name a submodule
                    found.add(f"{target}.{alias.name}" if f"{target}.{alias.name}" in known else target)
            elif isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def import_graph() -> dict:
    paths = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    known = set(paths)
    return {name: _module_level_imports(path, name, known) for name, path in paths.items()}


def _cycles(graph: dict) -> list:
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                found.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "jaxmlm"
    return parts[1] if parts[1] in RANK else "base"


def test_no_import_circles():
    graph = import_graph()
    assert "jaxmlm.core._problem" in graph and graph["jaxmlm.fit._model"]
    assert _cycles(graph) == []


def test_the_cycle_check_finds_a_circle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_layers_import_only_lower_layers():
    wrong = []
    for module, deps in import_graph().items():
        here = _layer(module)
        for dep in deps:
            there = _layer(dep)
            if there != here and not RANK[there] < RANK[here]:
                wrong.append(f"{module} -> {dep}")
    assert wrong == []


# One interpreter loads the third-party libraries once, then forks a child per subpackage: each child starts with
# no jaxmlm module loaded, which is what the check is about, without paying for JAX's import eight times.
_FORKED_IMPORTS = r"""
import json, os, sys, traceback
import numpy, scipy.linalg, pandas, jax, jax.numpy
assert not [m for m in sys.modules if m.split(".")[0] == "jaxmlm"]
results = {}
for name, code in json.loads(sys.argv[1]).items():
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        status, message = 0, b""
        try:
            exec(code, {})
        except BaseException:
            status, message = 1, traceback.format_exc().encode()
        os.write(write_end, message[-4000:])
        os._exit(status)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    results[name] = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), b"".join(chunks).decode()]
print(json.dumps(results))
"""


def _import_code(subpackage: str) -> str:
    modules = sorted(p.stem for p in (PACKAGE / subpackage).glob("*.py") if p.stem != "__init__")
    return "; ".join(f"import jaxmlm.{subpackage}.{m}" for m in modules) or f"import jaxmlm.{subpackage}"


@pytest.fixture(scope="module")
def fresh_imports():
    # a module that does not exist: the check must see an import fail
    codes = {name: _import_code(name) for name in SUBPACKAGES} | {"<missing>": "import jaxmlm.no_such_module"}
    if not hasattr(os, "fork"):  # pragma: no cover - one interpreter per subpackage
        return {name: [(out := subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                               timeout=300, cwd=PACKAGE.parent)).returncode, out.stderr[-2000:]]
                for name, code in codes.items()}
    out = subprocess.run([sys.executable, "-c", _FORKED_IMPORTS, json.dumps(codes)], capture_output=True, text=True,
                         timeout=600, cwd=PACKAGE.parent)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_fresh_import_check_sees_a_failing_import(fresh_imports):
    status, message = fresh_imports["<missing>"]
    assert status == 1 and "ModuleNotFoundError" in message


@pytest.mark.slow
@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_each_subpackage_imports_with_no_other_jaxmlm_module_loaded(subpackage, fresh_imports):
    status, message = fresh_imports[subpackage]
    assert status == 0, message


def test_driver_and_optimizer_functions_fit_in_one_sitting():
    """The fitting drivers and the optimizers are small functions: none longer than 60 lines (docstring included)."""
    long = []
    for path in sorted([*PACKAGE.joinpath("fit").glob("*.py"), *PACKAGE.joinpath("optim").glob("*.py")]):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > 60:
                    long.append(f"{path.parent.name}/{path.name}:{node.name} ({length} lines)")
    assert not long, long
