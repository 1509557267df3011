"""The layout the project keeps: a thin app.py of short functions over a tuning/ that never imports gradio."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def functions(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node.name, node.end_lineno - node.lineno + 1


def test_no_function_in_app_py_is_longer_than_80_lines():
    long = {name: n for name, n in functions(ROOT / "app.py") if n > 80}
    assert not long, f"split these: {long}"


def test_the_engine_never_imports_gradio():
    code = "import sys, tuning.cli, tuning.train, tuning.generate, tuning.jobs, tuning.plan, tuning.progress, " \
           "tuning.reference, tuning.sweep, tuning.evaluate, tuning.adapters; print('gradio' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
