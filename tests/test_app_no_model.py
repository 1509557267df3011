"""A model that cannot be loaded: one line under the header says which, why and what to do, and goes once it loads.

Generate, Train and Evaluate answer with the same sentence in their own outputs, not with red
"Error" badges and a toast that fades.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest

import ui.session
from app_fixtures import write_assets
from tuning.jobs import Jobs
from ui.session import Context, Session, model_line
from ui.tabs.compare import generate
from ui.tabs.evaluate import evaluate_run
from ui.tabs.train import start_training

GREEDY = dict(max_new=4, mode="greedy", temperature=0.8, top_p=0.95, top_k=50, penalty=1.0, seed=0)


@pytest.fixture
def missing(tmp_path):
    """A server started on a model folder that is not there (yet): the warm-up at start failed."""
    model, dataset = write_assets(tmp_path)
    ctx = Context(str(tmp_path / "gpt2-not-yet"), dataset, tmp_path / "adapters", jobs=Jobs(grace=5.0))
    with pytest.raises(Exception):
        ctx.base()
    return ctx, model


def test_the_page_says_which_model_could_not_be_loaded_and_why(missing):
    ctx, _ = missing
    line = model_line(ctx)
    assert line.startswith(f"⚠️ The model {ctx.model} could not be loaded: no model folder at {ctx.model}")
    assert "this page tries again every minute" in line


def test_generate_train_and_evaluate_answer_with_that_sentence(missing):
    ctx, _ = missing
    session, request = Session(), SimpleNamespace(session_hash="tab")
    base_column, *others = list(generate(ctx, "hi", "some-run", *GREEDY.values(), session))[-1]
    assert base_column.startswith(f"The model {ctx.model} could not be loaded") and others == ["", "", "", "", ""]
    *_, (chart, progress, log) = start_training(ctx, 5, 1, 0.1, 4, "random", "all training acts", [], 0, session,
                                                request)
    assert progress.startswith(f"failed: The model {ctx.model} could not be loaded")
    *_, (_, _, summary, _) = evaluate_run(ctx, "some-run", 0, 8, session)
    assert summary.startswith(f"⚠️ The model {ctx.model} could not be loaded")


def test_the_line_goes_once_a_retry_in_the_background_loads_the_model(missing, monkeypatch):
    ctx, model = missing
    monkeypatch.setattr(ui.session, "DOWNLOAD_RETRY_S", 0.0)  # a retry is due at once
    import shutil

    shutil.copytree(model, ctx.model)  # the model arrives (a download finished, a volume mounted)
    assert model_line(ctx)  # still the old news, while the retry starts
    deadline = time.monotonic() + 60
    while model_line(ctx) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert model_line(ctx) == ""
