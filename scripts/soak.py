"""A soak of a busy Space: N simulated visitors use the served app for M minutes; then what it left behind.

The app (`app.build_app`, reference adapters on) serves a tiny random GPT-2 in its own process,
so its memory, threads and open files can be read from /proc while visitors use it. Each
visitor is a thread with its own `gradio_client.Client` on 127.0.0.1 doing a seeded random mix
of what visitors do: pick and search acts, generate (two or three columns: base and one or two
tuned prompts), train short runs, stop one, evaluate, sweep one cell, save, download, upload and
delete adapters, train through the documented API (`/train_adapter`, `/training_status`,
`/stop_training_job`), reload mid-training (a new session; the old run stops after the app's
grace) and close tabs. One request in ten is hostile: a bad value, a huge string, a path, a
wrong type, each of which the app must refuse with one sentence.

It records every request's latency, samples the server every 30 s (RSS, threads, open files,
its temp folders, its running jobs) and at the end checks:

- no request failed except the hostile ones, and each of those got one sentence (an AppError
  whose message is one line, no traceback);
- every training that was not stopped ended done (its run reported; an API training saved);
- RSS retained at most 150 MB: the server's RSS at the end, sampled once the visitors have left and
  every job (training, sweep, reference adapters) has ended, at most 150 MB above its RSS at the end
  of the warm-up (the first 5 minutes, scaled to the run's length). The peak after the warm-up is
  reported beside it, not checked: it is the working set of trainings and generations running at
  once, and memory that comes back when they end is no leak;
- threads and the app's temp folders (`tuning-session-*`, `tuning-stop-*`) went back to their start
  once the visitors left (the server gets a temp folder of its own, so other programs' files do not count);
- every folder in the adapters folder loads (`tuning.adapters.load`) and `list_adapters` lists them all.

It writes `soak.json` (every number) and `soak.png` (latency and RSS over time) to `--out` and
exits 1 when a check fails.

    python scripts/soak.py                               # 20 visitors, 20 minutes
    python scripts/soak.py --visitors 4 --minutes 1 --out /tmp/soak

What it does not do: drive a browser (the page's own JavaScript is test_browser's), or re-attach a
reload to its run: that needs the browser's stored id, which a client has no way to send.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import csv
import faulthandler
import json
import logging
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # served.py beside this file, however it is loaded
from served import free_port, wait_for_page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SNAPSHOT = REPO / "tuning" / "snapshot" / "awesome-chatgpt-prompts.csv"
SESSION_RUN = "this session's run"  # app.SESSION_RUN, kept here so the driver does not import the app
NEW_PROMPT = "a new prompt"  # app.NEW_PROMPT
NO_PROMPT = "(none)"  # app.NO_PROMPT
HOSTILE_SHARE = 0.1  # one request in ten
SAMPLE_S = 30  # seconds between two samples of the server
WARM_UP_SHARE = 0.25  # of the run: memory growth counts after it (5 of 20 minutes)
MAX_GROWTH_MB = 150
SETTLE_S = 120  # how long the server may take, once the visitors have left, to drop its threads and folders
WAIT_S = 120  # the longest one ordinary request may take before it counts as failed
TRAIN_WAIT_S = 600  # a training waits its turn for the one training slot: 20 visitors make a line
TEMP_PREFIXES = ("tuning-session-", "tuning-stop-")
JOBS_FILE = "jobs-running"  # in the server's folder: how many jobs its process runs now, written by the server


# ---------------------------------------------------------------------------------------
# 1. the server, in its own process


def write_assets(folder: Path) -> tuple[str, str]:
    """(model folder, dataset csv): a tiny random GPT-2 whose tokenizer is a byte-level BPE trained on the bundled CSV.

    The same kind of model as the tests' (tests/conftest.py), built here so the script does not import tests/.
    """
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    with open(SNAPSHOT, newline="", encoding="utf-8") as f:
        texts = [f"{row['act']}\n{row['prompt']}" for row in csv.DictReader(f)]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    torch.manual_seed(0)
    # initializer_range 0.2: with GPT-2's 0.02 a random model repeats one token forever
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=256, n_embd=64, n_layer=2, n_head=4,
                        initializer_range=0.2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    model_dir = folder / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return str(model_dir), str(SNAPSHOT)


def serve(folder: Path, port: int) -> None:
    """The server process: the app on the tiny model, reference adapters on, until it is sent SIGTERM."""
    sys.path.insert(0, str(REPO))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import app
    from tuning.jobs import limit_memory_arenas

    limit_memory_arenas()  # as app.main does, before the server's threads start
    model, dataset = write_assets(folder)

    async def built():  # inside a running loop, as app.main builds it (a dropped loop can log a traceback)
        return app.build_app(model=model, dataset=dataset, adapters_dir=folder / "adapters", reference_adapters=True)

    demo = asyncio.run(built())
    faulthandler.register(signal.SIGUSR1, all_threads=True)  # the driver asks for every thread's stack when some stay
    threading.Thread(target=count_jobs, args=(folder / JOBS_FILE,), daemon=True, name="soak-jobs").start()
    signal.signal(signal.SIGTERM, lambda *_: (demo.close(), os._exit(0)))
    demo.launch(server_name="127.0.0.1", server_port=port, quiet=True, max_file_size=app.MAX_UPLOAD_BYTES)


def count_jobs(path: Path) -> None:
    """In the server process: write how many jobs run now to `path`, twice a second.

    A job (tuning.jobs.Job) is a thread named `job-…`; the driver, in another process, cannot see
    thread names, and it must know when every job has ended before it takes the end's sample.
    """
    while True:
        alive = threading.enumerate()
        running = sum(t.name.startswith("job-") for t in alive)
        # The Python threads' names too: a thread that outlives the visitors is then named, not only counted.
        path.with_suffix(".new").write_text(json.dumps({"jobs": running, "python_threads": sorted(t.name for t in alive)}))
        os.replace(path.with_suffix(".new"), path)  # a reader never sees a half-written file
        time.sleep(0.5)


def start_server(folder: Path, log_path: Path, extra_env: dict | None = None,
                 timeout: float = 180) -> tuple[subprocess.Popen, str]:
    """Start `serve` in a child process with a temp folder of its own; (process, url) once the page answers."""
    port = free_port()
    tmp = folder / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp), "GRADIO_TEMP_DIR": str(tmp / "gradio"), "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, __file__, "--serve", str(folder), "--port", str(port)],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, proc, timeout, poll_s=0.5)
    except RuntimeError as e:
        proc.kill()
        raise SystemExit(f"{e}; see {log_path}") from None
    return proc, url


def server_sample(pid: int, tmp: Path) -> dict:
    """RSS (MB), threads and open files of the server process from /proc, its temp folders by prefix, and
    its running jobs (-1 until the server has first counted them); `tmp` is the temp folder in the server's folder."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f if ":" in line)
    names = os.listdir(tmp)
    jobs = tmp.parent / JOBS_FILE
    counted = json.loads(jobs.read_text()) if jobs.exists() else {"jobs": -1, "python_threads": []}
    return {"rss_mb": int(status["VmRSS"].split()[0]) / 1024, "threads": int(status["Threads"]),
            "open_files": len(os.listdir(f"/proc/{pid}/fd")), **counted,
            **{p.rstrip("-"): sum(n.startswith(p) for n in names) for p in TEMP_PREFIXES}}


def load_average() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


# ---------------------------------------------------------------------------------------
# 2. the visitors


@dataclass
class Call:
    """One request: when it started (s since the visitors started), what it was, how long it took, how it ended."""

    t: float
    kind: str
    seconds: float
    ok: bool
    hostile: bool = False
    error: str = ""  # the exception's type and message; for a hostile request, what the app answered


@dataclass
class Training:
    """One training a visitor started, and how it ended."""

    kind: str  # train, sweep, api_train
    stopped: bool  # the visitor stopped it, or closed its tab (a reload)
    outcome: str  # done, stopped, saved, failed: <why>, lost: <why>


@dataclass
class Record:
    """Everything the visitors did, shared by their threads."""

    t0: float
    calls: list[Call] = field(default_factory=list)
    trainings: list[Training] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)  # set when the server's memory passes --max-rss-mb

    def add(self, item) -> None:
        with self.lock:
            (self.calls if isinstance(item, Call) else self.trainings).append(item)


class Refused(Exception):
    """A hostile request was answered, not refused."""


def one_sentence(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and "Traceback" not in message


def hostile_cases(rng: random.Random, adapter: str, not_a_zip: str) -> list[tuple[str, str, list]]:
    """(kind, api_name, arguments) of requests the app must refuse, in one sentence each (see tests/test_hardening.py)."""
    from gradio_client import handle_file

    def gen(**change):
        args = dict(text="I want you to act as a poet.", adapter=adapter, max_new=8, mode="greedy", temperature=0.8,
                    top_p=0.95, top_k=50, penalty=1.0, seed=0, adapter_b=NO_PROMPT, no_repeat=3, written_choice="none",
                    own_text="")
        return list({**args, **change}.values())

    def train(**change):
        args = dict(tokens=3, epochs=1, lr=0.1, batch=64, init="random", data="all training acts", acts=[], seed=0,
                    resume=NEW_PROMPT)
        return list({**args, **change}.values())

    return [
        ("generate", "/generate", gen(text="x" * 100_000)),
        ("generate", "/generate", gen(text="a\x00b")),
        ("generate", "/generate", gen(text="broken \ud800 text")),
        ("generate", "/generate", gen(text=12345)),
        ("generate", "/generate", gen(max_new=math.nan)),
        ("generate", "/generate", gen(max_new="64")),
        ("generate", "/generate", gen(max_new=10**9)),
        ("generate", "/generate", gen(mode="beam")),
        ("generate", "/generate", gen(seed=-1)),
        ("generate", "/generate", gen(adapter="../app.py")),
        ("generate", "/generate", gen(adapter="/etc/passwd")),
        ("generate", "/generate", gen(adapter=["a", "list"])),
        ("train", "/train", train(tokens=1000)),
        ("train", "/train", train(lr="fast")),
        ("train", "/train", train(epochs=math.inf)),
        ("train", "/train", train(init="pickle")),
        ("train", "/train", train(data="selected acts", acts="Rapper")),
        ("train", "/train", train(batch=None)),
        ("search", "/search_acts", ["q" * 100_000]),
        ("select_act", "/select_act", [42]),
        ("select_act", "/select_act", [None]),
        ("save", "/save_adapter", [{"name": "x"}, None]),
        ("save", "/save_adapter", ["\x00\x00", None]),
        ("delete", "/delete_adapter", [rng.choice(["../app.py", "a/../../x", "saved/../../app.py", "%2e%2e%2fapp.py"])]),
        ("delete", "/delete_adapter", [3.5]),
        ("download", "/download_adapter", [rng.choice(["/etc/passwd", "..", "https://example.com/x"])]),
        ("download", "/download_adapter", ["\ud800"]),
        ("upload", "/upload_adapter", [handle_file(not_a_zip), "not-a-zip"]),
        ("evaluate", "/evaluate", [adapter, 1000, 8, "none"]),
        ("sweep", "/sweep", ["1000x1000", 0, 0.1, 64, 0, []]),
        ("sweep", "/sweep", ["../../etc", 0, 0.1, 64, 0, []]),
        ("sweep", "/sweep", ["1x1", 0, 0.1, 64, 0, ["3 examples"]]),
        ("api_train", "/train_adapter", ["", 3, 1, 0.1, "reference-mine"]),
        ("api_train", "/training_status", ["no-such-job", 0]),
        ("api_train", "/training_status", ["x", 31]),
        ("api_compare", "/compare_texts", ["hi", adapter, "", 1024]),
    ]


class Visitor:
    """One visitor: a thread that does random things until the deadline, opening a new tab now and then."""

    ACTIONS = {  # what a visitor does next, by weight
        "search": 10, "select_act": 10, "generate": 20, "train": 10, "stop": 4, "evaluate": 6, "sweep": 3,
        "save": 6, "download": 5, "upload": 4, "delete": 5, "list_adapters": 3, "api_train": 4, "api_compare": 2,
        "reload": 3, "close_tab": 3,
    }

    def __init__(self, index: int, url: str, seed: int, record: Record, folder: Path, deadline: float):
        self.index, self.url, self.record, self.folder, self.deadline = index, url, record, folder, deadline
        self.rng = random.Random(seed * 1000 + index)
        self.client = None
        self.acts: list[str] = []
        self.act: str | None = None  # the act this session picked
        self.has_run = False  # this session has a finished run
        self.saved: list[str] = []  # adapters this visitor saved (only it deletes them: no race with others)
        self.zips: list[str] = []  # downloads, for uploading again
        self.count = 0
        self.not_a_zip = folder / "not-a-zip.zip"
        folder.mkdir(parents=True, exist_ok=True)
        self.not_a_zip.write_bytes(b"not a zip at all")

    # --- requests
    def timed(self, kind: str, fn, hostile: bool = False):
        """Run `fn()`, record it; its result, or None when it failed."""
        start = time.monotonic()
        try:
            result = fn()
        except Exception as e:  # every failure is recorded by kind; the checks decide what it means
            self.record.add(Call(start - self.record.t0, kind, time.monotonic() - start, False, hostile,
                                 f"{type(e).__name__}: {e}"))
            return None
        self.record.add(Call(start - self.record.t0, kind, time.monotonic() - start, True, hostile))
        return result

    def predict(self, kind: str, api_name: str, *args, timeout: float = WAIT_S):
        def call():
            job = self.client.submit(*args, api_name=api_name)
            try:
                return job.result(timeout=timeout)
            except TimeoutError:
                job.cancel()
                raise TimeoutError(f"{api_name} gave no answer within {timeout} s") from None
        return self.timed(kind, call)

    def hostile(self) -> None:
        from gradio_client.exceptions import AppError

        kind, api_name, args = self.rng.choice(hostile_cases(self.rng, self.adapter(), str(self.not_a_zip)))
        start = time.monotonic()
        try:
            if any(unsendable(a) for a in args):  # gradio_client will not send NaN or a lone surrogate
                answer = raw_call(self.url, api_name, args)
            else:
                # a bad training waits in the queue of trainings like a good one: the app sees it when a worker is free
                wait = TRAIN_WAIT_S if api_name in ("/train", "/sweep") else WAIT_S
                answer = self.client.submit(*args, api_name=api_name).result(timeout=wait)
            ok, error = False, f"Refused: answered {str(answer)[:200]!r}"
        except AppError as e:
            ok, error = one_sentence(str(e)), f"AppError: {e}"
        except Exception as e:
            ok, error = False, f"{type(e).__name__}: {str(e)[:500]}"
        self.record.add(Call(start - self.record.t0, kind, time.monotonic() - start, ok, True, error[:500]))

    # --- a tab
    def open_tab(self) -> None:
        from gradio_client import Client

        self.client = self.timed("open_tab", lambda: Client(self.url, verbose=False, download_files=str(self.folder),
                                                            analytics_enabled=False))
        self.act, self.has_run = None, False  # a new session: no act, no runs
        if self.client is not None and (page := self.predict("load_page", "/load_page")):
            self.acts = [row[0] for row in page[0]["data"]]

    def close_tab(self) -> None:
        if self.client is not None:
            self.timed("close_tab", self.client.close)
        self.client = None

    def adapter(self) -> str:
        """A tuned prompt to generate with: this session's run, an adapter this visitor saved, or a reference."""
        choices = ([SESSION_RUN] if self.has_run else []) + self.saved + self.references()
        return self.rng.choice(choices) if choices else SESSION_RUN

    def references(self) -> list[str]:
        listing = self.predict("api_list", "/list_saved_adapters") or []
        return [a["name"] for a in listing if a["name"].startswith("reference-")]

    def name(self, what: str) -> str:
        self.count += 1
        return f"v{self.index}-{what}{self.count}"

    # --- what visitors do
    def search(self):
        query = self.rng.choice(["poet", "rapper", "TERMINAL", "teacher", "guide", "act", "zzz", "", "ĉ 👋"])
        self.predict("search", "/search_acts", query)

    def select_act(self):
        if self.acts and self.predict("select_act", "/select_act", name := self.rng.choice(self.acts)) is not None:
            self.act = name

    def generate(self):
        a = self.adapter()
        b = self.rng.choice([NO_PROMPT, NO_PROMPT, self.adapter()])
        b = NO_PROMPT if b == a else b
        text = self.rng.choice(["I want you to act as a poet.", "I want you to act as a linux terminal. ls -la",
                                f"I want you to act as a {self.act or 'travel guide'}."])
        mode = self.rng.choice(["greedy", "sample"])
        self.predict("generate" if b == NO_PROMPT else "generate_3", "/generate", text, a, self.rng.randint(8, 32),
                     mode, 0.8, 0.95, 50, 1.0, self.rng.randint(0, 99), b, 3, "none", "")

    def train_args(self, long: bool = False) -> list:
        data = self.rng.choice(["all training acts", "selected acts"] + (["only the current act"] if self.act else []))
        acts = self.rng.sample(self.acts, k=min(len(self.acts), self.rng.randint(1, 3))) if data == "selected acts" else []
        batch = 64 if data == "all training acts" else 4  # a few steps an epoch either way
        epochs = self.rng.randint(20, 40) if long else self.rng.randint(1, 2)
        init = self.rng.choice(["random", "the words \"I want you to act as\""])
        return [self.rng.randint(1, 20), epochs, 0.1, batch, init, data, acts, self.rng.randint(0, 9), NEW_PROMPT]

    def follow_training(self, kind: str, job, start: float, stopped: bool) -> None:
        """Wait for a training started with `submit` to end; record the request and how the run ended."""
        try:
            *_, progress, log = job.result(timeout=TRAIN_WAIT_S)
        except Exception as e:
            job.cancel()
            self.record.add(Call(start - self.record.t0, kind, time.monotonic() - start, False, False,
                                 f"{type(e).__name__}: {e}"))
            self.record.add(Training(kind, stopped, f"failed: {type(e).__name__}: {e}"[:300]))
            return
        self.record.add(Call(start - self.record.t0, kind, time.monotonic() - start, True))
        text = f"{progress}\n{log}"
        outcome = "done" if "done: " in text else "stopped" if "stopped" in text else f"lost: {text[-200:]}"
        self.record.add(Training(kind, stopped, outcome))
        self.has_run = self.has_run or "done: " in text or "is kept" in text

    def train(self):
        start = time.monotonic()
        self.follow_training("train", self.client.submit(*self.train_args(), api_name="/train"), start, False)

    def stop(self):
        """A long training, stopped once it has sent a few updates (or after a while of waiting for the slot)."""
        start = time.monotonic()
        job = self.client.submit(*self.train_args(long=True), api_name="/train")
        wait_for(lambda: len(job.outputs()) >= 3 or job.done(), self.rng.uniform(2, 10))
        self.predict("stop", "/stop")
        self.follow_training("train", job, start, True)

    def reload(self):
        """A long training, then the tab reloads: a new session; the old run stops after the app's grace."""
        start = time.monotonic()
        job = self.client.submit(*self.train_args(long=True), api_name="/train")
        wait_for(lambda: len(job.outputs()) >= 2 or job.done(), self.rng.uniform(2, 10))
        ended = job.done()
        self.record.add(Call(start - self.record.t0, "reload", time.monotonic() - start, True))
        self.record.add(Training("train", True, "closed" if not ended else "done"))
        self.close_tab()
        self.open_tab()

    def sweep(self):
        start = time.monotonic()
        job = self.client.submit("1x1", 0, 0.1, 64, self.rng.randint(0, 9), [], api_name="/sweep")
        try:
            _, progress, *_ = job.result(timeout=TRAIN_WAIT_S)
        except Exception as e:
            job.cancel()
            self.record.add(Call(start - self.record.t0, "sweep", time.monotonic() - start, False, False,
                                 f"{type(e).__name__}: {e}"))
            self.record.add(Training("sweep", False, f"failed: {type(e).__name__}: {e}"[:300]))
            return
        self.record.add(Call(start - self.record.t0, "sweep", time.monotonic() - start, True))
        self.record.add(Training("sweep", False, "done" if progress.startswith("done") else f"lost: {progress[:200]}"))
        self.has_run = True

    def evaluate(self):
        self.predict("evaluate", "/evaluate", self.adapter(), self.rng.randint(0, 2), self.rng.randint(8, 16), "none")

    def save(self):
        if not self.has_run:
            return self.train()
        if len(self.saved) >= 4:
            self.delete()
        answer = self.predict("save", "/save_adapter", self.name("run"), None)
        if answer and (m := re.search(r"as \*\*(.+?)\*\*", answer[2])):
            self.saved.append(m.group(1))

    def download(self):
        choices = self.saved + self.references()
        if choices and (path := self.predict("download", "/download_adapter", self.rng.choice(choices))):
            self.zips = (self.zips + [path])[-3:]

    def upload(self):
        from gradio_client import handle_file

        if not self.zips:
            return self.download()
        if len(self.saved) >= 4:
            self.delete()
        answer = self.predict("upload", "/upload_adapter", handle_file(self.rng.choice(self.zips)), self.name("up"))
        if answer and (m := re.search(r"as \*\*(.+?)\*\*", answer[2])):
            self.saved.append(m.group(1))

    def delete(self):
        if self.saved:
            name = self.saved.pop(self.rng.randrange(len(self.saved)))
            self.predict("delete", "/delete_adapter", name)

    def list_adapters(self):
        self.predict("list_adapters", "/list_adapters", None)

    def api_train(self):
        """The documented API: start, follow with training_status, sometimes stop; the adapter is saved."""
        acts = ", ".join(self.rng.sample(self.acts, k=min(len(self.acts), 2))) if self.rng.random() < 0.5 else ""
        stop = self.rng.random() < 0.3
        started = self.predict("api_train", "/train_adapter", acts, self.rng.randint(1, 10), 1, 0.1, self.name("api"))
        if started is None:
            return self.record.add(Training("api_train", False, "failed: not started"))
        if stop:
            time.sleep(self.rng.uniform(0, 2))
            self.predict("api_stop", "/stop_training_job", started["job"])
        status, deadline = started, time.monotonic() + TRAIN_WAIT_S
        while status["status"] in ("waiting", "training") and time.monotonic() < deadline:
            status = self.predict("api_status", "/training_status", started["job"], 10) or status
        if status.get("adapter"):
            self.saved.append(status["adapter"])
        outcome = ("saved" if status.get("adapter") else f"stopped: {status.get('error', '')}" if status["status"] ==
                   "stopped" else f"lost: {json.dumps(status)[:300]}")
        self.record.add(Training("api_train", stop, outcome))

    def api_compare(self):
        refs = self.references()
        if refs:
            self.predict("api_compare", "/compare_texts", "I want you to act as a chef.", self.rng.choice(refs), "", 8)

    # --- the visit
    def run(self) -> None:
        self.open_tab()
        actions, weights = zip(*self.ACTIONS.items())
        while time.monotonic() < self.deadline and not self.record.stop.is_set():
            if self.client is None:  # the tab could not open: try again after a pause
                time.sleep(5)
                self.open_tab()
                continue
            if self.rng.random() < HOSTILE_SHARE:
                self.hostile()
            else:
                action = self.rng.choices(actions, weights)[0]
                if action in ("generate", "evaluate") and not self.has_run and not self.saved and not self.references():
                    action = "train"  # nothing to generate with yet (the reference adapters are still training)
                if action == "close_tab":
                    self.close_tab()
                    self.open_tab()
                else:
                    getattr(self, action)()
            time.sleep(self.rng.uniform(0.2, 2.0))  # a visitor reads what came back
        self.close_tab()


def unsendable(value) -> bool:
    """NaN, infinity, or text with a lone surrogate: JSON can carry them, gradio_client refuses to."""
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False


def raw_call(url: str, api_name: str, data: list):
    """Call an event through Gradio's plain HTTP API with any JSON (NaN and infinity too); its data, or AppError.

    As tests/test_hardening.py's raw_call: a hostile client is not bound to gradio_client's JSON.
    """
    import httpx
    from gradio_client.exceptions import AppError

    name = api_name.lstrip("/")
    r = httpx.post(f"{url}gradio_api/call/{name}", content=json.dumps({"data": data}, allow_nan=True),
                   headers={"content-type": "application/json"}, timeout=30)
    r.raise_for_status()
    event, deadline = None, time.monotonic() + WAIT_S
    with httpx.stream("GET", f"{url}gradio_api/call/{name}/{r.json()['event_id']}", timeout=WAIT_S) as s:
        for line in s.iter_lines():
            if time.monotonic() > deadline:
                raise TimeoutError(f"{api_name} gave no answer within {WAIT_S} s")
            if line.startswith("event: "):
                event = line[len("event: "):]
            elif line.startswith("data: ") and event in ("complete", "error"):
                answer = json.loads(line[len("data: "):])
                if event == "error":
                    raise AppError(str((answer or {}).get("error")))
                return answer
    raise ConnectionError(f"{api_name}: the stream ended with no answer")


def wait_for(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# ---------------------------------------------------------------------------------------
# 3. the checks, the numbers and the figure


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile: [1, 2, 3, 4] at 50 -> 2."""
    values = sorted(values)
    return values[max(0, math.ceil(q / 100 * len(values)) - 1)]


def latency_table(calls: list[Call]) -> dict:
    """{kind: {requests, p50_s, p95_s, max_s}} of the ordinary requests that succeeded, and of the hostile ones."""
    table = {}
    for hostile in (False, True):
        for kind in sorted({c.kind for c in calls if c.hostile == hostile}):
            s = [c.seconds for c in calls if c.kind == kind and c.hostile == hostile and c.ok]
            key = f"hostile {kind}" if hostile else kind
            table[key] = {"requests": sum(c.kind == kind and c.hostile == hostile for c in calls), "ok": len(s),
                          **({"p50_s": round(percentile(s, 50), 3), "p95_s": round(percentile(s, 95), 3),
                              "max_s": round(max(s), 3)} if s else {})}
    return table


def adapters_consistent(root: Path) -> list[str]:
    """What is wrong with the adapters folder: a folder that does not load, a leftover, one that is not listed."""
    sys.path.insert(0, str(REPO))
    from tuning import adapters

    problems = []
    folders = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    for name in folders:
        if name.startswith("."):
            problems.append(f"a leftover folder {name}")
            continue
        try:
            adapters.load(name, root)
        except Exception as e:
            problems.append(f"{name} does not load: {type(e).__name__}: {e}")
    listed = {a["name"] for a in adapters.list_adapters(root)}
    if missing := {n for n in folders if not n.startswith(".")} - listed:
        problems.append(f"not listed: {sorted(missing)}")
    return problems


def settle(pid: int, tmp: Path, start: dict, seconds: float) -> tuple[dict, float]:
    """Wait until no job runs and the server is back to `start`'s threads and temp folders (or `seconds` pass);
    (sample, seconds taken): the end's sample, whose RSS is what the run left behind."""
    t = time.monotonic()
    while True:
        now = server_sample(pid, tmp)
        back = now["jobs"] == 0 and now["threads"] <= start["threads"] and all(
            now[p.rstrip("-")] <= start[p.rstrip("-")] for p in TEMP_PREFIXES)
        if back or time.monotonic() - t > seconds:
            return now, time.monotonic() - t
        time.sleep(2)


def thread_names(start: dict, end: dict) -> str:
    """What a thread count that grew is made of: Python threads by name, the rest native (torch's, the allocator's).

    >>> thread_names({"threads": 9, "python_threads": ["MainThread", "a"]}, {"threads": 12, "python_threads": ["MainThread", "a", "b"]})
    '; Python threads new at the end: b; native threads: 7 -> 9'
    """
    before, after = start.get("python_threads", []), end.get("python_threads", [])
    if not before and not after:
        return ""
    grown = list((collections.Counter(after) - collections.Counter(before)).elements())
    return (f"; Python threads new at the end: {', '.join(grown) or 'none'}; native threads: "
            f"{start['threads'] - len(before)} -> {end['threads'] - len(after)}")


def checks(summary: dict, calls: list[dict], trainings: list[dict]) -> dict[str, str]:
    """{check: "" when it passed, else why it failed}."""
    server = summary["server"]
    failed = [c for c in calls if not c["ok"] and not c["hostile"]]
    hostile_bad = [c for c in calls if c["hostile"] and not c["ok"]]
    lost = [t for t in trainings if not t["stopped"] and t["outcome"] not in ("done", "saved")]
    rss = summary["rss"]
    end, start = server["end"], server["start"]
    retained = ("" if rss["retained_growth_mb"] <= MAX_GROWTH_MB else f"{rss['retained_growth_mb']:.0f} MB") if \
        end["jobs"] == 0 else f"not measured: the end's sample found {end['jobs']} job(s) running (-1: none counted)"
    temp = {p: (start[p], end[p]) for p in ("tuning-session", "tuning-stop")}
    return {
        "no ordinary request failed": "; ".join(f"{c['kind']}: {c['error'][:200]}" for c in failed[:5])
                                      + (f" (and {len(failed) - 5} more)" if len(failed) > 5 else ""),
        "every hostile request refused in one sentence": "; ".join(f"{c['kind']}: {c['error'][:200]}"
                                                                   for c in hostile_bad[:5]),
        "every training not stopped ended done or saved": "; ".join(f"{t['kind']}: {t['outcome']}" for t in lost[:5]),
        f"RSS grew at most {MAX_GROWTH_MB} MB from the warm-up to the end, once every job ended (retained)": retained,
        "threads back to their start": "" if end["threads"] <= start["threads"] else
                                       f"{start['threads']} at the start, {end['threads']} at the end"
                                       + thread_names(start, end),
        "temp folders back to their start": "" if all(b <= a for a, b in temp.values()) else json.dumps(temp),
        "adapters folder consistent": "; ".join(summary["adapters_problems"]),
        "no traceback in the server's log": f"{summary['server_tracebacks']} traceback(s)" if summary["server_tracebacks"]
                                            else "",
    }


def figure(calls: list[Call], samples: list[dict], warm_up_s: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True)
    kinds = sorted({c.kind for c in calls if not c.hostile and c.ok})
    for kind in kinds:
        ok = [c for c in calls if c.kind == kind and not c.hostile and c.ok]
        top.scatter([(c.t + c.seconds) / 60 for c in ok], [c.seconds for c in ok], s=6, label=kind)
    top.set_yscale("log")
    top.set_ylabel("latency (s)")
    top.legend(fontsize=7, ncol=4, loc="upper left")
    top.set_title("Each request, at its end")
    t = [s["t"] / 60 for s in samples]
    bottom.plot(t, [s["rss_mb"] for s in samples], "o-", color="#2563eb", label="RSS (MB)")
    bottom.set_ylabel("server RSS (MB)")
    bottom.axvline(warm_up_s / 60, color="#9ca3af", linestyle="--", label="end of warm-up")
    right = bottom.twinx()
    right.plot(t, [s["threads"] for s in samples], "s-", color="#ea580c", label="threads")
    right.set_ylabel("threads")
    bottom.set_xlabel("minutes since the visitors started")
    bottom.legend(loc="upper left", fontsize=8)
    right.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def soak(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    conditions = {"cpu": cpu_name(), "cores": os.cpu_count(), "load_average_start": load_average(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "server_env": dict(item.split("=", 1) for item in args.server_env)}
    proc, url = start_server(work / "server", out / "server.log", conditions["server_env"])
    tmp = work / "server" / "tmp"
    try:
        server = {"at_launch": server_sample(proc.pid, tmp)}
        warm_up_server(url, work / "warm-up")  # the pools a first visitor fills (torch's, Gradio's) are no leak
        # the reference adapters train in the background from the start: the start is a server with no job
        if not wait_for(lambda: server_sample(proc.pid, tmp)["jobs"] == 0, TRAIN_WAIT_S):
            raise SystemExit(f"a job still ran {TRAIN_WAIT_S} s after the warm-up (the reference adapters?)")
        time.sleep(15)  # idle worker threads (AnyIO's) end after 10 s
        server["start"] = server_sample(proc.pid, tmp)
        record, samples = run_visitors(args, url, work, proc.pid, tmp, server, conditions)
        server["end"], settled_s = settle(proc.pid, tmp, server["start"], SETTLE_S)
        server["settled_s"] = round(settled_s, 1)
        if server["end"]["threads"] > server["start"]["threads"]:  # what the threads that stayed are doing: server.log
            proc.send_signal(signal.SIGUSR1)
            time.sleep(1)
        samples.append({"t": round(time.monotonic() - record.t0, 1), **server["end"]})
        adapters_problems = adapters_consistent(work / "server" / "adapters")
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
    conditions["load_average_end"] = load_average()
    summary = summarize(args, conditions, record, samples, server)
    summary["server_tracebacks"] = (out / "server.log").read_text(errors="replace").count("Traceback")
    summary["adapters_problems"] = adapters_problems
    calls = [asdict(c) for c in record.calls]
    result = checks(summary, calls, [asdict(t) for t in record.trainings])
    summary["checks"] = {name: why or "pass" for name, why in result.items()}
    summary["passed"] = not any(result.values())
    (out / "soak-calls.json").write_text(json.dumps(calls))  # every request: a file of its own, the summary stays small
    (out / "soak.json").write_text(json.dumps(summary, indent=1))
    figure(record.calls, samples, summary["rss"]["warm_up_s"], out / "soak.png")
    shutil.rmtree(work, ignore_errors=True)
    for name, why in result.items():
        print(f"{'FAIL' if why else 'ok  '} {name}{': ' + why if why else ''}")
    rss = summary["rss"]
    print(f"RSS: {rss['at_warm_up_mb']:.0f} MB at the warm-up's end, {rss['end_mb']:.0f} MB at the end "
          f"(retained {rss['retained_growth_mb']:+.0f} MB, the check); peak {rss['peak_after_warm_up_mb']:.0f} MB "
          f"after the warm-up ({rss['peak_growth_after_warm_up_mb']:+.0f} MB, trainings and generations at once)")
    print(json.dumps({k: summary[k] for k in ("latency", "errors_by_kind", "trainings", "rss")}, indent=1))
    return 0 if summary["passed"] else 1


def run_visitors(args: argparse.Namespace, url: str, work: Path, pid: int, tmp: Path, server: dict,
                 conditions: dict) -> tuple[Record, list[dict]]:
    """The visitors, from the first arriving to the last leaving, and the server sampled meanwhile."""
    duration = args.minutes * 60
    sample_s = min(SAMPLE_S, max(5.0, duration / 10))  # a short run still gets ten samples
    record = Record(time.monotonic())
    visitors = [Visitor(i, url, args.seed, record, work / "visitors" / str(i), record.t0 + duration)
                for i in range(args.visitors)]
    threads = [threading.Thread(target=v.run, name=f"visitor-{v.index}", daemon=True) for v in visitors]
    for th in threads:
        th.start()
        time.sleep(0.5)  # visitors arrive one by one
    samples = []
    while any(th.is_alive() for th in threads):
        samples.append({"t": round(time.monotonic() - record.t0, 1), **server_sample(pid, tmp)})
        if samples[-1]["rss_mb"] > args.max_rss_mb and not record.stop.is_set():  # a shared machine: stop early
            record.stop.set()
            conditions["stopped_early"] = f"server RSS {samples[-1]['rss_mb']:.0f} MB at {samples[-1]['t']} s"
        wait_for(lambda: not any(th.is_alive() for th in threads), sample_s)
    for th in threads:
        th.join(timeout=TRAIN_WAIT_S)
    server["visitors_stuck"] = sum(th.is_alive() for th in threads)
    return record, samples


def summarize(args: argparse.Namespace, conditions: dict, record: Record, samples: list[dict], server: dict) -> dict:
    """The numbers of the run: latency and errors by kind, the trainings' outcomes, memory, threads, folders."""
    warm_up_s = WARM_UP_SHARE * args.minutes * 60
    after = [s for s in samples if s["t"] >= warm_up_s] or samples[-1:]  # the last one is the end's sample
    start, end = server["start"], server["end"]
    at_warm_up, peak = after[0]["rss_mb"], max(s["rss_mb"] for s in after)
    return {
        "command": " ".join([Path(sys.executable).name, "scripts/soak.py", *sys.argv[1:]]),
        "visitors": args.visitors, "minutes": args.minutes, "seed": args.seed, "conditions": conditions,
        "requests": len(record.calls), "hostile_requests": sum(c.hostile for c in record.calls),
        "latency": latency_table(record.calls),
        "errors_by_kind": count_by(c.kind for c in record.calls if not c.ok and not c.hostile),
        "hostile_not_refused_by_kind": count_by(c.kind for c in record.calls if c.hostile and not c.ok),
        "trainings": count_by(f"{t.kind} {'stopped' if t.stopped else 'not stopped'}: {t.outcome.split(':')[0]}"
                              for t in record.trainings),
        # retained growth is the check; the peak is the working set of the jobs that ran at once, shown beside it
        "rss": {"start_mb": round(start["rss_mb"], 1), "at_warm_up_mb": round(at_warm_up, 1),
                "end_mb": round(end["rss_mb"], 1), "warm_up_s": warm_up_s,
                "retained_growth_mb": round(end["rss_mb"] - at_warm_up, 1),
                "peak_after_warm_up_mb": round(peak, 1), "peak_growth_after_warm_up_mb": round(peak - at_warm_up, 1)},
        "server": {**server, "peak": {k: max(s[k] for s in samples) for k in start}},
        "samples": samples,
        "hostile_answers": sorted({c.error[:160] for c in record.calls if c.hostile})[:60],
    }


def warm_up_server(url: str, folder: Path) -> None:
    """One visitor's first requests of each kind, so the pools they fill count as the start, not as growth."""
    record = Record(time.monotonic())
    v = Visitor(-1, url, 0, record, folder, time.monotonic())
    v.open_tab()
    for action in ("search", "select_act", "train", "generate", "evaluate", "save", "download", "upload", "delete"):
        getattr(v, action)()
    v.close_tab()
    if failed := [c for c in record.calls if not c.ok]:
        raise SystemExit(f"the warm-up failed: {failed[0].kind}: {failed[0].error}")


def count_by(keys) -> dict[str, int]:
    counts: dict[str, int] = {}
    for key in keys:
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def cpu_name() -> str:
    info = Path("/proc/cpuinfo").read_text()
    name = re.search(r"^model name\s*:\s*(.+)$", info, re.M)
    flags = set((re.search(r"^flags\s*:\s*(.+)$", info, re.M) or re.search("()", "")).group(1).split())
    return f"{name.group(1) if name else 'unknown'}; " + ", ".join(
        f"{flag} {'yes' if flag in flags else 'no'}" for flag in ("avx512_bf16", "amx_bf16"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--visitors", type=int, default=20, help="simulated visitors at once")
    parser.add_argument("--minutes", type=float, default=20, help="how long they visit")
    parser.add_argument("--seed", type=int, default=0, help="each visitor's choices follow from it")
    parser.add_argument("--out", default="soak-out", help="folder for soak.json, soak-calls.json, soak.png, server.log")
    parser.add_argument("--max-rss-mb", type=float, default=8000,
                        help="the visitors leave early when the server's memory passes this (the check then fails)")
    parser.add_argument("--server-env", action="append", default=[], metavar="NAME=VALUE",
                        help="an environment variable for the server process only, e.g. MALLOC_MMAP_THRESHOLD_=1048576")
    parser.add_argument("--serve", help=argparse.SUPPRESS)  # the server process's own entry: its folder
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(Path(args.serve), args.port)
        return 0
    return soak(args)


if __name__ == "__main__":
    sys.exit(main())
