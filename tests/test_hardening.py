"""Hostile input, hostile adapters, faults and disk limits, tried against the served app.

Each test sends what an anonymous visitor could send through the browser or the raw API
(every event is an HTTP endpoint, and a slider's range or a textbox's max length binds the
browser only), then checks for one clear sentence and that the app still serves. The app runs
in this process, so a test can also swap `torch.load` or the loss function inside it.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest
import torch
from gradio_client import handle_file
from gradio_client.exceptions import AppError
from safetensors.torch import load_file, save_file

import tuning.train
from app_fixtures import Client, log_steps, serve, steps_of, wait_for_updates
from tuning import adapters
from ui.checks import MAX_INPUT_CHARS
from ui.layout import build_app
from ui.session import SESSION_RUN
from ui.tabs.compare import NO_PROMPT
from ui.training import NEW_PROMPT
from ui.zips import MAX_ZIP_ENTRIES, unzip_safely

# every input of each event, in order: the UI's events are undocumented, so no client fills defaults
TRAIN = dict(tokens=5, epochs=1, lr=0.1, batch=4, init="random", data="all training acts", acts=[], seed=0,
             resume=NEW_PROMPT)
GREEDY = dict(max_new=8, mode="greedy", temperature=0.8, top_p=0.95, top_k=50, penalty=1.0, seed=0,
              adapter_b=NO_PROMPT, no_repeat=3, written="none", own_text="")
SAVED = "saved"  # an adapter the module fixture trains and saves once
GRACE = 1.0  # seconds a run goes on once its tab is gone (a reload re-attaches meanwhile); the app's default is 10
APP_PY = (Path(__file__).resolve().parent.parent / "app.py").resolve()  # a server file no client may read


def train_args(**kw):
    return list({**TRAIN, **kw}.values())


def gen_args(text="I want you to act as a rapper.", adapter=SAVED, **kw):
    return [text, adapter, *{**GREEDY, **kw}.values()]


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow_setup):
    folder = tmp_path_factory.mktemp("hardening")
    demo, url = serve(folder, reattach_grace=GRACE)
    client = Client(url, verbose=False)
    client.predict(*train_args(), api_name="/train")
    client.predict(SAVED, None, api_name="/save_adapter")
    yield url, folder
    demo.close()


@pytest.fixture
def url(server):
    return server[0]


@pytest.fixture
def client(url):
    c = Client(url, verbose=False)
    yield c
    c.close()


def raw_call(url: str, api_name: str, data: list) -> tuple[str, object]:
    """Call an event through Gradio's plain HTTP API with any JSON at all; returns (event, data).

    json.dumps writes NaN, Infinity and lone surrogates (as \\ud800 escapes): a hostile client can.
    Fails the test when no answer comes within a minute (the stream's heartbeats would keep a
    read timeout from ever firing).
    """
    body = json.dumps({"data": data}, allow_nan=True, ensure_ascii=True)
    r = httpx.post(f"{url}gradio_api/call/{api_name}", content=body,
                   headers={"content-type": "application/json"}, timeout=30)
    if r.status_code != 200:
        return f"http {r.status_code}", r.text
    event_id = r.json()["event_id"]
    event = None
    deadline = time.monotonic() + 60
    with httpx.stream("GET", f"{url}gradio_api/call/{api_name}/{event_id}", timeout=60) as s:
        for line in s.iter_lines():
            if time.monotonic() > deadline:
                pytest.fail(f"{api_name} gave no answer within 60 s")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("complete", "error"):
                data = json.loads(line[len("data: "):])
                return event, (data or {}).get("error") if event == "error" else data
    return "closed", None


def still_serves(url: str) -> None:
    event, data = raw_call(url, "search_acts", ["poet"])
    assert event == "complete" and data[0]["data"][0][0] == "Poet"


# --- 1. every input checked on the server ----------------------------------------------

HOSTILE_GENERATE = [
    (dict(text="x" * 100_000), "Input is 100,000 characters; this server takes at most 4,000"),
    (dict(text="a\x00b"), "NUL character"),
    (dict(text="broken \ud800 text"), "lone surrogate"),
    (dict(text="   \n\t "), "the input text is empty"),
    (dict(text=""), "the input text is empty"),
    (dict(text=12345), "Input must be text, got int"),
    (dict(text=["a", "list"]), "Input must be text, got list"),
    (dict(max_new=math.nan), "Max new tokens must be a finite number"),
    (dict(max_new=math.inf), "Max new tokens must be a finite number"),
    (dict(max_new=-math.inf), "Max new tokens must be a finite number"),
    (dict(max_new="64"), "Max new tokens must be a number"),
    (dict(max_new=None), "Max new tokens is empty: enter a number"),  # a cleared field
    (dict(seed=""), "Seed is empty: enter a number"),
    (dict(max_new=True), "Max new tokens must be a number"),
    (dict(max_new=10**9), "Max new tokens: Value 1000000000 is greater than maximum value 512"),
    (dict(max_new=0), "Max new tokens: Value 0 is less than minimum value 1"),
    (dict(max_new=2.5), "max_new_tokens must be a whole number"),
    (dict(temperature=math.nan), "Temperature must be a finite number"),
    (dict(top_p=0), "Top-p: Value 0 is less than minimum value 0.05"),
    (dict(top_k={"a": 1}), "Top-k (0: off) must be a number"),
    (dict(penalty=-1), "Repetition penalty: Value -1 is less than minimum value 1"),
    (dict(seed=math.nan), "Seed must be a finite number"),
    (dict(seed=math.inf), "Seed must be a finite number"),
    (dict(seed=-1), "Seed: Value -1 is less than minimum value 0"),
    (dict(seed=2**40), "Seed: Value 1099511627776 is greater than maximum value 4294967295"),
    (dict(mode="beam"), "Decoding must be one of greedy, sample, got 'beam'"),
    (dict(adapter=["a"]), "the adapter name must be text"),
    (dict(adapter="x" * 100_000), "the adapter name is 100,000 characters"),
]


@pytest.mark.parametrize("change, message", HOSTILE_GENERATE, ids=[m[:40] for _, m in HOSTILE_GENERATE])
def test_hostile_generate_input_gets_one_sentence_and_the_app_keeps_serving(url, change, message):
    args = {**GREEDY, "text": "I want you to act as a rapper.", "adapter": SAVED, **change}
    text, adapter = args.pop("text"), args.pop("adapter")
    event, data = raw_call(url, "generate", [text, adapter, *args.values()])
    assert event == "error" and message in data, data
    assert "Traceback" not in data and "\n" not in data
    still_serves(url)


HOSTILE_TRAIN = [
    (dict(tokens=math.nan), "Virtual tokens must be a finite number"),
    (dict(tokens="20"), "Virtual tokens must be a number"),
    (dict(tokens=1000), "Virtual tokens: Value 1000 is greater than maximum value 100"),
    (dict(tokens=2.5), "Virtual tokens must be a whole number from 1 to 100, got 2.5"),
    (dict(epochs=math.inf), "Epochs must be a finite number"),
    (dict(batch=None), "Batch size is empty: enter a number"),
    (dict(lr=None), "Learning rate is empty: enter a number"),
    (dict(lr=math.nan), "Learning rate must be a finite number"),
    (dict(lr="fast"), "Learning rate must be a number"),
    (dict(lr=-1), "Learning rate must be from 1e-06 to 10, got -1"),
    (dict(seed=math.inf), "Seed must be a finite number"),
    (dict(init="pickle"), "Start the prompt from must be one of the words"),
    (dict(data="selected acts", acts="Rapper"), "not in the list of choices"),
    (dict(data="selected acts", acts=[["Rapper"]]), "not in the list of choices"),
]


@pytest.mark.parametrize("change, message", HOSTILE_TRAIN, ids=[m[:40] for _, m in HOSTILE_TRAIN])
def test_hostile_training_settings_get_one_sentence_and_the_app_keeps_serving(url, change, message):
    event, data = raw_call(url, "train", train_args(**change))
    assert event == "error" and message in data, data
    still_serves(url)


HOSTILE_FIELDS = [
    ("search_acts", ["q" * 100_000], "Search acts is 100,000 characters; this server takes at most 200"),
    ("search_acts", ["\x00"], "NUL character"),
    ("select_act", ["Rap\ud83dper"], "lone surrogate"),
    ("select_act", [None], "the act name is empty"),
    ("select_act", [42], "must be text, got int"),
    ("save_adapter", ["\x00\x00", None], "NUL character"),
    ("save_adapter", [{"name": "x"}, None], "must be text, got dict"),
    ("delete_adapter", [3.5], "the adapter name must be text"),
    ("download_adapter", ["\ud800"], "lone surrogate"),
    ("adapter_details", [["../app.py"]], "the adapter name must be text"),
]


@pytest.mark.parametrize("api_name, data, message", HOSTILE_FIELDS, ids=[f"{a}-{m[:30]}" for a, _, m in HOSTILE_FIELDS])
def test_hostile_text_fields_get_one_sentence(url, api_name, data, message):
    event, answer = raw_call(url, api_name, data)
    assert event == "error" and message in answer, answer
    still_serves(url)


@pytest.mark.parametrize("text", [
    "مرحبا، أريد أن تتصرف كشاعر",  # right to left
    "שלום 👋🏽 עולם",  # right to left with an emoji and a skin-tone modifier
    "I want you to act as a rapper 🎤🔥 (Z̤͔ͧ̑̓ä͖̭̈̇lͮ̒ͫǒ̞̜)",  # emoji and combining marks
    "\u202eevil right-to-left override\u202c",
    "x" * MAX_INPUT_CHARS,  # exactly at the limit: kept, cut from the front to fit the context
])
def test_unusual_but_valid_text_simply_works(url, text):
    event, data = raw_call(url, "generate", gen_args(text))
    assert event == "complete" and all(isinstance(d, str) for d in data)


def test_one_character_past_the_input_limit_is_refused(url):
    event, data = raw_call(url, "generate", gen_args("x" * (MAX_INPUT_CHARS + 1)))
    assert event == "error" and "4,001 characters" in data


# --- 2. the context budget, through the app -----------------------------------------------


def test_new_tokens_that_leave_no_room_in_the_context_are_refused_clearly(url):
    # the tiny model has 256 positions: 5 virtual + 256 new leaves nothing for the input
    event, data = raw_call(url, "generate", gen_args(max_new=256))
    assert event == "error" and "leave no room for input in the model's 256-token context" in data
    event, _ = raw_call(url, "generate", gen_args(max_new=250))  # 5 + 1 input token + 250 = 256: exactly fits
    assert event == "complete"


# --- 3. a large dataset in the app ---------------------------------------------------------


@pytest.mark.slow  # serves the app
def test_a_10000_row_dataset_loads_in_seconds_and_search_stays_quick(tmp_path):
    import csv

    import app_fixtures

    model, _ = app_fixtures.write_assets(tmp_path)
    dataset = tmp_path / "big.csv"
    with open(dataset, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "prompt"])
        writer.writerows((f"Act {i}", f"I want you to act as number {i}. " * 5) for i in range(10_000))
    demo = build_app(model=model, dataset=str(dataset), adapters_dir=tmp_path / "adapters")
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=app_fixtures.free_port(), quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        t0 = time.perf_counter()
        table, *_ = client.predict(api_name="/load_page")
        loaded = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = client.predict("number 9999.", api_name="/search_acts")
        searched = time.perf_counter() - t0
        client.close()
    finally:
        demo.close()
    assert len(table["data"]) == 10_000 and loaded < 10
    assert [r[0] for r in found["data"]] == ["Act 9999"] and searched < 2


# --- 4. adapter uploads ---------------------------------------------------------------------


def adapter_zip(server_folder: Path, dest: Path, config: dict | None = None, tensors: dict | None = None,
                extra: dict | None = None) -> str:
    """A zip of the saved adapter, with adapter_config.json changes, replaced tensors or extra files."""
    source = server_folder / "adapters" / SAVED
    path = dest / "upload.zip"
    with zipfile.ZipFile(path, "w") as z:
        cfg = json.loads((source / adapters.CONFIG_FILE).read_text())
        cfg.update(config or {})
        z.writestr(f"up/{adapters.CONFIG_FILE}", json.dumps(cfg))
        if tensors is None:
            z.write(source / adapters.WEIGHTS_FILE, f"up/{adapters.WEIGHTS_FILE}")
        else:
            save_file(tensors, str(dest / "t.safetensors"))
            z.write(dest / "t.safetensors", f"up/{adapters.WEIGHTS_FILE}")
        for name, data in (extra or {}).items():
            z.writestr(f"up/{name}", data)
    return str(path)


def no_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        pytest.fail("torch.load was called: an upload must never be unpickled")

    monkeypatch.setattr(torch, "load", refuse)
    import pickle

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_a_good_upload_loads_without_ever_unpickling(server, client, tmp_path, monkeypatch):
    no_unpickling(monkeypatch)
    path = adapter_zip(server[1], tmp_path)
    *_, message = client.predict(handle_file(path), "clean-copy", api_name="/upload_adapter")
    assert message == "uploaded as **clean-copy**"
    client.predict("clean-copy", api_name="/delete_adapter")


def test_a_pickle_only_adapter_is_refused_without_unpickling(server, client, tmp_path, monkeypatch):
    no_unpickling(monkeypatch)
    path = tmp_path / "pickle.zip"
    cfg = (server[1] / "adapters" / SAVED / adapters.CONFIG_FILE).read_text()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(adapters.CONFIG_FILE, cfg)
        z.writestr("adapter_model.bin", b"\x80\x04cos\nsystem\n.")  # a pickle that would run os.system
    with pytest.raises(AppError, match="adapter_model.bin \\(pickle\\), which is unsafe"):
        client.predict(handle_file(str(path)), "pickled", api_name="/upload_adapter")


HOSTILE_ADAPTERS = [
    (dict(config={"peft_type": "LORA"}), "only PROMPT_TUNING adapters"),
    (dict(config={"peft_type": "__import__('os')"}), "only PROMPT_TUNING adapters"),
    (dict(config={"task_type": "SEQ_2_SEQ_LM"}), "only CAUSAL_LM is supported"),
    (dict(config={"trust_remote_code": True}), "sets trust_remote_code"),
    (dict(config={"auto_mapping": {"base_model_class": "Evil", "parent_library": "evil"}}), "sets auto_mapping"),
    (dict(config={"prompt_tuning_init": "TEXT", "tokenizer_name_or_path": "evil/tokenizer"}), "sets tokenizer_name_or_path"),
    (dict(config={"prompt_tuning_init": "TEXT", "tokenizer_kwargs": {"trust_remote_code": True}}), "sets tokenizer_kwargs"),
    (dict(config={"prompt_tuning_init": "PICKLE"}), "prompt_tuning_init must be one of"),
    (dict(config={"token_dim": 32}), "the prompt tensor is [5, 64] but adapter_config.json says [5, 32]"),
    (dict(config={"token_dim": "64"}), "token_dim must be a positive whole number"),
    (dict(config={"num_virtual_tokens": 6}), "adapter_config.json says [6, 64]"),
    (dict(config={"num_virtual_tokens": 10**9}), "num_virtual_tokens must be a whole number from 1 to 100"),
    (dict(tensors={"weight": torch.zeros(5, 64)}), "must hold exactly the key 'prompt_embeddings'"),
    (dict(tensors={"prompt_embeddings": torch.zeros(5, 64, dtype=torch.int32)}), "must be floating point"),
    (dict(tensors={"prompt_embeddings": torch.full((5, 64), math.nan)}), "NaN or infinity"),
    (dict(tensors={"prompt_embeddings": torch.zeros(5, 32)}), "the prompt tensor is [5, 32]"),
    (dict(tensors={"prompt_embeddings": torch.zeros(1, 5, 64)}), "must be 2-D"),
    (dict(extra={adapters.META_FILE: json.dumps({"format": 1, "base_model": "openai-community/gpt2",
                                                 "config": {"num_virtual_tokens": 5}, "meta": {}})}),
     "adapter was trained on openai-community/gpt2, the loaded model is"),
    (dict(extra={adapters.WEIGHTS_FILE + ".x": "", "nested/adapter_config.json": "{}"}), "exactly one adapter_config.json"),
]


@pytest.mark.parametrize("change, message", HOSTILE_ADAPTERS, ids=[m[:40] for _, m in HOSTILE_ADAPTERS])
def test_hostile_adapter_is_refused_and_nothing_is_saved(server, client, tmp_path, monkeypatch, change, message):
    no_unpickling(monkeypatch)
    path = adapter_zip(server[1], tmp_path, **change)
    with pytest.raises(AppError, match=None) as e:
        client.predict(handle_file(path), "hostile", api_name="/upload_adapter")
    assert message in str(e.value)
    assert not (server[1] / "adapters" / "hostile").exists()


def lying_zip(path: Path, size: int) -> Path:
    """A zip whose one member really unpacks to `size` zero bytes but whose headers say 10 bytes."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("adapter_model.safetensors", "w", force_zip64=True) as f:
            chunk = bytes(2**20)
            for _ in range(size // 2**20):
                f.write(chunk)
    data = bytearray(path.read_bytes())
    # the size zipfile trusts is the central directory's (a 4-byte field 24 bytes into the entry)
    central = data.rindex(b"PK\x01\x02")
    assert int.from_bytes(data[central + 24:central + 28], "little") == size
    data[central + 24:central + 28] = (10).to_bytes(4, "little")
    path.write_bytes(bytes(data))
    assert zipfile.ZipFile(path).infolist()[0].file_size == 10
    return path


def test_a_zip_bomb_declaring_its_size_is_refused_before_extracting(tmp_path):
    path = tmp_path / "bomb.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        with z.open("adapter_model.safetensors", "w", force_zip64=True) as f:
            for _ in range(200):
                f.write(bytes(2**20))  # 200 MB of zeros, about 200 KB compressed
    assert path.stat().st_size < 1_000_000
    with pytest.raises(adapters.AdapterError, match="unpacks to more than 50 MB"):
        unzip_safely(str(path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_zip_bomb_lying_about_its_size_stops_at_the_declared_size(tmp_path):
    path = lying_zip(tmp_path / "liar.zip", 200 * 2**20)
    with pytest.raises(adapters.AdapterError, match="damaged"):  # zipfile reads 10 bytes, then the CRC fails
        unzip_safely(str(path), tmp_path / "out")
    written = sum(f.stat().st_size for f in (tmp_path / "out").rglob("*") if f.is_file())
    assert written <= 10


def test_a_zip_of_many_folders_is_refused(tmp_path):
    path = tmp_path / "folders.zip"
    with zipfile.ZipFile(path, "w") as z:
        for i in range(MAX_ZIP_ENTRIES + 1):
            z.writestr(f"d{i}/", "")
    with pytest.raises(adapters.AdapterError, match="65 entries"):
        unzip_safely(str(path), tmp_path / "out")


def test_a_deeply_nested_zip_is_refused(tmp_path):
    path = tmp_path / "deep.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("a/b/c/d/adapter_config.json", "{}")
    with pytest.raises(adapters.AdapterError, match="nests folders too deeply"):
        unzip_safely(str(path), tmp_path / "out")


def test_an_upload_that_is_not_a_zip_is_refused(client, tmp_path):
    path = tmp_path / "adapter.zip"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(AppError, match="the upload is not a zip file"):
        client.predict(handle_file(str(path)), "x", api_name="/upload_adapter")


# --- 5. names and paths -------------------------------------------------------------------

# Each hostile name, and where it would lead from <server folder>/adapters if a guard let it through
# as a path (after ~ expansion, url-decoding or Windows separators), relative to the server folder;
# "{folder}" is that folder. A copy of the saved adapter waits at each place, so a broken guard
# would find, load, zip or delete it rather than fail for want of a file.
HOSTILE_NAMES = {
    "../app.py": "app.py",
    "{folder}/outside": "outside",
    "/etc/passwd": None,  # outside the test's folder: nothing planted, refused all the same
    "a/../../x": "x",
    "https://example.com/x": "adapters/https:/example.com/x",
    "openai-community/gpt2": "adapters/openai-community/gpt2",
    "..": None,  # the server folder itself, which the snapshot of all its files covers
    "~": "home",  # HOME points there during the test
    "saved/../../app.py": "app.py",
    "saved\\..\\..\\app.py": "app.py",
    "%2e%2e%2fapp.py": "app.py",
}


@pytest.fixture
def offline(monkeypatch):
    """Any connection to somewhere other than this machine fails the test."""
    connect = socket.socket.connect

    def local_only(self, address):
        if isinstance(address, tuple) and address[0] not in ("127.0.0.1", "localhost", "::1"):
            pytest.fail(f"a network request to {address}")
        return connect(self, address)

    monkeypatch.setattr(socket.socket, "connect", local_only)


@pytest.fixture
def planted(server, monkeypatch):
    """A copy of the saved adapter, with a sentinel.txt, at every place a hostile name leads to."""
    folder = server[1]
    monkeypatch.setenv("HOME", str(folder / "home"))
    places = sorted({folder / target for target in HOSTILE_NAMES.values() if target})
    for place in places:
        shutil.copytree(folder / "adapters" / SAVED, place)
        (place / "sentinel.txt").write_text(f"planted at {place}")
    yield places
    for place in places:  # the top folder of each, so adapters/ holds no empty https: or user folders
        top = place.relative_to(folder).parts
        shutil.rmtree(folder.joinpath(*top[:2] if top[0] == "adapters" else top[:1]), ignore_errors=True)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("api_name", ["download_adapter", "delete_adapter", "adapter_details", "generate"])
def test_hostile_names_are_refused_and_touch_nothing(server, client, offline, planted, api_name, name):
    name = name.format(folder=server[1])
    weights = (server[1] / "adapters" / SAVED / adapters.WEIGHTS_FILE).read_bytes()
    before = {p: p.stat().st_mtime_ns for p in server[1].rglob("*")}
    args = gen_args(adapter=name) if api_name == "generate" else [name]
    try:
        answer = client.predict(*args, api_name=f"/{api_name}")
    except AppError as e:
        assert "not a valid adapter name" in str(e) or "no adapter named" in str(e)
    else:
        assert api_name == "adapter_details" and answer == {}
    assert {p: p.stat().st_mtime_ns for p in server[1].rglob("*")} == before
    for place in planted:
        assert (place / "sentinel.txt").read_text() == f"planted at {place}"
        assert (place / adapters.WEIGHTS_FILE).read_bytes() == weights


def get_raw(url: str, path: str) -> tuple[int, bytes]:
    """GET `path` exactly as written: no client-side normalising of `..` or `%2e`."""
    parts = urlparse(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", path)
    r = conn.getresponse()
    return r.status, r.read()


def test_the_file_route_serves_nothing_outside_what_the_app_hands_out(server, client):
    folder = server[1]
    app_py = APP_PY
    weights = (folder / "adapters" / SAVED / adapters.WEIGHTS_FILE).resolve()
    paths = [
        "/gradio_api/file=../app.py", "/gradio_api/file=app.py", f"/gradio_api/file={app_py}",
        "/gradio_api/file=/etc/passwd", "/gradio_api/file=..%2fapp.py", "/gradio_api/file=%2e%2e%2fapp.py",
        "/gradio_api/file=%2e%2e/%2e%2e/%2e%2e/etc/passwd", "/gradio_api/file=%2Fetc%2Fpasswd",
        "/gradio_api/file=..%252fapp.py", f"/gradio_api/file={weights}", f"/gradio_api/file={tempfile.gettempdir()}/",
        "/file=../app.py", "/file=/etc/passwd", "/gradio_api/file=....//....//etc/passwd",
        "/gradio_api/file=C:\\Windows\\win.ini", "/static/../app.py", "/assets/%2e%2e/%2e%2e/app.py",
    ]
    secret = app_py.read_bytes()[:200]
    for path in paths:
        status, body = get_raw(server[0], path)
        assert status != 200 or (secret not in body and b"root:" not in body and b"prompt_embeddings" not in body), path
    # what the app does hand out is served
    zipped = client.predict(SAVED, api_name="/download_adapter")
    with zipfile.ZipFile(zipped) as z:
        assert f"{SAVED}/{adapters.WEIGHTS_FILE}" in z.namelist()


def zip_of_saved(server_folder: Path, path: Path, member: zipfile.ZipInfo | str, data: str) -> str:
    """A zip of the saved adapter (a good upload on its own) with one more member, written last."""
    with zipfile.ZipFile(path, "w") as z:
        for file in sorted((server_folder / "adapters" / SAVED).iterdir()):
            z.write(file, f"up/{file.name}")
        z.writestr(member, data)
    return str(path)


@pytest.fixture
def victim():
    """A sentinel file in the system temp folder, beside the folder an upload unpacks into."""
    path = Path(tempfile.gettempdir()) / f"victim-{time.time_ns()}.txt"
    path.write_text("untouched")
    yield path
    path.unlink()


# Each leads from the upload's folder (<temp>/tuning-upload-xyz/) to the victim (<temp>/victim-….txt).
@pytest.mark.parametrize("member", ["../{name}", "up/../../{name}", "{path}", "..\\{name}"])
def test_an_upload_with_a_member_pointing_outside_is_refused_and_writes_nothing(server, client, tmp_path, victim,
                                                                                member):
    member = member.format(name=victim.name, path=victim)
    path = zip_of_saved(server[1], tmp_path / "upload.zip", member, "overwritten by an upload")
    with pytest.raises(AppError, match=re.escape(f"the zip has an unsafe path: {member}")):
        client.predict(handle_file(path), "hostile", api_name="/upload_adapter")
    assert victim.read_text() == "untouched"
    assert not (server[1] / "adapters" / "hostile").exists()


def test_an_upload_with_a_link_to_a_server_file_is_refused(server, client, tmp_path):
    # the weights as a symbolic link to app.py: extracted as a link, loading them would read the server's file
    link = zipfile.ZipInfo(f"up/{adapters.WEIGHTS_FILE}")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = tmp_path / "upload.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.write(server[1] / "adapters" / SAVED / adapters.CONFIG_FILE, f"up/{adapters.CONFIG_FILE}")
        z.writestr(link, str(APP_PY))
    with pytest.raises(AppError, match=f"the zip has a symbolic link: up/{adapters.WEIGHTS_FILE}"):
        client.predict(handle_file(str(path)), "hostile", api_name="/upload_adapter")
    assert not (server[1] / "adapters" / "hostile").exists()


def test_an_upload_naming_a_zip_already_on_the_server_is_refused(server, url, tmp_path, capfd):
    # A good adapter zip the server has on disk but never received: a client that names its path
    # instead of sending the file must not get it loaded. gradio_client would upload a local path
    # itself, so this goes through the raw HTTP API. Gradio refuses it before the app runs and
    # tells the client nothing (no show_error), so its reason is read from the server's log.
    secret = zip_of_saved(server[1], tmp_path / "on-the-server.zip", "up/README.md", "an adapter")
    event, _ = raw_call(url, "upload_adapter", [{"path": secret, "meta": {"_type": "gradio.FileData"}}, "hostile"])
    assert event == "error"
    assert f"Cannot move {secret} to the gradio cache dir because it was not uploaded by a user" in capfd.readouterr().err
    assert not (server[1] / "adapters" / "hostile").exists()
    still_serves(url)


# --- 6. faults ------------------------------------------------------------------------------


def test_a_failed_save_keeps_the_previous_adapter_and_leaves_no_partial_folder(server, client, monkeypatch):
    folder = server[1] / "adapters"
    before = load_file(str(folder / SAVED / adapters.WEIGHTS_FILE))["prompt_embeddings"]
    client.predict(*train_args(seed=7), api_name="/train")

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(adapters, "save_file", disk_full)
    with pytest.raises(AppError, match="could not write the adapter \\(No space left on device\\); nothing was changed"):
        client.predict(SAVED, None, api_name="/save_adapter")
    assert torch.equal(load_file(str(folder / SAVED / adapters.WEIGHTS_FILE))["prompt_embeddings"], before)
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


def test_a_failed_delete_or_download_is_one_sentence_and_keeps_the_adapter(server, client, monkeypatch):
    folder = server[1] / "adapters"

    def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    class NoMoves:  # adapters' os, whose replace (the move aside, before any removal) fails
        replace = staticmethod(refused)

        def __getattr__(self, name):
            return getattr(os, name)

    monkeypatch.setattr(adapters, "os", NoMoves())
    with pytest.raises(AppError, match="could not delete the adapter \\(Permission denied\\); nothing was changed"):
        client.predict(SAVED, api_name="/delete_adapter")
    monkeypatch.undo()
    assert (folder / SAVED / adapters.WEIGHTS_FILE).is_file()

    monkeypatch.setattr(zipfile, "ZipFile", refused)
    with pytest.raises(AppError, match="could not write the download \\(Permission denied\\)"):
        client.predict(SAVED, api_name="/download_adapter")
    monkeypatch.undo()
    assert client.predict(SAVED, api_name="/download_adapter").endswith(f"{SAVED}.zip")  # and it works again


def test_a_nan_loss_aborts_cleanly_and_keeps_the_sessions_last_run(client, monkeypatch):
    client.predict(*train_args(), api_name="/train")
    good = client.predict(*gen_args(adapter=SESSION_RUN), api_name="/generate")[:3]  # the texts, not the time taken
    monkeypatch.setattr(tuning.train, "token_losses",
                        lambda base, prompt, rows: ((prompt.sum() * math.nan), 1))
    with pytest.raises(AppError, match="the loss became nan at step 1"):
        client.predict(*train_args(seed=3), api_name="/train")
    monkeypatch.undo()
    assert client.predict(*gen_args(adapter=SESSION_RUN), api_name="/generate")[:3] == good


def test_out_of_memory_is_reported_and_the_next_run_works(client, monkeypatch):
    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(tuning.train, "token_losses", oom)
    with pytest.raises(AppError, match="out of memory: try fewer virtual tokens"):
        client.predict(*train_args(), api_name="/train")
    monkeypatch.undo()
    *_, log = client.predict(*train_args(), api_name="/train")
    assert "done: 3 steps" in log


@pytest.mark.parametrize("how", ["cancel", "disconnect"])
def test_a_cancelled_or_abandoned_run_stops_after_the_grace_and_frees_the_slot(url, monkeypatch, how):
    # A browser drops its heartbeat connection as the tab closes; gradio_client drops its own
    # only at the next heartbeat (every 15 s by default), so have the server beat every 0.1 s.
    from tuning.jobs import Jobs

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.1")
    steps = log_steps(monkeypatch, seconds=0.2)
    started = []
    real_start = Jobs.start
    monkeypatch.setattr(Jobs, "start", lambda self, job: started.append(job) or real_start(self, job))
    first = Client(url, verbose=False)
    job = first.submit(*train_args(epochs=50, batch=1), api_name="/train")  # hundreds of 0.2 s steps
    wait_for_updates(job, 3)  # started, and two steps done
    run = steps[0]
    (training,) = started  # the app's job that runs the training, in this process
    left = time.monotonic()
    if how == "cancel":
        job.cancel()  # the app's stream ends: its follower leaves
    else:
        first.close()  # the heartbeat ends: Gradio calls the app's unload, and the follower leaves
    assert training.join(timeout=GRACE + 30), f"the run still trains 30 s after the {how} and the grace"
    assert time.monotonic() - left > GRACE * 0.9  # it ran on for the grace (a reload could re-attach)
    at_stop = steps_of(steps, run)
    second = Client(url, verbose=False)
    *_, log = second.predict(*train_args(), api_name="/train", timeout=30)  # the one training slot is free
    assert "done: 3 steps" in log
    assert steps_of(steps, run) == at_stop  # stopped for good, not paused while the second ran
    second.close()
    first.close()


# --- 8. disk ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def capped(tmp_path_factory, slow_setup):
    folder = tmp_path_factory.mktemp("capped")
    demo, url = serve(folder, max_adapters=2, max_adapter_bytes=40_000)
    yield url, folder
    demo.close()


def test_the_number_of_saved_adapters_is_capped(capped):
    client = Client(capped[0], verbose=False)
    client.predict(*train_args(), api_name="/train")
    client.predict("one", None, api_name="/save_adapter")
    client.predict("two", None, api_name="/save_adapter")
    with pytest.raises(AppError, match="this server keeps at most 2 adapters; delete one before saving another"):
        client.predict("three", None, api_name="/save_adapter")
    with pytest.raises(AppError, match="keeps at most 2 adapters"):  # a taken name is kept; a new one is made
        client.predict("two", None, api_name="/save_adapter")
    assert sorted(p.name for p in (capped[1] / "adapters").iterdir()) == ["one", "two"]
    client.predict("one", api_name="/delete_adapter")
    client.predict("two", api_name="/delete_adapter")
    client.close()


def test_the_total_size_of_saved_adapters_is_capped(capped):
    client = Client(capped[0], verbose=False)
    client.predict(*train_args(tokens=40), api_name="/train")  # 40 x 64 float32, and AdamW's two moments: 31 KB
    client.predict("big", None, api_name="/save_adapter")
    with pytest.raises(AppError, match="over this server's 39 KB; delete some"):
        client.predict("big-2", None, api_name="/save_adapter")
    assert sorted(p.name for p in (capped[1] / "adapters").iterdir()) == ["big"]
    client.predict("big", api_name="/delete_adapter")
    client.close()


def test_a_sessions_download_folder_is_removed_when_it_ends(url, monkeypatch):
    # This session's own folder, by name: another client's folder going would prove nothing.
    from tuning.jobs import Jobs

    monkeypatch.setenv("GRADIO_HEARTBEAT_INTERVAL", "0.1")  # so the server sees the client's close at once
    made = []
    real = Jobs.folder
    monkeypatch.setattr(Jobs, "folder", lambda self, *a, **k: made.append(real(self, *a, **k)) or made[-1])
    client = Client(url, verbose=False)
    zipped = client.predict(SAVED, api_name="/download_adapter")
    assert Path(zipped).exists()  # the client's own copy
    (folder,) = made
    assert folder.name.startswith("tuning-session-") and any(folder.iterdir())
    client.close()
    deadline = time.monotonic() + 10
    while folder.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not folder.exists(), "the session ended 10 s ago and its download folder is still there"


def test_an_upload_leaves_no_extraction_folder(server, client, tmp_path):
    before = set(Path(tempfile.gettempdir()).glob("tuning-upload-*"))
    client.predict(handle_file(adapter_zip(server[1], tmp_path)), "tmp-check", api_name="/upload_adapter")
    with pytest.raises(AppError):
        client.predict(handle_file(adapter_zip(server[1], tmp_path, config={"peft_type": "LORA"})), "x",
                       api_name="/upload_adapter")
    client.predict("tmp-check", api_name="/delete_adapter")
    assert set(Path(tempfile.gettempdir()).glob("tuning-upload-*")) <= before


# --- 7. a full queue ------------------------------------------------------------------------


@pytest.mark.slow  # serves the app
def test_a_full_queue_answers_with_a_clear_message(tmp_path, monkeypatch):
    log_steps(monkeypatch, seconds=0.05)
    demo, url = serve(tmp_path, max_queue=1, reattach_grace=0.1)
    # Trainings the server follows at once (each beyond the first waits for the one training
    # slot inside the app); past those, a training waits in Gradio's queue, which holds one.
    followed = next(f.concurrency_limit for f in demo.fns.values() if f.api_name == "train")
    clients = [Client(url, verbose=False) for _ in range(followed + 2)]
    try:
        first = clients[0].submit(*train_args(epochs=50, batch=1), api_name="/train")
        wait_for_updates(first, 2)
        waiting = []
        for c in clients[1:followed + 1]:  # one at a time: events arriving together all count as queued
            waiting.append(c.submit(*train_args(), api_name="/train"))
            if len(waiting) < followed:
                wait_for_updates(waiting[-1], 1)  # followed: waiting for the training slot
        deadline = time.monotonic() + 30  # until the last one is in Gradio's queue
        while httpx.get(f"{url}gradio_api/queue/status", timeout=10).json()["queue_size"] < 1:
            assert time.monotonic() < deadline, "the last training never reached Gradio's queue"
            time.sleep(0.02)
        r = httpx.post(f"{url}gradio_api/call/train", json={"data": train_args()}, timeout=10)
        assert r.status_code == 503 and "Queue is full" in r.text
        with pytest.raises(Exception, match="Queue is full"):
            clients[-1].predict(*train_args(), api_name="/train")
        first.cancel()  # /stop would be an event too, and the queue is full; the run stops after the grace
        for job in waiting:  # then each waiting one trains in turn
            *_, log = job.result(timeout=60)
            assert "done: 3 steps" in log
    finally:
        for c in clients:
            c.close()
        demo.close()
