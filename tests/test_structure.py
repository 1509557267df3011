"""The layout the project keeps: short functions, and a tuning/ without import cycles that never imports gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80  # a function longer than this hides its steps: split it into named helpers
# Where no function may be longer: a file or every .py file under a folder (add ui/ once it exists).
SHORT_FUNCTIONS = ["tuning", "app.py"]


def functions(path: Path):
    """(name, lines) of every function and method in the file, nested ones too."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def python_files(path: Path) -> list[Path]:
    return sorted(path.rglob("*.py")) if path.is_dir() else [path]


def long_functions(path: Path, limit: int = MAX_LINES) -> dict[str, int]:
    """{"file:function": lines} for each function under `path` longer than `limit` lines."""
    return {f"{file.relative_to(path.parent)}:{name}": n
            for file in python_files(path) for name, n in functions(file) if n > limit}


def module_imports(package: Path) -> dict[str, set[str]]:
    """Which sibling modules each module of `package` imports, anywhere in it: {"train": {"model", ...}}.

    Imports inside functions count too. Only module-level ones can fail at import time, but a
    cycle through a lazy import is still two modules that each need the other (progress.py and
    sweep.py were one, dodged by importing inside functions). Lazy imports that close no cycle
    stay allowed: gpu.py and cli.py import that way on purpose (a ZeroGPU worker, `--help`
    without torch). `if TYPE_CHECKING:` blocks never run and are left out.
    """
    names = {p.stem for p in package.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for file in package.glob("*.py"):
        found: set[str] = set()

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                return
            if isinstance(node, ast.ImportFrom) and (node.level == 1 or (
                    node.level == 0 and (node.module or "").split(".")[0] == package.name)):
                module = node.module if node.level == 1 else node.module.partition(".")[2]
                if module:  # from .config import X, from tuning.config import X
                    found.add(module.split(".")[0])
                else:  # from . import kernels, from tuning import kernels
                    found.update(a.name for a in node.names if a.name in names)
            elif isinstance(node, ast.Import):  # import tuning.config
                found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(package.name + "."))
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(file.read_text(encoding="utf-8")))
        graph[file.stem] = found & names - {file.stem}
    return graph


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a path that ends where it starts (["a", "b", "a"]), or None.

    >>> import_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None, import_cycle({"a": {"b"}, "b": {"a"}})
    (True, ['a', 'b', 'a'])
    """
    done: set[str] = set()

    def walk(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if cycle := walk(nxt, path + [node]):
                return cycle
        done.add(node)
        return None

    return next((c for c in (walk(n, []) for n in sorted(graph)) if c), None)


@pytest.mark.parametrize("where", SHORT_FUNCTIONS)
def test_no_function_is_longer_than_80_lines(where):
    long = long_functions(ROOT / where)
    assert not long, f"split these into named helpers: {long}"


def test_the_long_function_check_finds_a_long_function(tmp_path):
    (tmp_path / "mod.py").write_text("def short():\n    pass\n\n\ndef long():\n" + "    x = 1\n" * 80)
    assert long_functions(tmp_path) == {f"{tmp_path.name}/mod.py:long": 81}


def test_tuning_has_no_import_cycle():
    cycle = import_cycle(module_imports(ROOT / "tuning"))
    assert cycle is None, f"import cycle: {' -> '.join(cycle)}"


def test_the_cycle_check_reads_relative_absolute_and_lazy_imports_but_not_type_checking_ones(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("from . import b\n")
    (package / "b.py").write_text("import pkg.c\n")
    (package / "c.py").write_text("def lazy():\n    from pkg.a import x\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .a import z\n")
    graph = module_imports(package)
    assert graph == {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}
    assert import_cycle(graph) == ["a", "b", "c", "a"]


def test_the_engine_never_imports_gradio():
    code = "import sys, tuning.cli, tuning.train, tuning.generate, tuning.jobs, tuning.plan, tuning.progress, " \
           "tuning.reference, tuning.sweep, tuning.evaluate, tuning.adapters; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
