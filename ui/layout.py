"""The page: a header, the tabs (one module each, in `ui/tabs/`), the few links between them, the API.

A new tab is a module in `ui/tabs/` and one line in `build_app`.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import gradio as gr

from tuning import adapters, reference
from tuning.config import DEFAULT_DATASET, DEFAULT_MODEL
from tuning.jobs import Job, Jobs
from tuning.model import load_base
from tuning.progress import ReferenceView
from ui.api import api_endpoints
from ui.charts import first_cell
from ui.checks import USER_ERRORS
from ui.session import (HIDDEN, REFERENCE_OWNER, Context, Session, attach, bind, dataset_rows, model_line,
                        short_name)
from ui.tabs.adapters import AdaptersTab, adapters_tab
from ui.tabs.compare import CompareTab, compare_choices, compare_tab, example_inputs
from ui.tabs.dataset import DatasetTab, dataset_tab, load_page, restore_act, search_after_load, select_act
from ui.tabs.evaluate import EvaluateTab, evaluate_tab, refresh_choices
from ui.tabs.sweep import SweepTab, reattach_sweep, show_history, sweep_tab
from ui.tabs.train import TrainTab, reattach, resume_choices, train_tab

log = logging.getLogger("tuning.app")


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
        model_status = gr.Markdown(elem_id="model-status")
        # every 10 s: the line appears after a click found the model missing, and goes once a retry loads it
        gr.Timer(10.0).tick(bind(model_line, ctx), None, model_status, api_name=False, show_progress="hidden")
        demo.load(bind(model_line, ctx), None, model_status, api_name=False, show_progress="hidden")
        with gr.Tabs():
            data = dataset_tab(ctx)
            train = train_tab(ctx, session)
            compare = compare_tab(ctx, session)
            evaluate = evaluate_tab(ctx, session)
            sweep = sweep_tab(ctx, session, train)
            saved = adapters_tab(ctx, session)
        on_load(ctx, demo, session, browser, status, data, train, compare, sweep, saved)
        link_tabs(ctx, session, data, train, compare, evaluate, sweep)
        demo.unload(bind(on_close, ctx))
        api_endpoints(ctx)
    for fn in demo.fns.values():  # the Log in button's own check (on a Space) is no tool of ours
        if fn.name == "_check_login_status":
            fn.api_visibility = "undocumented"
    # A full queue answers "Queue is full" at once, rather than letting waits grow without end.
    return demo.queue(max_size=max_queue, default_concurrency_limit=4)


def picked_act(data: DatasetTab, train: TrainTab, compare: CompareTab) -> list:
    """Where a picked act shows: its whole prompt, Train's and Compare's act lines, Compare's input, Train's act."""
    return [data.full_prompt, train.act, compare.act, compare.text, train.tab_act]


def on_load(ctx: Context, demo: gr.Blocks, session: gr.State, browser: gr.BrowserState, status: gr.Markdown,
            data: DatasetTab, train: TrainTab, compare: CompareTab, sweep: SweepTab, saved: AdaptersTab) -> None:
    """A page loads: find this browser's session, show its act again, re-attach to its job, fill the tables."""
    attached = demo.load(bind(attach, ctx), [browser, session], [session, browser], api_name=False)
    attached.then(restore_act, session, [data.act_name, *picked_act(data, train, compare)], api_name=False)
    # no concurrency limit: a re-attached tab follows its run to the end, and four of them must not make
    # a fifth reload wait past the grace after which a tab that left stops its training
    attached.then(bind(reattach, ctx), session, [train.plot, train.progress, train.log], api_name=False,
                  concurrency_limit=None).then(  # the run followed to its end can be continued at once
        bind(resume_choices, ctx), [session, train.resume], train.resume, api_name=False)
    attached.then(bind(reattach_sweep, ctx), session, sweep.outputs, api_name=False, concurrency_limit=None).then(
        bind(show_history, ctx), session, sweep.history, api_name=False)  # with the cells the sweep added
    demo.load(bind(load_page, ctx), None, [data.acts_table, train.chosen, status, saved.table],
              api_name="load_page", **HIDDEN).then(
        bind(search_after_load, ctx), data.search, data.acts_table, api_name=False, show_progress="hidden").then(
        bind(example_inputs, ctx), None, compare.examples, api_name=False, show_progress="hidden")


def link_tabs(ctx: Context, session: gr.State, data: DatasetTab, train: TrainTab, compare: CompareTab,
              evaluate: EvaluateTab, sweep: SweepTab) -> None:
    """An act picked in Dataset shows in Train and Compare; a finished run or sweep shows in every tab."""
    picked = picked_act(data, train, compare)
    data.acts_table.select(first_cell, None, data.act_name, api_name="pick_row", **HIDDEN).then(
        bind(select_act, ctx), [data.act_name, session], picked, api_name="select_act", **HIDDEN)
    data.act_name.submit(bind(select_act, ctx), [data.act_name, session], picked, api_name="select_act_by_name",
                         **HIDDEN)
    for done in (train.trained, sweep.swept):
        done.then(bind(compare_choices, ctx), [session, *compare.adapters, compare.runs_seen],
                  [*compare.adapters, compare.runs_seen], api_name=False).then(
            bind(refresh_choices, ctx), [session, *evaluate], list(evaluate), api_name=False)
    train.trained.then(bind(show_history, ctx), session, sweep.history, api_name="history_after_train", **HIDDEN)
