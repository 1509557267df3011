"""One training as a job: the Train tab's values (or an API call's) -> a checked config, a plan, a `Job`.

Shared by the Train tab and the API's `train_adapter`; `follow.start_job` starts the job. Its
events come from `gpu_calls.TRAIN_ON_GPU`, looked up in that module at each run.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable

import gradio as gr

from tuning import gpu
from tuning.config import TuneConfig
from tuning.data import find_act
from tuning.events import Done, Snapshot, Step
from tuning.formatting import plural
from tuning.history import saved_history, trained_so_far
from tuning.jobs import Job
from tuning.model import SoftPrompt
from tuning.plan import checked_config, config_error, plan_run
from tuning.progress import RunView
from tuning.train import resume_config, resume_note
from ui import gpu_calls
from ui.checks import checked_name, refuse, user_errors, whole
from ui.follow import stoppable
from ui.session import Context, Run, Session, pick_soft

log = logging.getLogger("tuning.app")


NEW_PROMPT = "a new prompt"  # the Train tab's "Continue from" when nothing is resumed
INITS = {"the words \"I want you to act as\"": "instruction", "random": "random",
         "text: the current act's prompt": "text", "sampled vocabulary": "sample_vocab"}
DATA_CHOICES = ("all training acts", "only the current act", "selected acts")


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
        run, snapshot = gpu_calls.TRAIN_ON_GPU(base, plan.train_rows, plan.config, plan.held_out_rows, flag, **resume), None
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
