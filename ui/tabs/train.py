"""The Train tab: a prompt's size and schedule, Train and Stop, and the loss chart as it trains.

Train starts a job (`training.training_job`) and follows it; a reloaded page re-attaches (`reattach`).
"""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from tuning.config import TuneConfig
from tuning.progress import SERIES, RunView
from ui.charts import COLOURS, act_line, loss_frame
from ui.checks import CheckedRadio, CheckedNumber, CheckedSlider
from ui.follow import follow, run_update, start_job, stop_run
from ui.session import HIDDEN, Context, Session, bind, model_problem, owner_of, prompt_names
from ui.training import DATA_CHOICES, INITS, NEW_PROMPT, training_job


PRESETS = {"5 tokens × 5 epochs": (5, 5), "20 tokens × 10 epochs": (20, 10)}


def start_training(ctx: Context, tokens, epochs, lr, batch, init, data, chosen, seed, session: Session,
                   request: gr.Request, resume=NEW_PROMPT, tab_act: str | None = None):
    """Plan the run, start it in the job registry, then stream it (a reloaded page re-attaches with `reattach`).

    A model that cannot be loaded is said on the progress line, not as red "Error" badges.
    """
    try:
        job = training_job(ctx, tokens, epochs, lr, batch, init, data, chosen, seed, session,
                           owner_of(session, request), resume, tab_act)
    except gr.Error:
        if (problem := model_problem(ctx)) is None:
            raise
        yield gr.skip(), f"failed: {problem}", ""
        return
    yield from follow(ctx, start_job(ctx, job), request.session_hash, run_update)


def reattach(ctx: Context, session: Session, request: gr.Request):
    """After a reload: if this browser's training still runs, show it again and follow it to the end."""
    job = ctx.jobs.running(session.owner)
    if job is None or not isinstance(job.view, RunView):
        # nothing to follow: leave the tab as it is. A generator that ends without yielding blanks
        # its outputs in the browser (the "not started" line, the empty chart)
        yield (gr.skip(),) * 3
        return
    yield from follow(ctx, job, request.session_hash, run_update)


def stop_training(ctx: Context, session: Session, request: gr.Request) -> str:
    return stop_run(ctx, session, request, RunView)


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


def train_tab(ctx: Context, session: gr.State) -> TrainTab:
    with gr.Tab("Train") as tab:
        act = gr.Markdown(act_line(None))
        with gr.Row():
            with gr.Column(scale=1):
                preset = CheckedRadio(list(PRESETS), label="Presets")
                tokens = CheckedSlider(1, 100, value=20, step=1, label="Virtual tokens")
                epochs = CheckedSlider(1, ctx.max_epochs, value=min(10, ctx.max_epochs), step=1, label="Epochs",
                                info=f"this server runs at most {ctx.max_epochs} epochs and {ctx.max_steps:,} steps")
                with gr.Row():
                    lr = CheckedNumber(TuneConfig.learning_rate, label="Learning rate")  # TuneConfig checks the range
                    batch = CheckedSlider(1, 64, value=4, step=1, label="Batch size")
                init = CheckedRadio(list(INITS), value=next(k for k, v in INITS.items() if v == TuneConfig().init),
                                label="Start the prompt from")
                data = CheckedRadio(list(DATA_CHOICES), value=DATA_CHOICES[0], label="Train on")
                chosen = gr.Dropdown([], multiselect=True, label="Selected acts")
                seed = CheckedNumber(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1)
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
