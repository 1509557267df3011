"""Following a job into a tab: its events become updates while it runs, its error one sentence if it fails.

A training or a sweep runs in a thread of the job registry (`tuning.jobs`), not in the click's
callback: the callback starts it (`start_job`) and then only follows it (`follow`), so a reloaded
page follows it again, and Stop (`stop_run`) reaches it from any tab of the browser.
"""

from __future__ import annotations

import threading
from typing import Callable

import gradio as gr

from tuning import gpu
from tuning.jobs import Job
from tuning.progress import SERIES, RunView, SweepView
from ui.charts import loss_frame, step_axis
from ui.checks import OUT_OF_MEMORY, USER_ERRORS, refuse, user_errors
from ui.session import Context, Session, owner_of


def stoppable(stop: threading.Event, events, flag: gpu.StopFlag):
    """Pass `events` on; a `stop` set meanwhile is handed to the run through `flag` (which a GPU worker sees)."""
    try:
        for event in events:
            if stop.is_set():
                flag.set()
            yield event
    finally:
        flag.remove()


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


def start_job(ctx: Context, job: Job) -> Job:
    try:
        return ctx.jobs.start(job)
    except RuntimeError as e:  # this browser already runs one
        raise refuse(f"{e}: stop it first, or wait for it to end") from None


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


def run_update(view: RunView) -> tuple:
    """(chart, progress line, log) of a training.

    The step axis spans the whole planned run (at least 20 steps, so its ticks are whole steps):
    the curve grows left to right, and how far along the run is shows at a glance.
    """
    chart = gr.LinePlot(loss_frame(list(view.points), SERIES), x_lim=step_axis(view.step_cap))
    return chart, view.progress, "\n".join(view.log)
