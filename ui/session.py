"""What the process shares (`Context`), what one browser keeps (`Session`), and how a callback gets them.

`Context` holds the model, the dataset, the adapters folder, the server's caps and the job
registry; the base model and the rows load on first use. `Session` is one browser's current act
and runs; the job registry keeps it under the browser's id, so a reloaded page finds it again
(`attach`). `bind` hands a module-level callback its context; `pick_soft` finds a tuned prompt by
the name a dropdown or a client sent: a run of this session or a saved adapter.
"""

from __future__ import annotations

import functools
import inspect
import os
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable

import gradio as gr

from tuning import adapters, sweep
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL, same_model
from tuning.data import Row, load_rows, source_note
from tuning.formatting import plural
from tuning.jobs import Jobs
from tuning.model import DOWNLOAD_RETRY_S, SoftPrompt, load_base, load_problem
from tuning.progress import ReferenceView
from ui.checks import checked_name, refuse, user_errors


SESSION_RUN = "this session's run"  # API alias for the newest run of the session
REFERENCE_OWNER = "reference adapters"  # the job registry's owner of the background reference training
HIDDEN = {"api_visibility": "undocumented"}  # the tabs' events: callable by clients, not the documented API (ui/api.py)
MAX_HISTORY = 20  # runs kept per browser; the oldest go first
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


def attach(ctx: Context, browser_id: str | None, session: Session):
    """The page loaded: find this browser's session (a reload keeps its runs) and give a new browser an id."""
    if not isinstance(browser_id, str) or not 16 <= len(browser_id) <= 64 or not browser_id.isalnum():
        browser_id = secrets.token_hex(16)  # a new browser (or a value nobody should have sent)
    session = ctx.jobs.state(browser_id, lambda: Session(owner=browser_id))
    return session, browser_id


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


def prompt_names(session: Session, listing: list[dict]) -> list[str]:
    """This session's runs (newest first), then the saved adapters."""
    return [r.name for r in reversed(session.runs)] + [a["name"] for a in listing]


def run_choices(session: Session, listing: list[dict], current: str | None = None) -> gr.Dropdown:
    """The tuned prompts a visitor can pick; keeps `current` when it is still there, else the newest."""
    choices = prompt_names(session, listing)
    if current == SESSION_RUN and session.runs:
        current = session.runs[-1].name
    return gr.Dropdown(choices=choices, value=current if current in choices else (choices[0] if choices else None))


def newest_run(session: Session, runs_seen: int) -> str | None:
    """The session's newest run when it finished after the page last offered its prompts (`runs_seen` runs then)."""
    return session.runs[-1].name if session.runs and session.run_count > runs_seen else None


def reference_status(ctx: Context) -> tuple[str, int | None]:
    """(the reference adapters' progress line, how many are saved so far), or ("", None) when none train."""
    job = ctx.jobs.running(REFERENCE_OWNER)
    if job is None or not isinstance(job.view, ReferenceView):
        return "", None
    with job.lock:
        return job.view.line(job.paused), len(job.view.saved)


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


_retry = {"at": 0.0, "running": False}  # the background retry of a model that did not load
_retry_lock = threading.Lock()


def model_problem(ctx: Context) -> str | None:
    """One sentence while the model cannot be loaded (its last try failed), else None; retried in the background.

    Nothing on the page works without the model, so the page says so under its header rather
    than in each failed click; a retry once a DOWNLOAD_RETRY_S makes the line go when it loads.
    """
    problem = load_problem(ctx.model)
    if problem is None:
        return None
    with _retry_lock:
        due = not _retry["running"] and time.monotonic() - _retry["at"] >= DOWNLOAD_RETRY_S
        if due:
            _retry.update(at=time.monotonic(), running=True)
    if due:
        threading.Thread(target=_retry_load, args=(ctx.model,), daemon=True, name="retry-load").start()
    return (f"The model {short_name(ctx.model)} could not be loaded: {problem}. Train, Compare and Evaluate "
            f"need it; this page tries again every minute.")


def _retry_load(model: str) -> None:
    try:
        load_base(model)
    except Exception:  # load_problem keeps the sentence; the page goes on saying it
        pass
    finally:
        with _retry_lock:
            _retry["running"] = False


def model_line(ctx: Context) -> str:
    """The page's line under the header: the model's problem, or nothing."""
    problem = model_problem(ctx)
    return f"⚠️ {problem}" if problem else ""
