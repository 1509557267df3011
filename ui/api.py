"""The documented API, which `--mcp` also serves as MCP tools: seven functions that answer in plain data.

The tabs' own events stay callable by gradio_client but undocumented (`session.HIDDEN`): they
return widgets, not answers. Each function's docstring is its tool's description.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

import gradio as gr

from tuning import adapters, reference, written
from tuning.config import TuneConfig
from tuning.generate import Decoding
from tuning.jobs import Job
from tuning.written import Written
from ui import gpu_calls
from ui.charts import acts_frame, perplexity
from ui.checks import (MAX_FIELD_CHARS, MAX_INPUT_CHARS, checked_name, checked_number, checked_text, checked_whole,
                       disk_errors, refuse, user_errors, whole)
from ui.follow import failure, start_job
from ui.session import Context, Run, Session, bind, short_name
from ui.tabs.adapters import own_name
from ui.tabs.compare import MAX_NEW_TOKENS
from ui.tabs.evaluate import held_out_scores, mean_rouge, sides
from ui.training import DATA_CHOICES, training_job


MAX_API_TRAININGS = 64  # trainings started through the API whose status is kept


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


def checked_shots(value, label: str = "shots") -> int:
    """0 (no written prompt) or one of written.SHOTS; anything else refused in one sentence."""
    allowed = (0, *written.SHOTS)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or whole(value) not in allowed:
        raise refuse(f"{label} must be one of {', '.join(map(str, allowed))} (0: no written prompt), got {str(value)[:80]}")
    return whole(value)


def written_description(prompt: Written) -> dict:
    """What a written prompt was: {"label", "tokens", "examples"} (the acts its examples are prompts of)."""
    return {"label": prompt.label, "tokens": prompt.tokens, "examples": [row.act for row in prompt.examples]}


def compare_texts(ctx: Context, text: str, adapter: str, second_adapter: str = "", max_new_tokens: int = 64,
                  shots: int = 0) -> dict:
    """Continue a text with the base model, one or two tuned prompts and (with shots) a written prompt, greedy, in one batch.

    Args:
        text: the input, e.g. "I want you to act as a rapper."
        adapter: a saved adapter's name (see list_saved_adapters)
        second_adapter: another saved adapter's name for a third column; empty for none
        max_new_tokens: how many tokens each continuation may have, 1-512 (as on the page)
        shots: 1, 2 or 4 for a written-prompt baseline in the same batch: the base model with that many whole prompts of training acts in front (drawn with the adapter's seed, never an act an adapter held out); 0 for none

    Returns:
        {"base": text, <adapter>: text[, <second_adapter>: text]}, and with shots: "written": text and
        "written_prompt": {"label", "tokens", "examples"} (its context in tokens, the acts of its examples)
    """
    names = [checked_name(adapter, "adapter")] + ([checked_name(second_adapter)] if second_adapter else [])
    if None in names:
        raise refuse("name a saved adapter (see list_saved_adapters)")
    if len(set(names)) < len(names):  # one key would hold both columns
        raise refuse(f"the adapter {names[0]!r} is named twice; give two different adapters")
    k = checked_shots(shots)
    taken = {"base": "the base model's text"} | ({"written": "the written prompt's text",
                                                   "written_prompt": "the written prompt's description"} if k else {})
    for key, what in taken.items():  # one key would hold two things
        if key in names:
            raise refuse(f"the answer names {what} {key!r}; rename the adapter called {key!r} to compare it")
    text = checked_text(text, "the input", MAX_INPUT_CHARS)
    tokens = checked_whole(max_new_tokens, "max_new_tokens", 1, MAX_NEW_TOKENS)  # what the page's slider allows
    with user_errors():
        base = ctx.base()
        prompts = [adapters.load(name, ctx.root, base) for name in names]
        shown = written.for_adapters(base, prompts, ctx.rows(), ctx.dataset, k) if k else None
        if shown is not None:
            written.check_fits(base, shown, len(base.encode(text)), tokens)
        texts = ()
        batch = ([shown] if shown is not None else []) + prompts
        for texts in gpu_calls.GENERATE_ON_GPU(base, batch, text, Decoding(max_new_tokens=tokens)):
            pass
    if shown is None:
        return dict(zip(["base", *names], texts))
    base_text, written_text, *tuned = texts
    return {"base": base_text, **dict(zip(names, tuned)), "written": written_text,
            "written_prompt": written_description(shown)}


@dataclass
class ApiTraining:
    """A training started through the API: its job, the session its run joins, and where it was saved."""

    job: Job
    session: Session
    saved: str | None = None  # the adapter's name, once saved
    save_error: str | None = None  # the sentence, when saving failed


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
    training = ApiTraining(None, Session())

    def save(run: Run) -> None:
        c = run.soft.config
        name = wanted or f"{chosen[0] if len(chosen) == 1 else 'acts' if chosen else 'all'}-{c.num_virtual_tokens}x{c.epochs}"
        try:
            with user_errors(), disk_errors():
                name = adapters.free_name(own_name(name), {a["name"] for a in ctx.adapters()})
                training.saved = adapters.save(run.soft, name, ctx.root, overwrite=False, **ctx.caps).name
        except gr.Error as e:
            training.save_error = str(e)

    job_id = secrets.token_hex(8)
    job = training_job(ctx, num_virtual_tokens, epochs, learning_rate, 4, "random", "selected acts" if chosen else DATA_CHOICES[0],
                       chosen, 0, training.session, f"api:{job_id}", when_done=save)
    training.job = start_job(ctx, job)
    ctx.api_trainings[job_id] = training
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
    answer.update(adapter=training.saved, seconds=run.soft.meta["train_seconds"],
                  held_out_perplexity=perplexity(m["held_out_loss"]),
                  base_held_out_perplexity=perplexity(m["base_held_out_loss"]))
    if training.save_error:
        answer["error"] = training.save_error
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


def evaluate_adapter(ctx: Context, adapter: str, rouge_acts: int = 3, shots: int = 0) -> dict:
    """Score a saved adapter against the base model on the acts it never trained on.

    Args:
        adapter: a saved adapter's name (see list_saved_adapters)
        rouge_acts: how many held-out acts to also score by ROUGE-L of greedy continuations, 0-20 (0: skip)
        shots: 1, 2 or 4 to also score a written-prompt baseline on the same tokens: the base model with that many whole prompts of training acts in front; 0 for none

    Returns:
        {"held_out_acts", "tokens", "perplexity": {"base", "tuned"}, "rouge_l": {"base", "tuned"}, "acts_scored"};
        with shots, "written" in both and "written_prompt": {"label", "tokens", "examples"}
    """
    if not (name := checked_name(adapter, "adapter")):
        raise refuse("name a saved adapter (see list_saved_adapters)")
    n = checked_whole(rouge_acts, "rouge_acts", 0, 20)
    k = checked_shots(shots)
    with user_errors():
        soft = adapters.load(name, ctx.root, ctx.base())
    *_, (metrics, held, scored, shown) = held_out_scores(ctx, soft, n, 64, lambda *args, **kwargs: None, k)
    answer = {"held_out_acts": len(held), "tokens": metrics["base"].tokens,
              "perplexity": {side: metrics[side].perplexity for side in sides(metrics)},
              "rouge_l": mean_rouge(scored, shown is not None), "acts_scored": [r["act"] for r in scored]}
    if shown is not None:
        answer["written_prompt"] = written_description(shown)
    return answer


def api_endpoints(ctx: Context) -> None:
    for fn in (list_acts, list_saved_adapters, compare_texts, train_adapter, training_status, stop_training_job,
               evaluate_adapter):
        gr.api(bind(fn, ctx), api_name=fn.__name__)
