"""conftest.need(): a missing browser, Open MPI, ../shared data or real weights skips locally and fails under CI."""

from __future__ import annotations

import pytest

from conftest import need


def test_present_dependency_neither_skips_nor_fails(monkeypatch):
    monkeypatch.setenv("CI", "true")
    need(True, "needs nothing")


def test_missing_dependency_skips_outside_ci(monkeypatch):
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="needs /usr/bin/chromium"):
        need(False, "needs /usr/bin/chromium")


@pytest.mark.parametrize("value", ["false", "1", ""])
def test_only_ci_true_turns_the_skip_into_a_failure(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception):
        need(False, "needs Open MPI's mpirun")


def test_missing_dependency_fails_under_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="needs Open MPI's mpirun; CI=true"):
        need(False, "needs Open MPI's mpirun")
