"""Engine results as the page shows them: tables (pandas frames), loss charts and their colours.

Plain functions of plain data, tested without a server. Two traps of Gradio 6's LinePlot shape the
loss charts; `loss_frame` and `colours` say which.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import gradio as gr
import pandas as pd

from tuning import adapters, sweep
from tuning.data import Row, matching
from tuning.formatting import number, plural
from tuning.history import held_out_points
from ui.session import Run, short_name


COLOURS = {"train": "#2563eb", "held-out": "#ea580c", "base held-out": "#9ca3af"}  # one run's chart
GAIN_SCALE = 1.0  # nats of per-token gain drawn at full colour: the legend's −1…+1 is in nats
NEAREST_K = 5  # vocabulary tokens shown beside each virtual token (Evaluate)
NOTHING_GENERATED = "(no text: the model ended its answer at once)"
# Twelve hues, each dark and light (matplotlib's tab20 without its grey, which is the base line's,
# and three of tab20b): a sweep's 12 cells get a hue each (held-out dark, train light); the run
# history's 20 runs get 20 different colours, every dark one before any light one.
PAIRS = [("#1f77b4", "#aec7e8"), ("#ff7f0e", "#ffbb78"), ("#2ca02c", "#98df8a"), ("#d62728", "#ff9896"),
         ("#9467bd", "#c5b0d5"), ("#8c564b", "#c49c94"), ("#e377c2", "#f7b6d2"), ("#bcbd22", "#dbdb8d"),
         ("#17becf", "#9edae5"), ("#393b79", "#9c9ede"), ("#637939", "#cedb9c"), ("#843c39", "#e7969c")]
PALETTE = [dark for dark, _ in PAIRS] + [light for _, light in PAIRS]


def acts_frame(rows, query: str = "") -> pd.DataFrame:
    """Acts whose name or prompt contains `query` (any case, data.matching): act, first 80 characters, words."""
    return pd.DataFrame(
        [[r.act, r.prompt[:80] + ("…" if len(r.prompt) > 80 else ""), len(r.prompt.split())]
         for r in matching(rows, query or "")],
        columns=["act", "prompt", "words"],
    )


def act_line(act: Row | None) -> str:
    return f"**Current act:** {act.act}" if act else "**Current act:** none yet: pick one in the Dataset tab"


def first_cell(evt: gr.SelectData) -> str:
    """The first cell of the clicked table row (an act's or an adapter's name)."""
    return evt.row_value[0]


def loss_frame(points: list[tuple[int, float, str]], series) -> pd.DataFrame:
    """A loss chart's data: one row per point, plus an empty (NaN) row per series.

    The empty rows are a workaround: Gradio 6's LinePlot fixes its colour legend from the first
    value it shows, so a series that appears later (held-out after epoch 1) would never be drawn.
    A series with one point so far (the first held-out loss, a 1-step run) is drawn flat from
    step 0: the LinePlot draws no line through a lone point, and shows points only on hover.
    """
    counts = pd.Series([s for _, _, s in points], dtype=str).value_counts()
    lone = [(0, y, s) for x, y, s in points if counts.get(s) == 1 and x > 0]
    frame = pd.DataFrame([(0, math.nan, s) for s in series] + lone + points, columns=["step", "loss", "series"])
    return frame.astype({"step": int, "loss": float, "series": str})


def colours(series) -> dict[str, str]:
    """A colour per series name, in order, cycling through PALETTE.

    A new colour_map is also how a chart gets series that were not in its first value: Gradio 6's
    LinePlot takes its legend from the data when it builds the chart, and rebuilds only when a
    setting such as the colour map changes, not when the data does. The rebuild races the data
    update it comes with, so send the data first and the new map with the same data after it.
    """
    return {name: PALETTE[i % len(PALETTE)] for i, name in enumerate(dict.fromkeys(series))}


def cell_colours(labels: list[str]) -> dict[str, str]:
    """A sweep's series colours: one hue per cell, its held-out loss dark and its training loss light."""
    palette = {"base held-out": COLOURS["base held-out"]}
    for i, name in enumerate(labels):
        dark, light = PAIRS[i % len(PAIRS)]
        palette |= {f"{name} train": light, f"{name} held-out": dark}
    return palette


def step_axis(last_step: int) -> list[int]:
    """A chart's step axis: the whole planned run, at least 20 steps (fewer would get ticks at half steps)."""
    return [0, max(last_step, 20)]


def adapters_frame(listing: list[dict]) -> pd.DataFrame:
    """One row per adapter; its held-out perplexity as the rest of the app shows it, and as a share of the base model's
    on the same rows (each adapter's own held-out acts: a one-act prompt holds out others than an all-acts one)."""
    rows = []
    for a in listing:
        tuned, base = adapters.held_out_perplexity(a["metrics"])
        share = f"{tuned / base:.2f}×" if tuned is not None and base else "–"
        rows.append([a["name"], a["num_virtual_tokens"], a["config"].get("epochs"), number(tuned, ".2f"), share,
                     a["created"].replace("T", " ")[:16], short_name(a["base_model"])])
    return pd.DataFrame(rows, columns=["name", "tokens", "epochs", "held-out ppl", "× base", "created", "base model"])


def perplexity(loss: float | None) -> float | None:
    """exp(loss), or None when nothing was measured: 2.0 -> 7.389…"""
    return None if loss is None else math.exp(loss)


def history_frame(runs: list[Run]) -> pd.DataFrame:
    rows = []
    for r in runs:
        m, h = r.soft.meta["metrics"], r.soft.meta["history"]
        rows.append([r.name, r.settings, len(h["step"]), number(h["train_loss"][-1]), number(m["held_out_loss"]),
                     number(perplexity(m["held_out_loss"]), ".2f"), number(perplexity(m["base_held_out_loss"]), ".2f"),
                     "stopped" if r.soft.meta.get("stopped") else "done"])
    return pd.DataFrame(rows, columns=["run", "settings", "steps", "last train loss", "held-out loss",
                                       "held-out ppl", "base held-out ppl", "status"])


def history_chart(runs: list[Run]) -> tuple[pd.DataFrame, dict[str, str]]:
    """Every run's training loss per step, one series per run name; and the colours."""
    points = [(s, loss, r.name) for r in runs
              for s, loss in zip(r.soft.meta["history"]["step"], r.soft.meta["history"]["train_loss"])]
    names = [r.name for r in runs]
    return loss_frame(points, names), colours(names)


def write_history_csv(runs: list[Run], path: Path) -> Path:
    """run, settings, step, epoch, train_loss, held_out_loss: a row per step, then a row per epoch's held-out loss."""
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "settings", "step", "epoch", "train_loss", "held_out_loss"])
        for r in runs:
            h = r.soft.meta["history"]
            for step, loss in zip(h["step"], h["train_loss"]):
                writer.writerow([r.name, r.settings, step, "", loss, ""])
            held = [e for e, loss in zip(h["epoch"], h["held_out_loss"]) if loss is not None]
            for (step, loss, _), epoch in zip(held_out_points(h, r.steps_per_epoch), held):
                writer.writerow([r.name, r.settings, step, epoch, "", loss])
    return path


def gain_scores(gains: list[tuple[str, float]]) -> list[tuple[str, float]]:
    """Per-token gains in nats -> HighlightedText scores in [-1, 1] (full colour at ±GAIN_SCALE nats).

    [(' rapper', 3.1), ('.', -0.5)] -> [(' rapper', 1.0), ('.', -0.5)]
    """
    return [(token, max(-1.0, min(1.0, gain / GAIN_SCALE))) for token, gain in gains]


def gains_summary(act: str, gains: list[tuple[str, float]], note: str = "") -> str:
    """The total (base loss − tuned loss, summed over the tokens) and the tokens that moved most."""
    total = sum(g for _, g in gains)
    ranked = sorted(gains, key=lambda tg: tg[1])
    up = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in reversed(ranked[-3:]) if g > 0) or "none"
    down = ", ".join(f"`{t!r}` {g:+.2f}" for t, g in ranked[:3] if g < 0) or "none"
    return (f"{note}**{act}**: over its {plural(len(gains), 'scored token')} the tuned model gains **{total:+.2f} nats** "
            f"(base loss − tuned loss, summed; {total / len(gains):+.3f} per token).  \n"
            f"Most helped: {up}. Most hurt: {down}.")


def nearest_frame(nearest: list[list[tuple[str, float]]]) -> pd.DataFrame:
    """One row per virtual token: its index, then its nearest vocabulary tokens as "'token' 0.23"."""
    k = max((len(n) for n in nearest), default=NEAREST_K)  # empty: the headers a result will have
    rows = [[i] + [f"{t!r} {s:.2f}" for t, s in n] for i, n in enumerate(nearest)]
    return pd.DataFrame(rows, columns=["virtual token"] + [f"nearest {j + 1}" for j in range(k)])


def shown_text(text: str) -> str:
    """A finished continuation as shown: an empty one says the model ended at once (not "still waiting")."""
    return text if text.strip() else NOTHING_GENERATED


def rouge_frame(scored: list[dict], with_written: bool | None = None) -> pd.DataFrame:
    """One row per act: each model's continuation, then each one's ROUGE-L; the written prompt's between base and tuned.

    `with_written`: whether there are written columns (None: when the rows have a written text).
    """
    if with_written is None:
        with_written = bool(scored) and "written_text" in scored[0]
    names = ["base", "written", "tuned"] if with_written else ["base", "tuned"]
    rows = [[r["act"], *(shown_text(r[f"{n}_text"]) for n in names), *(round(r[f"{n}_rouge"], 3) for n in names)]
            for r in scored]
    return pd.DataFrame(rows, columns=["act", *(f"{n} text" for n in names), *(f"{n} ROUGE-L" for n in names)])


def bars(values: dict[str, float | None], metric: str, spec: str) -> pd.DataFrame:
    """Bar chart data whose labels carry the values ('base 34.52'): Gradio's BarPlot draws no value labels."""
    rows = [[f"{side} {value:{spec}}", side, value] for side, value in values.items() if value is not None]
    return pd.DataFrame(rows, columns=["label", "model", metric])


SWEEP_COLUMNS = ["cell", "tokens", "epochs", "held-out ppl base", "held-out ppl tuned", "ROUGE-L base", "ROUGE-L tuned",
                 "seconds"]


def sweep_frame(results: list[sweep.CellResult], written_rows: list[sweep.WrittenResult] = ()) -> pd.DataFrame:
    """A row per cell, then a row per written prompt ("2 examples · 164 tokens"), its numbers in the tuned columns."""
    rows = [[r.label + (" (stopped)" if r.stopped else ""), r.num_virtual_tokens, r.epochs,
             number(r.held_out_ppl_base, ".2f"), number(r.held_out_ppl_tuned, ".2f"),
             number(r.rouge_base), number(r.rouge_tuned), round(r.seconds, 1)] for r in results]
    # a written prompt trains nothing: no epochs, no seconds; its tokens are the context it takes, as a cell's are
    rows += [[w.describe(), w.tokens, "–", number(w.held_out_ppl_base, ".2f"), number(w.held_out_ppl_written, ".2f"),
              number(w.rouge_base), number(w.rouge_written), "–"] for w in written_rows]
    return pd.DataFrame(rows, columns=SWEEP_COLUMNS)
