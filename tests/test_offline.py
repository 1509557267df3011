"""A first run without the Hub: the shipped dataset snapshot, a model that cannot be downloaded, `acts`.

The Hub is faked where the engine meets it: `huggingface_hub.HfApi.repo_info` (the one short
question `hub_reachable` asks), `datasets.load_dataset` and transformers' `from_pretrained`.
Nothing here depends on whether this machine has a network. The clock is fake too, so "a
minute later" takes no time.
"""

from __future__ import annotations

import re
import sys
import threading
import time
import types
from pathlib import Path

import httpx2
import huggingface_hub
import pytest
import transformers

from tuning import data, hubprobe, model
from tuning.cli import main
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL
from tuning.data import SNAPSHOT, DataError, load_rows, source_note
from tuning.model import ModelError, load_base

SENTENCE = (f"could not download {DEFAULT_MODEL} from the Hugging Face Hub (no connection); start with a local "
            "model: --model PATH (a folder saved with save_pretrained, or a .gguf file)")


class Clock:
    """A monotonic clock that moves only when told: clock.advance(61)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> Clock:
    """A fake clock for both loaders, and no failure remembered from another test."""
    fake = Clock()
    monkeypatch.setattr(hubprobe, "_now", fake)
    monkeypatch.setattr(model, "_now", fake)
    monkeypatch.setattr(hubprobe, "_hub_down_at", None)
    monkeypatch.setattr(data, "_snapshot_notes", {})
    monkeypatch.setattr(model, "_download_failures", {})
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    return fake


class Hub:
    """The fake Hub behind `HfApi.repo_info`: it answers, or the connection fails; it counts questions."""

    def __init__(self) -> None:
        self.up = False
        self.asked: list[str] = []

    def repo_info(self, api, repo_id, repo_type=None, timeout=None, **kwargs):
        self.asked.append(repo_id)
        if not self.up:
            raise httpx2.ConnectError("[Errno -2] Name or service not known")
        return types.SimpleNamespace(id=repo_id)


@pytest.fixture
def hub(monkeypatch, clock) -> Hub:
    fake = Hub()
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda api, *a, **k: fake.repo_info(api, *a, **k))
    return fake


class FakeDataset:
    def __init__(self, columns: dict[str, list]):
        self.columns = columns

    def to_dict(self) -> dict[str, list]:
        return self.columns


class Calls(list):
    error: Exception | None = None


@pytest.fixture
def datasets_calls(monkeypatch) -> Calls:
    """A fake `datasets` whose load_dataset returns one row (Poet) and records its calls; set .error to fail."""
    calls = Calls()

    def load_dataset(source, **kwargs):
        calls.append(source)
        if calls.error is not None:
            raise calls.error
        return FakeDataset({"act": ["Poet"], "prompt": ["Write poems."]})

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    return calls


# --- the dataset ------------------------------------------------------------------------


def test_shipped_snapshot_has_at_least_150_acts_and_its_cc0_license():
    rows = load_rows(str(SNAPSHOT))
    assert len(rows) >= 150
    assert len({r.act for r in rows}) == len(rows)
    assert "CC0 1.0 Universal" in (SNAPSHOT.parent / "LICENSE").read_text()


def test_default_dataset_falls_back_to_the_snapshot_when_the_hub_cannot_be_reached(hub, datasets_calls):
    rows = load_rows(DEFAULT_DATASET)
    assert rows == load_rows(str(SNAPSHOT)) and len(rows) >= 150
    assert datasets_calls == []  # not tried: its retries are what took ~30 s
    note = source_note(DEFAULT_DATASET)
    assert note == (f"Offline: using the snapshot of {DEFAULT_DATASET} shipped with this app "
                    f"(CC0, {data.SNAPSHOT_DATE}, {len(rows)} acts)")


def test_default_dataset_falls_back_when_the_download_cannot_connect(hub, datasets_calls):
    hub.up = True  # the question was answered, then the download lost the connection
    datasets_calls.error = ConnectionError("Couldn't reach 'fka/awesome-chatgpt-prompts' on the Hub (ConnectError)")
    assert len(load_rows(DEFAULT_DATASET)) >= 150
    assert datasets_calls == [DEFAULT_DATASET]
    assert source_note(DEFAULT_DATASET) is not None


def test_default_dataset_from_the_hub_has_no_note(hub, datasets_calls):
    hub.up = True
    assert [r.act for r in load_rows(DEFAULT_DATASET)] == ["Poet"]
    assert source_note(DEFAULT_DATASET) is None


@pytest.mark.parametrize("hub_up", [False, True], ids=["no-answer", "download-fails"])
def test_another_hub_dataset_never_falls_back(hub, datasets_calls, hub_up):
    hub.up = hub_up
    datasets_calls.error = ConnectionError("Couldn't reach 'someone/prompts' on the Hub (ConnectError)")
    with pytest.raises(DataError, match=r"^could not load the dataset 'someone/prompts' from the Hugging Face Hub: "):
        load_rows("someone/prompts")
    assert source_note("someone/prompts") is None


def test_a_dataset_the_hub_refuses_is_not_replaced_by_the_snapshot(hub, datasets_calls):
    hub.up = True
    datasets_calls.error = FileNotFoundError("Dataset 'fka/awesome-chatgpt-prompts' doesn't exist on the Hub")
    with pytest.raises(DataError, match="doesn't exist on the Hub"):
        load_rows(DEFAULT_DATASET)


def test_hub_failure_is_remembered_for_a_minute_then_asked_again(hub, datasets_calls, clock):
    load_rows(DEFAULT_DATASET)
    clock.advance(59)
    load_rows(DEFAULT_DATASET)
    assert hub.asked == [DEFAULT_DATASET]  # the second load went straight to the snapshot
    clock.advance(2)
    hub.up = True
    assert [r.act for r in load_rows(DEFAULT_DATASET)] == ["Poet"]
    assert hub.asked == [DEFAULT_DATASET] * 2
    assert source_note(DEFAULT_DATASET) is None  # back on the Hub: the note goes


@pytest.mark.parametrize("bad_id", ["me/my data", "https://huggingface.co/datasets/fka/awesome-chatgpt-prompts"])
def test_an_id_no_repository_can_have_is_an_error_and_never_marks_the_hub_down(hub, datasets_calls, bad_id):
    hub.up = True
    datasets_calls.error = ValueError(f"Repo id must use alphanumeric chars: '{bad_id}'")
    with pytest.raises(DataError, match="could not load the dataset"):
        load_rows(bad_id)
    assert hub.asked == [] and hubprobe._hub_down_at is None  # no request for it, and the Hub not taken for down
    datasets_calls.error = None
    assert [r.act for r in load_rows(DEFAULT_DATASET)] == ["Poet"]  # the next visitor still gets the Hub's rows
    assert source_note(DEFAULT_DATASET) is None


def test_a_hub_that_does_not_answer_in_time_is_unreachable(monkeypatch, clock):
    monkeypatch.setattr(hubprobe, "HUB_PROBE_S", 0.2)
    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", lambda *a, **k: time.sleep(2))  # a DNS that hangs
    start = time.perf_counter()
    assert hubprobe.hub_reachable(DEFAULT_DATASET, "dataset") is False
    assert time.perf_counter() - start < 1.5


@pytest.mark.timeout(60)
def test_the_probe_gives_up_on_a_hanging_hub_after_the_readmes_4_seconds(monkeypatch, clock):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    said = re.search(r"The Hub is asked once, for at most (\d+) seconds", readme)
    assert said and float(said.group(1)) == hubprobe.HUB_PROBE_S
    asked, answer = [], threading.Event()

    def hangs(api, repo_id, repo_type=None, timeout=None, **kwargs):  # a name lookup no server answers
        asked.append(timeout)
        answer.wait(20)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", hangs)
    start = time.perf_counter()
    try:
        reachable = hubprobe.hub_reachable(DEFAULT_MODEL)
        took = time.perf_counter() - start
    finally:
        answer.set()
    assert reachable is False and asked == [hubprobe.HUB_PROBE_S]  # the request's own timeout is the same limit
    # the documented limit, not a shorter one, and not much past it (2 s for a busy machine to wake the caller)
    assert hubprobe.HUB_PROBE_S - 0.05 <= took < hubprobe.HUB_PROBE_S + 2


@pytest.mark.parametrize("status, reachable", [(404, True), (401, True), (503, False)])
def test_an_answer_is_reachable_a_server_error_is_not(monkeypatch, clock, status, reachable):
    from huggingface_hub.errors import HfHubHTTPError

    def answer(*args, **kwargs):
        response = httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api/x"))
        raise HfHubHTTPError(f"{status}", response=response)

    monkeypatch.setattr(huggingface_hub.HfApi, "repo_info", answer)
    assert hubprobe.hub_reachable("someone/x") is reachable


def test_offline_mode_lets_datasets_read_its_cache_without_asking(hub, datasets_calls, monkeypatch):
    # HF_HUB_OFFLINE: `datasets` answers at once, from its cache (a Space's preloaded copy) or with an error.
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: True)
    assert [r.act for r in load_rows(DEFAULT_DATASET)] == ["Poet"]
    assert hub.asked == []


# --- the model --------------------------------------------------------------------------


class FakeFromPretrained:
    """transformers' from_pretrained for tokenizer and model: `cached` (tokenizer, model) loads only with
    local_files_only; otherwise it fails as transformers does without a connection. Records every call."""

    def __init__(self, cached=None, error: Exception | None = None):
        self.cached, self.error, self.calls = cached, error, []

    def install(self, monkeypatch) -> FakeFromPretrained:
        monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", lambda src, **k: self.load(src, 0, **k))
        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda src, **k: self.load(src, 1, **k))
        return self

    def load(self, source, which, **kwargs):
        self.calls.append((source, kwargs))
        if self.error is not None:
            raise self.error
        if self.cached is None or not kwargs.get("local_files_only"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find "
                          "them in the cached files.")
        return self.cached[which]


def test_model_that_cannot_be_downloaded_fails_fast_with_one_sentence(hub, monkeypatch):
    loader = FakeFromPretrained().install(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(ModelError) as caught:
        load_base(DEFAULT_MODEL, "fp32")
    assert time.perf_counter() - start < 10
    assert str(caught.value) == SENTENCE
    assert loader.calls[0][1]["local_files_only"] is True  # the cache was tried, not the Hub's retries


def test_model_failure_is_remembered_for_a_minute_then_retried(hub, monkeypatch, clock):
    loader = FakeFromPretrained().install(monkeypatch)
    with pytest.raises(ModelError):
        load_base(DEFAULT_MODEL, "fp32")
    tries = len(loader.calls)
    clock.advance(59)
    start = time.perf_counter()
    with pytest.raises(ModelError, match=r"^could not download .* --model PATH"):
        load_base(DEFAULT_MODEL, "fp32")
    assert time.perf_counter() - start < 0.5
    assert len(loader.calls) == tries and hub.asked == [DEFAULT_MODEL]  # nothing was tried again
    clock.advance(2)
    with pytest.raises(ModelError):
        load_base(DEFAULT_MODEL, "fp32")
    assert len(loader.calls) == 2 * tries and hub.asked == [DEFAULT_MODEL] * 2


def test_model_download_that_loses_the_connection_gives_the_same_sentence(hub, monkeypatch):
    hub.up = True
    lost = OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    lost.__cause__ = httpx2.ConnectError("[Errno 101] Network is unreachable")
    loader = FakeFromPretrained(error=lost).install(monkeypatch)
    with pytest.raises(ModelError) as caught:
        load_base(DEFAULT_MODEL, "fp32")
    assert str(caught.value) == SENTENCE
    assert "local_files_only" not in loader.calls[0][1]  # the Hub answered, so a normal download was tried


def test_a_model_the_hub_does_not_have_is_not_called_a_connection_problem(hub, monkeypatch):
    hub.up = True
    loader = FakeFromPretrained(error=OSError("someone/typo is not a local folder and is not a valid model identifier"))
    loader.install(monkeypatch)
    for _ in range(2):
        with pytest.raises(ModelError, match=r"^could not load the model 'someone/typo': someone/typo is not a local"):
            load_base("someone/typo", "fp32")
    assert len(loader.calls) == 2  # not remembered: fixing a typo must not wait a minute


def test_a_model_in_the_local_cache_loads_without_the_hub(hub, monkeypatch, tokenizer):
    from conftest import make_base

    tiny = make_base(tokenizer, seed=1)
    loader = FakeFromPretrained(cached=(tokenizer, tiny.model)).install(monkeypatch)
    base = load_base("someone/cached-tiny-gpt2", "fp32")
    assert base.model is tiny.model and base.model_id == "someone/cached-tiny-gpt2"
    model_kwargs = loader.calls[1][1]
    # transformers does not pass local_files_only on to its adapter-config look-up: we do
    assert model_kwargs["local_files_only"] and model_kwargs["adapter_kwargs"] == {"local_files_only": True}


def test_a_local_model_folder_never_asks_the_hub(hub, tmp_path, tokenizer):
    from conftest import make_base

    make_base(tokenizer, seed=2).model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    assert load_base(str(tmp_path), "fp32").model_id == str(tmp_path)
    assert hub.asked == []


# --- the command line -------------------------------------------------------------------


def test_acts_lists_name_and_words_in_columns_then_the_count(tmp_path, capsys, clock):
    csv = tmp_path / "p.csv"
    csv.write_text("act,prompt\nPoet,Write short poems.\nLinux Terminal,Reply as a shell would.\n")
    assert main(["acts", "--dataset", str(csv)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == ["Poet                3 words", "Linux Terminal      5 words", f"2 acts from {csv}"]


def test_acts_search_matches_name_or_prompt_in_any_case(tmp_path, capsys, clock):
    csv = tmp_path / "p.csv"
    csv.write_text("act,prompt\nPoet,Write short poems.\nRapper,Write LYRICS.\nChef,Cook.\n")
    assert main(["acts", "--dataset", str(csv), "--search", "lyrics"]) == 0
    assert capsys.readouterr().out.splitlines() == ["Rapper      2 words", "1 of 3 acts match 'lyrics' from " + str(csv)]


def test_acts_without_the_hub_lists_the_snapshot_and_says_so(hub, datasets_calls, capsys):
    assert main(["acts"]) == 0
    lines = capsys.readouterr().out.splitlines()
    count = len(load_rows(str(SNAPSHOT)))
    assert len(lines) == count + 1 >= 151
    assert lines[-1] == (f"{count} acts from the snapshot of {DEFAULT_DATASET} shipped with this package "
                         f"(CC0, {data.SNAPSHOT_DATE}; the Hub could not be reached)")


def test_train_with_the_defaults_and_no_hub_exits_1_with_one_line_naming_model(hub, datasets_calls, monkeypatch,
                                                                             tmp_path, capsys):
    FakeFromPretrained().install(monkeypatch)
    assert main(["--adapters-dir", str(tmp_path), "train", "--epochs", "1"]) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {SENTENCE}"]
    assert "Traceback" not in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # nothing saved
    assert f"note: Offline: using the snapshot of {DEFAULT_DATASET} shipped with this app" in captured.err  # and said why


def test_a_model_that_did_not_load_says_why_until_it_loads(tmp_path):
    """The sentence a page shows under its header: the last failed load's, gone once the model loads."""
    from tuning import model as model_module

    missing = str(tmp_path / "gpt2")
    assert model_module.load_problem(missing) is None  # never tried: nothing to say
    with pytest.raises(model_module.ModelError) as error:
        model_module.load_base(missing)
    assert model_module.load_problem(missing) == str(error.value) == f"no model folder at {missing}"
    from conftest import make_base, make_tokenizer

    make_base(make_tokenizer()).model.save_pretrained(missing)  # the folder appears: the next try loads it
    make_tokenizer().save_pretrained(missing)
    model_module.load_base(missing)
    assert model_module.load_problem(missing) is None
