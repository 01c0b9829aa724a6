"""The package layers hold: topology <- policyd, tunneld <- zonegate (CLI and lab).

Read from the source with `ast`, so the check covers imports inside functions too
(a lazy import is still a dependency) and needs nothing installed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("topology", "policyd", "tunneld", "zonegate", "bench")
# What each runtime package may import from the project (itself always allowed).
ALLOWED = {
    "topology": set(),
    "policyd": {"topology"},
    "tunneld": {"topology", "policyd"},
    "zonegate": {"topology", "policyd", "tunneld"},
}


def modules() -> dict[str, Path]:
    found = {}
    for pkg in PROJECT:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, runtime_only: bool = False) -> set[str]:
    """Project modules `path` imports; with runtime_only, not those under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), str(path))
    skip: set[int] = set()
    if runtime_only:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                skip.update(id(n) for child in node.body for n in ast.walk(child))
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] in PROJECT}


def test_each_layer_imports_only_below_it() -> None:
    wrong = []
    for name, path in modules().items():
        top = name.split(".")[0]
        if top not in ALLOWED:
            continue
        for target in sorted(imports(path)):
            other = target.split(".")[0]
            if other != top and other not in ALLOWED[top]:
                wrong.append(f"{path.relative_to(ROOT)} imports {target}")
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_runtime_packages_import_no_lab_or_bench() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {target}"
        for name, path in modules().items()
        if name.split(".")[0] in ("topology", "policyd", "tunneld")
        for target in imports(path)
        if target.startswith(("zonegate", "bench"))
    ]
    assert not wrong, "\n".join(wrong)


def test_no_import_cycles() -> None:
    mods = modules()
    graph = {
        name: {t for t in imports(path, runtime_only=True) if t in mods and t != name}
        for name, path in mods.items()
    }
    # A package imports its submodules through __init__; that edge is not a cycle.
    for name, deps in graph.items():
        graph[name] = {d for d in deps if not name.startswith(d + ".")}
    cycles: list[str] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*stack[stack.index(dep) :], dep]))
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_no_importlib_strings_for_project_modules() -> None:
    wrong = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if (
                isinstance(node, ast.Call)
                and "import_module" in ast.unparse(node.func)
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and str(node.args[0].value).split(".")[0] in PROJECT
            ):
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not wrong, "importlib strings for project modules: " + ", ".join(wrong)


@pytest.mark.parametrize("pkg", ["topology", "policyd", "tunneld", "zonegate"])
def test_the_checker_sees_imports(pkg: str) -> None:
    """Guard against a checker that finds nothing: every package has project imports."""
    assert any(imports(p) for n, p in modules().items() if n.split(".")[0] == pkg)
