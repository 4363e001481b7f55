"""The import graph of ``autoloss/``: no cycles, and reading a run does not load the engine.

Each module's imports are read with ``ast`` (nothing is imported), resolved to the
``autoloss`` modules they name (``from . import runs`` is ``autoloss.search.runs``,
``from .runs import Run`` is ``autoloss.search.runs``, ``from .. import proxies`` is
``autoloss.proxies``). An import is *top-level* when it runs as the module is imported (the
module body, including ``if``/``try`` blocks), *lazy* when it sits in a function and runs
when the function is called; ``if TYPE_CHECKING:`` blocks never run and are left out.

* Top-level imports must not form a cycle: a cycle makes the result depend on which module
  is imported first.
* Lazy imports defer heavy dependencies (sympy, matplotlib) and optional ones; they count
  too, except the few back-edges listed in ``LAZY_BACK_EDGES`` with the reason each is
  needed. A lazy import up the layers is how the old ``runs -> report -> engine -> runs``
  cycle hid.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "autoloss"

#: lazy imports that close a cycle on purpose: (importer, imported) -> why
LAZY_BACK_EDGES = {
    ("autoloss.ops", "autoloss.expr"): "an op's unit rule builds expressions; expr imports "
                                       "ops for the arities",
}


def _modules() -> dict[str, Path]:
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _targets(module: str, is_package: bool, node, modules) -> list[str]:
    """The autoloss modules an import statement names."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            base = module.split(".") if is_package else module.split(".")[:-1]
            base = base[:len(base) - node.level + 1]
            prefix = ".".join(base + ([node.module] if node.module else []))
        else:
            prefix = node.module
        names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in modules else prefix
                 for a in node.names]
    return [n for n in names if n == "autoloss" or n.startswith("autoloss.")]


def import_graph() -> tuple[dict[str, set[str]], dict[str, set[str]]]:
    """(top-level edges, lazy edges) between autoloss modules."""
    modules = _modules()
    top: dict[str, set[str]] = {m: set() for m in modules}
    lazy: dict[str, set[str]] = {m: set() for m in modules}

    for module, path in modules.items():
        is_package = path.name == "__init__.py"

        def visit(node, in_function: bool) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.If) and _is_type_checking(child):
                    for sub in child.orelse:
                        visit(ast.Module(body=[sub], type_ignores=[]), in_function)
                    continue
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    edges = lazy if in_function else top
                    edges[module].update(t for t in _targets(module, is_package, child, modules)
                                         if t != module)
                visit(child, in_function or isinstance(
                    child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

        visit(ast.parse(path.read_text(), str(path)), False)
    return top, lazy


def find_cycle(edges: dict[str, set[str]]) -> list[str]:
    """A cycle of ``edges`` as a list of modules (first == last), or []."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def dfs(m: str) -> list[str]:
        state[m] = 1
        stack.append(m)
        for n in sorted(edges.get(m, ())):
            if state.get(n) == 1:
                return stack[stack.index(n):] + [n]
            if n not in state:
                found = dfs(n)
                if found:
                    return found
        stack.pop()
        state[m] = 2
        return []

    for m in sorted(edges):
        if m not in state:
            found = dfs(m)
            if found:
                return found
    return []


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for n in edges.get(todo.pop(), ()):
            if n not in seen:
                seen.add(n)
                todo.append(n)
    return seen


def test_the_graph_sees_imports_of_every_kind():
    top, lazy = import_graph()
    assert "autoloss.search.runs" in top["autoloss.search.engine"]  # from . import runs
    assert "autoloss.search.candidate" in top["autoloss.search.runs"]  # from .candidate import
    assert "autoloss.proxies" in top["autoloss.search.loop"]  # from .. import proxies
    assert "autoloss.symbolic" in lazy["autoloss.search.loop"]  # inside a function
    assert "autoloss.search.runs" not in top["autoloss.search.summary"]  # TYPE_CHECKING only
    for edge in LAZY_BACK_EDGES:  # the allowed back-edges still exist, or drop them
        assert edge[1] in lazy[edge[0]], edge


def test_top_level_imports_have_no_cycle():
    top, _ = import_graph()
    assert find_cycle(top) == []


def test_lazy_imports_close_no_cycle_but_the_listed_ones():
    top, lazy = import_graph()
    both = {m: top[m] | {n for n in lazy[m] if (m, n) not in LAZY_BACK_EDGES} for m in top}
    assert find_cycle(both) == []


def test_reading_a_run_does_not_reach_the_engine():
    top, lazy = import_graph()
    both = {m: top[m] | lazy[m] for m in top}
    for reader in ("autoloss.search.report", "autoloss.search.runs",
                   "autoloss.search.summary"):
        reached = reachable(both, reader)
        assert not reached & {"autoloss.search.engine", "autoloss.search.loop"}, reader


def test_find_cycle_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("module", ["autoloss.search.report", "autoloss.search.runs"])
def test_importing_a_reader_loads_no_engine(module):
    code = (f"import sys, {module}; "
            "print(sorted(m for m in ('autoloss.search.engine', 'autoloss.search.loop', "
            "'autoloss.search.strategies') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_importing_autoloss_changes_no_global_state():
    """No logging levels, sys.path entries or torch thread counts set by an import."""
    modules = sorted(".".join(p.relative_to(ROOT.parent).with_suffix("").parts)
                     for p in ROOT.rglob("*.py") if p.name != "__main__.py")
    modules = [m.removesuffix(".__init__") for m in modules]
    code = ("import sys, importlib, logging, optuna, torch\n"
            "torch.set_num_threads(1)\n"
            "state = lambda: (optuna.logging.get_verbosity(), list(sys.path), "
            "torch.get_num_threads(), logging.getLogger().level)\n"
            "before = state()\n"
            f"for m in {modules!r}: importlib.import_module(m)\n"
            "print(before == state(), before, state())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT.parent, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True"), out.stdout


def test_every_subpackage_ships_in_the_wheel():
    """setuptools lists the packages by hand: a missing one works in an editable install and
    is absent from a wheel (autoloss.signatures was)."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {".".join(p.parent.relative_to(root).parts)
             for p in (root / "autoloss").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
