"""A page to *see* prompt tuning: pick an act, train a soft prompt, watch the loss, compare base and tuned.

Thin on purpose: every callback turns widget values into one call of `tuning/` and formats
the result. The base model is loaded once per process (tuning.model.load_base caches it) and
shared read-only; each browser session keeps its current act and its last run in `gr.State`.

    python app.py --model openai-community/gpt2 --dataset fka/awesome-chatgpt-prompts
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import functools
import math
import os
import shutil
import stat
import tempfile
import threading
import zipfile
import zlib
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import gradio as gr
import pandas as pd
import torch

from tuning import adapters, evaluate, sweep
from tuning.adapters import AdapterError
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL, TuneConfig
from tuning.data import DataError, Row, find_act, load_rows
from tuning.generate import Decoding, GenerationError, stream_pair
from tuning.model import ModelError, SoftPrompt, load_base
from tuning.train import Done, EpochEnd, Start, Step, TrainingError, encode_rows, held_out_for, split_rows, train

SESSION_RUN = "this session's run"
INITS = {"random": "random", "text: the current act's prompt": "text", "sampled vocabulary": "sample_vocab"}
DATA_CHOICES = ("all training acts", "only the current act", "selected acts")
SERIES = {"train": "#2563eb", "held-out": "#ea580c", "base held-out": "#9ca3af"}  # chart colours
PRESETS = {"5 tokens × 5 epochs": (5, 5), "20 tokens × 10 epochs": (20, 10)}
USER_ERRORS = (DataError, ModelError, AdapterError, GenerationError, TrainingError)
MAX_UPLOAD_BYTES = 50 * 2**20  # uncompressed; a GPT-2 prompt of 100 tokens is 300 KB
MAX_UPLOAD_FILES = 16
MAX_ZIP_ENTRIES = 64  # files and folders together: a zip of a million empty folders is a bomb too
MAX_ZIP_DEPTH = 3  # path parts of a member: "a/b/adapter_config.json"
MAX_INPUT_CHARS = 4_000  # compare input; GPT-2's whole context is about 4,000 characters of English
MAX_FIELD_CHARS = 200  # act names, searches, adapter names
MAX_HISTORY = 20  # runs kept per session for the history chart; the oldest go first
MAX_CELLS = 12  # sweep grid cells per click
GAIN_SCALE = 2.0  # nats of per-token gain drawn at full colour (e^2: about 7 times more or less likely)
PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#dc2626", "#0891b2", "#ca8a04", "#db2777", "#4b5563", "#65a30d"]


@dataclass
class RunRecord:
    """A finished (or stopped) run as the history keeps it: enough to redraw and export its curves."""

    label: str  # "#3 Rapper 20×10"
    settings: str  # "20 tokens, 10 epochs, lr 0.03, batch 4, init random, seed 0"
    history: dict  # train()'s loss history: step, train_loss, epoch, held_out_loss, epoch_train_loss
    steps_per_epoch: int  # to place each epoch's held-out loss on the step axis
    held_out_loss: float | None
    base_held_out_loss: float | None
    stopped: bool


@dataclass
class Session:
    """One browser session. gr.State deep-copies the initial value, so the Event is made per run."""

    act: Row | None = None
    soft: SoftPrompt | None = None  # the last run, finished or stopped
    stop: threading.Event | None = None  # set by Stop (or closing the tab) to end the current run
    runs: list[RunRecord] = field(default_factory=list)  # the last MAX_HISTORY runs, oldest first
    run_count: int = 0  # runs ever finished here, so labels stay unique after old ones drop out

    def remember(self, soft: SoftPrompt, what: str, steps_per_epoch: int) -> RunRecord:
        """Add `soft`'s run to the history as "#n <what> <tokens>×<epochs>"."""
        self.run_count += 1
        c, metrics = soft.config, soft.meta["metrics"]
        record = RunRecord(
            label=f"#{self.run_count} {what} {sweep.label(c.num_virtual_tokens, c.epochs)}",
            settings=f"{c.num_virtual_tokens} tokens, {c.epochs} epochs, lr {c.learning_rate:g}, batch {c.batch_size}, "
                     f"init {c.init}, seed {c.seed}",
            history=soft.meta["history"], steps_per_epoch=steps_per_epoch, held_out_loss=metrics["held_out_loss"],
            base_held_out_loss=metrics["base_held_out_loss"], stopped=bool(soft.meta.get("stopped")),
        )
        self.runs = (self.runs + [record])[-MAX_HISTORY:]
        return record


# ---------------------------------------------------------------------------------------
# plain helpers: no widgets, testable alone


@functools.lru_cache(maxsize=4)
def dataset_rows(source: str) -> tuple[Row, ...]:
    """The dataset's rows, read once per process (a failed read is retried next time)."""
    return tuple(load_rows(source))


@contextlib.contextmanager
def user_errors():
    """Turn an error the user can fix into one sentence on the page; our own bugs still raise."""
    try:
        yield
    except USER_ERRORS as e:
        raise gr.Error(str(e)) from e
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
        if "out of memory" not in str(e).lower():
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the failed run's blocks back, so the next request can have them
        raise gr.Error("out of memory: try fewer virtual tokens, a smaller batch or a shorter run") from e


# --- every value a client sends is checked here: the browser's limits (a slider's range, a
# textbox's max length) do not bind a raw API call, which can send any JSON in any field.


def checked_text(value, label: str, max_chars: int) -> str:
    """`value` if it is text we can use, else gr.Error naming the problem in one sentence.

    None -> ''. 'مرحبا 👋' -> 'مرحبا 👋'. 'a\x00b', '\ud800' (a lone surrogate), 5 or 100,000 characters -> gr.Error.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise gr.Error(f"{label} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise gr.Error(f"{label} is {len(value):,} characters; this server takes at most {max_chars:,}")
    if "\x00" in value:
        raise gr.Error(f"{label} contains a NUL character; remove it and try again")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can carry one, nothing after this can
        raise gr.Error(f"{label} contains broken Unicode (a lone surrogate); paste it again as plain text") from None
    return value


def checked_number(value, label: str) -> float | int:
    """`value` if it is a finite int or float; 'abc', True, None, NaN, infinity -> gr.Error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise gr.Error(f"{label} must be a number, got {value!r}"[:200])
    if not math.isfinite(value):
        raise gr.Error(f"{label} must be a finite number, got {value}")
    return value


class Text(gr.Textbox):
    """A Textbox whose `max_length` (default 200) also binds API calls, and that refuses NUL and broken Unicode."""

    is_template = True  # drawn by the frontend as a Textbox

    def preprocess(self, payload):
        return checked_text(payload, self.label or "the text", self.max_length or MAX_FIELD_CHARS)


def in_range(component, payload, preprocess):
    """Type and finiteness checked here, the range by Gradio (its message, with the field's label in front)."""
    value = checked_number(payload, component.label)
    try:
        return preprocess(value)
    except gr.Error as e:
        raise gr.Error(f"{component.label}: {e.message}") from None


class Slider(gr.Slider):
    """A Slider that refuses text, NaN and infinity with one sentence (Gradio's own check would crash on them)."""

    is_template = True

    def preprocess(self, payload):
        return in_range(self, payload, super().preprocess)


class Number(gr.Number):
    """A Number that refuses text, NaN and infinity with one sentence (precision=0 would crash on them)."""

    is_template = True

    def preprocess(self, payload):
        return in_range(self, payload, super().preprocess)


def checked_name(value, label: str = "the adapter name") -> str | None:
    """A dropdown value that allows custom text: None, or text of at most 200 characters."""
    return checked_text(value, label, MAX_FIELD_CHARS) or None


@contextlib.contextmanager
def disk_errors():
    """A failed write (disk full, read-only folder) is one sentence; adapters.save has already cleaned up."""
    try:
        yield
    except OSError as e:
        raise gr.Error(f"the server could not write the adapter ({e.strerror or e}); nothing was changed") from e


def duration(seconds: float) -> str:
    """45 -> '45s', 130 -> '2m 10s', 3720 -> '1h 2m'."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    return f"{s // 3600}h {s % 3600 // 60}m"


def loss_text(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def whole(value) -> int:
    """20.0 -> 20 (sliders and clients send floats); 2.5 stays 2.5 so TuneConfig names it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def acts_frame(rows, query: str = "") -> pd.DataFrame:
    """Acts whose name or prompt contains `query` (any case): act, first 80 characters, words."""
    q = (query or "").strip().casefold()
    picked = [r for r in rows if not q or q in r.act.casefold() or q in r.prompt.casefold()]
    return pd.DataFrame(
        [[r.act, r.prompt[:80] + ("…" if len(r.prompt) > 80 else ""), len(r.prompt.split())] for r in picked],
        columns=["act", "prompt", "words"],
    )


def act_line(act: Row | None) -> str:
    return f"**Current act:** {act.act}" if act else "**Current act:** none yet: pick one in the Dataset tab"


def chart(points: list[tuple[int, float, str]]) -> pd.DataFrame:
    """The loss chart's data: one row per point, plus an empty (NaN) row per series.

    The empty rows are a workaround: Gradio 6's LinePlot fixes its colour legend from the first
    value it shows, so a series that appears later (held-out after epoch 1) would never be drawn.
    """
    frame = pd.DataFrame([(0, math.nan, s) for s in SERIES] + points, columns=["step", "loss", "series"])
    return frame.astype({"step": int, "loss": float, "series": str})


def adapters_frame(root: Path) -> pd.DataFrame:
    rows = [
        [a["name"], a["num_virtual_tokens"], a["config"].get("epochs"), loss_text(a["metrics"].get("held_out_loss")),
         a["base_model"], a["created"].replace("T", " ")[:16]]
        for a in adapters.list_adapters(root)
    ]
    return pd.DataFrame(rows, columns=["name", "tokens", "epochs", "held-out loss", "base model", "created"])


def zip_adapter(folder: Path, dest: Path) -> Path:
    """`dest/<name>.zip` with the adapter's regular files (no symlinks, nothing from outside), under `<name>/`."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{folder.name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.is_symlink():
                z.write(file, f"{folder.name}/{file.name}")
    return path


def unzip_safely(zip_path: str, dest: Path) -> Path:
    """Extract an uploaded zip into `dest`, refusing anything that could escape or explode; returns the adapter folder.

    Refused: absolute paths, `..`, symlinks, more than 16 files (64 entries with folders), paths
    more than 3 deep, over 50 MB uncompressed (declared, and counted again while extracting, so a
    zip that lies about its sizes stops at the cap). The adapter files may sit at the top of the
    zip or in a folder.
    """
    try:
        z = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError):
        raise AdapterError("the upload is not a zip file") from None
    with z:
        entries = z.infolist()
        members = [m for m in entries if not m.is_dir()]
        if len(members) > MAX_UPLOAD_FILES:
            raise AdapterError(f"the zip holds {len(members)} files; an adapter has at most {MAX_UPLOAD_FILES}")
        if len(entries) > MAX_ZIP_ENTRIES:
            raise AdapterError(f"the zip holds {len(entries)} entries; an adapter has at most {MAX_ZIP_ENTRIES}")
        if sum(m.file_size for m in members) > MAX_UPLOAD_BYTES:
            raise AdapterError(f"the zip unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB")
        for m in entries:
            parts = m.filename.replace("\\", "/").rstrip("/").split("/")
            if m.filename.startswith(("/", "\\")) or ":" in parts[0] or ".." in parts:
                raise AdapterError(f"the zip has an unsafe path: {m.filename}")
            if stat.S_ISLNK(m.external_attr >> 16):
                raise AdapterError(f"the zip has a symbolic link: {m.filename}")
            if len(parts) > MAX_ZIP_DEPTH:
                raise AdapterError(f"the zip nests folders too deeply: {m.filename}")
        written = 0
        for m in members:
            target = dest.joinpath(*m.filename.replace("\\", "/").split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with z.open(m) as src, open(target, "wb") as out:  # zipfile also checks the size and CRC as it reads
                    while chunk := src.read(2**20):
                        written += len(chunk)
                        if written > MAX_UPLOAD_BYTES:
                            raise AdapterError(f"the zip unpacks to more than {MAX_UPLOAD_BYTES // 2**20} MB")
                        out.write(chunk)
            except (zipfile.BadZipFile, zlib.error, NotImplementedError, EOFError) as e:
                raise AdapterError(f"the zip is damaged or uses an unsupported format ({m.filename}: {e})") from None
    configs = list(dest.rglob(adapters.CONFIG_FILE))
    if len(configs) != 1:
        raise AdapterError(f"the zip must hold exactly one {adapters.CONFIG_FILE}, found {len(configs)}")
    return configs[0].parent


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when nothing was measured: 2.0 -> 7.389…"""
    return None if loss is None else math.exp(loss)


def number(value: float | None, spec: str = ".3f") -> str:
    return "–" if value is None else format(value, spec)


def colours(series) -> dict[str, str]:
    """A colour per series name, in order, cycling through PALETTE.

    A new colour_map is also how a chart gets series that were not in its first value: Gradio 6's
    LinePlot takes its legend from the data when it builds the chart, and rebuilds only when a
    setting such as the colour map changes, not when the data does. The rebuild races the data
    update it comes with, so send the data first and the new map with the same data after it.
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(series))}


def curves(points: list[tuple[int, float, str]], series) -> pd.DataFrame:
    """Like `chart`, for any series names: one row per point plus an empty row per series (see `chart`)."""
    frame = pd.DataFrame([(0, math.nan, s) for s in series] + points, columns=["step", "loss", "series"])
    return frame.astype({"step": int, "loss": float, "series": str})


def held_out_points(history: dict, steps_per_epoch: int, series: str) -> list[tuple[int, float, str]]:
    """Each epoch's held-out loss at the step that ended the epoch."""
    return [(min(e * steps_per_epoch, history["step"][-1]), loss, series)
            for e, loss in zip(history["epoch"], history["held_out_loss"]) if loss is not None]


def history_frame(runs: list[RunRecord]) -> pd.DataFrame:
    rows = [[r.label, r.settings, len(r.history["step"]), number(r.history["train_loss"][-1]),
             number(r.held_out_loss), number(perplexity(r.held_out_loss), ".2f"),
             number(perplexity(r.base_held_out_loss), ".2f"), "stopped" if r.stopped else "done"] for r in runs]
    return pd.DataFrame(rows, columns=["run", "settings", "steps", "last train loss", "held-out loss",
                                       "held-out ppl", "base held-out ppl", "status"])


def history_frames(runs: list[RunRecord]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every run's training loss per step, one series per run label; and the colours."""
    points = [(s, loss, r.label) for r in runs for s, loss in zip(r.history["step"], r.history["train_loss"])]
    labels = [r.label for r in runs]
    return curves(points, labels), colours(labels)


def write_history_csv(runs: list[RunRecord], path: Path) -> Path:
    """run, step, epoch, train_loss, held_out_loss: a row per training step, then a row per epoch's held-out loss."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "settings", "step", "epoch", "train_loss", "held_out_loss"])
        for r in runs:
            for step, loss in zip(r.history["step"], r.history["train_loss"]):
                writer.writerow([r.label, r.settings, step, "", loss, ""])
            for (step, loss, _), epoch in zip(held_out_points(r.history, r.steps_per_epoch, ""), r.history["epoch"]):
                writer.writerow([r.label, r.settings, step, epoch, "", loss])
    return path


def gain_scores(gains: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Per-token gains in nats -> HighlightedText scores in [-1, 1] (full colour at ±GAIN_SCALE nats).

    [(' rapper', 3.1), ('.', -0.5)] -> [(' rapper', 1.0), ('.', -0.25)]
    """
    return [(token, max(-1.0, min(1.0, gain / GAIN_SCALE))) for token, gain in gains]


def gains_summary(act: str, gains: list[tuple[str, float]], note: str = "") -> str:
    """The total (base loss − tuned loss, summed over the tokens) and the tokens that moved most."""
    total = sum(g for _, g in gains)
    ranked = sorted(gains, key=lambda tg: tg[1])
    up = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in reversed(ranked[-3:]) if g > 0) or "none"
    down = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in ranked[:3] if g < 0) or "none"
    return (f"{note}**{act}**: over its {len(gains)} scored tokens the tuned model gains **{total:+.2f} nats** "
            f"(base loss − tuned loss, summed; {total / len(gains):+.3f} per token).  \n"
            f"Most helped: {up}. Most hurt: {down}.")


def nearest_frame(nearest: list[list[tuple[str, float]]]) -> pd.DataFrame:
    """One row per virtual token: its index, then its nearest vocabulary tokens as "'token' 0.23"."""
    k = max((len(n) for n in nearest), default=0)
    rows = [[i] + [f"{t!r} {s:.2f}" for t, s in n] for i, n in enumerate(nearest)]
    return pd.DataFrame(rows, columns=["virtual token"] + [f"nearest {j + 1}" for j in range(k)])


def rouge_frame(scored: list[dict]) -> pd.DataFrame:
    rows = [[r["act"], r["base_text"], r["tuned_text"], round(r["base_rouge"], 3), round(r["tuned_rouge"], 3)]
            for r in scored]
    return pd.DataFrame(rows, columns=["act", "base text", "tuned text", "base ROUGE-L", "tuned ROUGE-L"])


def sweep_frame(results: list[sweep.CellResult]) -> pd.DataFrame:
    rows = [[r.label + (" (stopped)" if r.stopped else ""), r.num_virtual_tokens, r.epochs,
             number(r.held_out_ppl_base, ".2f"), number(r.held_out_ppl_tuned, ".2f"),
             number(r.rouge_base), number(r.rouge_tuned), round(r.seconds, 1)] for r in results]
    return pd.DataFrame(rows, columns=["cell", "tokens", "epochs", "held-out ppl base", "held-out ppl tuned",
                                       "ROUGE-L base", "ROUGE-L tuned", "seconds"])


# ---------------------------------------------------------------------------------------
# the app


def build_app(
    model: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    adapters_dir: str | Path = adapters.DEFAULT_ROOT,
    max_epochs: int = 50,
    max_steps: int = 2000,
    max_adapters: int = 200,
    max_adapter_bytes: int = 500 * 2**20,
    max_queue: int = 64,
) -> gr.Blocks:
    """The app, its queue configured: at most `max_queue` waiting events, 4 running per event (training: 1).

    `max_adapters` and `max_adapter_bytes` cap what all visitors together may keep in `adapters_dir`.
    """
    root = Path(adapters_dir)
    max_epochs = max(1, min(int(max_epochs), 50))
    running: dict[str, threading.Event] = {}  # session hash -> stop flag of its run, for closing the tab
    session_dirs: dict[str, str] = {}  # session hash -> its folder for download zips, removed when it ends
    caps = dict(max_count=max_adapters, max_bytes=max_adapter_bytes)

    def base():
        with user_errors():
            return load_base(model)

    def rows():
        with user_errors():
            return dataset_rows(dataset)

    def adapter_choices(session: Session) -> list[str]:
        return ([SESSION_RUN] if session.soft else []) + [a["name"] for a in adapters.list_adapters(root)]

    def session_dir(request: gr.Request) -> Path:
        """A fresh folder for this session's next download (zip or CSV), removed when the session ends.

        Gradio copies a returned file into its own cache to serve it, so ours holds the last file only.
        """
        tmp = session_dirs.get(request.session_hash)
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
        session_dirs[request.session_hash] = tmp = tempfile.mkdtemp(prefix="tuning-session-")
        return Path(tmp)

    # --- Dataset ---
    def load_page():
        try:
            table, names, status = acts_frame(dataset_rows(dataset)), [r.act for r in dataset_rows(dataset)], ""
        except DataError as e:
            gr.Warning(str(e))
            table, names, status = acts_frame([]), [], f"⚠️ {e}"
        return table, gr.Dropdown(choices=names), status, adapters_frame(root)

    def search_acts(query: str) -> pd.DataFrame:
        return acts_frame(rows(), query)

    def row_act(evt: gr.SelectData) -> str:
        return evt.row_value[0]

    def select_act(name: str, session: Session):
        with user_errors():
            session.act = find_act(rows(), name)
        line = act_line(session.act)
        return session.act.prompt, line, line, f"I want you to act as a {session.act.group}."  # group: "linux terminal" for "Linux Terminal (2)"

    # --- Train ---
    def set_preset(preset: str):
        tokens, epochs = PRESETS[preset]
        return tokens, min(epochs, max_epochs)

    def train_run(tokens, epochs, lr, batch, init, data, chosen, seed, session: Session, request: gr.Request):
        chosen = chosen or []
        if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
            raise gr.Error("selected acts must be a list of act names")
        if data == "only the current act" and not session.act:
            raise gr.Error("pick an act in the Dataset tab first (or train on all acts)")
        acts = [session.act.act] if data == "only the current act" else list(chosen or []) if data == "selected acts" else []
        if data == "selected acts" and not acts:
            raise gr.Error("choose at least one act for 'selected acts'")
        notes = []
        if whole(epochs) > max_epochs:
            notes.append(f"epochs capped at {max_epochs} on this server")
            epochs = max_epochs
        use_text = INITS.get(init) == "text" and session.act
        try:
            config = TuneConfig(
                model=model, dataset=dataset, num_virtual_tokens=whole(tokens), epochs=whole(epochs),
                learning_rate=lr, batch_size=whole(batch), seed=whole(seed), init=INITS.get(init, init),
                init_text=session.act.prompt if use_text else None, acts=tuple(acts),
            )
        except ValueError as e:  # TuneConfig names the bad setting
            raise gr.Error(str(e)) from e
        with user_errors():
            train_rows, held = split_rows(rows(), config)
        per_epoch = math.ceil(len(train_rows) / config.batch_size)
        if per_epoch * config.epochs > max_steps and config.epochs > 1:
            config.epochs = max(1, max_steps // per_epoch)
            notes.append(f"epochs cut to {config.epochs} to stay within {max_steps:,} steps")
        step_cap = min(max_steps, per_epoch * config.epochs)
        if step_cap < per_epoch * config.epochs:
            notes.append(f"this run stops after {max_steps:,} steps (one epoch is {per_epoch:,} steps)")

        what = acts[0] if len(acts) == 1 else f"{len(acts)} acts" if acts else "all acts"
        log = deque((f"note: {n}" for n in notes), maxlen=10)
        points: list[tuple[int, float, str]] = []
        session.stop = stop = threading.Event()
        running[request.session_hash] = stop
        try:
            with user_errors():
                for event in train(base(), train_rows, config, held, stop):
                    if isinstance(event, Start):
                        log.append(f"training on {event.train_rows} acts, {event.held_out_rows} held out, "
                                   f"{event.total_steps:,} steps")
                        progress = f"step 0 / {step_cap:,} · starting"
                    elif isinstance(event, Step):
                        at = event.step
                        points.append((event.step, event.loss, "train"))
                        progress = (f"step {event.step:,} / {step_cap:,} · epoch {event.epoch} / {config.epochs} · "
                                    f"{event.tokens_per_s:,.0f} tokens/s · ETA {duration(event.eta)}")
                        if event.step >= step_cap:
                            stop.set()
                    elif isinstance(event, EpochEnd):
                        if event.held_out_loss is not None:
                            points.append((at, event.held_out_loss, "held-out"))
                        if event.epoch == 1 and event.base_held_out_loss is not None:
                            points += [(0, event.base_held_out_loss, "base held-out"),
                                       (step_cap, event.base_held_out_loss, "base held-out")]
                        log.append(f"epoch {event.epoch}: train {event.train_loss:.3f}, "
                                   f"held-out {loss_text(event.held_out_loss)} ({duration(event.elapsed)})")
                    elif isinstance(event, Done):
                        session.soft = event.soft
                        session.remember(event.soft, what, per_epoch)
                        held_loss = event.soft.meta["metrics"]["held_out_loss"]
                        how = "stopped" if event.stopped and event.steps < step_cap else "done"
                        log.append(f"{how} after {event.steps:,} steps in {duration(event.elapsed)}; "
                                   f"held-out loss {loss_text(held_loss)}. Try it in Compare, keep it in Adapters.")
                        progress = f"step {event.steps:,} / {step_cap:,} · {how}"
                    yield chart(points), progress, "\n".join(log)
        finally:
            running.pop(request.session_hash, None)

    def stop_run(session: Session) -> str:
        if session.stop is None or session.stop.is_set():
            return "nothing is training in this session"
        session.stop.set()
        return "stopping after this step…"

    def on_close(request: gr.Request):
        """The tab closed (or the client went away): stop its run, remove its download folder."""
        if request and request.session_hash in running:
            running[request.session_hash].set()
        if request and request.session_hash in session_dirs:
            shutil.rmtree(session_dirs.pop(request.session_hash), ignore_errors=True)

    # --- Compare ---
    def refresh_choices(session: Session, current: str | None = None):
        choices = adapter_choices(session)
        value = current if current in choices else (choices[0] if choices else None)
        return gr.Dropdown(choices=choices, value=value)

    def pick_soft(adapter, session: Session) -> SoftPrompt:
        """This session's run or a saved adapter, by the name a dropdown (or a client) sent."""
        if not (adapter := checked_name(adapter)):
            raise gr.Error("train or pick an adapter first")
        if adapter == SESSION_RUN:
            if session.soft is None:
                raise gr.Error("this session has no run yet: train or pick an adapter first")
            return session.soft
        with user_errors():
            return adapters.load(adapter, root, base())

    def generate(text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session):
        soft = pick_soft(adapter, session)
        with user_errors():
            decoding = Decoding(
                max_new_tokens=whole(max_new), do_sample=mode == "sample", temperature=temperature,
                top_p=top_p, top_k=whole(top_k), repetition_penalty=penalty, seed=whole(seed),
            )
            yield from stream_pair(base(), soft, text, decoding)

    # --- Evaluate ---
    def evaluate_run(adapter, n_acts, max_new, session: Session, progress=gr.Progress()):
        soft = pick_soft(adapter, session)
        n_acts, max_new = whole(n_acts), whole(max_new)
        with user_errors():
            decoding = Decoding(max_new_tokens=max_new)
            held = held_out_for(soft, rows(), dataset)
            if not held:
                raise gr.Error("there are no held-out acts to evaluate on (this adapter was trained on every act)")
            progress(0, desc="held-out perplexity")
            metrics = evaluate.compare(base(), soft, encode_rows(base(), held, soft.config))
            picked, scored = held[:n_acts], []
            for result in evaluate.iter_rouge(base(), soft, picked, decoding):  # one act (base and tuned) at a time
                scored.append(result)
                progress((len(scored), len(picked)), desc="ROUGE-L: generating", unit="acts")
        ppl = pd.DataFrame([["base", metrics["base"].perplexity], ["tuned", metrics["tuned"].perplexity]],
                           columns=["model", "perplexity"])
        mean = {side: sum(r[f"{side}_rouge"] for r in scored) / len(scored) if scored else None
                for side in ("base", "tuned")}
        rouge = pd.DataFrame([["base", mean["base"]], ["tuned", mean["tuned"]]] if scored else [],
                             columns=["model", "ROUGE-L"])
        short = f" (only {len(held)} held-out acts)" if n_acts > len(held) else ""
        summary = (f"**Held-out perplexity** over {len(held)} acts ({metrics['base'].tokens:,} tokens): "
                   f"base {metrics['base'].perplexity:.2f}, tuned {metrics['tuned'].perplexity:.2f}.  \n"
                   + (f"**ROUGE-L** of greedy continuations against the real prompt, {len(scored)} acts{short}: "
                      f"base {mean['base']:.3f}, tuned {mean['tuned']:.3f}." if scored else "ROUGE-L: skipped (0 acts)."))
        return ppl, rouge, summary, rouge_frame(scored)

    def token_view(adapter, session: Session):
        soft = pick_soft(adapter, session)
        note = ""
        with user_errors():
            act = session.act
            if act is None:
                act = (held_out_for(soft, rows(), dataset) or list(rows()))[0]
                note = "No act picked in the Dataset tab; showing a held-out act. "
            try:
                gains = evaluate.token_gains(base(), soft, act.prompt)
            except ValueError as e:  # a one-token prompt
                raise gr.Error(str(e)) from e
        return gain_scores(gains), gains_summary(act.act, gains, note)

    def nearest_view(adapter, session: Session) -> pd.DataFrame:
        soft = pick_soft(adapter, session)
        with user_errors():
            return nearest_frame(evaluate.nearest_tokens(base(), soft, k=5))

    # --- Sweep and history ---
    def sweep_run(grid_text, rouge_acts, lr, batch, seed, session: Session, request: gr.Request):
        try:
            grid = sweep.parse_grid(grid_text)
        except ValueError as e:
            raise gr.Error(str(e)) from e
        if len(grid) > MAX_CELLS:
            raise gr.Error(f"the grid has {len(grid)} cells; this server runs at most {MAX_CELLS} per sweep")
        try:
            config = TuneConfig(model=model, dataset=dataset, learning_rate=lr, batch_size=whole(batch), seed=whole(seed))
        except ValueError as e:  # TuneConfig names the bad setting
            raise gr.Error(str(e)) from e
        for t, e in grid:  # run_sweep checks these too, but by then the answer is a stream that has begun
            try:
                dataclasses.replace(config, num_virtual_tokens=t, epochs=e)
            except ValueError as err:
                raise gr.Error(f"grid cell {sweep.label(t, e)}: {err}") from err
        if (longest := max(e for _, e in grid)) > max_epochs:
            raise gr.Error(f"a grid cell asks for {longest} epochs; this server allows at most {max_epochs}")
        with user_errors():
            train_rows, _ = split_rows(rows(), config)
        per_epoch = math.ceil(len(train_rows) / config.batch_size)
        needed = per_epoch * sum(e for _, e in grid)
        if needed > max_steps:
            raise gr.Error(f"this sweep needs {needed:,} steps; this server allows {max_steps:,} per run: "
                           f"use fewer cells or epochs, or a bigger batch")

        labels = [sweep.label(t, e) for t, e in grid]
        series = ["base held-out"] + [f"{name} {kind}" for name in labels for kind in ("train", "held-out")]
        palette = {**colours(series[1:]), "base held-out": SERIES["base held-out"]}
        points: list[tuple[int, float, str]] = []
        results: list[sweep.CellResult] = []
        done_before = total = at = sent = 0
        n_rouge = whole(rouge_acts)
        progress, table, csv_file = "starting", sweep_frame([]), None
        session.stop = stop = threading.Event()
        running[request.session_hash] = stop
        try:
            with user_errors():
                for event in sweep.run_sweep(base(), rows(), config, grid, stop, n_rouge):
                    if isinstance(event, sweep.SweepStart):
                        total = event.total_steps
                        progress = f"step 0 / {total:,} · {len(grid)} cells · {event.held_out_rows} held-out acts"
                    elif isinstance(event, sweep.CellEvent):
                        inner, name = event.event, event.label
                        if isinstance(inner, Step):
                            at = inner.step
                            points.append((at, inner.loss, f"{name} train"))
                            progress = (f"step {done_before + at:,} / {total:,} · cell {name} "
                                        f"({event.cell + 1} / {len(grid)}) · epoch {inner.epoch} · ETA {duration(inner.eta)}")
                        elif isinstance(inner, EpochEnd) and inner.held_out_loss is not None:
                            points.append((at, inner.held_out_loss, f"{name} held-out"))
                            if event.cell == 0 and inner.epoch == 1:
                                points += [(0, inner.base_held_out_loss, "base held-out"),
                                           (per_epoch * longest, inner.base_held_out_loss, "base held-out")]
                        elif isinstance(inner, Done):
                            done_before += inner.steps
                            if n_rouge:
                                progress = f"cell {name}: scoring ROUGE-L on up to {n_rouge} held-out acts…"
                    elif isinstance(event, sweep.CellResult):
                        results.append(event)
                        session.soft = event.soft  # the last cell becomes this session's run
                        session.remember(event.soft, "sweep", event.steps_per_epoch)
                        table = sweep_frame(results)
                    elif isinstance(event, sweep.SweepDone):
                        how = "stopped" if event.stopped else "done"
                        csv_file = str(sweep.write_csv(event.results, session_dir(request) / "sweep.csv"))
                        progress = (f"{how}: {len(event.results)} of {len(grid)} cells in "
                                    f"{duration(sum(r.seconds for r in event.results))} of training"
                                    + ("; the last cell is now this session's run" if event.results else ""))
                    # the first update carries the data alone, so the map that follows rebuilds with it (see `colours`)
                    plot = gr.LinePlot(curves(points, series), **({"color_map": palette} if sent else {}))
                    sent += 1
                    yield plot, progress, table, csv_file
        finally:
            running.pop(request.session_hash, None)

    def show_history(session: Session):
        table, (frame, palette) = history_frame(session.runs), history_frames(session.runs)
        yield table, gr.LinePlot(frame)  # the data first, then the same data with its colours (see `colours`)
        yield table, gr.LinePlot(frame, color_map=palette)

    def export_history(session: Session, request: gr.Request) -> str:
        if not session.runs:
            raise gr.Error("no runs yet: train or sweep first")
        return str(write_history_csv(session.runs, session_dir(request) / "history.csv"))

    # --- Adapters ---
    def refreshed(session: Session, name: str | None = None, message: str = ""):
        names = [a["name"] for a in adapters.list_adapters(root)]
        return (adapters_frame(root), gr.Dropdown(choices=names, value=name if name in names else None),
                refresh_choices(session, name), message)

    def save_run(name: str, session: Session):
        if session.soft is None:
            raise gr.Error("train something first: this session has no run to save")
        with user_errors(), disk_errors():
            folder = adapters.save(session.soft, name, root, **caps)
        return refreshed(session, folder.name, f"saved as **{folder.name}**")

    def adapter_details(name: str | None) -> dict:
        if not (name := checked_name(name)):
            return {}
        found = [a for a in adapters.list_adapters(root) if a["name"] == name]
        return found[0] if found else {}

    def adapter_row(evt: gr.SelectData) -> str:
        return evt.row_value[0]

    def download(name: str | None, request: gr.Request) -> str:
        if not (name := checked_name(name)):
            raise gr.Error("pick an adapter to download")
        if name not in [a["name"] for a in adapters.list_adapters(root)]:  # only real adapter folders
            raise gr.Error(f"no adapter named {name!r}")
        return str(zip_adapter(root / name, session_dir(request)))

    def upload(path: str | None, name: str, session: Session):
        if not path:
            raise gr.Error("choose a .zip of a PEFT prompt-tuning adapter")
        if os.path.getsize(path) > MAX_UPLOAD_BYTES:
            raise gr.Error(f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MB; an adapter zip is far smaller")
        name = name.strip() or Path(path).stem
        with tempfile.TemporaryDirectory(prefix="tuning-upload-") as tmp, user_errors(), disk_errors():
            soft = adapters.load_folder(unzip_safely(path, Path(tmp)), base())
            folder = adapters.save(soft, name, root, **caps)
        return refreshed(session, folder.name, f"uploaded as **{folder.name}**")

    def delete(name: str | None, session: Session):
        if not (name := checked_name(name)):
            raise gr.Error("pick an adapter to delete")
        with user_errors():
            adapters.delete(name, root)
        return refreshed(session, None, f"deleted **{name}**")

    # ------------------------------------------------------------------ layout
    # delete_cache: Gradio's copies of uploads and download zips go after an hour (and at restart).
    with gr.Blocks(title="Prompt tuning, visible", delete_cache=(600, 3600)) as demo:
        session = gr.State(Session())
        gr.Markdown(f"# Prompt tuning, visible\nTrain a soft prompt for **{model}** on an act from "
                    f"**{dataset}**, watch the loss fall, then compare base and tuned answers.")
        status = gr.Markdown()
        with gr.Tabs():
            with gr.Tab("Dataset"):
                search = Text(label="Search acts", max_length=MAX_FIELD_CHARS, placeholder="rapper, terminal, poet…")
                acts_table = gr.Dataframe(label="Acts (click a row to pick it)", interactive=False,
                                          column_widths=["25%", "65%", "10%"], max_height=420)
                act_name = Text(label="Act (or type a name and press Enter)", max_length=MAX_FIELD_CHARS)
                full_prompt = gr.Textbox(label="Whole prompt", lines=6, interactive=False)
            with gr.Tab("Train"):
                train_act = gr.Markdown(act_line(None))
                with gr.Row():
                    with gr.Column(scale=1):
                        preset = gr.Radio(list(PRESETS), label="Presets")
                        tokens = Slider(1, 100, value=20, step=1, label="Virtual tokens")
                        epochs = Slider(1, max_epochs, value=min(10, max_epochs), step=1, label="Epochs")
                        with gr.Row():
                            lr = Number(0.03, label="Learning rate")  # TuneConfig checks the range
                            batch = Slider(1, 64, value=4, step=1, label="Batch size")
                        init = gr.Radio(list(INITS), value="random", label="Start the prompt from")
                        data = gr.Radio(list(DATA_CHOICES), value=DATA_CHOICES[0], label="Train on")
                        chosen = gr.Dropdown([], multiselect=True, label="Selected acts")
                        seed = Number(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
                        with gr.Row():
                            start = gr.Button("Train", variant="primary")
                            stop = gr.Button("Stop", variant="stop")
                    with gr.Column(scale=2):
                        plot = gr.LinePlot(chart([]), x="step", y="loss", color="series", height=360, elem_id="loss-plot",
                                           color_map=SERIES,
                                           title="Loss per token (nats)")
                        progress = gr.Markdown("not started", elem_id="progress")
                        log = gr.Textbox(label="Log", lines=8, interactive=False)
            with gr.Tab("Compare") as compare_tab:
                compare_act = gr.Markdown(act_line(None))
                with gr.Row():
                    text = Text("I want you to act as a rapper.", label="Input", max_length=MAX_INPUT_CHARS, lines=2, scale=3, elem_id="compare-input")
                    adapter = gr.Dropdown([], label="Adapter", scale=1, allow_custom_value=True, elem_id="compare-adapter")
                with gr.Accordion("Decoding", open=False):
                    with gr.Row():
                        max_new = Slider(1, 512, value=64, step=1, label="Max new tokens")
                        mode = gr.Radio(["greedy", "sample"], value="greedy", label="Decoding")
                        gen_seed = Number(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
                    with gr.Row():
                        temperature = Slider(0.05, 2.0, value=0.8, step=0.05, label="Temperature")
                        top_p = Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p")
                        top_k = Slider(0, 200, value=50, step=1, label="Top-k (0: off)")
                        penalty = Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
                go = gr.Button("Generate", variant="primary")
                with gr.Row():
                    base_out = gr.Textbox(label="Base", lines=10, elem_id="base-output")
                    tuned_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output")
                gr.Examples(["I want you to act as a rapper.", "I want you to act as a linux terminal. ls -la",
                             "I want you to act as a travel guide. I am in Rome."], inputs=text)
            with gr.Tab("Evaluate") as evaluate_tab:
                gr.Markdown("The difference in numbers, on acts the prompt never trained on: held-out perplexity "
                            "(lower is better) and ROUGE-L of greedy continuations of *I want you to act as a "
                            "&lt;act&gt;.* against the dataset's real prompt (higher is better).")
                with gr.Row():
                    eval_adapter = gr.Dropdown([], label="Adapter", allow_custom_value=True, elem_id="eval-adapter")
                    rouge_acts = Number(5, precision=0, minimum=0, maximum=20, label="Held-out acts for ROUGE-L (0: skip)")
                    eval_new = Slider(1, 256, value=64, step=1, label="Max new tokens per continuation")
                evaluate_btn = gr.Button("Evaluate", variant="primary")
                with gr.Row():
                    ppl_plot = gr.BarPlot(x="model", y="perplexity", color="model", title="Held-out perplexity",
                                          color_map={"base": "#9ca3af", "tuned": "#2563eb"}, y_lim=[0, None], height=260)
                    rouge_plot = gr.BarPlot(x="model", y="ROUGE-L", color="model", title="ROUGE-L (mean over acts)",
                                            color_map={"base": "#9ca3af", "tuned": "#2563eb"}, y_lim=[0, 1], height=260)
                eval_summary = gr.Markdown(elem_id="eval-summary")
                rouge_table = gr.Dataframe(label="Per held-out act", interactive=False, wrap=True, max_height=360,
                                           column_widths=["14%", "35%", "35%", "8%", "8%"])
                gr.Markdown("### Per token: the current act's real prompt\n"
                            "Each token is coloured by how much more likely the tuned model makes it than the base "
                            f"model: **red: more likely**, **purple: less likely**, full colour at ±{GAIN_SCALE:g} nats "
                            f"(about {math.exp(GAIN_SCALE):.0f}× the probability). The first token is not scored: "
                            "the base model has nothing to predict it from.")
                gains = gr.HighlightedText(label="Tuned vs base, per token", show_legend=True, elem_id="token-gains")
                gains_text = gr.Markdown()
                gr.Markdown("### What the prompt learned\nEach virtual token's nearest vocabulary tokens by cosine "
                            "similarity to the model's input embeddings. Trained prompts usually sit far from every "
                            "real token (0.1–0.3 is common): read it as a hint, not a translation.")
                nearest_table = gr.Dataframe(label="Nearest tokens", interactive=False, max_height=360)
            with gr.Tab("Sweep & history") as history_tab:
                gr.Markdown("Reproduce the seed's experiment: one soft prompt per *tokens × epochs* cell, trained on all "
                            "training acts with the Train tab's learning rate, batch size and seed, on the same split. "
                            "The default grid is the seed's two runs.")
                with gr.Row():
                    grid = Text("5x5, 20x10", label="Grid (tokens x epochs, comma-separated)", max_length=MAX_FIELD_CHARS)
                    sweep_rouge = Number(0, precision=0, minimum=0, maximum=10, label="Held-out acts for ROUGE-L (0: skip)")
                with gr.Row():
                    sweep_btn = gr.Button("Run sweep", variant="primary")
                    sweep_stop = gr.Button("Stop sweep", variant="stop")
                sweep_plot = gr.LinePlot(curves([], []), x="step", y="loss", color="series", height=360,
                                         title="Loss per token (nats), every cell", elem_id="sweep-plot")
                sweep_progress = gr.Markdown("not started", elem_id="sweep-progress")
                sweep_table = gr.Dataframe(label="Results", interactive=False)
                sweep_csv = gr.File(label="Results (.csv)", interactive=False)
                gr.Markdown(f"### Run history (this browser session, last {MAX_HISTORY} runs)")
                history_table = gr.Dataframe(label="Runs", interactive=False, wrap=True)
                history_plot = gr.LinePlot(curves([], []), x="step", y="loss", color="series", height=360,
                                           title="Training loss per step, every run", elem_id="history-plot")
                with gr.Row():
                    history_btn = gr.Button("Refresh history")
                    export_btn = gr.Button("Export history .csv")
                history_csv = gr.File(label="History (.csv)", interactive=False)
            with gr.Tab("Adapters") as adapters_tab:
                adapters_table = gr.Dataframe(label="Saved adapters (click a row)", interactive=False)
                with gr.Row():
                    picked = gr.Dropdown([], label="Adapter", allow_custom_value=True)
                    download_btn, delete_btn = gr.Button("Download .zip"), gr.Button("Delete", variant="stop")
                zip_out = gr.File(label="Download", interactive=False)
                details = gr.JSON(label="Config and metrics")
                with gr.Row():
                    save_name = Text(max_length=MAX_FIELD_CHARS, label="Save this session's run as", placeholder="rapper-20x10")
                    save_btn = gr.Button("Save")
                with gr.Row():
                    upload_file = gr.File(label="Upload a PEFT prompt-tuning adapter (.zip)", file_types=[".zip"])
                    upload_name = Text(label="Name (default: the file name)", max_length=MAX_FIELD_CHARS)
                    upload_btn = gr.Button("Upload")
                adapter_msg = gr.Markdown()

        # ------------------------------------------------------------------ wiring
        demo.load(load_page, None, [acts_table, chosen, status, adapters_table], api_name="load_page")
        search.change(search_acts, search, acts_table, api_name="search_acts")
        acts_table.select(row_act, None, act_name, api_name="pick_row").then(
            select_act, [act_name, session], [full_prompt, train_act, compare_act, text], api_name="select_act")
        act_name.submit(select_act, [act_name, session], [full_prompt, train_act, compare_act, text],
                        api_name="select_act_by_name")

        preset.input(set_preset, preset, [tokens, epochs], api_name="set_preset")
        start.click(train_run, [tokens, epochs, lr, batch, init, data, chosen, seed, session],
                    [plot, progress, log], api_name="train", concurrency_limit=1, concurrency_id="train").then(
            refresh_choices, [session, adapter], adapter, api_name="after_train").then(
            show_history, session, [history_table, history_plot], api_name="history_after_train")
        stop.click(stop_run, session, progress, api_name="stop")
        demo.unload(on_close)

        compare_tab.select(refresh_choices, [session, adapter], adapter, api_name="adapter_choices")
        go.click(generate, [text, adapter, max_new, mode, temperature, top_p, top_k, penalty, gen_seed, session],
                 [base_out, tuned_out], api_name="generate", concurrency_limit=4, concurrency_id="generate")

        evaluate_tab.select(refresh_choices, [session, eval_adapter], eval_adapter, api_name="eval_adapter_choices")
        evaluate_btn.click(evaluate_run, [eval_adapter, rouge_acts, eval_new, session],
                           [ppl_plot, rouge_plot, eval_summary, rouge_table], api_name="evaluate",
                           concurrency_limit=4, concurrency_id="generate").success(
            token_view, [eval_adapter, session], [gains, gains_text], api_name="token_gains").success(
            nearest_view, [eval_adapter, session], nearest_table, api_name="nearest_tokens")

        history_tab.select(show_history, session, [history_table, history_plot], api_name="history")
        sweep_btn.click(sweep_run, [grid, sweep_rouge, lr, batch, seed, session],
                        [sweep_plot, sweep_progress, sweep_table, sweep_csv], api_name="sweep",
                        concurrency_limit=1, concurrency_id="train").then(
            show_history, session, [history_table, history_plot], api_name="history_after_sweep")
        sweep_stop.click(stop_run, session, sweep_progress, api_name="stop_sweep")
        history_btn.click(show_history, session, [history_table, history_plot], api_name="refresh_history")
        export_btn.click(export_history, session, history_csv, api_name="export_history")

        listing = [adapters_table, picked, adapter, adapter_msg]
        adapters_tab.select(refreshed, [session, picked], listing, api_name="list_adapters")
        adapters_table.select(adapter_row, None, picked, api_name="pick_adapter_row")
        picked.change(adapter_details, picked, details, api_name="adapter_details")
        save_btn.click(save_run, [save_name, session], listing, api_name="save_adapter")
        download_btn.click(download, picked, zip_out, api_name="download_adapter")
        upload_btn.click(upload, [upload_file, upload_name, session], listing, api_name="upload_adapter")
        delete_btn.click(delete, [picked, session], listing, api_name="delete_adapter")
    # A full queue answers "Queue is full" at once, rather than letting waits grow without end.
    return demo.queue(max_size=max_queue, default_concurrency_limit=4)


def warm_up(model: str) -> None:
    with contextlib.suppress(*USER_ERRORS, OSError):
        load_base(model)


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=os.environ.get("TUNING_MODEL", DEFAULT_MODEL))
    parser.add_argument("--dataset", default=os.environ.get("TUNING_DATASET", DEFAULT_DATASET))
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=_env_int("GRADIO_SERVER_PORT", 7860))
    parser.add_argument("--share", action="store_true", help="also serve on a public gradio.live link")
    parser.add_argument("--adapters-dir", default=os.environ.get("TUNING_ADAPTERS_DIR", str(adapters.DEFAULT_ROOT)))
    parser.add_argument("--max-epochs", type=int, default=_env_int("TUNING_MAX_EPOCHS", 50), help="1-50")
    parser.add_argument("--max-steps", type=int, default=_env_int("TUNING_MAX_STEPS", 2000),
                        help="longest run a user may start, in optimizer steps")
    parser.add_argument("--max-adapters", type=int, default=_env_int("TUNING_MAX_ADAPTERS", 200),
                        help="saved adapters kept on this server, all visitors together")
    parser.add_argument("--max-adapter-bytes", type=int, default=_env_int("TUNING_MAX_ADAPTER_BYTES", 500 * 2**20),
                        help="total size of the saved adapters, in bytes")
    parser.add_argument("--max-queue", type=int, default=_env_int("TUNING_MAX_QUEUE", 64),
                        help="events waiting at once; one more is answered 'queue is full'")
    args = parser.parse_args()
    app = build_app(args.model, args.dataset, args.adapters_dir, args.max_epochs, args.max_steps,
                    args.max_adapters, args.max_adapter_bytes, args.max_queue)
    # Load the base model while the page comes up, so the first Train click does not wait for it.
    # A failure here is not cached: the first request that needs the model tries again and says why.
    threading.Thread(target=warm_up, args=(args.model,), daemon=True, name="load-base").start()
    app.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_BYTES)
