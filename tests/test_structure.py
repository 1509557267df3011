"""The layout the project keeps: short functions, no import cycle in tuning/ or ui/, and a tuning/ that never imports gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAX_LINES = 80  # a function longer than this hides its steps: split it into named helpers
# Where no function may be longer: a file or every .py file under a folder.
SHORT_FUNCTIONS = ["tuning", "ui", "app.py"]


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


def module_name(package: Path, file: Path) -> str:
    """A module's name inside `package`: 'train' for tuning/train.py, 'tabs.train' for ui/tabs/train.py."""
    parts = file.relative_to(package).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 1 else parts)


def module_imports(package: Path) -> dict[str, set[str]]:
    """Which modules of `package` (subpackages too) each module imports, anywhere in it: {"train": {"model", ...}}.

    Imports inside functions count too. Only module-level ones can fail at import time, but a
    cycle through a lazy import is still two modules that each need the other (progress.py and
    sweep.py were one, dodged by importing inside functions). Lazy imports that close no cycle
    stay allowed: gpu.py and cli.py import that way on purpose (a ZeroGPU worker, `--help`
    without torch). `if TYPE_CHECKING:` blocks never run and are left out. A module of a
    subpackage is named from the package down ("tabs.train"); importing a subpackage's module
    does not count as importing the subpackage's `__init__`.
    """
    files = {module_name(package, f): f for f in package.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, file in files.items():
        here = list(file.relative_to(package).parent.parts)  # the subpackage a relative import starts from
        found: set[str] = set()

        def add(module: str, imported: list[str]) -> None:
            """`from <module> import <imported>`, module relative to the package ('' for the package itself)."""
            for a in imported:  # from . import kernels, from ui.tabs import train
                if (sub := f"{module}.{a}".strip(".")) in files:
                    found.add(sub)
                    continue
                if module in files:
                    found.add(module)

        def visit(node: ast.AST) -> None:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                return
            if isinstance(node, ast.ImportFrom) and node.level:  # from .config import X, from .. import x
                base = here[:len(here) - node.level + 1]
                add(".".join(base + ([node.module] if node.module else [])), [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == package.name:
                add(node.module.partition(".")[2], [a.name for a in node.names])  # from tuning.config import X
            elif isinstance(node, ast.Import):  # import tuning.config
                found.update(a.name.partition(".")[2] for a in node.names
                             if a.name.startswith(package.name + ".") and a.name.partition(".")[2] in files)
            for child in ast.iter_child_nodes(node):
                visit(child)

        visit(ast.parse(file.read_text(encoding="utf-8")))
        graph[name] = found - {name}
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


@pytest.mark.parametrize("package", ["tuning", "ui"])
def test_no_import_cycle(package):
    cycle = import_cycle(module_imports(ROOT / package))
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


def test_the_cycle_check_reads_subpackages(tmp_path):
    package = tmp_path / "pkg"
    (package / "tabs").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "tabs" / "__init__.py").write_text("")
    (package / "session.py").write_text("from pkg.tabs.train import x\n")
    (package / "tabs" / "train.py").write_text("from .. import session\nfrom . import other\n")
    (package / "tabs" / "other.py").write_text("from pkg.tabs import train\n")
    graph = module_imports(package)
    assert graph == {"__init__": set(), "tabs": set(), "session": {"tabs.train"},
                     "tabs.train": {"session", "tabs.other"}, "tabs.other": {"tabs.train"}}
    assert import_cycle(graph) == ["session", "tabs.train", "session"]


def test_the_engine_never_imports_gradio():
    code = "import sys, tuning.cli, tuning.train, tuning.generate, tuning.jobs, tuning.plan, tuning.progress, " \
           "tuning.reference, tuning.sweep, tuning.evaluate, tuning.adapters; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
