"""The soak of a busy Space (scripts/soak.py), short: 4 visitors for 1 minute, every check it makes.

The full soak (20 visitors, 20 minutes) is run by hand; its figures are in docs/testing.md#soak.
This one runs the same script in its own process, so a check that fails there fails here, with
the script's own lines saying which.

One check is known to fail on the app as it is (docs/testing.md#soak): the server's memory grows
past the check's line while trainings run at once (it comes back when they end). It makes the
test xfail, naming what failed; every other check must pass, and once the app is fixed the test
passes outright.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]  # starts a server process; about 3 minutes
# checks the app fails today, each described in docs/testing.md#soak: they make the test xfail, naming them
KNOWN = ("RSS grew",)


def test_a_short_soak_passes_every_check(tmp_path):
    out = tmp_path / "soak"
    done = subprocess.run([sys.executable, "scripts/soak.py", "--visitors", "4", "--minutes", "1", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=400)
    summary = json.loads((out / "soak.json").read_text())
    failed = {name: why for name, why in summary["checks"].items() if why != "pass"}
    known = {name: failed.pop(name) for name in list(failed) if name.startswith(KNOWN)}
    assert not failed, f"{failed}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert summary["hostile_requests"] > 0 and summary["requests"] > 5 * summary["hostile_requests"]
    assert {"generate", "train", "search"} <= set(summary["latency"])
    assert (out / "soak.png").stat().st_size > 0
    if known:
        pytest.xfail(f"known failures of the app (docs/testing.md#soak): {known}")
    assert done.returncode == 0
