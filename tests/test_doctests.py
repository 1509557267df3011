"""The examples in the engine's docstrings are true: each module's doctests run (examples that need a model say SKIP)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import tuning

MODULES = sorted(m.name for m in pkgutil.iter_modules(tuning.__path__, "tuning.") if m.name != "tuning.__main__")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (see the output above)"
