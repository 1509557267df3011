"""The seed's experiment in one call: train one soft prompt per (virtual tokens, epochs) cell and compare them.

`run_sweep()` is a plain generator like `train.train()`: it yields `SweepStart`, then every
training event of every cell wrapped in a `CellEvent`, a `CellResult` after each cell
(held-out perplexity and optionally ROUGE-L, base vs tuned, and the training time), with
`shots` a `WrittenResult` per example count (the base model with k written examples of
training acts in front, written.py: the baseline a soft prompt has to beat), and finally
`SweepDone`. `write_csv()` and `plot()` turn the results into a table and a chart: held-out
perplexity against the context tokens each prompt takes, beside the loss curves overlaid.

All cells share one split (it depends on the seed and the held-out fraction only), so their
numbers are comparable. The base model's ROUGE-L continuations are decoded once per sweep and
scored in every cell, so the base column is identical across cells by construction. (Decoded
in one batch with each cell's tuned row, it was not: in bf16 the base row's greedy text
depends on its batch, see generate.py.) The base model's held-out perplexity is scored once as
well, by the first cell, and read by the others (`train`'s `base_scores`) instead of each cell
scoring it anew.

The written rows are scored on the first cell's encoding of the held-out rows, the tokens its
base perplexity was scored on, so the three numbers (base, soft, written) share their tokens.

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

from . import written
from .config import TuneConfig
from .data import Row
from .evaluate import base_continuations, check_rouge_fits, mean_loss, rouge_compare
from .formatting import number, plural
from .generate import Decoding
from .history import held_out_points
from .model import Base, SoftPrompt
from .events import Done, Event, Start, TrainingError
from .rows import encode_rows, split_rows
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
class WrittenResult:
    """The base model with `examples` training acts written in front (written.py), scored on the cells' held-out tokens."""

    label: str  # "2 examples"
    examples: int
    tokens: int  # the context the written prompt takes, the x of `plot` beside a soft prompt's virtual tokens
    acts: list[str]  # the training acts whose prompts it is made of, in order
    held_out_ppl_base: float | None  # the first cell's: the same tokens; None without held-out rows
    held_out_ppl_written: float | None
    rouge_base: float | None  # None unless ROUGE-L was asked for
    rouge_written: float | None
    rouge_acts: list[dict] | None = None  # evaluate.iter_rouge's dicts, "tuned" being the written prompt's

    def describe(self) -> str:
        """The label and the context it costs, as written.Written.describe says it: '2 examples · 164 tokens'."""
        return f"{self.label} · {plural(self.tokens, 'token')}"


@dataclass
class SweepDone:
    results: list[CellResult]
    stopped: bool  # True when asked to stop before the last cell finished
    written: list[WrittenResult] = dataclasses.field(default_factory=list)  # with `shots`, unless stopped


SweepEvent = SweepStart | CellEvent | CellResult | WrittenResult | SweepDone

# The columns of write_csv, in order: CellResult's fields without the history, the prompt and the texts, then
# what a written row has and a cell has not. `context_tokens` is every row's x in `plot`: virtual or written tokens.
CSV_FIELDS = [f.name for f in dataclasses.fields(CellResult) if f.name not in ("history", "soft", "rouge_acts")] + [
    "context_tokens", "held_out_ppl_written", "rouge_written", "written_acts"]


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
    shots: Sequence[int] = (),
) -> Iterator[SweepEvent]:
    """Train one prompt per (num_virtual_tokens, epochs) cell of `grid`, with every other setting from `config`.

    `rouge_rows`: also score ROUGE-L on the first this many held-out acts (0: skip it; greedy,
    `decoding` or 64 new tokens per act). The base continuations are decoded once, after the
    first cell, and each cell's tuned continuations alone, so no score depends on a batch.
    `shots`: after the cells, one `WrittenResult` per example count k (written.examples with
    the split's held-out side and seed), on the same held-out tokens and ROUGE-L acts; a written
    prompt too long for them is refused before anything trains.
    `stop` ends the current cell after its step (its result is still yielded, marked stopped)
    and skips the rest, the written rows included.

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
    rouge_held = held[:rouge_rows]
    held_ids = encode_rows(base, held, configs[0])  # the tokens the first cell scores the base model on
    baselines = _written_prompts(base, rows, held, held_ids, rouge_held, config.seed, shots, decoding)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    labels = [label(t, e) for t, e in grid]
    yield SweepStart(steps_per_epoch * sum(c.epochs for c in configs), labels, len(train_rows), len(held))

    results: list[CellResult] = []
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
        rouge = None
        if rouge_held and not done.stopped and not (stop is not None and stop.is_set()):  # a stop means now
            if base_texts is None:
                base_texts = base_continuations(base, rouge_held, decoding)
            rouge = rouge_compare(base, done.soft, rouge_held, decoding, base_texts=base_texts)
        results.append(_cell_result(name, cell_config, done, steps_per_epoch, rouge))
        yield results[-1]
        if done.stopped:
            break
    stopped = len(results) < len(configs) or any(r.stopped for r in results)
    scored: list[WrittenResult] = []
    if not stopped:
        base_ppl = results[0].held_out_ppl_base
        scored = yield from _written_results(base, baselines, held_ids, config.batch_size, base_ppl, rouge_held,
                                             decoding, base_texts, stop)
    yield SweepDone(results, stopped=stopped, written=scored)


def _cell_result(name: str, config: TuneConfig, done: Done, steps_per_epoch: int, rouge: dict | None) -> CellResult:
    """A finished cell's numbers: held-out perplexity as training scored it, ROUGE-L when it was decoded."""
    # train() already scored the held-out rows with and without the final prompt (model.token_losses,
    # the same tokens evaluate.compare scores), so read those numbers instead of scoring twice.
    metrics = done.soft.meta["metrics"]
    base_loss, tuned_loss = metrics["base_held_out_loss"], metrics["held_out_loss"]
    return CellResult(
        label=name, num_virtual_tokens=config.num_virtual_tokens, epochs=config.epochs,
        held_out_ppl_base=None if base_loss is None else math.exp(base_loss),
        held_out_ppl_tuned=None if tuned_loss is None else math.exp(tuned_loss),
        rouge_base=None if rouge is None else rouge["base"], rouge_tuned=None if rouge is None else rouge["tuned"],
        seconds=done.elapsed, steps=done.steps, steps_per_epoch=steps_per_epoch, stopped=done.stopped,
        history=done.soft.meta["history"], soft=done.soft, rouge_acts=None if rouge is None else rouge["rows"],
    )


def _written_prompts(base: Base, rows: Sequence[Row], held: Sequence[Row], held_ids: Sequence[list[int]],
                     rouge_held: Sequence[Row], seed: int, shots: Sequence[int],
                     decoding: Decoding | None) -> list[written.Written]:
    """One written prompt per example count in `shots` (ascending, once each), each checked to fit beside the
    longest held-out row and, with ROUGE-L, the longest act instruction and its continuation."""
    prompts = written_prompts(base, rows, held, seed, shots)
    for prompt in prompts:
        written.check_fits(base, prompt, max((len(r) for r in held_ids), default=0),
                           what="the longest held-out prompt")
        check_rouge_fits(base, prompt, rouge_held, decoding)
    return prompts


def written_prompts(base: Base, rows: Sequence[Row], held: Sequence[Row], seed: int,
                    shots: Sequence[int]) -> list[written.Written]:
    """The written prompts a sweep with `shots` scores, one per example count in ascending order, drawn as
    `run_sweep` draws them (so an estimate counts the tokens the sweep will score); WrittenError when too few acts."""
    return [written.examples(base, rows, held, k, seed) for k in sorted(set(shots))]


def written_scored_tokens(prompts: Sequence[written.Written], held_lengths: Sequence[int]) -> int:
    """Tokens the written rows' held-out scoring passes through the model: each prompt in front of every held-out row.

    >>> written_scored_tokens([written.Written(ids=(1,) * 40), written.Written(ids=(1,) * 90)], [10, 20])
    320
    """
    return sum(p.tokens * len(held_lengths) + sum(held_lengths) for p in prompts)


def _written_results(base: Base, baselines: Sequence[written.Written], held_ids: Sequence[list[int]], batch_size: int,
                     base_ppl: float | None, rouge_held: Sequence[Row], decoding: Decoding | None,
                     base_texts: list[str] | None, stop: threading.Event | None) -> Iterator[WrittenResult]:
    """Each written prompt scored after the cells, yielded as it is; returns them all. A stop ends it at once."""
    scored = []
    for baseline in baselines:
        if stop is not None and stop.is_set():  # a stop means now, as for a cell's ROUGE-L
            break
        if rouge_held and base_texts is None:
            base_texts = base_continuations(base, rouge_held, decoding)
        scored.append(_score_written(base, baseline, held_ids, batch_size, base_ppl, rouge_held, decoding, base_texts))
        yield scored[-1]
    return scored


def _score_written(base: Base, prompt: written.Written, held_ids: Sequence[list[int]], batch_size: int,
                   base_ppl: float | None, rouge_held: Sequence[Row], decoding: Decoding | None,
                   base_texts: list[str] | None) -> WrittenResult:
    """The written prompt's held-out perplexity (evaluate.held_out's number for it) and ROUGE-L."""
    embeddings = written.embeddings(base, prompt)
    ppl = math.exp(mean_loss(base, embeddings, held_ids, batch_size)) if held_ids else None
    # a bare tensor is scored as "tuned": the written prompt in front of the base model, each act decoded alone
    rouge = rouge_compare(base, embeddings, rouge_held, decoding, base_texts=base_texts) if rouge_held else None
    return WrittenResult(
        label=prompt.label, examples=len(prompt.examples), tokens=prompt.tokens, acts=[r.act for r in prompt.examples],
        held_out_ppl_base=base_ppl, held_out_ppl_written=ppl,
        rouge_base=None if rouge is None else rouge["base"], rouge_written=None if rouge is None else rouge["tuned"],
        rouge_acts=None if rouge is None else rouge["rows"],
    )


def write_csv(results: Sequence[CellResult], path: str | Path, written_rows: Sequence[WrittenResult] = ()) -> Path:
    """One row per cell, then one per written prompt, columns CSV_FIELDS; empty cells where a number was not measured.

    A written row has a label ("2 examples"), its context tokens, the base and written perplexity
    and ROUGE-L, and its acts joined by "; ".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_FIELDS)
        for r in results:
            row = {name: getattr(r, name, None) for name in CSV_FIELDS}
            row["context_tokens"] = r.num_virtual_tokens
            writer.writerow(["" if row[name] is None else row[name] for name in CSV_FIELDS])
        for w in written_rows:
            row = {"label": w.label, "context_tokens": w.tokens, "held_out_ppl_base": w.held_out_ppl_base,
                   "held_out_ppl_written": w.held_out_ppl_written, "rouge_base": w.rouge_base,
                   "rouge_written": w.rouge_written, "written_acts": "; ".join(w.acts)}
            writer.writerow(["" if row.get(name) is None else row[name] for name in CSV_FIELDS])
    return path


def plot(results: Sequence[CellResult], path: str | Path, written_rows: Sequence[WrittenResult] = ()) -> Path:
    """Held-out perplexity against context tokens spent, beside every cell's loss curves, written as PNG.

    Left: one point per soft prompt (x: its virtual tokens, labelled with its cell) and per
    written prompt (x: its tokens, labelled "k examples"), the base model a dashed line; x is
    logarithmic when the tokens span more than 10x (5 virtual tokens beside a few hundred written).
    Right: per cell, one colour, the training loss per step (thin line) and the held-out loss at
    each epoch end (markers); the base model's held-out loss is a dashed horizontal line.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: the CLI runs on servers, the app renders the file
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (spent, ax) = plt.subplots(1, 2, figsize=(14, 5), gridspec_kw={"width_ratios": [1, 1.3]})
    try:
        _plot_context(spent, results, written_rows)
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
        ax.set_title("Loss per step: virtual tokens × epochs")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        fig.tight_layout()
        fig.savefig(path, format="png", dpi=100)
    finally:
        plt.close(fig)
    return path


def context_points(results: Sequence[CellResult],
                   written_rows: Sequence[WrittenResult] = ()) -> list[tuple[str, int, float, str]]:
    """(kind, context tokens, held-out perplexity, label) of each prompt `plot` places; unscored ones left out.

    >>> context_points([], [WrittenResult("2 examples", 2, 164, ["Poet", "Chef"], 30.0, 24.5, None, None)])
    [('written', 164, 24.5, '2 examples')]
    """
    points = [("soft", r.num_virtual_tokens, r.held_out_ppl_tuned, r.label + ("*" if r.stopped else ""))
              for r in results if r.held_out_ppl_tuned is not None]
    return points + [("written", w.tokens, w.held_out_ppl_written, w.label)
                     for w in written_rows if w.held_out_ppl_written is not None]


def context_figure(results: Sequence[CellResult], written_rows: Sequence[WrittenResult] = ()):
    """`plot`'s left panel alone, as a matplotlib Figure: the picture the app's Sweep tab shows beside its loss chart.

    Made without pyplot: its global figure list is not safe in a server's threads, and nothing here needs closing.
    """
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="tight")
    _plot_context(fig.subplots(), results, written_rows)
    return fig


def _plot_context(ax, results: Sequence[CellResult], written_rows: Sequence[WrittenResult]) -> None:
    """`plot`'s left panel: what each prompt costs in context against how well it predicts the held-out acts."""
    points = context_points(results, written_rows)
    styles = {"soft": ("o", "C0", "soft prompt (virtual tokens)"), "written": ("s", "C1", "written prompt (examples)")}
    for kind, (marker, colour, name) in styles.items():
        mine = [(x, y, text) for k, x, y, text in points if k == kind]
        if not mine:
            continue
        ax.scatter([x for x, _, _ in mine], [y for _, y, _ in mine], marker=marker, color=colour, label=name, zorder=3)
        for x, y, text in mine:
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(5, 5), fontsize="small")
    bases = [r.held_out_ppl_base for r in [*results, *written_rows] if r.held_out_ppl_base is not None]
    if bases:
        ax.axhline(bases[0], color="black", linestyle="--", linewidth=1, label="base model (no prompt)")
    if not points:
        ax.text(0.5, 0.5, "no held-out perplexity to show", ha="center", transform=ax.transAxes)
    tokens = [x for _, x, _, _ in points]
    wide = bool(tokens) and max(tokens) > 10 * min(tokens)
    if wide:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))  # 10 and 100, not 10^1 and 10^2
    ax.set_xlabel("context tokens the prompt takes" + (" (log scale)" if wide else ""))
    ax.set_ylabel("held-out perplexity")
    ax.set_title("Held-out perplexity vs context spent")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")


def format_table(results: Sequence[CellResult], written_rows: Sequence[WrittenResult] = ()) -> str:
    """The results as a fixed-width text table (the CLI prints it); '–' where nothing was measured.

    Written prompts follow the cells in a block of their own, their tokens the context they take.

    >>> print(format_table([]).splitlines()[0])
    cell     tokens epochs  ppl base ppl tuned rouge base rouge tuned  seconds
    >>> print(format_table([], [WrittenResult("2 examples", 2, 164, ["Poet", "Chef"], 30.0, 24.5, None, None)]))
    cell     tokens epochs  ppl base ppl tuned rouge base rouge tuned  seconds
    <BLANKLINE>
    written prompt tokens  ppl base ppl written rouge base rouge written  acts
    2 examples        164     30.00       24.50          –             –  Poet, Chef
    """
    lines = [f"{'cell':8} {'tokens':>6} {'epochs':>6} {'ppl base':>9} {'ppl tuned':>9} {'rouge base':>10} {'rouge tuned':>11} {'seconds':>8}"]
    for r in results:
        lines.append(
            f"{r.label + ('*' if r.stopped else ''):8} {r.num_virtual_tokens:>6} {r.epochs:>6} "
            f"{number(r.held_out_ppl_base, '.2f'):>9} {number(r.held_out_ppl_tuned, '.2f'):>9} "
            f"{number(r.rouge_base, '.3f'):>10} {number(r.rouge_tuned, '.3f'):>11} {r.seconds:>8.1f}"
        )
    if written_rows:
        lines += ["", f"{'written prompt':14} {'tokens':>6} {'ppl base':>9} {'ppl written':>11} {'rouge base':>10} "
                      f"{'rouge written':>13}  acts"]
        for w in written_rows:
            lines.append(
                f"{w.label:14} {w.tokens:>6} {number(w.held_out_ppl_base, '.2f'):>9} "
                f"{number(w.held_out_ppl_written, '.2f'):>11} {number(w.rouge_base, '.3f'):>10} "
                f"{number(w.rouge_written, '.3f'):>13}  {', '.join(w.acts)}"
            )
    return "\n".join(lines)
