"""Plan a run or a sweep before it starts: which rows, how many steps, what a server's caps change.

The app and the CLI both need the same answers before the first step ("how many steps is
this?", "does it fit this server?", "about how long?"), and they used to compute them in
three places. `plan_run` and `plan_sweep` compute them once, check everything a visitor can
get wrong, and return the notes a front end shows ("epochs cut to 41 to stay within 2,000
steps"). Errors are `PlanError`, one sentence naming the setting by the label a person sees.

What it does not do: train (train.py), load rows or models (data.py, model.py), or word
anything beyond the notes and errors.
"""

from __future__ import annotations

import dataclasses
import math
import random
import re
from dataclasses import dataclass
from typing import Sequence

from .config import TuneConfig
from .data import Row
from .evaluate import scoring_batches
from .formatting import plural
from .rows import split_rows

# The words a person sees for each TuneConfig field: errors name these, not the code's names.
LABELS = {
    "num_virtual_tokens": "Virtual tokens",
    "epochs": "Epochs",
    "learning_rate": "Learning rate",
    "batch_size": "Batch size",
    "seed": "Seed",
    "init": "Start the prompt from",
    "init_text": "Init text",
    "max_length": "Max length",
    "held_out_fraction": "Held-out fraction",
    "precision": "Precision",
}


class PlanError(ValueError):
    """A run or sweep that cannot start as asked; the message is one sentence a person can act on."""


@dataclass(frozen=True)
class RunPlan:
    config: TuneConfig  # after the server's caps (epochs may be fewer than asked)
    train_rows: tuple[Row, ...]
    held_out_rows: tuple[Row, ...]
    steps_per_epoch: int
    step_cap: int  # the run stops here even if epochs are left (a server's max steps)
    notes: tuple[str, ...]  # what the caps changed, in words

    @property
    def planned_steps(self) -> int:
        return min(self.step_cap, self.steps_per_epoch * self.config.epochs)


@dataclass(frozen=True)
class SweepPlan:
    config: TuneConfig  # the settings every cell shares
    grid: tuple[tuple[int, int], ...]  # (virtual tokens, epochs) per cell
    train_rows: tuple[Row, ...]
    held_out_rows: tuple[Row, ...]
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * sum(e for _, e in self.grid)

    @property
    def longest_epochs(self) -> int:
        return max(e for _, e in self.grid)


def config_error(error: ValueError) -> PlanError:
    """TuneConfig's message with the field named by its label: 'learning_rate must be …' -> 'Learning rate must be …'."""
    text = str(error)
    for field, label in LABELS.items():
        text = re.sub(rf"\b{field}\b", label, text)
    return PlanError(text[:1].upper() + text[1:])


def checked_config(**settings) -> TuneConfig:
    """TuneConfig(**settings), its ValueError turned into a PlanError naming the setting's label."""
    try:
        return TuneConfig(**settings)
    except ValueError as e:
        raise config_error(e) from None


def plan_run(rows: Sequence[Row], config: TuneConfig, max_steps: int | None = None,
             max_epochs: int | None = None) -> RunPlan:
    """Split `rows` as `config` says and fit the run to a server's caps.

    Epochs over `max_epochs` are refused (the visitor typed a number the server will not run);
    a run whose epochs need more than `max_steps` steps gets fewer epochs, and a single epoch
    longer than `max_steps` is cut at `max_steps`; each change is a note.

    >>> plan = plan_run(rows, TuneConfig(epochs=10), max_steps=100)   # doctest: +SKIP
    >>> plan.steps_per_epoch, plan.config.epochs, plan.notes          # doctest: +SKIP
    (47, 2, ('epochs cut from 10 to 2 to stay within 100 steps',))  # 47 steps an epoch
    """
    if max_epochs is not None and config.epochs > max_epochs:
        raise PlanError(f"Epochs: {config.epochs:,} is more than this server runs ({max_epochs})")
    train_rows, held = split_rows(rows, config)  # DataError (one sentence) for unknown acts
    if not train_rows:
        raise PlanError("there are no acts to train on")
    per_epoch = math.ceil(len(train_rows) / config.batch_size)
    notes = []
    if max_steps is not None and per_epoch * config.epochs > max_steps and config.epochs > 1:
        epochs = max(1, max_steps // per_epoch)
        notes.append(f"epochs cut from {config.epochs} to {epochs} to stay within {plural(max_steps, 'step')}")
        config = dataclasses.replace(config, epochs=epochs)  # replace() checks the config again
    step_cap = per_epoch * config.epochs
    if max_steps is not None and step_cap > max_steps:
        notes.append(f"this run stops after {plural(max_steps, 'step')} (one epoch is {plural(per_epoch, 'step')})")
        step_cap = max_steps
    return RunPlan(config, tuple(train_rows), tuple(held), per_epoch, step_cap, tuple(notes))


def plan_sweep(rows: Sequence[Row], config: TuneConfig, grid: Sequence[tuple[int, int]],
               max_steps: int | None = None, max_epochs: int | None = None,
               max_cells: int | None = None) -> SweepPlan:
    """Check every cell of a sweep before the first one trains, and the whole sweep against the caps.

    Refused (PlanError): an empty grid, more than `max_cells` cells, a cell TuneConfig refuses
    ("grid cell 0×5: Virtual tokens must be from 1 to 100, got 0"), a cell over `max_epochs`,
    a sweep needing more than `max_steps` steps in all.
    """
    if not grid:
        raise PlanError("the grid is empty; give cells like 5x5, 20x10")
    if max_cells is not None and len(grid) > max_cells:
        raise PlanError(f"the grid has {len(grid)} cells; this server runs at most {max_cells} per sweep")
    for tokens, epochs in grid:
        try:
            dataclasses.replace(config, num_virtual_tokens=tokens, epochs=epochs)
        except ValueError as e:
            raise PlanError(f"grid cell {tokens}×{epochs}: {config_error(e)}") from None
        if max_epochs is not None and epochs > max_epochs:
            raise PlanError(f"grid cell {tokens}×{epochs} asks for {epochs} epochs; this server allows at most {max_epochs}")
    train_rows, held = split_rows(rows, config)
    plan = SweepPlan(config, tuple(map(tuple, grid)), tuple(train_rows), tuple(held),
                     math.ceil(len(train_rows) / config.batch_size))
    if max_steps is not None and plan.total_steps > max_steps:
        raise PlanError(f"this sweep needs {plan.total_steps:,} steps; this server allows {max_steps:,}: "
                        f"use fewer cells or epochs, or a bigger batch")
    return plan


def row_tokens(rows: Sequence[Row], count_tokens) -> list[int]:
    """Each row's text tokens as training reads it: `count_tokens(prompt)` plus one end token."""
    return [count_tokens(r.prompt) + 1 for r in rows]


def train_tokens(rows: Sequence[Row], count_tokens) -> int:
    """Text tokens one epoch trains on: `row_tokens` summed."""
    return sum(row_tokens(rows, count_tokens))


# A held-out token scored (a forward pass) costs this share of a trained token's step. Not a third:
# the backward pass through a frozen model computes no weight gradients, only the activations'
# (about one more forward); measured, not guessed (docs/performance.md).
SCORING_COST = 0.45


def estimate_seconds(tokens: int, tokens_per_s: float | None, scored_tokens: float = 0) -> float | None:
    """Seconds to train `tokens` text tokens and score `scored_tokens` held-out ones at a measured
    training speed; None when nothing was measured yet.

    >>> estimate_seconds(1000, 100.0), estimate_seconds(1000, 100.0, scored_tokens=200)
    (10.0, 10.9)
    """
    if not tokens_per_s or tokens_per_s <= 0:
        return None
    return (tokens + SCORING_COST * scored_tokens) / tokens_per_s


# Held-out scoring scales with the run. A run is short when scoring every held-out token at each
# epoch end would cost more than EPOCH_SCORING_LIMIT of its training (SCORING_COST x held-out
# tokens > EPOCH_SCORING_LIMIT x training tokens per epoch; epochs scale both sides alike): a
# one-act run on SmolLM2 trained ~100 tokens an epoch and scored ~2,000, 90% of its time.
# A short run scores a seeded subset of the held-out acts at each epoch end (the chart's points)
# and all of them once at its end (the saved numbers); a long run scores all of them every epoch.
EPOCH_SCORING_LIMIT = 0.25
SUBSET_MIN_ACTS = 4  # a short run's epoch ends score at least this many held-out acts (all when there are fewer)...
SUBSET_SHARE = 0.25  # ...and more only while they stay within this share of the held-out tokens


def epoch_batches(train_tokens: int, held_lengths: Sequence[int], batch_size: int, seed: int) -> list[int]:
    """Which of the held-out rows' scoring batches (`evaluate.scoring_batches`) every epoch end scores.

    All of them for a long run. For a short one (see EPOCH_SCORING_LIMIT), whole batches taken in
    an order shuffled with `seed`: the first ones until they hold SUBSET_MIN_ACTS acts, then each
    that keeps them within SUBSET_SHARE of the held-out tokens (so about a quarter, or a few acts
    when one batch is more). The same ones at every epoch end, so the points are comparable; and
    whole batches of a full scoring, so the run's last full scoring gives the subset's number
    too, exactly. Returned in batch order.

    >>> epoch_batches(1000, [10] * 8, 2, seed=0)   # long: scoring 80 tokens is cheap next to 1,000
    [0, 1, 2, 3]
    >>> epoch_batches(10, [10] * 8, 2, seed=0)     # short: 2 of 4 batches, 4 of 8 acts
    [0, 2]
    """
    batches = scoring_batches(held_lengths, batch_size)
    total = sum(held_lengths)
    if SCORING_COST * total <= EPOCH_SCORING_LIMIT * train_tokens:
        return list(range(len(batches)))
    order = list(range(len(batches)))
    random.Random(seed).shuffle(order)
    chosen, tokens, acts = [], 0, 0
    for b in order:
        size = sum(held_lengths[i] for i in batches[b])
        if acts < min(SUBSET_MIN_ACTS, len(held_lengths)) or tokens + size <= SUBSET_SHARE * total:
            chosen.append(b)
            tokens, acts = tokens + size, acts + len(batches[b])
    return sorted(chosen)


def scored_tokens(train_tokens: int, held_lengths: Sequence[int], batch_size: int, seed: int, epochs: int) -> int:
    """Held-out tokens a run of `epochs` epochs scores in all, prompt and base model together.

    A long run: all of them at every epoch end, and the base model once. A short run: the
    subset at each epoch end but the last, all of them at the last (the saved number), and the
    base model once over all of them (the subset first, for the chart's line). For
    `estimate_seconds`' `scored_tokens`.

    >>> scored_tokens(1000, [10] * 8, 2, 0, epochs=5), scored_tokens(10, [10] * 8, 2, 0, epochs=5)
    (480, 320)
    """
    total = sum(held_lengths)
    if not total:
        return 0
    batches = scoring_batches(held_lengths, batch_size)
    each = sum(held_lengths[i] for b in epoch_batches(train_tokens, held_lengths, batch_size, seed) for i in batches[b])
    return (epochs - 1) * each + 2 * total
