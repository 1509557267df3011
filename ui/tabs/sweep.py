"""The Sweep & history tab: the seed's experiment as a grid of runs, and every run of this browser.

A sweep is a job as a training is (`follow`); its cells join the run history as they finish.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING, Callable, NamedTuple

import gradio as gr

from tuning import evaluate, gpu, sweep
from tuning.config import SHOTS
from tuning.formatting import duration, plural
from tuning.generate import decode_pace
from tuning.jobs import Job
from tuning.plan import (PlanError, checked_config, estimate_seconds, plan_sweep, row_tokens, scored_tokens,
                         train_tokens)
from tuning.progress import SweepView
from ui import gpu_calls
from ui.charts import (cell_colours, history_chart, history_frame, loss_frame, step_axis, sweep_frame,
                       write_history_csv)
from ui.checks import (MAX_FIELD_CHARS, CheckedCheckboxGroup, CheckedNumber, CheckedText, checked_text, refuse,
                       user_errors, whole)
from ui.follow import follow, start_job, stop_run, stoppable
from ui.session import HIDDEN, MAX_HISTORY, Context, Session, bind, owner_of

if TYPE_CHECKING:
    from ui.tabs.train import TrainTab


MAX_CELLS = 12  # sweep grid cells per click
SHOT_LABELS = {plural(k, "example"): k for k in SHOTS}  # the Written prompts boxes, as Compare and Evaluate word them


def shot_counts(chosen) -> tuple[int, ...]:
    """The ticked Written prompts boxes as example counts: ["2 examples", "1 example"] -> (1, 2); None -> ()."""
    chosen = [] if chosen is None else chosen
    if not isinstance(chosen, (list, tuple)) or not all(isinstance(c, str) and c in SHOT_LABELS for c in chosen):
        raise refuse(f"Written prompts must be some of {', '.join(SHOT_LABELS)}, got {str(chosen)[:80]!r}")
    return tuple(sorted({SHOT_LABELS[c] for c in chosen}))


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


def sweep_estimate(ctx: Context, grid_text, lr, batch, seed, session: Session, rouge_acts=0, shots=None) -> str:
    """How long the grid will take, before it starts: its steps and, once a run has measured the speed, the time.

    ROUGE-L decodes each act alone, once for the base model and once per cell and written prompt,
    at most ROUGE_NEW_TOKENS tokens each: counted at the pace of this server's last one-row
    generation (an Evaluate, an earlier sweep's ROUGE-L; else Compare's, more rows a step: an
    upper bound). With none measured yet, the estimate says it comes on top. Written prompts
    (`shots`, the boxes' labels) are drawn as the sweep will draw them and their scoring counted:
    each in front of every held-out act.
    """
    try:
        plan = sweep_plan(ctx, grid_text, lr, batch, seed)
        prompts = sweep_written(ctx, plan, shots)
    except gr.Error as e:
        return f"⚠️ {e.message}"
    cells = ", ".join(sweep.label(t, e) for t, e in plan.grid)
    text = f"{plural(len(plan.grid), 'cell')} ({cells}): {plural(plan.total_steps, 'step')} in all"
    if prompts:
        text += (f", then {plural(len(prompts), 'written prompt')} ({', '.join(p.describe() for p in prompts)}) "
                 f"scored on the held-out acts")
    speed = last_speed(session)
    n_rouge = whole(rouge_acts)
    n_rouge = min(n_rouge, len(plan.held_out_rows)) if isinstance(n_rouge, int) else 0
    rouge = (f", then ROUGE-L generation for {plural(n_rouge, 'held-out act')} in each cell"
             f"{' and written prompt' if prompts else ''}" if n_rouge > 0 else "")
    if speed is None:
        return text + rouge + "; train once (any run) and this will say about how long the training takes."
    seconds = sweep_training_seconds(ctx.base(), plan, prompts, speed)
    scoring = " and written-prompt scoring" if prompts else ""
    text += f"; about {duration(seconds)} of training{scoring} at {speed:,.0f} tokens/s (your last run's speed)"
    if not rouge:
        return text + "."
    pace = None if gpu.zero_gpu() else decode_pace(1)  # a ZeroGPU worker's generations are timed out of sight
    if pace is None:
        return text + rouge + (", not counted." if gpu.zero_gpu() else
                               ", not counted until a generation has been timed (Generate in Compare once).")
    rouge_s = (len(plan.grid) + 1 + len(prompts)) * n_rouge * evaluate.ROUGE_NEW_TOKENS * pace
    return text + rouge + f", up to about {duration(rouge_s)} more at this server's last generation pace."


def sweep_written(ctx: Context, plan, shots) -> list:
    """The written prompts a sweep with these boxes ticked will score (sweep.written_prompts: its own draw)."""
    counts = shot_counts(shots)
    if not counts:
        return []  # no model needed to say so
    with user_errors():  # too few acts outside the held-out side for k examples: one sentence
        return sweep.written_prompts(ctx.base(), ctx.rows(), plan.held_out_rows, plan.config.seed, counts)


def sweep_training_seconds(base, plan, prompts, speed: float) -> float:
    """Seconds of the cells' training and held-out scoring, and of each written prompt's scoring, at `speed`."""
    tokens, held = (train_tokens(rows, lambda text: len(base.encode(text)))
                    for rows in (plan.train_rows, plan.held_out_rows))
    # each cell's epoch ends score the held-out rows (a short cell a seeded subset, all at its last); the base
    # model is scored once per sweep, not once per cell
    held_lengths = row_tokens(plan.held_out_rows, lambda text: len(base.encode(text)))
    scored = sum(scored_tokens(tokens, held_lengths, plan.config.batch_size, plan.config.seed, e)
                 for _, e in plan.grid) - (len(plan.grid) - 1) * held
    scored += sweep.written_scored_tokens(prompts, held_lengths)
    return estimate_seconds(sum(e for _, e in plan.grid) * tokens, speed, scored)


def start_sweep(ctx: Context, grid_text, rouge_acts, lr, batch, seed, session: Session, request: gr.Request,
                shots=None):
    """Run the sweep as this browser's job and follow it; `shots` (the Written prompts boxes) adds written rows."""
    plan = sweep_plan(ctx, grid_text, lr, batch, seed)
    n_rouge, counts = whole(rouge_acts), shot_counts(shots)
    view = SweepView(len(plan.grid), plan.steps_per_epoch * plan.longest_epochs, n_rouge,
                     labels=[sweep.label(t, e) for t, e in plan.grid],
                     rouge_pace=None if gpu.zero_gpu() else decode_pace(1), shots=counts)
    base, rows = ctx.base(), ctx.rows()
    if gpu.zero_gpu():
        with user_errors():
            gpu.check_fits(gpu.sweep_seconds(base, rows, plan.config, plan.grid, rouge_acts=n_rouge, shots=counts),
                           "this sweep")

    def events(stop: threading.Event):
        flag = gpu.StopFlag(also=stop)
        call = gpu_calls.SWEEP_ON_GPU(base, rows, plan.config, list(plan.grid), flag, n_rouge, counts)
        for event in stoppable(stop, call, flag):
            if isinstance(event, sweep.CellResult):
                session.remember(event.soft, "sweep", event.steps_per_epoch)
            yield event

    job = Job(owner_of(session, request), "a sweep", events, view.add, ctx.jobs.slot, view=view,
              on_wait=lambda: setattr(view, "progress", "waiting: another run is training on this server"))
    yield from follow(ctx, start_job(ctx, job), request.session_hash, sweep_render(ctx, view, request.session_hash))


def sweep_render(ctx: Context, view: SweepView, session_hash: str) -> Callable[[SweepView], tuple]:
    """The Sweep tab's (chart, progress, table, csv, context chart) for each update of one follower of a sweep.

    The context chart (sweep.context_figure: the CLI's sweep.png left panel) shows once written rows exist.
    """
    series = ["base held-out"] + [f"{name} {kind}" for name in view.labels for kind in ("train", "held-out")]
    palette = cell_colours(view.labels)
    sent, csv_file, in_csv, picture, drawn = 0, None, 0, None, 0

    def render(view: SweepView) -> tuple:
        nonlocal sent, csv_file, in_csv, picture, drawn
        done = len(view.results) + len(view.written)
        if done > in_csv:  # each finished cell or written row: the file holds what is done even if a later one fails
            csv_file = str(sweep.write_csv(view.results, ctx.jobs.folder(session_hash, "sweep") / "sweep.csv",
                                           view.written))
            in_csv = done
        # the first update carries the data alone, so the map that follows rebuilds with it (see `charts.colours`)
        plot = gr.LinePlot(loss_frame(list(view.points), series), x_lim=step_axis(view.x_end),
                           **({"color_map": palette} if sent else {}))
        if view.written:  # the written rows come after every cell: only the last few updates send the picture
            if len(view.written) != drawn:  # built once per row: render runs at every wake-up, under the job's lock
                picture = gr.Plot(sweep.context_figure(view.results, view.written), visible=True)
                drawn = len(view.written)
            context = picture
        else:  # a new sweep hides the last one's picture, and its steps leave it hidden without sending it again
            context = gr.skip() if sent else gr.Plot(None, visible=False)
        sent += 1
        # a tab that was closed (its folder went with it) may be rendered once more before its follower ends
        shown_csv = csv_file if csv_file and os.path.exists(csv_file) else None
        return plot, view.progress, sweep_frame(list(view.results), list(view.written)), shown_csv, context

    return render


def reattach_sweep(ctx: Context, session: Session, request: gr.Request):
    """After a reload: if this browser's sweep still runs, show it again in the Sweep tab and follow it to the end."""
    job = ctx.jobs.running(session.owner)
    if job is None or not isinstance(job.view, SweepView):
        yield (gr.skip(),) * 5  # nothing to follow: leave the tab as it is (see `train.reattach`)
        return
    yield from follow(ctx, job, request.session_hash, sweep_render(ctx, job.view, request.session_hash))


def stop_sweep(ctx: Context, session: Session, request: gr.Request) -> str:
    return stop_run(ctx, session, request, SweepView)


def show_history(ctx: Context, session: Session):
    table, (frame, palette) = history_frame(session.runs), history_chart(session.runs)
    axis = step_axis(max((r.soft.meta["history"]["step"][-1] for r in session.runs), default=0))
    yield table, gr.LinePlot(frame, x_lim=axis)  # the data first, then the same data with its colours (`charts.colours`)
    yield table, gr.LinePlot(frame, color_map=palette, x_lim=axis)


def export_history(ctx: Context, session: Session, request: gr.Request) -> str:
    if not session.runs:
        raise refuse("no runs yet: train or sweep first")
    return str(write_history_csv(session.runs, ctx.jobs.folder(request.session_hash) / "history.csv"))


class SweepTab(NamedTuple):
    history: list  # [table, chart], refreshed after every run
    swept: gr.events.Dependency
    outputs: list  # [chart, progress, results table, csv file, context chart]: what a sweep's followers update


def sweep_tab(ctx: Context, session: gr.State, train: TrainTab) -> SweepTab:
    with gr.Tab("Sweep & history") as tab:
        gr.Markdown("Reproduce the seed's experiment: one soft prompt per *tokens × epochs* cell, trained on all "
                    "training acts with the Train tab's learning rate, batch size and seed, on the same split. "
                    "The default grid is the seed's two runs.")
        with gr.Row():
            grid = CheckedText("5x5, 20x10", label="Grid (tokens x epochs, comma-separated)", max_length=MAX_FIELD_CHARS)
            rouge = CheckedNumber(0, precision=0, minimum=0, maximum=10, label="Held-out acts for ROUGE-L (0: skip)")
            shots = CheckedCheckboxGroup(list(SHOT_LABELS), value=[], label="Written prompts",
                                     info="also the base model with that many training acts' prompts written in "
                                          "front, on the same held-out acts: the baseline a soft prompt has to beat")
        estimate = gr.Markdown(elem_id="sweep-estimate")
        with gr.Row():
            go = gr.Button("Run sweep", variant="primary")
            stop = gr.Button("Stop sweep", variant="stop")
        plot = gr.LinePlot(loss_frame([], []), x="step", y="loss", color="series", height=360, x_title="training step",
                           x_axis_format="d", y_axis_format=".2f", title="Loss per token (nats), every cell",
                           elem_id="sweep-plot")
        context = gr.Plot(label="Held-out perplexity vs context spent (soft and written prompts)", visible=False,
                          elem_id="sweep-context")
        progress = gr.Markdown("not started", elem_id="sweep-progress")
        table = gr.Dataframe(sweep_frame([]), label="Results (a written prompt's numbers are in the tuned columns)",
                             interactive=False)
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

        estimate_inputs = [grid, train.lr, train.batch, train.seed, session, rouge, shots]
        # always_last: gr.on takes "once" from its first trigger (select), which drops a field's change
        # that comes while the estimate for the previous one is still being computed (a stale line)
        gr.on([tab.select, grid.change, rouge.change, shots.change], bind(sweep_estimate, ctx), estimate_inputs,
              estimate, api_name="sweep_estimate", trigger_mode="always_last", **HIDDEN)
        history = [history_table, history_plot]
        tab.select(bind(show_history, ctx), session, history, api_name="history", **HIDDEN)
        outputs = [plot, progress, table, csv_out, context]
        swept = go.click(bind(start_sweep, ctx), [grid, rouge, train.lr, train.batch, train.seed, session, shots],
                         outputs, api_name="sweep", **HIDDEN, concurrency_limit=8, concurrency_id="train")
        swept.then(bind(show_history, ctx), session, history, api_name="history_after_sweep", **HIDDEN)
        stop.click(bind(stop_sweep, ctx), session, progress, api_name="stop_sweep", **HIDDEN)
        refresh.click(bind(show_history, ctx), session, history, api_name="refresh_history", **HIDDEN)
        export.click(bind(export_history, ctx), session, history_csv, api_name="export_history", **HIDDEN)
    return SweepTab(history, swept, outputs)
