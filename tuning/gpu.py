"""The work that needs an accelerator, as functions a ZeroGPU Space can run in a borrowed-GPU worker.

On a ZeroGPU Space the server process has no GPU. A function decorated with `spaces.GPU`
(app.py does it: `spaces` imports gradio, which tuning never does) borrows one per call: the
call runs in a forked worker process, its arguments and everything it yields are pickled
across, and the GPU goes back when it returns. Elsewhere the decorator is a no-op and these
are plain generators. What that asks of this module, and what it guarantees:

- Arguments and results pickle, and are small: rows, configs, `Decoding`, CPU tensors,
  events. The model is not copied: a `Base` pickles as a reference that the forked worker
  resolves to its own inherited copy (`model.Base.__reduce__`).
- The model loads on the CPU in the server (`hardware.pick_device`) and moves to the GPU inside
  the call (`on_accelerator`), in the precision `auto` picks for that GPU (bf16 on Ampere and
  newer, fp16 with a loss scaler before).
- A stop request crosses the process boundary as a file (`StopFlag`): a training stopped
  from the page still ends with a Done event and keeps what it learned.
- `*_seconds` estimate each call's GPU time from its planned tokens (ZeroGPU reserves that
  much of the visitor's quota up front); `check_fits` refuses a run over the per-call cap,
  before it starts, with the estimate and the cap.
- An error inside a call comes out as a `Failed` event (`carrying`) and is raised again on the
  server (`reraising`): ZeroGPU's wrapper would turn it into its class name alone.
- A training stops itself before its call's time is up (`Deadline`), so it ends with a Done
  that keeps what it learned rather than being cut off with nothing.

The GPU speeds below are assumptions until a run measures one (`note_run`): the first
estimate after a start uses DEFAULT_GPU_TOKENS_PER_S, later ones the last measured speed.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .config import TuneConfig
from .data import Row
from .hardware import resolve_precision, zero_gpu
from .kernels import attention_kernels
from .model import Base, SoftPrompt
from .plan import PlanError, estimate_seconds, row_tokens, scored_tokens, train_tokens
from .written import Written

__all__ = ["StopFlag", "Deadline", "Failed", "carrying", "reraising", "on_accelerator", "zero_gpu", "check_fits",
           "note_run"]  # and the *_run / *_duration pairs

log = logging.getLogger(__name__)

# Seconds one decorated call may ask for; ZeroGPU refuses a call that asks more than the
# visitor's remaining daily quota (a few minutes for a free account), so one call stays well under it.
MAX_CALL_SECONDS = int(os.environ.get("TUNING_GPU_MAX_SECONDS", "120"))
# Before any run has measured the GPU: useful training tokens per second assumed for the first
# estimate (set low on purpose: an estimate too short gets the call cut off, one too long only
# reserves more quota than it uses; ZeroGPU charges the time used). A whole GPU trains about
# twice as fast (docs/performance.md); a ZeroGPU slice may give less.
DEFAULT_GPU_TOKENS_PER_S = float(os.environ.get("TUNING_GPU_TOKENS_PER_S", "5000"))
CALL_OVERHEAD_S = 15.0  # taking the GPU, moving the model onto it, the first kernels
SNAPSHOT_STEPS = 10  # a training call cut off from outside loses at most this many steps
SECONDS_PER_NEW_TOKEN = 0.05  # one decoding step of a small model on a GPU, all rows of a batch together

_measured: dict[str, float] = {}  # "train" -> tokens/s of the last finished GPU run in this process
_move_lock = threading.Lock()


class StopFlag:
    """A stop request another process can see: a file that exists once set. Pickles as its path.

    `threading.Event` does not cross into a ZeroGPU worker; `train` only calls `is_set()`.
    """

    def __init__(self, path: str | None = None, also: threading.Event | None = None):
        if path is None:
            handle, path = tempfile.mkstemp(prefix="tuning-stop-")
            os.close(handle)
            os.unlink(path)  # the name is ours; the file appears on set()
        self.path = path
        # In the process that made it, a stop request (the job's Event) counts at once: a training
        # pausing for a generation (turns.let_decoding_run) then ends its pause without an event passing.
        self.also = also

    def set(self) -> None:
        Path(self.path).touch()

    def is_set(self) -> bool:
        return (self.also is not None and self.also.is_set()) or os.path.exists(self.path)

    def __getstate__(self) -> dict:  # into a ZeroGPU worker: the file only (an Event does not cross)
        return {"path": self.path, "also": None}

    def remove(self) -> None:
        """Forget the request (the run is over): the file goes."""
        Path(self.path).unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"StopFlag({self.path!r}, set={self.is_set()})"


class Deadline:
    """A stop flag that is also set once `seconds` have passed since it was made (in the GPU worker).

    ZeroGPU ends a call at its duration and everything the worker held is lost; a training that
    stops itself a little earlier ends like a Stop: its last held-out scoring, then Done.
    """

    def __init__(self, flag, seconds: float):
        self.flag, self.at = flag, time.monotonic() + seconds

    def is_set(self) -> bool:
        return self.flag.is_set() or time.monotonic() >= self.at

    def set(self) -> None:
        self.flag.set()

    @property
    def passed(self) -> bool:
        return time.monotonic() >= self.at


@dataclass
class Failed:
    """An error raised inside a GPU call, carried out as the call's last event (it pickles, with its message)."""

    error: Exception


def _portable(error: Exception) -> Exception:
    """`error` if it survives pickling as it is, else a RuntimeError with its text (a worker's result must pickle)."""
    try:
        pickle.loads(pickle.dumps(error))
        return error
    except Exception:  # an exception whose __init__ takes other arguments than its message
        return RuntimeError(f"{type(error).__name__}: {error}")


def carrying(fn: Callable[..., Iterator]) -> Callable[..., Iterator]:
    """`fn` (a generator function) whose errors come out as a `Failed` event instead of being raised.

    ZeroGPU's `spaces.GPU` wrapper turns any exception but `gr.Error` into an error titled
    "ZeroGPU worker error" that says only the class name ("TrainingError"); carried as an event,
    the server raises the real one again (`reraising`) and the visitor reads its sentence.
    """
    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            yield from fn(*args, **kwargs)
        except Exception as e:  # raised again by the server: a bug still fails there
            if not type(e).__module__.startswith("tuning."):  # not one of our one-sentence errors: keep its traceback
                log.exception("error in a GPU call")
            yield Failed(_portable(e))
    return call


def reraising(events: Iterator) -> Iterator:
    """The events of a `carrying` call, its `Failed` raised again here, in the server."""
    try:
        for event in events:
            if isinstance(event, Failed):
                raise event.error
            yield event
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            close()


_forked = False  # this process is a fork (a ZeroGPU worker) of the one that imported this module


def _mark_forked() -> None:
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_mark_forked)


def on_accelerator(base: Base) -> Base:
    """`base` on this process's GPU when there is one and the model is still on the CPU; else `base` as it is.

    Inside a ZeroGPU call this moves the worker's own copy (the server's stays on the CPU),
    once per worker: a worker that serves the next call too finds it there already. The
    precision is what `auto` resolves to on that GPU unless the model was loaded with a fixed one.
    Every `*_run` calls it first.
    """
    if _forked:
        # OpenMP's threads do not survive a fork: in the fork of a server that had run torch on
        # several threads, the first multi-threaded CPU op waits for them for ever (a layer norm
        # hung here). One CPU thread in the worker: its real work is on the GPU.
        torch.set_num_threads(1)
    if not torch.cuda.is_available() or base.device.type == "cuda":
        return base
    with _move_lock:
        if base.device.type != "cuda":
            device = torch.device("cuda")
            precision = resolve_precision(base.requested_precision, device)
            base.precision = precision
            base.model.to(device=device, dtype=base.dtype)
            attention_kernels(device)
    return base


# --- the decorated calls: each owns the GPU for one piece of work


def train_run(base: Base, train_rows: Sequence[Row], config: TuneConfig, held_out_rows: Sequence[Row],
              stop: StopFlag, resume: SoftPrompt | None = None, resume_name: str | None = None,
              seconds: float | None = None) -> Iterator:
    """One training (train.train's events, CPU tensors only), on the GPU when there is one.

    `seconds`: the call's duration. The training stops itself in time for its last held-out
    scoring and Done (`stop_before`), and yields a Snapshot every SNAPSHOT_STEPS steps, so a call
    ended at its duration anyway still leaves the server the prompt of a few steps before.
    """
    from .train import train

    if seconds is not None:
        stop = Deadline(stop, stop_before(seconds, base, held_out_rows))
    yield from train(on_accelerator(base), list(train_rows), config, list(held_out_rows), stop,
                     resume=resume, resume_name=resume_name, snapshot_every=SNAPSHOT_STEPS if seconds else 0)


def stop_before(seconds: float, base: Base, held_out_rows: Sequence[Row]) -> float:
    """When a training call of `seconds` stops itself: room left for its last held-out scoring (the prompt and
    the base model on every held-out row, at most), Done and a margin.

    >>> stop_before(100, base, [])   # doctest: +SKIP
    85.0
    """
    scoring = (estimate_seconds(0, gpu_speed(), _tokens(base, held_out_rows)) or 0.0) if held_out_rows else 0.0
    return max(1.0, 0.85 * seconds - 2 * scoring)


def sweep_run(base: Base, rows: Sequence[Row], config: TuneConfig, grid: Sequence[tuple[int, int]],
              stop: StopFlag, rouge_acts: int = 0, shots: Sequence[int] = ()) -> Iterator:
    """A whole sweep (sweep.run_sweep's events) in one GPU call; `shots`: its written rows too, in the same call."""
    from .sweep import run_sweep

    yield from run_sweep(on_accelerator(base), list(rows), config, list(grid), stop, rouge_acts, shots=tuple(shots))


def generate_run(base: Base, prompts: Sequence[SoftPrompt | Written], text: str, decoding) -> Iterator[tuple[str, ...]]:
    """Base and each prompt continue `text` in one batch (generate.stream_compare), streamed.

    A written prompt crosses as its token ids and becomes embeddings in the call, on its GPU.
    """
    from .generate import stream_compare

    yield from stream_compare(on_accelerator(base), list(prompts), text, decoding)


def evaluate_run(base: Base, soft: SoftPrompt, held_out_rows: Sequence[Row], rouge_rows: Sequence[Row],
                 decoding, written: Written | None = None) -> Iterator[tuple[str, object]]:
    """Held-out perplexity, then ROUGE-L act by act: ("perplexity", metrics), then ("rouge", row) per act.

    With `written` (it crosses as token ids), each also scores the base model with that prompt in front: "written".
    """
    from . import evaluate
    from .written import embeddings

    base = on_accelerator(base)
    yield "perplexity", evaluate.held_out(base, soft, held_out_rows, written=written)
    prompt = None if written is None else embeddings(base, written)
    for result in evaluate.iter_rouge(base, soft, list(rouge_rows), decoding, written=prompt):
        yield "rouge", result


# --- how long each call may hold the GPU (ZeroGPU's `duration=`, called with the call's arguments)


def note_run(event) -> None:
    """Hand each event of a training call to this, in the server: a run that finished on a GPU sets the speed.

    Not inside the call: on ZeroGPU that runs in a worker process, whose memory the server's
    duration estimates never see. Later estimates go by the last measured speed.
    """
    meta = getattr(getattr(event, "soft", None), "meta", None)
    if meta and meta.get("device") == "cuda" and (meta.get("tokens_per_s") or 0) > 0:
        _measured["train"] = float(meta["tokens_per_s"])


def gpu_speed() -> float:
    return _measured.get("train", DEFAULT_GPU_TOKENS_PER_S)


def _tokens(base: Base, rows: Sequence[Row]) -> int:
    return train_tokens(rows, lambda text: len(base.encode(text)))


def _row_tokens(base: Base, rows: Sequence[Row]) -> list[int]:
    return row_tokens(rows, lambda text: len(base.encode(text)))


def _run_seconds(base: Base, train_rows: Sequence[Row], held_out_rows: Sequence[Row], config: TuneConfig,
                 epochs: int) -> float:
    """GPU seconds of `epochs` epochs over `train_rows` and the held-out scoring they do (plan.scored_tokens:
    a short run scores a subset at each epoch end and everything once), at the GPU speed."""
    tokens = _tokens(base, train_rows)
    held = _row_tokens(base, held_out_rows)
    return estimate_seconds(epochs * tokens, gpu_speed(),
                            scored_tokens(tokens, held, config.batch_size, config.seed, epochs))


def training_seconds(base: Base, train_rows: Sequence[Row], config: TuneConfig, held_out_rows: Sequence[Row],
                     *_, **__) -> float:
    """Estimated GPU seconds of `train_run`: its epochs at the GPU speed, the held-out scoring, the overhead."""
    return CALL_OVERHEAD_S + _run_seconds(base, train_rows, held_out_rows, config, config.epochs)


def train_duration(*args, **kwargs) -> int:
    """ZeroGPU's duration for `train_run`: the estimate with a margin, never over the cap (checked before)."""
    return min(MAX_CALL_SECONDS, round(training_seconds(*args, **kwargs) * 1.5))


def sweep_seconds(base: Base, rows: Sequence[Row], config: TuneConfig, grid, stop=None, rouge_acts: int = 0,
                  shots: Sequence[int] = ()) -> float:
    """Estimated GPU seconds of `sweep_run`: every cell's training, and its ROUGE-L continuations; with `shots`, each
    written prompt in front of every held-out row and its ROUGE-L continuations."""
    from .rows import split_rows
    from .sweep import written_prompts, written_scored_tokens

    train_rows, held = split_rows(rows, config)  # every cell trains on the same rows
    prompts = written_prompts(base, rows, held, config.seed, shots)
    held_lengths = _row_tokens(base, held)
    written_s = estimate_seconds(0, gpu_speed(), written_scored_tokens(prompts, held_lengths)) or 0.0
    return sum(CALL_OVERHEAD_S + _run_seconds(base, train_rows, held, config, epochs) for _, epochs in grid) \
        + (2 * len(grid) + len(prompts)) * rouge_acts * 64 * SECONDS_PER_NEW_TOKEN + written_s


def sweep_duration(*args, **kwargs) -> int:
    return min(MAX_CALL_SECONDS, round(sweep_seconds(*args, **kwargs) * 1.5))


def generate_duration(base: Base, prompts, text: str, decoding) -> int:
    return min(MAX_CALL_SECONDS, round(CALL_OVERHEAD_S + decoding.max_new_tokens * SECONDS_PER_NEW_TOKEN * 2))


def evaluate_duration(base: Base, soft: SoftPrompt, held_out_rows, rouge_rows, decoding,
                      written: Written | None = None) -> int:
    # a written prompt scores every held-out row a third time, with its tokens in front, and decodes a third continuation
    tokens = _tokens(base, held_out_rows) + (0 if written is None else len(held_out_rows) * written.tokens)
    scoring = estimate_seconds(tokens, gpu_speed()) or 0.0  # forward passes only: generous
    decode = len(rouge_rows) * (2 if written is None else 3) * decoding.max_new_tokens * SECONDS_PER_NEW_TOKEN
    return min(MAX_CALL_SECONDS, round((CALL_OVERHEAD_S + scoring + decode) * 1.5))


def check_fits(seconds: float, what: str = "this run") -> None:
    """Refuse (PlanError) work whose estimated GPU time is over the per-call cap, naming both."""
    if seconds > MAX_CALL_SECONDS:
        raise PlanError(
            f"{what} needs about {seconds:,.0f} s of GPU time; one call on this Space may use at most "
            f"{MAX_CALL_SECONDS} s (a free visitor's daily GPU quota is a few minutes): "
            f"train fewer epochs or fewer acts"
        )
