"""The seed's experiment in one call: train one soft prompt per (virtual tokens, epochs) cell and compare them.

`run_sweep()` is a plain generator like `train.train()`: it yields `SweepStart`, then every
training event of every cell wrapped in a `CellEvent`, a `CellResult` after each cell
(held-out perplexity and optionally ROUGE-L, base vs tuned, and the training time), and
finally `SweepDone`. `write_csv()` and `plot()` turn the results into a table and a chart of
the loss curves overlaid.

All cells share one split (it depends on the seed and the held-out fraction only), so their
numbers are comparable. The base model's ROUGE-L continuations are decoded once per sweep and
scored in every cell, so the base column is identical across cells by construction. (Decoded
in one batch with each cell's tuned row, it was not: in bf16 the base row's greedy text
depends on its batch, see generate.py.) The base model's held-out perplexity is scored once as
well, by the first cell, and read by the others (`train`'s `base_scores`) instead of each cell
scoring it anew.

What it does not do: save the prompts (each `CellResult` carries its `SoftPrompt`;
adapters.save keeps one), or run as several processes.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from .config import TuneConfig
from .data import Row
from .evaluate import base_continuations, rouge_compare
from .formatting import number
from .generate import Decoding
from .history import held_out_points
from .model import Base, SoftPrompt
from .events import Done, Event, Start, TrainingError
from .rows import split_rows
from .train import train

# The seed notebook's two runs: (virtual tokens, epochs).
SEED_GRID: list[tuple[int, int]] = [(5, 5), (20, 10)]


@dataclass
class SweepStart:
    total_steps: int  # over all cells, for one progress bar
    labels: list[str]  # one per cell, in order, e.g. ["5×5", "20×10"]
    train_rows: int
    held_out_rows: int


@dataclass
class CellEvent:
    cell: int  # 0-based index into the grid
    label: str  # "5×5": virtual tokens × epochs
    event: Event  # what train() yielded


@dataclass
class CellResult:
    label: str
    num_virtual_tokens: int
    epochs: int
    held_out_ppl_base: float | None  # None without held-out rows
    held_out_ppl_tuned: float | None
    rouge_base: float | None  # None unless ROUGE-L was asked for (and there are held-out rows)
    rouge_tuned: float | None
    seconds: float  # training time, evaluation not included
    steps: int
    steps_per_epoch: int
    stopped: bool
    history: dict  # train()'s loss history: step, train_loss, epoch, held_out_loss, epoch_train_loss
    soft: SoftPrompt
    rouge_acts: list[dict] | None = None  # evaluate.iter_rouge's per-act dicts (texts and scores), with ROUGE-L


@dataclass
class SweepDone:
    results: list[CellResult]
    stopped: bool  # True when asked to stop before the last cell finished


SweepEvent = SweepStart | CellEvent | CellResult | SweepDone

# The columns of write_csv, in order: CellResult's fields without the history, the prompt and the texts.
CSV_FIELDS = [f.name for f in dataclasses.fields(CellResult) if f.name not in ("history", "soft", "rouge_acts")]


def parse_grid(text: str) -> list[tuple[int, int]]:
    """Cells typed as TOKENSxEPOCHS, separated by commas, semicolons, spaces or new lines.

    >>> parse_grid("5x5, 20×10")
    [(5, 5), (20, 10)]
    """
    cells = []
    for part in re.split(r"[,;\s]+", text.strip()):
        if not part:
            continue
        match = re.fullmatch(r"(\d+)\s*[x×X*]\s*(\d+)", part)
        if not match:
            raise ValueError(f"grid cell {part!r} is not TOKENSxEPOCHS, e.g. 5x5 or 20x10")
        cells.append((int(match.group(1)), int(match.group(2))))
    if not cells:
        raise ValueError("the grid is empty; give cells like 5x5,20x10")
    return cells


def label(tokens: int, epochs: int) -> str:
    return f"{tokens}×{epochs}"


def run_sweep(
    base: Base,
    rows: Sequence[Row],
    config: TuneConfig,
    grid: Sequence[tuple[int, int]] = SEED_GRID,
    stop: threading.Event | None = None,
    rouge_rows: int = 0,
    decoding: Decoding | None = None,
) -> Iterator[SweepEvent]:
    """Train one prompt per (num_virtual_tokens, epochs) cell of `grid`, with every other setting from `config`.

    `rouge_rows`: also score ROUGE-L on the first this many held-out acts (0: skip it; greedy,
    `decoding` or 64 new tokens per act). The base continuations are decoded once, after the
    first cell, and each cell's tuned continuations alone, so no score depends on a batch.
    `stop` ends the current cell after its step (its result is still yielded, marked stopped)
    and skips the rest.

    >>> for event in run_sweep(base, rows, TuneConfig(seed=0)):   # doctest: +SKIP
    ...     if isinstance(event, CellResult): print(event.label, event.held_out_ppl_tuned)
    """
    if not grid:
        raise ValueError("the grid is empty; give at least one (virtual tokens, epochs) cell")
    if isinstance(rouge_rows, bool) or not isinstance(rouge_rows, int) or rouge_rows < 0:
        raise ValueError(f"rouge_rows must be a whole number of acts, 0 or more, got {rouge_rows!r}")
    # Build every cell's config first: a bad cell fails now, not after the others have trained.
    configs = [dataclasses.replace(config, num_virtual_tokens=t, epochs=e) for t, e in grid]
    train_rows, held = split_rows(rows, config)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    labels = [label(t, e) for t, e in grid]
    yield SweepStart(steps_per_epoch * sum(c.epochs for c in configs), labels, len(train_rows), len(held))

    results: list[CellResult] = []
    rouge_held = held[:rouge_rows]
    base_texts: list[str] | None = None  # decoded once, when the first cell is scored
    base_scores: dict = {}  # the base model's held-out loss, scored by the first cell and read by the rest
    for index, (cell_config, name) in enumerate(zip(configs, labels)):
        if stop is not None and stop.is_set():
            break
        done: Done | None = None
        try:
            for event in train(base, train_rows, cell_config, held, stop, base_scores=base_scores):
                if isinstance(event, Start):
                    steps_per_epoch = event.total_steps // cell_config.epochs
                if isinstance(event, Done):
                    done = event
                yield CellEvent(index, name, event)
        except TrainingError:
            if stop is not None and stop.is_set():  # stopped before this cell's first step
                break
            raise
        assert done is not None
        # train() already scored the held-out rows with and without the final prompt (model.token_losses,
        # the same tokens evaluate.compare scores), so read those numbers instead of scoring twice.
        metrics = done.soft.meta["metrics"]
        base_loss, tuned_loss = metrics["base_held_out_loss"], metrics["held_out_loss"]
        rouge = None
        if rouge_held and not done.stopped and not (stop is not None and stop.is_set()):  # a stop means now
            if base_texts is None:
                base_texts = base_continuations(base, rouge_held, decoding)
            rouge = rouge_compare(base, done.soft, rouge_held, decoding, base_texts=base_texts)
        results.append(CellResult(
            label=name, num_virtual_tokens=cell_config.num_virtual_tokens, epochs=cell_config.epochs,
            held_out_ppl_base=None if base_loss is None else math.exp(base_loss),
            held_out_ppl_tuned=None if tuned_loss is None else math.exp(tuned_loss),
            rouge_base=None if rouge is None else rouge["base"], rouge_tuned=None if rouge is None else rouge["tuned"],
            seconds=done.elapsed, steps=done.steps, steps_per_epoch=steps_per_epoch, stopped=done.stopped,
            history=done.soft.meta["history"], soft=done.soft, rouge_acts=None if rouge is None else rouge["rows"],
        ))
        yield results[-1]
        if done.stopped:
            break
    yield SweepDone(results, stopped=len(results) < len(configs) or any(r.stopped for r in results))


def write_csv(results: Sequence[CellResult], path: str | Path) -> Path:
    """One row per cell, columns CSV_FIELDS; empty cells where a number was not measured."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in results:
            writer.writerow(["" if getattr(r, name) is None else getattr(r, name) for name in CSV_FIELDS])
    return path


def plot(results: Sequence[CellResult], path: str | Path) -> Path:
    """Loss curves of every cell in one chart, written as PNG.

    Per cell, one colour: the training loss per step (thin line) and the held-out loss at
    each epoch end (markers); the base model's held-out loss is a dashed horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: the CLI runs on servers, the app renders the file
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 5))
    try:
        for r in results:
            h = r.history
            line, = ax.plot(h["step"], h["train_loss"], linewidth=1, alpha=0.6, label=f"{r.label} train")
            held = [(step, loss) for step, loss, _ in held_out_points(h, r.steps_per_epoch)]
            if held:
                ax.plot(*zip(*held), marker="o", color=line.get_color(), label=f"{r.label} held-out")
        base_losses = {round(math.log(r.held_out_ppl_base), 6) for r in results if r.held_out_ppl_base is not None}
        for i, loss in enumerate(sorted(base_losses)):  # one value unless cells truncated rows differently
            ax.axhline(loss, color="black", linestyle="--", linewidth=1, label="base model held-out" if i == 0 else None)
        ax.set_xlabel("training step")
        ax.set_ylabel("loss (nats per token)")
        ax.set_title("Prompt-tuning sweep: virtual tokens × epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def format_table(results: Sequence[CellResult]) -> str:
    """The results as a fixed-width text table (the CLI prints it); '–' where nothing was measured.

    >>> print(format_table([]).splitlines()[0])
    cell     tokens epochs  ppl base ppl tuned rouge base rouge tuned  seconds
    """
    lines = [f"{'cell':8} {'tokens':>6} {'epochs':>6} {'ppl base':>9} {'ppl tuned':>9} {'rouge base':>10} {'rouge tuned':>11} {'seconds':>8}"]
    for r in results:
        lines.append(
            f"{r.label + ('*' if r.stopped else ''):8} {r.num_virtual_tokens:>6} {r.epochs:>6} "
            f"{number(r.held_out_ppl_base, '.2f'):>9} {number(r.held_out_ppl_tuned, '.2f'):>9} "
            f"{number(r.rouge_base, '.3f'):>10} {number(r.rouge_tuned, '.3f'):>11} {r.seconds:>8.1f}"
        )
    return "\n".join(lines)
