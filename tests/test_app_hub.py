"""The Adapters tab's Hub and report actions, called as the app calls them, with the Hub faked at HfApi."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import huggingface_hub
import pytest

from app_fixtures import write_assets
from test_hub import FakeHfApi
from tuning import hub
from tuning.jobs import Jobs
from ui.session import SESSION_RUN, Context, Session
from ui.tabs.adapters import adapter_report, pull_adapter, push_adapter, repo_suggestion, run_report, save_run
from ui.tabs.train import start_training

TOKEN = "hf_visitor_secret_0123456789"  # a visitor's login, faked: it must never be logged, kept or shown
TRAIN = dict(tokens=3, epochs=1, lr=0.1, batch=4, init="random", data="all training acts", chosen=[], seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app-hub")
    model, dataset = write_assets(folder)
    ctx = Context(model, dataset, folder / "adapters", jobs=Jobs(), hub_model="openai-community/gpt2")
    session = Session()
    list(start_training(ctx, *TRAIN.values(), session, SimpleNamespace(session_hash="s")))
    save_run(ctx, "poet", SESSION_RUN, session)
    return ctx, session, folder


def oauth() -> gr.OAuthToken:
    return gr.OAuthToken(token=TOKEN, scope="write-repos manage-repos", expires_at=0)


def test_push_needs_the_visitors_login(trained):
    ctx, _, _ = trained
    with pytest.raises(gr.Error, match="log in with Hugging Face"):
        push_adapter(ctx, "poet", "someone/poet", False, None)


def test_the_repo_is_prefilled_for_a_logged_in_visitor(trained):
    ctx, _, _ = trained
    assert repo_suggestion(ctx, "poet", SimpleNamespace(username="ada")) == "ada/poet"
    assert repo_suggestion(ctx, "poet", None) == ""


def test_push_then_pull_with_the_token_used_for_that_call_only(trained, monkeypatch, tmp_path, caplog, capsys):
    ctx, session, folder = trained
    FakeHfApi.calls, FakeHfApi.keep = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    caplog.set_level(logging.DEBUG)
    message = push_adapter(ctx, "poet", "ada/poet", True, oauth())
    assert message.startswith("pushed **poet** to [ada/poet](")
    assert ("init", {"token": TOKEN}) in FakeHfApi.calls  # the visitor's token, for this call
    create = next(kw for name, kw in FakeHfApi.calls if name == "create_repo")
    assert create["repo_id"] == "ada/poet" and create["private"] is True
    # pulled back from the "Hub" (what was uploaded): every upload check, a free name, nothing overwritten
    fetched = []

    def fake_download(repo_id, token, revision, folder):
        fetched.append((repo_id, token))
        for file in FakeHfApi.keep.iterdir():
            shutil.copyfile(file, folder / file.name)

    monkeypatch.setattr(hub, "_download", fake_download)
    table, picked, message = pull_adapter(ctx, "ada/poet", "poet", None)
    assert picked.value == "poet-2" and message == "loaded **ada/poet** as **poet-2**"
    assert fetched == [("ada/poet", None)]  # logged out for this call: no token
    out = capsys.readouterr()
    assert TOKEN not in caplog.text + out.out + out.err
    for path in [*folder.rglob("*"), *tmp_path.rglob("*")]:
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), f"the token was written to {path}"
    shutil.rmtree(ctx.root / "poet-2")


def test_a_pulled_name_cannot_take_the_reference_prefix(trained, tmp_path):
    ctx, _, _ = trained
    with pytest.raises(gr.Error, match="kept for the reference adapters"):
        pull_adapter(ctx, "ada/poet", "reference-5x5-x", None)


def test_a_visitors_pull_never_reads_a_folder_on_the_server(trained):
    ctx, _, _ = trained
    with pytest.raises(gr.Error, match="is not a Hub repo id"):
        pull_adapter(ctx, str(ctx.root / "poet"), "", None)


def test_reports_for_a_saved_adapter_and_for_a_run(trained):
    ctx, session, _ = trained
    request = SimpleNamespace(session_hash="s")
    for report in (lambda: adapter_report(ctx, "poet", session, request),
                   lambda: run_report(ctx, session.runs[-1].name, session, request)):
        path = report()  # the session's folder holds its last download only: read it now
        html = Path(path).read_text(encoding="utf-8")
        assert Path(path).name == "report.html" and len(html) > 5_000 and "data:image/png;base64," in html
    with pytest.raises(gr.Error, match="no run to report on"):
        run_report(ctx, SESSION_RUN, Session(), request)
