"""A page to *see* prompt tuning: pick an act, train a soft prompt, watch the loss, compare base and tuned.

Thin on purpose. The file reads top to bottom as:
1. `Context` (what the whole process shares: model, dataset, adapters folder, caps, the job
   registry) and `Session` (what one browser keeps: its act and its runs);
2. checked inputs and the error boundary (every value a client sends is checked on the server);
3. plain helpers that turn engine results into tables and charts;
4. one section per tab: its callbacks (module-level functions given the context explicitly),
   then its builder (`dataset_tab(ctx, session)`, ...) holding the tab's layout *and* wiring;
5. `build_app`, which composes the tabs and the few links between them.

Everything a test would want to check without a server lives in `tuning/` (planning a run,
turning events into a chart, the job registry). A training runs in a thread owned by
`tuning.jobs.Jobs`, so a reloaded page (same browser) re-attaches to it.

    python app.py --model openai-community/gpt2 --dataset fka/awesome-chatgpt-prompts
"""

from __future__ import annotations

try:  # before torch: on a ZeroGPU Space `spaces` patches it; elsewhere spaces.GPU returns the function as it is
    import spaces
except ImportError:  # not installed (Spaces installs its own; it is not in requirements.txt)
    spaces = None

import argparse
import asyncio
import contextlib
import csv
import functools
import inspect
import logging
import math
import os
import secrets
import stat
import tempfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import gradio as gr
import pandas as pd
import torch

from tuning import adapters, evaluate, gpu, hub, reference, report, sweep
from tuning.adapters import AdapterError
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL, TuneConfig, same_model
from tuning.data import DataError, Row, find_act, load_rows, matching, source_note
from tuning.generate import Decoding, GenerationError, decode_pace, fit_input
from tuning.jobs import Job, Jobs
from tuning.model import ModelError, SoftPrompt, load_base
from tuning.formatting import duration, number, plural
from tuning.history import held_out_points
from tuning.plan import PlanError, checked_config, config_error, estimate_seconds, plan_run, plan_sweep, train_tokens
from tuning.progress import SERIES, ReferenceView, RunView, SweepView
from tuning.events import Done, Snapshot, Step, TrainingError
from tuning.history import saved_history, trained_so_far
from tuning.rows import held_out_for
from tuning.train import resume_config, resume_note

log = logging.getLogger("tuning.app")

SESSION_RUN = "this session's run"  # API alias for the newest run of the session
NEW_PROMPT = "a new prompt"  # the Train tab's "Continue from" when nothing is resumed
NO_PROMPT = "(none)"  # Compare's second prompt, off
REFERENCE_OWNER = "reference adapters"  # the job registry's owner of the background reference training
HIDDEN = {"api_visibility": "undocumented"}  # the tabs' events: callable by clients, not the documented API (4g)
INITS = {"the words \"I want you to act as\"": "instruction", "random": "random",
         "text: the current act's prompt": "text", "sampled vocabulary": "sample_vocab"}
NEAREST_K = 5  # vocabulary tokens shown beside each virtual token (Evaluate)
DATA_CHOICES = ("all training acts", "only the current act", "selected acts")
COLOURS = {"train": "#2563eb", "held-out": "#ea580c", "base held-out": "#9ca3af"}  # one run's chart
PRESETS = {"5 tokens × 5 epochs": (5, 5), "20 tokens × 10 epochs": (20, 10)}
OUT_OF_MEMORY = "out of memory: try fewer virtual tokens, a smaller batch or a shorter run"
USER_ERRORS = (DataError, ModelError, AdapterError, GenerationError, TrainingError, PlanError, hub.HubError)
MAX_UPLOAD_BYTES = 50 * 2**20  # uncompressed; a GPT-2 prompt of 100 tokens is 300 KB
MAX_UPLOAD_FILES = 16
MAX_ZIP_ENTRIES = 64  # files and folders together: a zip of a million empty folders is a bomb too
MAX_ZIP_DEPTH = 3  # path parts of a member: "a/b/adapter_config.json"
MAX_INPUT_CHARS = 4_000  # compare input; GPT-2's whole context is about 4,000 characters of English
MAX_FIELD_CHARS = 200  # act names, searches, adapter names
MAX_HISTORY = 20  # runs kept per browser; the oldest go first
MAX_NEW_TOKENS = 512  # a Compare continuation, on the page and through the API
NOTHING_GENERATED = "(no text: the model ended its answer at once)"
SAMPLING_ONLY = "when sampling"
MAX_CELLS = 12  # sweep grid cells per click
MAX_API_TRAININGS = 64  # trainings started through the API whose status is kept
GAIN_SCALE = 1.0  # nats of per-token gain drawn at full colour: the legend's −1…+1 is in nats
# Twelve hues, each dark and light (matplotlib's tab20 without its grey, which is the base line's,
# and three of tab20b): a sweep's 12 cells get a hue each (held-out dark, train light); the run
# history's 20 runs get 20 different colours, every dark one before any light one.
PAIRS = [("#1f77b4", "#aec7e8"), ("#ff7f0e", "#ffbb78"), ("#2ca02c", "#98df8a"), ("#d62728", "#ff9896"),
         ("#9467bd", "#c5b0d5"), ("#8c564b", "#c49c94"), ("#e377c2", "#f7b6d2"), ("#bcbd22", "#dbdb8d"),
         ("#17becf", "#9edae5"), ("#393b79", "#9c9ede"), ("#637939", "#cedb9c"), ("#843c39", "#e7969c")]
PALETTE = [dark for dark, _ in PAIRS] + [light for _, light in PAIRS]


def on_gpu(fn: Callable, duration: Callable) -> Callable:
    """`fn` as a ZeroGPU call (`spaces.GPU`, its `duration` computed from the call's arguments).

    On a ZeroGPU Space the call runs in a worker that borrows a GPU; anywhere else (no `spaces`,
    or `spaces` off ZeroGPU) it runs here. What `tuning.gpu` guarantees for it: arguments and
    results pickle, the model moves to the GPU inside the call, a stop crosses as a file, and an
    error inside comes out as an event and is raised again here with its sentence (`gpu.carrying`).
    """
    carried = gpu.carrying(fn)
    call = spaces.GPU(duration=duration)(carried) if spaces is not None else carried

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return gpu.reraising(call(*args, **kwargs))
    return run


# One training, one sweep, one generation, one evaluation: each owns the GPU for its call only.
TRAIN_ON_GPU = on_gpu(gpu.train_run, gpu.train_duration)
SWEEP_ON_GPU = on_gpu(gpu.sweep_run, gpu.sweep_duration)
GENERATE_ON_GPU = on_gpu(gpu.generate_run, gpu.generate_duration)
EVALUATE_ON_GPU = on_gpu(gpu.evaluate_run, gpu.evaluate_duration)


def stoppable(stop: threading.Event, events, flag: gpu.StopFlag):
    """Pass `events` on; a `stop` set meanwhile is handed to the run through `flag` (which a GPU worker sees)."""
    try:
        for event in events:
            if stop.is_set():
                flag.set()
            yield event
    finally:
        flag.remove()


# ---------------------------------------------------------------------------------------
# 1. what the process shares, what a browser keeps


_rows: dict[str, tuple[Row, ...]] = {}


def dataset_rows(source: str) -> tuple[Row, ...]:
    """The dataset's rows, read once per process (a failed read is retried next time).

    Rows from the shipped snapshot (the Hub did not answer) are not kept: the next call asks the
    Hub again, at most once a minute (data.load_rows), so a server that comes online gets the real ones.
    """
    if source not in _rows:
        rows = tuple(load_rows(source))
        if source_note(source) is not None:
            return rows
        _rows[source] = rows
    return _rows[source]


def short_name(source: str) -> str:
    """A Hub id as it is; a local path by its last part: '/srv/models/tiny-gpt2' -> 'tiny-gpt2'."""
    return Path(source).name if os.path.exists(source) else source


@dataclass(frozen=True)
class Context:
    """What every session of this process shares. The model and rows load on first use."""

    model: str = DEFAULT_MODEL
    dataset: str = DEFAULT_DATASET
    root: Path = adapters.DEFAULT_ROOT  # the adapters folder
    max_epochs: int = 50
    max_steps: int = 2000
    max_adapters: int = 200  # all visitors together
    max_adapter_bytes: int = 500 * 2**20
    jobs: Jobs = field(default_factory=Jobs)
    hub_model: str | None = None  # the Hub id of `model` when it is a local copy: model cards must name one
    api_trainings: dict = field(default_factory=dict)  # job id -> ApiTraining, oldest first

    def base(self):
        with user_errors():
            base = load_base(self.model)
        base.hub_id = self.hub_model  # a local copy: adapters trained on (or pulled for) its Hub id fit it
        return base

    def rows(self) -> tuple[Row, ...]:
        with user_errors():
            return dataset_rows(self.dataset)

    def adapters(self) -> list[dict]:
        """The saved adapters, newest first: list them once per click and pass the list on."""
        return adapters.list_adapters(self.root)

    def prompts(self) -> list[dict]:
        """The saved adapters this server's model can use (a shared folder may hold other models' too)."""
        names = [self.model] + ([self.hub_model] if self.hub_model else [])
        return [a for a in self.adapters()
                if a["base_model"] == "unknown" or any(same_model(a["base_model"], n) for n in names)]

    @property
    def caps(self) -> dict:
        return dict(max_count=self.max_adapters, max_bytes=self.max_adapter_bytes)


@dataclass
class Run:
    """One finished (or stopped) run of a session, selectable by its name everywhere."""

    name: str  # "#3 Rapper 20×10 · 14:05"
    soft: SoftPrompt
    steps_per_epoch: int  # to place each epoch's held-out loss on the step axis

    @property
    def settings(self) -> str:
        c = self.soft.config
        return (f"{plural(c.num_virtual_tokens, 'token')}, {plural(c.epochs, 'epoch')}, lr {c.learning_rate:g}, batch {c.batch_size}, "
                f"init {c.init}, seed {c.seed}")


@dataclass
class Session:
    """One browser: its current act and its runs. Kept by the job registry, so a reload finds it again."""

    owner: str | None = None  # the browser's id (gr.BrowserState); None for API clients
    act: Row | None = None
    runs: list[Run] = field(default_factory=list)  # the last MAX_HISTORY runs, oldest first
    run_count: int = 0  # runs ever finished here, so names stay unique after old ones drop out

    def remember(self, soft: SoftPrompt, what: str, steps_per_epoch: int) -> Run:
        """Add `soft` as "#n <what> <tokens>×<epochs> · HH:MM"."""
        self.run_count += 1
        c = soft.config
        name = f"#{self.run_count} {what} {sweep.label(c.num_virtual_tokens, c.epochs)} · {datetime.now():%H:%M}"
        self.runs = (self.runs + [Run(name, soft, steps_per_epoch)])[-MAX_HISTORY:]
        return self.runs[-1]

    def run(self, name: str) -> Run | None:
        """The run called `name` (SESSION_RUN: the newest), or None."""
        if name == SESSION_RUN:
            return self.runs[-1] if self.runs else None
        return next((r for r in self.runs if r.name == name), None)


def owner_of(session: Session, request: gr.Request | None) -> str:
    """Who owns this session's jobs: its browser when known, else the connection (an API client).

    A client chooses its own session hash: "client:" keeps it from naming another owner (the
    reference training's, or a browser's id, which has no colon).
    """
    return session.owner or f"client:{request.session_hash if request else 'anonymous'}"


def bind(fn: Callable, ctx: Context) -> Callable:
    """`fn` with its first argument (the context) given, keeping the signature Gradio reads.

    Gradio finds `gr.Request`, `gr.Progress` and `gr.SelectData` parameters by signature and
    streams generator functions; `functools.partial` hides both, so this wrapper keeps them.
    """
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def call(*args, **kwargs):
            yield from fn(ctx, *args, **kwargs)
    else:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            return fn(ctx, *args, **kwargs)
    signature = inspect.signature(fn)
    call.__signature__ = signature.replace(parameters=list(signature.parameters.values())[1:])
    del call.__wrapped__
    return call


# ---------------------------------------------------------------------------------------
# 2. every value a client sends is checked here: the browser's limits (a slider's range, a
# textbox's max length) do not bind a raw API call, which can send any JSON in any field.


def refuse(message: str) -> gr.Error:
    """The one sentence a visitor sees; the server logs that line, not a traceback (it is not our bug)."""
    log.info("refused: %s", message)
    return gr.Error(message, print_exception=False)


@contextlib.contextmanager
def user_errors():
    """Turn an error the user can fix into one sentence on the page (and one log line); our own bugs still raise."""
    try:
        yield
    except USER_ERRORS as e:
        raise refuse(str(e)) from None
    except RuntimeError as e:  # torch.OutOfMemoryError is a RuntimeError too
        if "out of memory" not in str(e).lower():
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # hand the failed run's blocks back, so the next request can have them
        log.warning("out of memory: %s", str(e)[:200])
        raise gr.Error(OUT_OF_MEMORY, print_exception=False) from None


@contextlib.contextmanager
def disk_errors(doing: str = "write the adapter"):
    """A failed write or delete (disk full, read-only folder) is one sentence; adapters.save has already cleaned up."""
    try:
        yield
    except OSError as e:
        log.warning("could not %s: %s", doing, e)
        raise gr.Error(f"the server could not {doing} ({e.strerror or e}); nothing was changed",
                       print_exception=False) from None


def checked_text(value, label: str, max_chars: int) -> str:
    """`value` if it is text we can use, else gr.Error naming the problem in one sentence.

    None -> ''. 'مرحبا 👋' -> 'مرحبا 👋'. 'a\x00b', '\ud800' (a lone surrogate), 5 or 100,000 characters -> gr.Error.
    """
    if value is None:
        return ""
    if not isinstance(value, str):
        raise refuse(f"{label} must be text, got {type(value).__name__}")
    if len(value) > max_chars:
        raise refuse(f"{label} is {len(value):,} characters; this server takes at most {max_chars:,}")
    if "\x00" in value:
        raise refuse(f"{label} contains a NUL character; remove it and try again")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON can carry one, nothing after this can
        raise refuse(f"{label} contains broken Unicode (a lone surrogate); paste it again as plain text") from None
    return value


def checked_number(value, label: str) -> float | int:
    """`value` if it is a finite int or float; 'abc', True, None, NaN, infinity -> gr.Error."""
    if value is None or value == "":  # a field the visitor cleared
        raise refuse(f"{label} is empty: enter a number")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise refuse(f"{label} must be a number, got {value!r}"[:200])
    if not math.isfinite(value):
        raise refuse(f"{label} must be a finite number, got {value}")
    return value


def checked_whole(value, label: str, lo: int, hi: int) -> int:
    """`value` as an int from `lo` to `hi` (20.0 is 20); 2.5, 'abc' or out of range -> gr.Error."""
    n = whole(checked_number(value, label))
    if not isinstance(n, int) or not lo <= n <= hi:
        raise refuse(f"{label} must be a whole number from {lo} to {hi}, got {value}")
    return n


def checked_name(value, label: str = "the adapter name") -> str | None:
    """A dropdown value that allows custom text: None, or text of at most 200 characters."""
    return checked_text(value, label, MAX_FIELD_CHARS) or None


def whole(value):
    """20.0 -> 20 (sliders and clients send floats); 2.5 stays 2.5 so TuneConfig names it."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


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
        raise refuse(f"{component.label}: {e.message}") from None


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


# ---------------------------------------------------------------------------------------
# 3. tables and charts


def acts_frame(rows, query: str = "") -> pd.DataFrame:
    """Acts whose name or prompt contains `query` (any case, data.matching): act, first 80 characters, words."""
    return pd.DataFrame(
        [[r.act, r.prompt[:80] + ("…" if len(r.prompt) > 80 else ""), len(r.prompt.split())]
         for r in matching(rows, query or "")],
        columns=["act", "prompt", "words"],
    )


def act_line(act: Row | None) -> str:
    return f"**Current act:** {act.act}" if act else "**Current act:** none yet: pick one in the Dataset tab"


def first_cell(evt: gr.SelectData) -> str:
    """The first cell of the clicked table row (an act's or an adapter's name)."""
    return evt.row_value[0]


def loss_frame(points: list[tuple[int, float, str]], series) -> pd.DataFrame:
    """A loss chart's data: one row per point, plus an empty (NaN) row per series.

    The empty rows are a workaround: Gradio 6's LinePlot fixes its colour legend from the first
    value it shows, so a series that appears later (held-out after epoch 1) would never be drawn.
    A series with one point so far (the first held-out loss, a 1-step run) is drawn flat from
    step 0: the LinePlot draws no line through a lone point, and shows points only on hover.
    """
    counts = pd.Series([s for _, _, s in points], dtype=str).value_counts()
    lone = [(0, y, s) for x, y, s in points if counts.get(s) == 1 and x > 0]
    frame = pd.DataFrame([(0, math.nan, s) for s in series] + lone + points, columns=["step", "loss", "series"])
    return frame.astype({"step": int, "loss": float, "series": str})


def colours(series) -> dict[str, str]:
    """A colour per series name, in order, cycling through PALETTE.

    A new colour_map is also how a chart gets series that were not in its first value: Gradio 6's
    LinePlot takes its legend from the data when it builds the chart, and rebuilds only when a
    setting such as the colour map changes, not when the data does. The rebuild races the data
    update it comes with, so send the data first and the new map with the same data after it.
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(series))}


def cell_colours(labels: list[str]) -> dict[str, str]:
    """A sweep's series colours: one hue per cell, its held-out loss dark and its training loss light."""
    palette = {"base held-out": COLOURS["base held-out"]}
    for i, name in enumerate(labels):
        dark, light = PAIRS[i % len(PAIRS)]
        palette |= {f"{name} train": light, f"{name} held-out": dark}
    return palette


def adapters_frame(listing: list[dict]) -> pd.DataFrame:
    """One row per adapter; its held-out perplexity as the rest of the app shows it, and as a share of the base model's
    on the same rows (each adapter's own held-out acts: a one-act prompt holds out others than an all-acts one)."""
    rows = []
    for a in listing:
        tuned, base = adapters.held_out_perplexity(a["metrics"])
        share = f"{tuned / base:.2f}×" if tuned is not None and base else "–"
        rows.append([a["name"], a["num_virtual_tokens"], a["config"].get("epochs"), number(tuned, ".2f"), share,
                     a["created"].replace("T", " ")[:16], short_name(a["base_model"])])
    return pd.DataFrame(rows, columns=["name", "tokens", "epochs", "held-out ppl", "× base", "created", "base model"])



def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when nothing was measured: 2.0 -> 7.389…"""
    return None if loss is None else math.exp(loss)


def history_frame(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in runs:
        m, h = r.soft.meta["metrics"], r.soft.meta["history"]
        rows.append([r.name, r.settings, len(h["step"]), number(h["train_loss"][-1]), number(m["held_out_loss"]),
                     number(perplexity(m["held_out_loss"]), ".2f"), number(perplexity(m["base_held_out_loss"]), ".2f"),
                     "stopped" if r.soft.meta.get("stopped") else "done"])
    return pd.DataFrame(rows, columns=["run", "settings", "steps", "last train loss", "held-out loss",
                                       "held-out ppl", "base held-out ppl", "status"])


def history_chart(runs: list[Run]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every run's training loss per step, one series per run name; and the colours."""
    points = [(s, loss, r.name) for r in runs
              for s, loss in zip(r.soft.meta["history"]["step"], r.soft.meta["history"]["train_loss"])]
    names = [r.name for r in runs]
    return loss_frame(points, names), colours(names)


def write_history_csv(runs: list[Run], path: Path) -> Path:
    """run, settings, step, epoch, train_loss, held_out_loss: a row per step, then a row per epoch's held-out loss."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "settings", "step", "epoch", "train_loss", "held_out_loss"])
        for r in runs:
            h = r.soft.meta["history"]
            for step, loss in zip(h["step"], h["train_loss"]):
                writer.writerow([r.name, r.settings, step, "", loss, ""])
            held = [e for e, loss in zip(h["epoch"], h["held_out_loss"]) if loss is not None]
            for (step, loss, _), epoch in zip(held_out_points(h, r.steps_per_epoch), held):
                writer.writerow([r.name, r.settings, step, epoch, "", loss])
    return path


def gain_scores(gains: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Per-token gains in nats -> HighlightedText scores in [-1, 1] (full colour at ±GAIN_SCALE nats).

    [(' rapper', 3.1), ('.', -0.5)] -> [(' rapper', 1.0), ('.', -0.5)]
    """
    return [(token, max(-1.0, min(1.0, gain / GAIN_SCALE))) for token, gain in gains]


def gains_summary(act: str, gains: list[tuple[str, float]], note: str = "") -> str:
    """The total (base loss − tuned loss, summed over the tokens) and the tokens that moved most."""
    total = sum(g for _, g in gains)
    ranked = sorted(gains, key=lambda tg: tg[1])
    up = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in reversed(ranked[-3:]) if g > 0) or "none"
    down = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in ranked[:3] if g < 0) or "none"
    return (f"{note}**{act}**: over its {plural(len(gains), 'scored token')} the tuned model gains **{total:+.2f} nats** "
            f"(base loss − tuned loss, summed; {total / len(gains):+.3f} per token).  \n"
            f"Most helped: {up}. Most hurt: {down}.")


def nearest_frame(nearest: list[list[tuple[str, float]]]) -> pd.DataFrame:
    """One row per virtual token: its index, then its nearest vocabulary tokens as "'token' 0.23"."""
    k = max((len(n) for n in nearest), default=NEAREST_K)  # empty: the headers a result will have
    rows = [[i] + [f"{t!r} {s:.2f}" for t, s in n] for i, n in enumerate(nearest)]
    return pd.DataFrame(rows, columns=["virtual token"] + [f"nearest {j + 1}" for j in range(k)])


def shown_text(text: str) -> str:
    """A finished continuation as shown: an empty one says the model ended at once (not "still waiting")."""
    return text if text.strip() else NOTHING_GENERATED


def rouge_frame(scored: list[dict]) -> pd.DataFrame:
    rows = [[r["act"], shown_text(r["base_text"]), shown_text(r["tuned_text"]), round(r["base_rouge"], 3),
             round(r["tuned_rouge"], 3)] for r in scored]
    return pd.DataFrame(rows, columns=["act", "base text", "tuned text", "base ROUGE-L", "tuned ROUGE-L"])


def bars(values: dict[str, float | None], metric: str, spec: str) -> pd.DataFrame:
    """Bar chart data whose labels carry the values ('base 34.52'): Gradio's BarPlot draws no value labels."""
    rows = [[f"{side} {value:{spec}}", side, value] for side, value in values.items() if value is not None]
    return pd.DataFrame(rows, columns=["label", "model", metric])


SWEEP_COLUMNS = ["cell", "tokens", "epochs", "held-out ppl base", "held-out ppl tuned", "ROUGE-L base", "ROUGE-L tuned",
                 "seconds"]


def sweep_frame(results: list[sweep.CellResult]) -> pd.DataFrame:
    rows = [[r.label + (" (stopped)" if r.stopped else ""), r.num_virtual_tokens, r.epochs,
             number(r.held_out_ppl_base, ".2f"), number(r.held_out_ppl_tuned, ".2f"),
             number(r.rouge_base), number(r.rouge_tuned), round(r.seconds, 1)] for r in results]
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)


# --- zips


def zip_adapter(folder: Path, dest: Path) -> Path:
    """`dest/<name>.zip` with the adapter's regular files (no symlinks, nothing from outside), under `<name>/`."""
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / f"{folder.name}.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for file in sorted(folder.iterdir()):
            if file.is_file() and not file.is_symlink():
                z.write(file, f"{folder.name}/{file.name}")
    return path


def _check_zip_entries(entries: list[zipfile.ZipInfo]) -> None:
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
        _check_zip_entries(z.infolist())
        written = 0
        for m in (m for m in z.infolist() if not m.is_dir()):
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


# ---------------------------------------------------------------------------------------
# 4a. the Dataset tab


def attach(ctx: Context, browser_id: str | None, session: Session):
    """The page loaded: find this browser's session (a reload keeps its runs) and give a new browser an id."""
    if not isinstance(browser_id, str) or not 16 <= len(browser_id) <= 64 or not browser_id.isalnum():
        browser_id = secrets.token_hex(16)  # a new browser (or a value nobody should have sent)
    session = ctx.jobs.state(browser_id, lambda: Session(owner=browser_id))
    return session, browser_id


def load_page(ctx: Context):
    try:
        rows = dataset_rows(ctx.dataset)
        table, names, status = acts_frame(rows), [r.act for r in rows], source_note(ctx.dataset) or ""
    except DataError as e:
        gr.Warning(str(e))
        table, names, status = acts_frame([]), [], f"⚠️ {e}"
    return table, gr.Dropdown(choices=names), status, adapters_frame(ctx.adapters())


def search_acts(ctx: Context, query: str) -> pd.DataFrame:
    return acts_frame(ctx.rows(), query)


def search_after_load(ctx: Context, query: str):
    """A search typed while the page loaded, applied again: the whole table the load sent came after it.

    The first load may download the dataset; a search typed meanwhile was shown, then overwritten.
    """
    return search_acts(ctx, query) if query else gr.skip()


def restore_act(session: Session):
    """After a reload: the act this browser picked before, in every place that shows it (it is what Train uses)."""
    if session.act is None:
        return (gr.update(),) * 6
    return session.act.act, *shown_act(session.act)


def select_act(ctx: Context, name: str, session: Session):
    with user_errors():
        session.act = find_act(ctx.rows(), name)
    return shown_act(session.act)


def shown_act(act: Row) -> tuple:
    """(whole prompt, Train's act line, Compare's, Compare's input, the tab's act name) for a picked act."""
    line = act_line(act)
    return act.prompt, line, line, evaluate.act_instruction(act.act), act.act


class DatasetTab(NamedTuple):
    act_name: gr.Textbox
    acts_table: gr.Dataframe
    full_prompt: gr.Textbox
    search: gr.Textbox


def dataset_tab(ctx: Context) -> DatasetTab:
    search = Text(label="Search acts", max_length=MAX_FIELD_CHARS, placeholder="rapper, terminal, poet…")
    acts_table = gr.Dataframe(label="Acts (click a row to pick it)", interactive=False, wrap=True,
                              column_widths=["26%", "58%", "16%"], max_height=420)
    act_name = Text(label="Act (or type a name and press Enter)", max_length=MAX_FIELD_CHARS)
    full_prompt = gr.Textbox(label="Whole prompt", lines=6, interactive=False)
    search.change(bind(search_acts, ctx), search, acts_table, api_name="search_acts", **HIDDEN)
    return DatasetTab(act_name, acts_table, full_prompt, search)


# ---------------------------------------------------------------------------------------
# 4b. the Train tab


def prompt_names(session: Session, listing: list[dict]) -> list[str]:
    """This session's runs (newest first), then the saved adapters."""
    return [r.name for r in reversed(session.runs)] + [a["name"] for a in listing]


def run_choices(session: Session, listing: list[dict], current: str | None = None) -> gr.Dropdown:
    """The tuned prompts a visitor can pick; keeps `current` when it is still there, else the newest."""
    choices = prompt_names(session, listing)
    if current == SESSION_RUN and session.runs:
        current = session.runs[-1].name
    return gr.Dropdown(choices=choices, value=current if current in choices else (choices[0] if choices else None))


def train_config(ctx: Context, session: Session, tokens, epochs, lr, batch, init, data, chosen, seed,
                 tab_act: str | None = None) -> TuneConfig:
    """The widgets' values as a checked TuneConfig; one sentence naming the field by its label when one is wrong.

    `tab_act`: the act this tab shows (two tabs of one browser may show two). A tab that shows
    none trains on none, even when another tab of the browser has picked one.
    """
    chosen = chosen or []
    if not isinstance(chosen, list) or not all(isinstance(c, str) for c in chosen):
        raise refuse("selected acts must be a list of act names")
    current = None
    if isinstance(tab_act, str) and tab_act:
        with user_errors():
            current = find_act(ctx.rows(), tab_act)
    if data == "only the current act" and not current:
        raise refuse("pick an act in the Dataset tab first (or train on all acts)")
    acts = [current.act] if data == "only the current act" else chosen if data == "selected acts" else []
    if data == "selected acts" and not acts:
        raise refuse("choose at least one act for 'selected acts'")
    use_text = INITS.get(init) == "text"
    if use_text and not current:  # the engine would start from whichever training row comes first
        raise refuse("pick an act in the Dataset tab first: the prompt starts from the current act's text")
    with user_errors():
        return checked_config(
            model=ctx.model, dataset=ctx.dataset, num_virtual_tokens=whole(tokens), epochs=whole(epochs),
            learning_rate=lr, batch_size=whole(batch), seed=whole(seed), init=INITS.get(init, init),
            init_text=current.prompt if use_text else None, acts=tuple(acts),
        )


def follow(ctx: Context, job: Job, session_hash: str, render: Callable):
    """Yield `render(view)` each time the job has news, from its first event to its end; then its error, worded.

    Any number of tabs may follow one job (a reload re-attaches); the job stops on its own
    `ctx.jobs.grace` seconds after its last follower has gone.
    """
    ctx.jobs.follow(job, session_hash)
    seen = -1
    try:
        while True:
            count = job.wait(seen, timeout=1.0)
            with job.lock:
                finished = job.finished
                if finished and job.error is not None:  # the line must not go on saying "about 6m left"
                    job.view.progress = f"failed: {failure(job.error)}"
                elif finished and not job.view.finished:
                    job.view.progress = "stopped before its first step: nothing to keep"
                update = render(job.view)
            if count != seen or finished:
                seen = count
                yield update
            if finished:
                break
    finally:
        ctx.jobs.leave(session_hash)
    if job.error is not None:
        with user_errors():
            raise job.error


def failure(error: BaseException) -> str:
    """A failed job's error as the progress line words it: the sentence `user_errors` shows, else a generic one."""
    if isinstance(error, USER_ERRORS):
        return str(error)
    if isinstance(error, RuntimeError) and "out of memory" in str(error).lower():
        return OUT_OF_MEMORY
    return "an error on the server (it is in the server's log)"


def step_axis(last_step: int) -> list[int]:
    """A chart's step axis: the whole planned run, at least 20 steps (fewer would get ticks at half steps)."""
    return [0, max(last_step, 20)]


def run_update(view: RunView) -> tuple:
    """(chart, progress line, log) of a training.

    The step axis spans the whole planned run (at least 20 steps, so its ticks are whole steps):
    the curve grows left to right, and how far along the run is shows at a glance.
    """
    chart = gr.LinePlot(loss_frame(list(view.points), SERIES), x_lim=step_axis(view.step_cap))
    return chart, view.progress, "\n".join(view.log)


def start_job(ctx: Context, job: Job) -> Job:
    try:
        return ctx.jobs.start(job)
    except RuntimeError as e:  # this browser already runs one
        raise refuse(f"{e}: stop it first, or wait for it to end") from None


def resumed(ctx: Context, session: Session, resume, epochs, lr, batch) -> tuple[SoftPrompt, str, TuneConfig] | None:
    """(prompt, its name, the settings) when the visitor continues a prompt; None for a new one."""
    name = checked_name(resume, "Continue from")
    if name in (None, NEW_PROMPT):
        return None
    soft = pick_soft(ctx, name, session)
    with user_errors():
        try:
            # it trains here, on this server's model and dataset: the settings must say so (the adapter may be another's)
            return soft, name, resume_config(soft, whole(epochs), learning_rate=lr, batch_size=whole(batch),
                                             model=ctx.model, dataset=ctx.dataset)
        except ValueError as e:
            raise config_error(e) from None


def start_training(ctx: Context, tokens, epochs, lr, batch, init, data, chosen, seed, session: Session,
                   request: gr.Request, resume=NEW_PROMPT, tab_act: str | None = None):
    """Plan the run, start it in the job registry, then stream it (a reloaded page re-attaches with `reattach`)."""
    job = training_job(ctx, tokens, epochs, lr, batch, init, data, chosen, seed, session, owner_of(session, request),
                       resume, tab_act)
    yield from follow(ctx, start_job(ctx, job), request.session_hash, run_update)


def training_job(ctx: Context, tokens, epochs, lr, batch, init, data, chosen, seed, session: Session, owner: str,
                 resume=NEW_PROMPT, tab_act: str | None = None, when_done: Callable[[Run], None] | None = None) -> Job:
    """The planned, checked training as a job not yet started; its run joins `session` when it ends.

    `when_done(run)` runs in the job's thread after the run has joined the session (an API
    training saves its adapter there, whether or not anyone is still asking).
    """
    continued = resumed(ctx, session, resume, epochs, lr, batch)
    config = continued[2] if continued else train_config(ctx, session, tokens, epochs, lr, batch, init, data, chosen,
                                                         seed, tab_act)
    with user_errors():
        plan = plan_run(ctx.rows(), config, ctx.max_steps, ctx.max_epochs)
        base = ctx.base()
        before = trained_so_far(continued[0]) if continued else (0, 0)
        history = saved_history(continued[0]) if continued else None  # TrainingError: not in training's form
        if gpu.zero_gpu():  # a run that would outlast one GPU call is refused now, not cut off later
            gpu.check_fits(gpu.training_seconds(base, plan.train_rows, plan.config, plan.held_out_rows))
    acts = plan.config.acts
    what = acts[0] if len(acts) == 1 else plural(len(acts), "act") if acts else "all acts"
    view = RunView(before[0] + plan.step_cap, before[1] + plan.config.epochs, plan.config.batch_size, plan.notes)
    if continued:
        view.continue_from(history, plan.steps_per_epoch)  # empty for a plain PEFT adapter
        if note := resume_note(continued[0]):
            view.log.append(f"note: {note}")
        # a run of this session: its acts ("#2 all acts continued 5×10"); an adapter: its name ("poet-5x5 continued 5×10")
        what = f"{what if continued[1].startswith('#') else continued[1]} continued"

    def events(stop: threading.Event):
        flag = gpu.StopFlag(also=stop)
        resume = dict(resume=continued[0], resume_name=continued[1]) if continued else {}
        if gpu.zero_gpu():  # the call stops itself before ZeroGPU cuts it off at its duration
            resume["seconds"] = gpu.train_duration(base, plan.train_rows, plan.config, plan.held_out_rows)
        run, snapshot = TRAIN_ON_GPU(base, plan.train_rows, plan.config, plan.held_out_rows, flag, **resume), None
        try:
            for event in stoppable(stop, run, flag):
                if isinstance(event, Snapshot):  # kept here, not replayed to the page
                    snapshot = event
                    continue
                if isinstance(event, Step) and event.step >= view.step_cap:
                    stop.set()  # the server's step cap
                    flag.set()
                if isinstance(event, Done):
                    finish(event)
                yield event
        except gr.Error as e:  # ZeroGPU ended the call ("GPU task aborted"): keep what it learned, as a Stop does
            if snapshot is None:
                raise
            log.warning("the GPU call ended (%s); keeping the prompt of step %d", e, snapshot.step)
            done = Done(snapshot.soft, stopped=True, steps=snapshot.step - before[0], elapsed=snapshot.elapsed)
            finish(done)
            yield done

    def finish(done: Done) -> None:
        gpu.note_run(done)  # a GPU run's speed: the next duration estimate goes by it
        run = session.remember(done.soft, what, plan.steps_per_epoch)
        if when_done is not None:
            when_done(run)

    def waiting() -> None:
        view.progress = ("waiting: the reference adapters are training; they step aside for yours after their "
                         "current step" if ctx.jobs.slot.held_in_background else
                         "waiting: another run is training on this server; yours starts when it ends")

    return Job(owner, f"a training ({what})", events, view.add, ctx.jobs.slot, on_wait=waiting, view=view)


def reattach(ctx: Context, session: Session, request: gr.Request):
    """After a reload: if this browser's training still runs, show it again and follow it to the end."""
    job = ctx.jobs.running(session.owner)
    if job is None or not isinstance(job.view, RunView):
        # nothing to follow: leave the tab as it is. A generator that ends without yielding blanks
        # its outputs in the browser (the "not started" line, the empty chart)
        yield (gr.skip(),) * 3
        return
    yield from follow(ctx, job, request.session_hash, run_update)


def reattach_sweep(ctx: Context, session: Session, request: gr.Request):
    """After a reload: if this browser's sweep still runs, show it again in the Sweep tab and follow it to the end."""
    job = ctx.jobs.running(session.owner)
    if job is None or not isinstance(job.view, SweepView):
        yield (gr.skip(),) * 4  # nothing to follow: leave the tab as it is (see `reattach`)
        return
    yield from follow(ctx, job, request.session_hash, sweep_render(ctx, job.view, request.session_hash))


def stop_run(ctx: Context, session: Session, request: gr.Request, kind: type | None = None) -> str:
    """Stop this browser's running job after its step: the tab's progress line says so.

    `kind` (RunView for the Train tab, SweepView for the Sweep tab): another kind of job is
    left running, with a line that says where to stop it (this tab's line would otherwise
    say "stopping…" for good: only the job's own tab follows it).
    """
    owner = owner_of(session, request)
    job = ctx.jobs.running(owner)
    if job is None:
        return "nothing is training in this session"
    if kind is not None and not isinstance(job.view, kind):
        where = "Sweep & history" if isinstance(job.view, SweepView) else "Train"
        return f"{job.label[0].upper()}{job.label[1:]} is running in this browser: stop it in the {where} tab"
    if ctx.jobs.stop(owner) is not job:  # it ended meanwhile
        return "nothing is training in this session"
    with job.lock:
        job.view.request_stop()
        return job.view.progress


def stop_training(ctx: Context, session: Session, request: gr.Request) -> str:
    return stop_run(ctx, session, request, RunView)


def stop_sweep(ctx: Context, session: Session, request: gr.Request) -> str:
    return stop_run(ctx, session, request, SweepView)


def set_preset(ctx: Context, preset: str):
    tokens, epochs = PRESETS[preset]
    return tokens, min(epochs, ctx.max_epochs)


class TrainTab(NamedTuple):
    act: gr.Markdown
    chosen: gr.Dropdown
    lr: gr.Number
    batch: gr.Slider
    seed: gr.Number
    trained: gr.events.Dependency  # fires after a run ends, to refresh the other tabs
    plot: gr.LinePlot
    progress: gr.Markdown
    log: gr.Textbox
    tab_act: gr.State  # the act name this tab shows (set with the act lines)
    resume: gr.Dropdown  # "Continue from": offers a run as soon as it ends


def resume_choices(ctx: Context, session: Session, current: str | None = None) -> gr.Dropdown:
    choices = [NEW_PROMPT] + prompt_names(session, ctx.prompts())
    return gr.Dropdown(choices=choices, value=current if current in choices else NEW_PROMPT)


def train_tab(ctx: Context, session: gr.State, tab: gr.Tab) -> TrainTab:
    act = gr.Markdown(act_line(None))
    with gr.Row():
        with gr.Column(scale=1):
            preset = gr.Radio(list(PRESETS), label="Presets")
            tokens = Slider(1, 100, value=20, step=1, label="Virtual tokens")
            epochs = Slider(1, ctx.max_epochs, value=min(10, ctx.max_epochs), step=1, label="Epochs",
                            info=f"this server runs at most {ctx.max_epochs} epochs and {ctx.max_steps:,} steps")
            with gr.Row():
                lr = Number(TuneConfig.learning_rate, label="Learning rate")  # TuneConfig checks the range
                batch = Slider(1, 64, value=4, step=1, label="Batch size")
            init = gr.Radio(list(INITS), value=next(k for k, v in INITS.items() if v == TuneConfig().init),
                            label="Start the prompt from")
            data = gr.Radio(list(DATA_CHOICES), value=DATA_CHOICES[0], label="Train on")
            chosen = gr.Dropdown([], multiselect=True, label="Selected acts")
            seed = Number(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
            resume = gr.Dropdown([NEW_PROMPT], value=NEW_PROMPT, label="Continue from", allow_custom_value=True,
                                 info="a run or saved adapter trains *Epochs* more epochs, with its own acts and "
                                      "size and this tab's learning rate and batch size")
            with gr.Row():
                start = gr.Button("Train", variant="primary")
                stop = gr.Button("Stop", variant="stop")
        with gr.Column(scale=2):
            plot = gr.LinePlot(loss_frame([], SERIES), x="step", y="loss", color="series", height=360,
                               elem_id="loss-plot", color_map=COLOURS, title="Loss per token (nats)", y_axis_format=".2f",
                               x_title="training step", x_axis_format="d")
            progress = gr.Markdown("not started: set the prompt's size and press Train", elem_id="progress")
            log_box = gr.Textbox(label="Log", lines=8, max_lines=30, interactive=False, autoscroll=True)
    preset.input(bind(set_preset, ctx), preset, [tokens, epochs], api_name="set_preset", **HIDDEN)
    tab_act = gr.State(None)  # the act this tab shows: what "only the current act" trains on here
    trained = start.click(bind(start_training, ctx),
                          [tokens, epochs, lr, batch, init, data, chosen, seed, session, resume, tab_act],
                          [plot, progress, log_box], api_name="train", **HIDDEN, concurrency_limit=8, concurrency_id="train")
    stop.click(bind(stop_training, ctx), session, progress, api_name="stop", **HIDDEN)
    for event in (tab.select, trained.then):
        event(bind(resume_choices, ctx), [session, resume], resume, api_name=False)
    return TrainTab(act, chosen, lr, batch, seed, trained, plot, progress, log_box, tab_act, resume)


# ---------------------------------------------------------------------------------------
# 4c. the Compare tab


def pick_soft(ctx: Context, name, session: Session) -> SoftPrompt:
    """A run of this session or a saved adapter, by the name a dropdown (or a client) sent."""
    if not (name := checked_name(name)):
        line, _ = reference_status(ctx)  # a new Space: nothing to pick until the first reference is saved
        wait = f"; or wait for the reference adapters ({line.split(': ', 1)[-1]})" if line else ""
        raise refuse(f"train or pick an adapter first{wait}")
    if name == SESSION_RUN or name.startswith("#"):  # run names start with '#', adapter names cannot
        run = session.run(name)
        if run is None:
            raise refuse("this session has no run yet: train or pick an adapter first" if name == SESSION_RUN
                           else f"this session has no run named {name!r} (a browser keeps its last {MAX_HISTORY} runs, "
                           "until the server restarts; save one in the Adapters tab to keep it)")
        return run.soft
    with user_errors():
        return adapters.load(name, ctx.root, ctx.base())


def generate(ctx: Context, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session,
             adapter_b=NO_PROMPT, no_repeat=Decoding.no_repeat_ngram_size):
    """Base, prompt A and (unless NO_PROMPT) prompt B continue `text` in one batch, same decoding and seed."""
    prompts = [pick_soft(ctx, adapter, session)]
    if checked_name(adapter_b, "the second prompt") not in (None, NO_PROMPT):
        prompts.append(pick_soft(ctx, adapter_b, session))
    with user_errors():
        decoding = Decoding(
            max_new_tokens=whole(max_new), do_sample=mode == "sample", temperature=temperature,
            top_p=top_p, top_k=whole(top_k), repetition_penalty=penalty, seed=whole(seed),
            no_repeat_ngram_size=whole(no_repeat),
        )
        if cut := input_cut(ctx.base(), prompts, text, decoding.max_new_tokens):
            gr.Info(f"The input is longer than the model's context leaves room for with {decoding.max_new_tokens} new "
                    f"tokens: its first {plural(cut, 'token')} {'was' if cut == 1 else 'were'} left out.")
        texts = ("",) * (1 + len(prompts))
        for texts in GENERATE_ON_GPU(ctx.base(), prompts, text, decoding):
            yield (*texts, "") if len(texts) == 2 else texts
    # the end: a column still empty is a model that ended at once, not one still thinking (or broken)
    if not all(t.strip() for t in texts):
        final = tuple(shown_text(t) for t in texts)
        yield (*final, "") if len(final) == 2 else final


def input_cut(base, prompts: list[SoftPrompt], text, max_new_tokens: int) -> int:
    """How many tokens generation will cut from the front of `text` to fit the context (0: none)."""
    if not isinstance(text, str) or not text.strip():
        return 0  # generation says what is wrong with it
    num_virtual = max((p.num_virtual_tokens for p in prompts if isinstance(p, SoftPrompt)), default=0)
    return fit_input(base, base.encode(text), num_virtual, max_new_tokens)[1]


def newest_run(session: Session, runs_seen: int) -> str | None:
    """The session's newest run when it finished after the page last offered its prompts (`runs_seen` runs then)."""
    return session.runs[-1].name if session.runs and session.run_count > runs_seen else None


def refresh_choices(ctx: Context, session: Session, current: str | None = None, runs_seen: int = 0):
    """Evaluate's prompt dropdown (a run just finished is picked) and the session's run count."""
    return run_choices(session, ctx.prompts(), newest_run(session, runs_seen) or current), session.run_count


def compare_choices(ctx: Context, session: Session, a: str | None = None, b: str | None = None, runs_seen: int = 0,
                    arrived: bool = False):
    """Both prompt dropdowns, and the session's run count for the next call.

    A visitor's picks stay, except that a run finished since the page last offered its prompts
    takes the first dropdown: train, then Compare shows your run beside base and the second
    dropdown's prompt (the reference 20×10 when that was empty). With nothing picked the reference
    adapters (the seed's finding) open; `arrived` (a reference was just saved) opens the second
    beside the first. A second dropdown the visitor emptied stays empty otherwise.
    """
    names = prompt_names(session, ctx.prompts())
    refs = [name for name in (reference.name(ctx.model, ctx.dataset, *cell) for cell in reference.GRID) if name in names]
    fresh = newest_run(session, runs_seen)
    opening = a not in names  # nothing picked yet (a new page)
    a = fresh or (a if a in names else refs[0] if refs else names[0] if names else None)
    b = b if b in names else NO_PROMPT
    if refs and b == NO_PROMPT and (fresh or ((opening or arrived) and len(refs) == 2 and a == refs[0])):
        b = refs[-1]  # your run beside the seed's longer one; or both references side by side
    return gr.Dropdown(choices=names, value=a), gr.Dropdown(choices=[NO_PROMPT] + names, value=b), session.run_count


EMPTY_COLUMN = "Pick a tuned prompt above to fill this column."


def column_label(name: str | None) -> gr.Textbox:
    """A column named after its newly picked prompt, emptied: the text below was another prompt's.

    With no prompt picked (none saved or trained yet), the empty box says how to fill it.
    """
    if name in (None, NO_PROMPT):
        return gr.Textbox(label="Tuned", value="", placeholder=EMPTY_COLUMN)
    return gr.Textbox(label=f"Tuned: {name}", value="", placeholder="")


def third_column(name: str | None) -> gr.Textbox:
    """The second prompt's column: named and shown when one is picked, hidden when not.

    Visible but unpicked, the box sat empty under a progress spinner through every generation
    of the other two columns, as if a third answer were coming.
    """
    if name in (None, NO_PROMPT):
        return gr.Textbox(label="Tuned", value="", visible=False)
    return gr.Textbox(label=f"Tuned: {name}", value="", placeholder="", visible=True)


def reference_status(ctx: Context) -> tuple[str, int | None]:
    """(the reference adapters' progress line, how many are saved so far), or ("", None) when none train."""
    job = ctx.jobs.running(REFERENCE_OWNER)
    if job is None or not isinstance(job.view, ReferenceView):
        return "", None
    with job.lock:
        return job.view.line(job.paused), len(job.view.saved)


def reference_tick(ctx: Context, seen: int, session: Session, a: str | None, b: str | None, runs_seen: int = 0):
    """Every 2 s while the references train: the progress line, and the prompt dropdowns only when one was just saved.

    Offering the adapters lists them, which reads every one (its tensors included): not every
    2 seconds for every open page. When the training has ended, the timer stops and Compare
    opens on the references.
    """
    line, saved = reference_status(ctx)
    if saved is not None and saved == seen:
        return line, gr.Timer(active=True), seen, gr.skip(), gr.skip(), gr.skip()
    return (line, gr.Timer(active=saved is not None), saved or 0,
            *compare_choices(ctx, session, a, b, runs_seen, arrived=True))


class CompareTab(NamedTuple):
    act: gr.Markdown
    text: gr.Textbox
    adapters: list  # [prompt A, prompt B]
    runs_seen: gr.State  # the session's run count when the dropdowns were last offered


def decoding_controls() -> list:
    with gr.Accordion("Decoding (the same for every column)", open=False):
        with gr.Row():
            max_new = Slider(1, MAX_NEW_TOKENS, value=64, step=1, label="Max new tokens")
            mode = gr.Radio(["greedy", "sample"], value="greedy", label="Decoding")
            seed = Number(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1, info=SAMPLING_ONLY,
                          interactive=False)
        with gr.Row():
            temperature = Slider(0.05, 2.0, value=0.8, step=0.05, label="Temperature", info=SAMPLING_ONLY,
                                 interactive=False)
            top_p = Slider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", info=SAMPLING_ONLY, interactive=False)
            top_k = Slider(0, 200, value=50, step=1, label="Top-k (0: off)", info=SAMPLING_ONLY, interactive=False)
            penalty = Slider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            no_repeat = Slider(0, 10, value=Decoding.no_repeat_ngram_size, step=1, label="No repeated n-grams (0: off)",
                               info="no n tokens in a row twice in a column: small models loop without it")
    sampling = [temperature, top_p, top_k, seed]
    mode.change(sampling_controls, mode, sampling, api_name=False)  # greedy ignores them: they say so by being off
    return [max_new, mode, temperature, top_p, top_k, penalty, seed, no_repeat]


def sampling_controls(mode: str) -> tuple:
    """Temperature, top-p, top-k and seed: adjustable only when sampling (greedy decoding ignores them)."""
    return tuple(gr.update(interactive=mode == "sample") for _ in range(4))


def compare_tab(ctx: Context, session: gr.State, tab: gr.Tab) -> CompareTab:
    act = gr.Markdown(act_line(None))
    status = gr.Markdown(elem_id="reference-status")
    with gr.Row():
        text = Text("I want you to act as a rapper.", label="Input", max_length=MAX_INPUT_CHARS, lines=2, scale=2,
                    elem_id="compare-input")
        a = gr.Dropdown([], label="Tuned prompt", scale=1, allow_custom_value=True, elem_id="compare-adapter",
                        info="a run of this session or a saved adapter")
        b = gr.Dropdown([NO_PROMPT], value=NO_PROMPT, label="Second tuned prompt", scale=1, allow_custom_value=True,
                        elem_id="compare-adapter-b", info="optional: three columns")
    decoding = decoding_controls()
    go = gr.Button("Generate", variant="primary")
    with gr.Row():
        base_out = gr.Textbox(label="Base", lines=10, elem_id="base-output")
        a_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output", placeholder=EMPTY_COLUMN)
        b_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output-b", visible=False)  # third_column shows it
    gr.Examples(["I want you to act as a rapper.", "I want you to act as a linux terminal. ls -la",
                 "I want you to act as a travel guide. I am in Rome."], inputs=text)
    timer = gr.Timer(2.0, active=ctx.jobs.running(REFERENCE_OWNER) is not None)
    seen = gr.State(0)  # references saved when this page last offered its prompts
    runs_seen = gr.State(0)  # runs this session had finished then
    timer.tick(bind(reference_tick, ctx), [seen, session, a, b, runs_seen], [status, timer, seen, a, b, runs_seen],
               api_name=False, show_progress="hidden")
    tab.select(bind(compare_choices, ctx), [session, a, b, runs_seen], [a, b, runs_seen], api_name="compare_choices",
               **HIDDEN).then(
        lambda: reference_status(ctx)[0], None, status, api_name=False)
    generating = go.click(bind(generate, ctx), [text, a, *decoding[:-1], session, b, decoding[-1]],
                          [base_out, a_out, b_out], api_name="generate", **HIDDEN,
                          concurrency_limit=4, concurrency_id="generate")
    # another prompt in a column stops the generation streaming into it: its text would go on under the new name
    a.change(column_label, a, a_out, api_name=False, cancels=[generating])
    b.change(third_column, b, b_out, api_name=False, cancels=[generating])
    return CompareTab(act, text, [a, b], runs_seen)


# ---------------------------------------------------------------------------------------
# 4d. the Evaluate tab


def held_out_scores(ctx: Context, soft: SoftPrompt, n_acts: int, max_new: int, progress) -> Iterator[tuple]:
    """(perplexity metrics, held-out rows, ROUGE-L rows so far) of `soft` on the acts it never trained on.

    Yielded once perplexity is scored and again after each act's continuations, so a page shows the
    numbers as they come and a stopped evaluation (another prompt picked) ends at the next act.
    Perplexity is scored exactly as training scores it (its batch size), so it matches the run history.
    """
    with user_errors():
        base, held = ctx.base(), held_out_for(soft, ctx.rows(), ctx.dataset)
        if not held:
            raise refuse("there are no held-out acts to evaluate on (this adapter was trained on every act)")
        progress(0, desc="held-out perplexity")
        picked, scored, metrics = held[:n_acts], [], None
        runs = EVALUATE_ON_GPU(base, soft, held, picked, Decoding(max_new_tokens=max_new))
        try:
            for kind, result in runs:
                if kind == "perplexity":
                    metrics = result
                else:
                    scored.append(result)
                    progress((len(scored), len(picked)), desc="ROUGE-L: generating", unit="acts")
                assert metrics is not None, "gpu.evaluate_run yields perplexity first"
                yield metrics, held, list(scored)
        except GeneratorExit:
            # Stopped (another prompt picked): Gradio closes this generator on its event loop. On
            # ZeroGPU closing the GPU call waits for the worker's next item, a whole act's two
            # continuations, and would hold up every page meanwhile: close it in a thread.
            threading.Thread(target=runs.close, daemon=True, name="evaluate-close").start()
            raise


def mean_rouge(scored: list[dict]) -> dict[str, float | None]:
    return {side: sum(r[f"{side}_rouge"] for r in scored) / len(scored) if scored else None for side in ("base", "tuned")}


def evaluate_run(ctx: Context, adapter, n_acts, max_new, session: Session, progress=gr.Progress()):
    """Held-out perplexity and ROUGE-L, base vs tuned: bars, a summary and a table per act, filled in as they come."""
    soft = pick_soft(ctx, adapter, session)
    n_acts, max_new = whole(n_acts), whole(max_new)
    shown = session.runs[-1].name if adapter == SESSION_RUN and session.runs else adapter
    for metrics, held, scored in held_out_scores(ctx, soft, n_acts, max_new, progress):
        ppl, mean = {side: metrics[side].perplexity for side in ("base", "tuned")}, mean_rouge(scored)
        wanted = min(n_acts, len(held))
        short = f" (only {len(held)} held-out acts)" if n_acts > len(held) else ""
        if not wanted:
            rouge = "ROUGE-L: skipped (0 acts)."
        elif len(scored) < wanted:
            rouge = f"**ROUGE-L**: generating, {len(scored)} of {plural(wanted, 'act')} done{short}…" + (
                f" So far base {mean['base']:.3f}, tuned {mean['tuned']:.3f}." if scored else "")
        else:
            rouge = (f"**ROUGE-L** of greedy continuations (no repeated 3-grams) against the real prompt, "
                     f"{plural(len(scored), 'act')}{short}: base {mean['base']:.3f}, tuned {mean['tuned']:.3f}.")
        summary = (f"**{report.md_inline(shown)}**  \n**Held-out perplexity** over {plural(len(held), 'act')} "
                   f"({plural(metrics['base'].tokens, 'token')}): base {ppl['base']:.2f}, tuned {ppl['tuned']:.2f}.  \n"
                   + rouge)
        # no bars yet: None, as on a new page (a chart first sent no rows keeps a y axis that later bars never fill)
        rouge_bars = bars(mean, "ROUGE-L", ".3f") if scored else None
        yield bars(ppl, "perplexity", ".2f"), rouge_bars, summary, rouge_frame(scored)


def no_evaluation() -> tuple:
    """Evaluate's outputs, empty: what the tab shows for a prompt not evaluated yet."""
    return None, None, "", rouge_frame([]), None, "", nearest_frame([])  # None: a chart as on a new page


def token_view(ctx: Context, adapter, session: Session):
    soft = pick_soft(ctx, adapter, session)
    note = ""
    with user_errors():
        act = session.act
        if act is None:
            act = (held_out_for(soft, ctx.rows(), ctx.dataset) or list(ctx.rows()))[0]
            note = "No act picked in the Dataset tab; showing a held-out act. "
        try:
            gains = evaluate.token_gains(ctx.base(), soft, act.prompt)
        except ValueError as e:  # a one-token prompt
            raise refuse(str(e)) from None
    return gain_scores(gains), gains_summary(act.act, gains, note)


def nearest_view(ctx: Context, adapter, session: Session) -> pd.DataFrame:
    soft = pick_soft(ctx, adapter, session)
    with user_errors():
        return nearest_frame(evaluate.nearest_tokens(ctx.base(), soft, k=NEAREST_K))


GAINS_HELP = (
    "### Per token: the current act's real prompt\nEach token is coloured by how much more likely the tuned model "
    f"makes it than the base model, in nats (the legend's −1…+1): **red: more likely**, **purple: less likely**, "
    f"full colour at ±{GAIN_SCALE:g} nat (about {math.exp(GAIN_SCALE):.1f}× the probability). The first token is "
    "not scored: the base model has nothing to predict it from."
)


def evaluate_tab(ctx: Context, session: gr.State, tab: gr.Tab) -> tuple[gr.Dropdown, gr.State]:
    gr.Markdown("The difference in numbers, on acts the prompt never trained on: held-out perplexity (lower is "
                "better; scored as training scores it, so it matches the run history) and ROUGE-L of greedy (no repeated 3-grams) "
                "continuations of *I want you to act as a &lt;act&gt;.* against the dataset's real prompt (higher is better).")
    with gr.Row():
        adapter = gr.Dropdown([], label="Tuned prompt", allow_custom_value=True, elem_id="eval-adapter")
        rouge_acts = Number(5, precision=0, minimum=0, maximum=20, label="Held-out acts for ROUGE-L (0: skip)")
        max_new = Slider(1, 256, value=64, step=1, label="Max new tokens per continuation")
    go = gr.Button("Evaluate", variant="primary")
    with gr.Row():
        ppl_plot = gr.BarPlot(x="label", y="perplexity", color="model", title="Held-out perplexity", x_title=" ",
                              color_map={"base": "#9ca3af", "tuned": "#2563eb"}, y_lim=[0, None], height=260)
        rouge_plot = gr.BarPlot(x="label", y="ROUGE-L", color="model", title="ROUGE-L (mean over acts)", x_title=" ",
                                color_map={"base": "#9ca3af", "tuned": "#2563eb"}, y_lim=[0, 1], height=260,
                                elem_id="rouge-plot")
    summary = gr.Markdown(elem_id="eval-summary")
    rouge_table = gr.Dataframe(rouge_frame([]), label="Per held-out act", interactive=False, wrap=True, max_height=360,
                               column_widths=["14%", "35%", "35%", "8%", "8%"])
    gr.Markdown(GAINS_HELP)
    gains = gr.HighlightedText(label="Tuned vs base, per token (nats)", show_legend=True, elem_id="token-gains")
    gains_text = gr.Markdown()
    gr.Markdown("### What the prompt learned\nEach virtual token's nearest vocabulary tokens by cosine similarity to "
                "the model's input embeddings. Trained prompts usually sit far from every real token (0.1–0.3 is "
                "common): read it as a hint, not a translation.")
    nearest_table = gr.Dataframe(nearest_frame([]), label="Nearest tokens", interactive=False, max_height=360)
    runs_seen = gr.State(0)  # the session's run count when the dropdown was last offered
    tab.select(bind(refresh_choices, ctx), [session, adapter, runs_seen], [adapter, runs_seen],
               api_name="eval_adapter_choices", **HIDDEN)
    scored = go.click(bind(evaluate_run, ctx), [adapter, rouge_acts, max_new, session],
                      [ppl_plot, rouge_plot, summary, rouge_table], api_name="evaluate", **HIDDEN,
                      concurrency_limit=4, concurrency_id="generate")
    per_token = scored.success(bind(token_view, ctx), [adapter, session], [gains, gains_text], api_name="token_gains",
                               **HIDDEN)
    nearest = per_token.success(bind(nearest_view, ctx), [adapter, session], nearest_table, api_name="nearest_tokens",
                                **HIDDEN)
    # another prompt picked: the numbers shown were not its, and an evaluation still running is of the old one
    adapter.change(no_evaluation, None, [ppl_plot, rouge_plot, summary, rouge_table, gains, gains_text, nearest_table],
                   api_name=False, cancels=[scored, per_token, nearest])
    return adapter, runs_seen


# ---------------------------------------------------------------------------------------
# 4e. the Sweep & history tab


def sweep_plan(ctx: Context, grid_text, lr, batch, seed):
    """The sweep the widgets describe, checked against this server's caps before anything trains."""
    with user_errors():
        try:
            grid = sweep.parse_grid(checked_text(grid_text, "Grid", MAX_FIELD_CHARS))
        except ValueError as e:
            raise PlanError(str(e)) from None
        config = checked_config(model=ctx.model, dataset=ctx.dataset, learning_rate=lr, batch_size=whole(batch),
                                seed=whole(seed))
        return plan_sweep(ctx.rows(), config, grid, ctx.max_steps, ctx.max_epochs, MAX_CELLS)


def last_speed(session: Session) -> float | None:
    """Tokens per second of this browser's newest run: what the estimates go by."""
    return next((r.soft.meta.get("tokens_per_s") for r in reversed(session.runs) if r.soft.meta.get("tokens_per_s")),
                None)


def sweep_estimate(ctx: Context, grid_text, lr, batch, seed, session: Session, rouge_acts=0) -> str:
    """How long the grid will take, before it starts: its steps and, once a run has measured the speed, the time.

    ROUGE-L decodes each act alone, once for the base model and once per cell, at most
    ROUGE_NEW_TOKENS tokens each: counted at the pace of this server's last one-row generation
    (an Evaluate, an earlier sweep's ROUGE-L; else Compare's, more rows a step: an upper bound).
    With none measured yet, the estimate says it comes on top.
    """
    try:
        plan = sweep_plan(ctx, grid_text, lr, batch, seed)
    except gr.Error as e:
        return f"⚠️ {e.message}"
    cells = ", ".join(sweep.label(t, e) for t, e in plan.grid)
    text = f"{plural(len(plan.grid), 'cell')} ({cells}): {plural(plan.total_steps, 'step')} in all"
    speed = last_speed(session)
    n_rouge = whole(rouge_acts)
    n_rouge = min(n_rouge, len(plan.held_out_rows)) if isinstance(n_rouge, int) else 0
    rouge = (f", then ROUGE-L generation for {plural(n_rouge, 'held-out act')} in each cell"
             if n_rouge > 0 else "")
    if speed is None:
        return text + rouge + "; train once (any run) and this will say about how long the training takes."
    base = ctx.base()
    tokens, held = (train_tokens(rows, lambda text: len(base.encode(text)))
                    for rows in (plan.train_rows, plan.held_out_rows))
    # each epoch end scores the held-out rows, and the first cell's first also scores the base model on them
    scored = (sum(e for _, e in plan.grid) + 1) * held
    seconds = estimate_seconds(sum(e for _, e in plan.grid) * tokens, speed, scored)
    text += f"; about {duration(seconds)} of training at {speed:,.0f} tokens/s (your last run's speed)"
    if not rouge:
        return text + "."
    pace = None if gpu.zero_gpu() else decode_pace(1)  # a ZeroGPU worker's generations are timed out of sight
    if pace is None:
        return text + rouge + (", not counted." if gpu.zero_gpu() else
                               ", not counted until a generation has been timed (Generate in Compare once).")
    rouge_s = (len(plan.grid) + 1) * n_rouge * evaluate.ROUGE_NEW_TOKENS * pace
    return text + rouge + f", up to about {duration(rouge_s)} more at this server's last generation pace."


def start_sweep(ctx: Context, grid_text, rouge_acts, lr, batch, seed, session: Session, request: gr.Request):
    plan = sweep_plan(ctx, grid_text, lr, batch, seed)
    n_rouge = whole(rouge_acts)
    view = SweepView(len(plan.grid), plan.steps_per_epoch * plan.longest_epochs, n_rouge,
                     labels=[sweep.label(t, e) for t, e in plan.grid],
                     rouge_pace=None if gpu.zero_gpu() else decode_pace(1))
    base, rows = ctx.base(), ctx.rows()
    if gpu.zero_gpu():
        with user_errors():
            gpu.check_fits(gpu.sweep_seconds(base, rows, plan.config, plan.grid, rouge_acts=n_rouge), "this sweep")

    def events(stop: threading.Event):
        flag = gpu.StopFlag(also=stop)
        for event in stoppable(stop, SWEEP_ON_GPU(base, rows, plan.config, list(plan.grid), flag, n_rouge), flag):
            if isinstance(event, sweep.CellResult):
                session.remember(event.soft, "sweep", event.steps_per_epoch)
            yield event

    job = Job(owner_of(session, request), "a sweep", events, view.add, ctx.jobs.slot, view=view,
              on_wait=lambda: setattr(view, "progress", "waiting: another run is training on this server"))
    yield from follow(ctx, start_job(ctx, job), request.session_hash, sweep_render(ctx, view, request.session_hash))


def sweep_render(ctx: Context, view: SweepView, session_hash: str) -> Callable[[SweepView], tuple]:
    """The Sweep tab's (chart, progress, table, csv) for each update of one follower of a sweep."""
    series = ["base held-out"] + [f"{name} {kind}" for name in view.labels for kind in ("train", "held-out")]
    palette = cell_colours(view.labels)
    sent, csv_file, written = 0, None, 0

    def render(view: SweepView) -> tuple:
        nonlocal sent, csv_file, written
        if len(view.results) > written:  # each finished cell: the file holds what is done even if a later cell fails
            csv_file = str(sweep.write_csv(view.results, ctx.jobs.folder(session_hash, "sweep") / "sweep.csv"))
            written = len(view.results)
        # the first update carries the data alone, so the map that follows rebuilds with it (see `colours`)
        plot = gr.LinePlot(loss_frame(list(view.points), series), x_lim=step_axis(view.x_end),
                           **({"color_map": palette} if sent else {}))
        sent += 1
        # a tab that was closed (its folder went with it) may be rendered once more before its follower ends
        shown_csv = csv_file if csv_file and os.path.exists(csv_file) else None
        return plot, view.progress, sweep_frame(list(view.results)), shown_csv

    return render


def show_history(ctx: Context, session: Session):
    table, (frame, palette) = history_frame(session.runs), history_chart(session.runs)
    axis = step_axis(max((r.soft.meta["history"]["step"][-1] for r in session.runs), default=0))
    yield table, gr.LinePlot(frame, x_lim=axis)  # the data first, then the same data with its colours (`colours`)
    yield table, gr.LinePlot(frame, color_map=palette, x_lim=axis)


def export_history(ctx: Context, session: Session, request: gr.Request) -> str:
    if not session.runs:
        raise refuse("no runs yet: train or sweep first")
    return str(write_history_csv(session.runs, ctx.jobs.folder(request.session_hash) / "history.csv"))


class SweepTab(NamedTuple):
    history: list  # [table, chart], refreshed after every run
    swept: gr.events.Dependency
    outputs: list  # [chart, progress, results table, csv file]: what a sweep's followers update


def sweep_tab(ctx: Context, session: gr.State, tab: gr.Tab, train: TrainTab) -> SweepTab:
    gr.Markdown("Reproduce the seed's experiment: one soft prompt per *tokens × epochs* cell, trained on all "
                "training acts with the Train tab's learning rate, batch size and seed, on the same split. "
                "The default grid is the seed's two runs.")
    with gr.Row():
        grid = Text("5x5, 20x10", label="Grid (tokens x epochs, comma-separated)", max_length=MAX_FIELD_CHARS)
        rouge = Number(0, precision=0, minimum=0, maximum=10, label="Held-out acts for ROUGE-L (0: skip)")
    estimate = gr.Markdown(elem_id="sweep-estimate")
    with gr.Row():
        go = gr.Button("Run sweep", variant="primary")
        stop = gr.Button("Stop sweep", variant="stop")
    plot = gr.LinePlot(loss_frame([], []), x="step", y="loss", color="series", height=360, x_title="training step",
                       x_axis_format="d", y_axis_format=".2f", title="Loss per token (nats), every cell",
                       elem_id="sweep-plot")
    progress = gr.Markdown("not started", elem_id="sweep-progress")
    table = gr.Dataframe(sweep_frame([]), label="Results", interactive=False)
    csv_out = gr.File(label="Results (.csv)", interactive=False, height=90)
    gr.Markdown(f"### Run history (this browser, last {MAX_HISTORY} runs)")
    history_table = gr.Dataframe(history_frame([]), label="Runs", interactive=False, wrap=True,
                                 column_widths=["17%", "29%", "7%", "9%", "9%", "10%", "10%", "9%"])
    history_plot = gr.LinePlot(loss_frame([], []), x="step", y="loss", color="series", height=360,
                               x_title="training step", x_axis_format="d", y_axis_format=".2f",
                               title="Training loss per step, every run", elem_id="history-plot")
    with gr.Row():
        refresh = gr.Button("Refresh history")
        export = gr.Button("Export history .csv")
    history_csv = gr.File(label="History (.csv)", interactive=False, height=90)

    estimate_inputs = [grid, train.lr, train.batch, train.seed, session, rouge]
    # always_last: gr.on takes "once" from its first trigger (select), which drops a field's change
    # that comes while the estimate for the previous one is still being computed (a stale line)
    gr.on([tab.select, grid.change, rouge.change], bind(sweep_estimate, ctx), estimate_inputs, estimate,
          api_name="sweep_estimate", trigger_mode="always_last", **HIDDEN)
    history = [history_table, history_plot]
    tab.select(bind(show_history, ctx), session, history, api_name="history", **HIDDEN)
    swept = go.click(bind(start_sweep, ctx), [grid, rouge, train.lr, train.batch, train.seed, session],
                     [plot, progress, table, csv_out], api_name="sweep", **HIDDEN, concurrency_limit=8, concurrency_id="train")
    swept.then(bind(show_history, ctx), session, history, api_name="history_after_sweep", **HIDDEN)
    stop.click(bind(stop_sweep, ctx), session, progress, api_name="stop_sweep", **HIDDEN)
    refresh.click(bind(show_history, ctx), session, history, api_name="refresh_history", **HIDDEN)
    export.click(bind(export_history, ctx), session, history_csv, api_name="export_history", **HIDDEN)
    return SweepTab(history, swept, [plot, progress, table, csv_out])


# ---------------------------------------------------------------------------------------
# 4f. the Adapters tab


def own_name(name: str) -> str:
    """A visitor's adapter name, sanitized; the reference adapters' prefix is the server's own."""
    name = adapters.sanitize_name(name)
    if reference.is_reference(name):
        raise AdapterError(f"names starting with {reference.PREFIX!r} are kept for the reference adapters; "
                           "choose another name")
    return name


def listing_update(ctx: Context, name: str | None = None, message: str = "", listing: list[dict] | None = None):
    """(table, picked adapter, message) after a change: the one listing of this click."""
    listing = ctx.adapters() if listing is None else listing
    names = [a["name"] for a in listing]
    return adapters_frame(listing), gr.Dropdown(choices=names, value=name if name in names else None), message


def run_names(session: Session, current: str | None = None) -> gr.Dropdown:
    """This session's runs, newest first (the newest picked unless `current` is still there)."""
    names = [r.name for r in reversed(session.runs)]
    return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None))


def default_save_name(run_name: str | None) -> str:
    """What a run is saved as when no name is given: "#3 Rapper 20×10 · 14:05" -> "Rapper-20x10"."""
    if not run_name or not run_name.startswith("#"):
        return ""
    what = run_name.split(" ", 1)[-1].rsplit(" · ", 1)[0]  # "<what> <tokens>×<epochs>"
    name = adapters.sanitize_name(what.replace("×", "x"))
    return name[len(reference.PREFIX):] if reference.is_reference(name) else name  # a continued reference: yours


def save_name_hint(run_name: str | None) -> gr.Textbox:
    return gr.Textbox(placeholder=default_save_name(run_name) or "rapper-20x10")


def save_run(ctx: Context, name: str, run_name: str | None = None, session: Session | None = None):
    """Keep a run of this session (the newest unless `run_name` says) under `name`, or a name made from the run."""
    if not session.runs:
        raise refuse("train something first: this session has no run to save")
    run = session.run(checked_name(run_name, "the run") or SESSION_RUN)
    if run is None:
        raise refuse(f"this session has no run named {run_name!r}")
    wanted = name.strip() or default_save_name(run.name)
    with user_errors(), disk_errors():
        wanted = own_name(wanted.replace("×", "x"))
        final = adapters.free_name(wanted, {a["name"] for a in ctx.adapters()})
        folder = adapters.save(run.soft, final, ctx.root, overwrite=False, **ctx.caps)
    note = f" (**{wanted}** was taken)" if folder.name != wanted else ""
    return listing_update(ctx, folder.name, f"saved {run.name} as **{folder.name}**{note}")


def adapter_details(ctx: Context, name: str | None) -> dict:
    if not (name := checked_name(name)):
        return {}
    return next((a for a in ctx.adapters() if a["name"] == name), {})


def download(ctx: Context, name: str | None, request: gr.Request) -> str:
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to download")
    if name not in [a["name"] for a in ctx.adapters()]:  # only real adapter folders
        raise refuse(f"no adapter named {name!r}")
    with disk_errors("write the download"):
        return str(zip_adapter(ctx.root / name, ctx.jobs.folder(request.session_hash)))


def upload(ctx: Context, path: str | None, name: str, session: Session):
    if not path:
        raise refuse("choose a .zip of a PEFT prompt-tuning adapter")
    if os.path.getsize(path) > MAX_UPLOAD_BYTES:
        raise refuse(f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MB; an adapter zip is far smaller")
    with tempfile.TemporaryDirectory(prefix="tuning-upload-") as tmp, user_errors(), disk_errors():
        wanted = own_name(name.strip() or Path(path).stem)
        soft = adapters.load_folder(unzip_safely(path, Path(tmp)), ctx.base())
        folder = adapters.save(soft, adapters.free_name(wanted, {a["name"] for a in ctx.adapters()}), ctx.root,
                               overwrite=False, **ctx.caps)
    note = f" (**{wanted}** was taken)" if folder.name != wanted else ""
    return listing_update(ctx, folder.name, f"uploaded as **{folder.name}**{note}")


def ask_delete(ctx: Context, name: str | None):
    """First click on Delete: name what would go, and show the confirming buttons."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to delete")
    if reference.is_reference(name):
        raise refuse("the reference adapters belong to this server; they cannot be deleted here")
    return gr.Row(visible=True), f"Delete **{name}** for every visitor of this server? This cannot be undone.", name


def delete(ctx: Context, name: str | None, session: Session, asked: str | None = None):
    """"Yes, delete": `asked` is the adapter "Delete…" named (None for API callers, who name it outright)."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to delete")
    if asked is not None and asked != name:
        raise refuse(f"the question was about {asked!r}, but {name!r} is picked now; press Delete… again")
    if reference.is_reference(name):
        raise refuse("the reference adapters belong to this server; they cannot be deleted here")
    with user_errors(), disk_errors("delete the adapter"):
        adapters.delete(name, ctx.root)
    return (*listing_update(ctx, None, f"deleted **{name}**"), gr.Row(visible=False), None, {}, None)


def repo_suggestion(ctx: Context, name: str | None, profile: gr.OAuthProfile | None = None) -> str:
    """`<user>/<adapter>` for a logged-in visitor, so Push needs one click."""
    return f"{profile.username}/{name}" if profile is not None and name else ""


def push_adapter(ctx: Context, name, repo_id, private: bool, oauth_token: gr.OAuthToken | None = None) -> str:
    """Push a saved adapter with the visitor's own Hub login, used for this call only (never logged or kept)."""
    if oauth_token is None:
        raise refuse("log in with Hugging Face (the button above) to push to your account; off a Space, use "
                     "python -m tuning push NAME --repo ID")
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to push")
    repo_id = checked_text(repo_id, "Hub repo", MAX_FIELD_CHARS).strip()
    with user_errors():
        url = hub.push(name, repo_id, oauth_token.token, ctx.root, private=bool(private), base=ctx.base(),
                       rows=ctx.rows(), dataset=ctx.dataset, base_model=ctx.hub_model)
    return f"pushed **{name}** to [{repo_id}]({url}) with its model card and report"


def pull_adapter(ctx: Context, repo_id, name, oauth_token: gr.OAuthToken | None = None):
    """Load an adapter from a Hub repo: only its adapter files, each checked as an upload is."""
    repo_id = checked_text(repo_id, "Hub repo", MAX_FIELD_CHARS).strip()
    wanted = checked_text(name, "Name", MAX_FIELD_CHARS).strip()
    with user_errors(), disk_errors():
        folder = hub.pull(repo_id, oauth_token.token if oauth_token is not None else None, ctx.root,
                          own_name(wanted) if wanted else None, base=ctx.base(), local_ok=False, **ctx.caps)
    return listing_update(ctx, folder.name, f"loaded **{repo_id}** as **{folder.name}**")


def report_download(ctx: Context, soft: SoftPrompt, name: str, request: gr.Request) -> str:
    with user_errors():
        html, _ = report.build_report(ctx.base(), soft, ctx.rows(), ctx.dataset, name,
                                      ctx.jobs.folder(request.session_hash))
    return str(html)


def adapter_report(ctx: Context, name, session: Session, request: gr.Request) -> str:
    """The run report (one self-contained .html) of a saved adapter."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter for its report")
    return report_download(ctx, pick_soft(ctx, name, session), name, request)


def run_report(ctx: Context, run_name, session: Session, request: gr.Request) -> str:
    """The run report of a run of this session, saved or not."""
    run = session.run(checked_name(run_name, "the run") or SESSION_RUN)
    if run is None:
        raise refuse("train something first: this session has no run to report on")
    return report_download(ctx, run.soft, run.name, request)


def hub_section(ctx: Context, picked: gr.Dropdown, table: gr.Dataframe) -> None:
    on_space = gr.utils.get_space() is not None  # Gradio's own test: its OAuth routes are real only there
    gr.Markdown("### The Hugging Face Hub\nPush a saved adapter to your account (its PEFT files, a model card and "
                "the run report), or load one from any repo. " + (
                    "Log in to push; loading needs no login." if on_space else
                    "Pushing needs a Hugging Face login, which only a Space offers its visitors: here, use "
                    "`python -m tuning push NAME --repo ID`. Loading needs no login."))
    if on_space:
        gr.LoginButton()
    with gr.Row():
        repo = Text(label="Push to repo", placeholder="your-name/rapper-20x10", max_length=MAX_FIELD_CHARS, scale=2)
        private = gr.Checkbox(label="private", value=False)
        push_btn = gr.Button("Push to the Hub")
    push_msg = gr.Markdown()
    with gr.Row():
        source = Text(label="Load from repo", placeholder="someone/their-prompt", max_length=MAX_FIELD_CHARS, scale=2)
        pull_name = Text(label="Save as (default: the repo's name)", max_length=MAX_FIELD_CHARS)
        pull_btn = gr.Button("Load from the Hub")
    pull_msg = gr.Markdown()
    picked.change(bind(repo_suggestion, ctx), picked, repo, api_name=False)
    push_btn.click(bind(push_adapter, ctx), [picked, repo, private], push_msg, api_name="push_adapter", **HIDDEN)
    pull_btn.click(bind(pull_adapter, ctx), [source, pull_name], [table, picked, pull_msg], api_name="pull_adapter",
                   **HIDDEN)


def adapters_tab(ctx: Context, session: gr.State, tab: gr.Tab):
    table = gr.Dataframe(label="Saved adapters (click a row)", interactive=False)
    with gr.Row():
        picked = gr.Dropdown([], label="Adapter", allow_custom_value=True, scale=2)
        download_btn, report_btn = gr.Button("Download .zip"), gr.Button("Report .html")
        delete_btn = gr.Button("Delete…", variant="stop")
    with gr.Row(visible=False) as confirm:
        confirm_text = gr.Markdown()
        yes, no = gr.Button("Yes, delete", variant="stop"), gr.Button("Cancel")
    asked = gr.State(None)  # the adapter the question named: "Yes" deletes that one, not whatever is picked by then
    message = gr.Markdown(elem_id="adapter-message")
    zip_out = gr.File(label="Download", interactive=False, height=90)
    details = gr.JSON(label="Config and metrics")
    gr.Markdown("### Keep a run")
    with gr.Row():
        run = gr.Dropdown([], label="Run of this session", scale=2, allow_custom_value=True)  # save_run checks it
        save_name = Text(max_length=MAX_FIELD_CHARS, label="Save as (default: from the run)", placeholder="rapper-20x10")
        save_btn, run_report_btn = gr.Button("Save"), gr.Button("Report .html")
    save_msg = gr.Markdown()
    run_report_out = gr.File(label="Run report", interactive=False, height=90)
    gr.Markdown("### Bring one in")
    with gr.Row():
        upload_file = gr.File(label="Upload a PEFT prompt-tuning adapter (.zip)", file_types=[".zip"])
        upload_name = Text(label="Name (default: the file name)", max_length=MAX_FIELD_CHARS)
        upload_btn = gr.Button("Upload")
    upload_msg = gr.Markdown()
    hub_section(ctx, picked, table)

    # the adapter picked before stays picked (its details, a typed repo id): the visit only refreshes the list
    tab.select(bind(listing_update, ctx), picked, [table, picked, message], api_name="list_adapters", **HIDDEN).then(
        run_names, [session, run], run, api_name="run_choices", **HIDDEN)
    table.select(first_cell, None, picked, api_name="pick_adapter_row", **HIDDEN)
    picked.change(bind(adapter_details, ctx), picked, details, api_name="adapter_details", **HIDDEN)
    save_btn.click(bind(save_run, ctx), [save_name, run, session], [table, picked, save_msg], api_name="save_adapter", **HIDDEN)
    run.change(save_name_hint, run, save_name, api_name=False)  # the placeholder shows the name "Save" will use
    download_btn.click(bind(download, ctx), picked, zip_out, api_name="download_adapter", **HIDDEN)
    report_btn.click(bind(adapter_report, ctx), [picked, session], zip_out, api_name="adapter_report", **HIDDEN)
    run_report_btn.click(bind(run_report, ctx), [run, session], run_report_out, api_name="run_report", **HIDDEN)
    upload_btn.click(bind(upload, ctx), [upload_file, upload_name, session], [table, picked, upload_msg],
                     api_name="upload_adapter", **HIDDEN)
    delete_btn.click(bind(ask_delete, ctx), picked, [confirm, confirm_text, asked], api_name="ask_delete", **HIDDEN)
    yes.click(bind(delete, ctx), [picked, session, asked], [table, picked, message, confirm, zip_out, details, asked],
              api_name="delete_adapter", **HIDDEN)
    no.click(lambda: (gr.Row(visible=False), None), None, [confirm, asked], api_name=False)
    picked.change(lambda: (gr.Row(visible=False), None), None, [confirm, asked], api_name=False)  # another pick: ask again
    return table, run


# ---------------------------------------------------------------------------------------
# 4g. the documented API, which `--mcp` also serves as MCP tools (the tabs' own events stay
# callable by gradio_client but undocumented: they return widgets, not answers)


def list_acts(ctx: Context, search: str = "") -> list[dict]:
    """List the dataset's acts (roles) a prompt can be tuned for.

    Args:
        search: only acts whose name or prompt contains this text (any case); empty for all.

    Returns:
        One {"act", "words"} per act: its name and its prompt's length in words.
    """
    frame = acts_frame(ctx.rows(), checked_text(search, "search", MAX_FIELD_CHARS))
    return [{"act": act, "words": int(words)} for act, words in zip(frame["act"], frame["words"])]


def list_saved_adapters(ctx: Context) -> list[dict]:
    """List the saved prompt-tuning adapters (trained soft prompts) on this server, newest first.

    Returns:
        One {"name", "virtual_tokens", "epochs", "held_out_loss", "created", "base_model", "reference"} per adapter.
    """
    return [{"name": a["name"], "virtual_tokens": a["num_virtual_tokens"], "epochs": a["config"].get("epochs"),
             "held_out_loss": a["metrics"].get("held_out_loss"), "created": a["created"],
             "base_model": short_name(a["base_model"]), "reference": reference.is_reference(a["name"])}
            for a in ctx.adapters()]


def compare_texts(ctx: Context, text: str, adapter: str, second_adapter: str = "", max_new_tokens: int = 64) -> dict:
    """Continue a text with the base model and with one or two tuned prompts, greedy, in one batch.

    Args:
        text: the input, e.g. "I want you to act as a rapper."
        adapter: a saved adapter's name (see list_saved_adapters)
        second_adapter: another saved adapter's name for a third column; empty for none
        max_new_tokens: how many tokens each continuation may have, 1-512 (as on the page)

    Returns:
        {"base": text, <adapter>: text[, <second_adapter>: text]}
    """
    names = [checked_name(adapter, "adapter")] + ([checked_name(second_adapter)] if second_adapter else [])
    if None in names:
        raise refuse("name a saved adapter (see list_saved_adapters)")
    if len(set(names)) < len(names):  # one key would hold both columns
        raise refuse(f"the adapter {names[0]!r} is named twice; give two different adapters")
    if "base" in names:  # the key of the base model's text
        raise refuse("the answer names the base model's text 'base'; rename the adapter called 'base' to compare it")
    text = checked_text(text, "the input", MAX_INPUT_CHARS)
    tokens = checked_whole(max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS)  # what the page's slider allows
    with user_errors():
        prompts = [adapters.load(name, ctx.root, ctx.base()) for name in names]
        texts = ()
        for texts in GENERATE_ON_GPU(ctx.base(), prompts, text, Decoding(max_new_tokens=tokens)):
            pass
    return dict(zip(["base", *names], texts))


class ApiTraining(NamedTuple):
    """A training started through the API: its job, the session its run joins, and where it is saved."""

    job: Job
    session: Session
    saved: list  # [adapter name] once saved, [None] when saving failed (the error is in `failed`)
    failed: list  # [sentence] when the saving failed


def train_adapter(ctx: Context, acts: str = "", num_virtual_tokens: int = 20, epochs: int = 10,
                  learning_rate: float = TuneConfig.learning_rate, save_as: str = "", request: gr.Request = None) -> dict:
    """Start prompt-tuning the base model; returns at once with a job id. The adapter is saved when training ends.

    Training takes minutes on a CPU: follow it with training_status(job), stop it with stop_training_job(job).

    Args:
        acts: act names to train on, comma-separated (see list_acts); empty for all training acts
        num_virtual_tokens: the soft prompt's length, 1-100
        epochs: passes over the training acts
        learning_rate: AdamW's step size, 1e-3 to 3e-1 is the useful range
        save_as: the adapter's name; empty for one made from the settings

    Returns:
        {"job", "status", "steps"}: the id for training_status, "waiting" or "training", the planned steps
    """
    chosen = [a.strip() for a in checked_text(acts, "acts", MAX_INPUT_CHARS).split(",") if a.strip()]
    wanted = checked_text(save_as, "save_as", MAX_FIELD_CHARS).strip()
    if wanted:
        with user_errors():
            own_name(wanted)  # a bad or reserved name is refused now, not after minutes of training
    session, saved, failed = Session(), [], []

    def save(run: Run) -> None:
        c = run.soft.config
        name = wanted or f"{chosen[0] if len(chosen) == 1 else 'acts' if chosen else 'all'}-{c.num_virtual_tokens}x{c.epochs}"
        try:
            with user_errors(), disk_errors():
                name = adapters.free_name(own_name(name), {a["name"] for a in ctx.adapters()})
                saved.append(adapters.save(run.soft, name, ctx.root, overwrite=False, **ctx.caps).name)
        except gr.Error as e:
            failed.append(str(e))
            saved.append(None)

    job_id = secrets.token_hex(8)
    job = training_job(ctx, num_virtual_tokens, epochs, learning_rate, 4, "random", "selected acts" if chosen else DATA_CHOICES[0],
                       chosen, 0, session, f"api:{job_id}", when_done=save)
    ctx.api_trainings[job_id] = ApiTraining(start_job(ctx, job), session, saved, failed)
    while len(ctx.api_trainings) > MAX_API_TRAININGS:  # the oldest finished ones are forgotten
        oldest = next((k for k, t in ctx.api_trainings.items() if t.job.finished), None)
        if oldest is None:
            break
        del ctx.api_trainings[oldest]
    return {"job": job_id, "status": training_state(job), "steps": job.view.step_cap}


def training_state(job: Job) -> str:
    """waiting, training, done, stopped or failed (a run stopped before its first step counts as stopped)."""
    if not job.finished:
        return "training" if job.view.step or job.events else "waiting"
    if job.view.stopping and not job.view.finished:  # Stop was asked before the first step
        return "stopped"
    return "failed" if job.error is not None else "stopped" if job.view.stopped else "done"


def training_status(ctx: Context, job: str, wait_seconds: float = 0) -> dict:
    """How a training started with train_adapter is going; once it has ended, its adapter and held-out scores.

    Args:
        job: the id train_adapter returned
        wait_seconds: wait up to this long (0-30) for the training to end before answering

    Returns:
        {"job", "status" (waiting, training, done, stopped or failed), "step", "steps", "progress"} and, once ended:
        "adapter", "seconds", "held_out_perplexity", "base_held_out_perplexity" (or "error": one sentence)
    """
    job_id = checked_text(job, "job", MAX_FIELD_CHARS).strip()
    wait = checked_number(wait_seconds, "wait_seconds")
    if not 0 <= wait <= 30:
        raise refuse(f"wait_seconds must be from 0 to 30, got {wait}")
    training = ctx.api_trainings.get(job_id)
    if training is None:
        raise refuse(f"no training {job_id!r} on this server (train_adapter gives the id; ended ones are kept for "
                     f"the last {MAX_API_TRAININGS})")
    with training.job.lock:
        training.job.lock.wait_for(lambda: training.job.finished, timeout=wait)
    job_, view = training.job, training.job.view
    with job_.lock:
        answer = {"job": job_id, "status": training_state(job_), "step": view.step, "steps": view.step_cap,
                  "progress": view.progress}
    if not job_.finished:
        return answer
    if not training.session.runs:
        if answer["status"] == "stopped":
            return {**answer, "error": "the training was stopped before its first step; nothing was saved"}
        return {**answer, "error": failure(job_.error) if job_.error else "the training ended with nothing to keep"}
    run = training.session.runs[-1]
    m = run.soft.meta["metrics"]
    answer.update(adapter=training.saved[0] if training.saved else None, seconds=run.soft.meta["train_seconds"],
                  held_out_perplexity=perplexity(m["held_out_loss"]),
                  base_held_out_perplexity=perplexity(m["base_held_out_loss"]))
    if training.failed:
        answer["error"] = training.failed[0]
    return answer


def stop_training_job(ctx: Context, job: str) -> dict:
    """Stop a training started with train_adapter after its current step; what it learned is saved.

    Args:
        job: the id train_adapter returned

    Returns:
        training_status's answer at the moment of asking
    """
    job_id = checked_text(job, "job", MAX_FIELD_CHARS).strip()
    training = ctx.api_trainings.get(job_id)
    if training is None:
        raise refuse(f"no training {job_id!r} on this server")
    training.job.stop.set()
    with training.job.lock:
        training.job.view.request_stop()
    return training_status(ctx, job_id)


def evaluate_adapter(ctx: Context, adapter: str, rouge_acts: int = 3) -> dict:
    """Score a saved adapter against the base model on the acts it never trained on.

    Args:
        adapter: a saved adapter's name (see list_saved_adapters)
        rouge_acts: how many held-out acts to also score by ROUGE-L of greedy continuations, 0-20 (0: skip)

    Returns:
        {"held_out_acts", "tokens", "perplexity": {"base", "tuned"}, "rouge_l": {"base", "tuned"}, "acts_scored"}
    """
    if not (name := checked_name(adapter, "adapter")):
        raise refuse("name a saved adapter (see list_saved_adapters)")
    n = checked_whole(rouge_acts, "rouge_acts", 0, 20)
    with user_errors():
        soft = adapters.load(name, ctx.root, ctx.base())
    *_, (metrics, held, scored) = held_out_scores(ctx, soft, n, 64, lambda *args, **kwargs: None)
    return {"held_out_acts": len(held), "tokens": metrics["base"].tokens,
            "perplexity": {side: metrics[side].perplexity for side in ("base", "tuned")},
            "rouge_l": mean_rouge(scored), "acts_scored": [r["act"] for r in scored]}


def api_endpoints(ctx: Context) -> None:
    for fn in (list_acts, list_saved_adapters, compare_texts, train_adapter, training_status, stop_training_job,
               evaluate_adapter):
        gr.api(bind(fn, ctx), api_name=fn.__name__)


# ---------------------------------------------------------------------------------------
# 5. the app


def start_references(ctx: Context) -> Job:
    """Train the missing reference adapters in the background; visitors' trainings go first (Slot)."""
    def events(stop: threading.Event):
        try:
            if not reference.missing(ctx.root, ctx.model, ctx.dataset):
                return
            base, rows = load_base(ctx.model), dataset_rows(ctx.dataset)
            yield from reference.train_references(base, rows, ctx.model, ctx.dataset, ctx.root, stop)
        except (*USER_ERRORS, OSError) as e:  # no model or dataset yet: the visitors' own clicks will say why
            log.warning("reference adapters not trained: %s", e)

    view = ReferenceView()
    return ctx.jobs.start(Job(REFERENCE_OWNER, "the reference adapters", events, view.add, ctx.jobs.slot,
                              view=view, background=True))


def on_close(ctx: Context, request: gr.Request) -> None:
    """A tab closed (or a client went away): its runs stop after the grace, its download folder goes."""
    if request is not None:
        ctx.jobs.close(request.session_hash)


def header(ctx: Context) -> str:
    return (f"# Prompt tuning, visible\nTrain a soft prompt for **{short_name(ctx.model)}** on an act from "
            f"**{short_name(ctx.dataset)}**, watch the loss fall, then compare base and tuned answers.")


def build_app(
    model: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    adapters_dir: str | Path = adapters.DEFAULT_ROOT,
    max_epochs: int = 50,
    max_steps: int = 2000,
    max_adapters: int = 200,
    max_adapter_bytes: int = 500 * 2**20,
    max_queue: int = 64,
    reattach_grace: float = 10.0,
    reference_adapters: bool = False,
    hub_model: str | None = None,
) -> gr.Blocks:
    """The app, its queue configured: at most `max_queue` waiting events, 4 generations at once, one training.

    `max_adapters` and `max_adapter_bytes` cap what all visitors together may keep in `adapters_dir`;
    a training whose tab has closed stops `reattach_grace` seconds later unless a reload re-attaches.
    `reference_adapters`: train the seed's two runs in the background now, if they are not saved yet.
    `hub_model`: the Hub id of `model` when that is a local copy, for the model cards of pushed adapters.
    """
    ctx = Context(model, dataset, Path(adapters_dir), max(1, min(int(max_epochs), 50)), max_steps, max_adapters,
                  max_adapter_bytes, Jobs(grace=reattach_grace), hub_model)
    if removed := adapters.remove_leftovers(ctx.root):  # a crashed save's or a failed removal's folders
        log.info("removed %d leftover folder(s) of an interrupted save or delete from %s", removed, ctx.root)
    if reference_adapters:
        start_references(ctx)
    # delete_cache: Gradio's copies of uploads and download zips go after an hour (and at restart).
    with gr.Blocks(title="Prompt tuning, visible", delete_cache=(600, 3600)) as demo:
        session = gr.State(Session())
        browser = gr.BrowserState(None, storage_key="prompt-tuning-browser")
        gr.Markdown(header(ctx))
        status = gr.Markdown()
        with gr.Tabs():
            with gr.Tab("Dataset"):
                data = dataset_tab(ctx)
            with gr.Tab("Train") as tab:
                train_ = train_tab(ctx, session, tab)
            with gr.Tab("Compare") as tab:
                compare = compare_tab(ctx, session, tab)
            with gr.Tab("Evaluate") as tab:
                eval_adapter = evaluate_tab(ctx, session, tab)  # (dropdown, runs seen)
            with gr.Tab("Sweep & history") as tab:
                sweeps = sweep_tab(ctx, session, tab, train_)
            with gr.Tab("Adapters") as tab:
                adapters_table, save_run_choice = adapters_tab(ctx, session, tab)

        # the links between tabs: an act picked in Dataset shows in Train and Compare; a finished run shows everywhere
        picked = [data.full_prompt, train_.act, compare.act, compare.text, train_.tab_act]
        attached = demo.load(bind(attach, ctx), [browser, session], [session, browser], api_name=False)
        attached.then(restore_act, session, [data.act_name, *picked], api_name=False)
        # no concurrency limit: a re-attached tab follows its run to the end, and four of them must not make
        # a fifth reload wait past the grace after which a tab that left stops its training
        attached.then(bind(reattach, ctx), session, [train_.plot, train_.progress, train_.log], api_name=False,
                      concurrency_limit=None).then(  # the run followed to its end can be continued at once
            bind(resume_choices, ctx), [session, train_.resume], train_.resume, api_name=False)
        attached.then(bind(reattach_sweep, ctx), session, sweeps.outputs, api_name=False, concurrency_limit=None).then(
            bind(show_history, ctx), session, sweeps.history, api_name=False)  # with the cells the sweep added
        demo.load(bind(load_page, ctx), None, [data.acts_table, train_.chosen, status, adapters_table],
                  api_name="load_page", **HIDDEN).then(
            bind(search_after_load, ctx), data.search, data.acts_table, api_name=False, show_progress="hidden")
        data.acts_table.select(first_cell, None, data.act_name, api_name="pick_row", **HIDDEN).then(
            bind(select_act, ctx), [data.act_name, session], picked, api_name="select_act", **HIDDEN)
        data.act_name.submit(bind(select_act, ctx), [data.act_name, session], picked, api_name="select_act_by_name", **HIDDEN)
        for done in (train_.trained, sweeps.swept):
            done.then(bind(compare_choices, ctx), [session, *compare.adapters, compare.runs_seen],
                      [*compare.adapters, compare.runs_seen], api_name=False).then(
                bind(refresh_choices, ctx), [session, *eval_adapter], list(eval_adapter), api_name=False)
        train_.trained.then(bind(show_history, ctx), session, sweeps.history, api_name="history_after_train", **HIDDEN)
        demo.unload(bind(on_close, ctx))
        api_endpoints(ctx)
    for fn in demo.fns.values():  # the Log in button's own check (on a Space) is no tool of ours
        if fn.name == "_check_login_status":
            fn.api_visibility = "undocumented"
    # A full queue answers "Queue is full" at once, rather than letting waits grow without end.
    return demo.queue(max_size=max_queue, default_concurrency_limit=4)


def warm_up(model: str) -> None:
    with contextlib.suppress(*USER_ERRORS, OSError):
        load_base(model)


def _env_int(name: str, default: int | None) -> int | None:
    value = os.environ.get(name)
    return int(value) if value else default


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
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
    parser.add_argument("--hub-model", default=os.environ.get("TUNING_HUB_MODEL"),
                        help="the Hub id of --model when it is a local copy (pushed model cards name it)")
    # None when not given: Gradio then reads GRADIO_MCP_SERVER, the only switch a Space has (it passes no flags)
    parser.add_argument("--mcp", action="store_const", const=True, default=None,
                        help="also serve the documented API as MCP tools at /gradio_api/mcp/ "
                             "(also GRADIO_MCP_SERVER=true)")
    parser.add_argument("--no-reference-adapters", dest="reference_adapters", action="store_false",
                        default=os.environ.get("TUNING_REFERENCE_ADAPTERS", "1") != "0",
                        help="do not train the reference adapters (the seed's 5x5 and 20x10) at start "
                             "(also TUNING_REFERENCE_ADAPTERS=0)")
    return parser.parse_args(argv)


async def _built(args: argparse.Namespace) -> gr.Blocks:
    return build_app(args.model, args.dataset, args.adapters_dir, args.max_epochs, args.max_steps,
                     args.max_adapters, args.max_adapter_bytes, args.max_queue,
                     reference_adapters=args.reference_adapters, hub_model=args.hub_model)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    # Built inside a running event loop: outside one, Gradio makes a new loop for each internal app it
    # builds and drops the last, and a dropped loop's finalizer can print a traceback into the server log.
    app = asyncio.run(_built(args))
    # Load the base model while the page comes up, so the first Train click does not wait for it.
    # A failure here is not cached: the first request that needs the model tries again and says why.
    threading.Thread(target=warm_up, args=(args.model,), daemon=True, name="load-base").start()
    app.launch(server_name=args.host, server_port=args.port, share=args.share, max_file_size=MAX_UPLOAD_BYTES,
               mcp_server=args.mcp)


if __name__ == "__main__":
    main()
