"""What a training run yields: `Start`, then `Step` per batch and `EpochEnd` per epoch, `Paused` while it
gives way to a generation, `Snapshot` when asked, and finally `Done`; or it raises `TrainingError`.

Plain dataclasses: the UI turns them into a chart, the CLI into a progress bar, tests into
assertions, and a ZeroGPU worker pickles them across processes (gpu.py).
"""

from __future__ import annotations

from dataclasses import dataclass

from .model import SoftPrompt


class TrainingError(RuntimeError):
    """The run cannot go on (for example the loss became NaN); the message is one sentence."""


@dataclass
class Start:
    total_steps: int
    train_rows: int
    held_out_rows: int
    train_tokens: int  # real text tokens per epoch
    resumed_at: int = 0  # steps done before this run (a resumed adapter's); steps count on from here
    # share of the held-out tokens each epoch end scores: 1.0 (all) for a long run, a seeded
    # subset's for a short one, which scores all of them once at its end (plan.epoch_batches)
    epoch_held_out_share: float = 1.0


@dataclass
class Step:
    step: int  # 1-based, across epochs (and across runs, when resuming)
    total_steps: int  # the last step's number
    epoch: int  # 1-based (continuing a resumed adapter's)
    loss: float  # mean cross-entropy per token of this batch
    tokens: int  # real text tokens trained on so far
    tokens_per_s: float
    elapsed: float  # seconds since the start
    eta: float  # seconds left, from the mean step time so far


@dataclass
class EpochEnd:
    epoch: int
    train_loss: float  # token-weighted mean over the epoch
    held_out_loss: float | None
    # the untuned model on the same rows, the chart's baseline: scored at the first epoch's end,
    # not before the first step, so the first point of a live chart appears at once
    base_held_out_loss: float | None
    elapsed: float
    # seconds this epoch end spent scoring: `elapsed` also counts any wait between events (a
    # background run paused for a visitor), which a time estimate must not take for work
    scoring_seconds: float | None = None
    # held-out acts both losses above were scored on: all of Start.held_out_rows, or a short
    # run's seeded subset, the same at every epoch end (its last also scores all, for Done)
    held_out_acts: int | None = None


@dataclass
class Paused:
    """The training waits before its next step while a generation runs on this CPU (`turns`: decoding goes first)."""
    step: int  # steps done so far
    max_seconds: float  # the longest this wait can last; the next Step ends it


@dataclass
class Done:
    soft: SoftPrompt
    stopped: bool  # True when asked to stop before the last step
    steps: int  # taken by this run (a resumed adapter's earlier steps not counted)
    elapsed: float


@dataclass
class Snapshot:
    """The prompt so far, every `snapshot_every` steps when asked: what a run cut off from outside keeps.

    A ZeroGPU call can be ended at its duration with no chance to finish; the caller keeps the
    last snapshot and ends the run with it as a stopped Done (gpu.py).
    """
    soft: SoftPrompt  # as Done's would be, stopped at this step (held-out loss: the last scoring of all held-out rows, or None)
    step: int
    elapsed: float


Event = Start | Step | Paused | EpochEnd | Snapshot | Done
