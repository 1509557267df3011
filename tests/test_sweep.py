"""sweep.py: one prompt per (virtual tokens, epochs) cell, a CSV, a chart, and `python -m tuning sweep`."""

from __future__ import annotations

import csv
import math

import pytest
from conftest import ACTS, make_base

from tuning.cli import main
from tuning.config import TuneConfig
from tuning.data import Row, normalise
from tuning.generate import Decoding
from tuning.sweep import (
    CSV_FIELDS, SEED_GRID, CellEvent, CellResult, SweepDone, SweepStart, WrittenResult, context_figure, context_points,
    parse_grid, plot, run_sweep, write_csv,
)
from tuning.rows import split_rows
from tuning.events import Done, Step

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ROWS = [Row(act, prompt, normalise(act)) for act, prompt in list(ACTS.items())[:6]]
CONFIG = TuneConfig(model="tiny", dataset="tiny", batch_size=2, learning_rate=0.1, held_out_fraction=0.34, precision="fp32")


@pytest.fixture(scope="module")
def events(base):
    return list(run_sweep(base, ROWS, CONFIG, [(2, 1), (3, 1)], rouge_rows=1, decoding=Decoding(max_new_tokens=4)))


def test_the_seed_grid_is_5x5_and_20x10():
    assert SEED_GRID == [(5, 5), (20, 10)]


@pytest.mark.parametrize("text, grid", [("5x5,20x10", [(5, 5), (20, 10)]), (" 2×1; 3X4\n", [(2, 1), (3, 4)])])
def test_parse_grid(text, grid):
    assert parse_grid(text) == grid


@pytest.mark.parametrize("text, message", [("5x", "grid cell '5x' is not TOKENSxEPOCHS"), (" , ", "the grid is empty")])
def test_parse_grid_names_the_bad_cell(text, message):
    with pytest.raises(ValueError, match=message):
        parse_grid(text)


def test_a_bad_cell_fails_before_any_training(base):
    with pytest.raises(ValueError, match="num_virtual_tokens must be from 1 to 100"):
        next(run_sweep(base, ROWS, CONFIG, [(2, 1), (0, 1)]))


def test_sweep_yields_start_tagged_cell_events_results_then_done(events):
    start, done = events[0], events[-1]
    assert isinstance(start, SweepStart) and start.labels == ["2×1", "3×1"]
    steps = [e for e in events if isinstance(e, CellEvent) and isinstance(e.event, Step)]
    assert len(steps) == start.total_steps and {e.cell for e in steps} == {0, 1}
    assert [e.label for e in events if isinstance(e, CellEvent) and isinstance(e.event, Done)] == ["2×1", "3×1"]
    assert isinstance(done, SweepDone) and not done.stopped
    assert done.results == [e for e in events if isinstance(e, CellResult)]


def test_each_result_has_finite_metrics_and_its_prompt(events):
    for result, tokens in zip(events[-1].results, (2, 3)):
        assert (result.num_virtual_tokens, result.epochs) == (tokens, 1)
        numbers = [result.held_out_ppl_base, result.held_out_ppl_tuned, result.rouge_base, result.rouge_tuned, result.seconds]
        assert all(isinstance(x, float) and math.isfinite(x) for x in numbers)
        assert result.soft.num_virtual_tokens == tokens and result.history["train_loss"]


def test_the_base_rouge_column_is_the_same_in_every_cell(tokenizer):
    # A sweep reported base ROUGE-L 0.149 in one cell and 0.127 in another with the same base
    # model: the base continuation was decoded in one batch with each cell's tuned row, and in
    # bf16 a GPT-2-sized model's base row rounds differently next to prompts of different
    # lengths (generate.py). Tiny models round the same here, so this one exaggerates the effect:
    # its next token is " you" when the batch's width (padding included) is even, "." when odd.
    # Next to a 2- and a 3-token prompt its base text differed (3 against 2 "you"s in 5 tokens),
    # and so did base ROUGE-L (0.139 against 0.130) before the base was decoded once, alone.
    own = make_base(tokenizer, seed=4)
    (you,), (dot,) = own.encode(" you"), own.encode(".")

    def by_batch_width(module, args, kwargs, output):
        width = kwargs["cache"].get_seq_length()
        output.logits[:, -1, you if width % 2 == 0 else dot] += 100.0
        return output

    own.model.register_forward_hook(by_batch_width, with_kwargs=True)
    done = list(run_sweep(own, ROWS, CONFIG, [(2, 1), (3, 1)], rouge_rows=2, decoding=Decoding(max_new_tokens=5)))[-1]
    first, second = done.results
    assert first.rouge_base == second.rouge_base > 0
    assert [r["base_text"] for r in first.rouge_acts] == [r["base_text"] for r in second.rouge_acts]
    assert [r["act"] for r in first.rouge_acts] == [r["act"] for r in second.rouge_acts] and len(first.rouge_acts) == 2


def test_the_base_model_is_scored_on_the_held_out_rows_once_per_sweep(base, monkeypatch):
    # Each cell used to score the base model anew (~8 s a cell on SmolLM2) for the same number.
    import tuning.train as train_module

    real, calls = train_module.batch_losses, []

    def counting(model_base, prompt, *args, **kwargs):
        calls.append("base" if prompt is None else "tuned")
        return real(model_base, prompt, *args, **kwargs)

    monkeypatch.setattr(train_module, "batch_losses", counting)
    done = list(run_sweep(base, ROWS, CONFIG, [(2, 2), (3, 1)]))[-1]
    first, second = done.results
    assert calls.count("base") == 1 and calls.count("tuned") == 3  # one per epoch end
    assert first.held_out_ppl_base == second.held_out_ppl_base and math.isfinite(first.held_out_ppl_base)
    losses = [r.soft.meta["metrics"]["base_held_out_loss"] for r in done.results]
    assert losses[0] == losses[1] == pytest.approx(math.log(first.held_out_ppl_base))


def test_a_set_stop_trains_nothing(base):
    import threading

    stop = threading.Event()
    stop.set()
    events = list(run_sweep(base, ROWS, CONFIG, [(2, 1)], stop=stop))
    assert isinstance(events[-1], SweepDone) and events[-1].results == [] and events[-1].stopped


def test_a_cell_stopped_mid_run_is_not_scored_for_rouge(base, monkeypatch):
    # "Stop" means now: minutes of decoding for a cut cell would keep the page at "stopping…"
    import threading

    import tuning.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "base_continuations", lambda *a, **k: pytest.fail("decoded after a stop"))
    monkeypatch.setattr(sweep_module, "rouge_compare", lambda *a, **k: pytest.fail("decoded after a stop"))
    stop = threading.Event()
    events = []
    for event in run_sweep(base, ROWS, CONFIG, [(2, 3), (3, 1)], stop=stop, rouge_rows=2,
                           decoding=Decoding(max_new_tokens=4)):
        events.append(event)
        if isinstance(event, CellEvent) and isinstance(event.event, Step) and event.event.step == 2:
            stop.set()
    (cut,) = events[-1].results
    assert cut.stopped and cut.steps == 2 and cut.rouge_base is cut.rouge_tuned is cut.rouge_acts is None


def test_csv_has_the_header_and_one_row_per_cell(events, tmp_path):
    path = write_csv(events[-1].results, tmp_path / "sweep.csv")
    with path.open(newline="") as f:
        table = list(csv.reader(f))
    assert table[0] == CSV_FIELDS and [r[0] for r in table[1:]] == ["2×1", "3×1"]


def test_plot_writes_a_png(events, tmp_path):
    path = plot(events[-1].results, tmp_path / "sub" / "sweep.png")
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture(scope="module")
def with_shots(base):
    return list(run_sweep(base, ROWS, CONFIG, [(2, 1)], rouge_rows=1, decoding=Decoding(max_new_tokens=4),
                          shots=(2, 1)))


def test_written_rows_follow_the_cells_one_per_example_count(with_shots):
    kinds = [type(e).__name__ for e in with_shots if not isinstance(e, CellEvent)]
    assert kinds == ["SweepStart", "CellResult", "WrittenResult", "WrittenResult", "SweepDone"]
    done = with_shots[-1]
    assert [w.examples for w in done.written] == [1, 2] and [w.label for w in done.written] == ["1 example", "2 examples"]
    assert done.written == [e for e in with_shots if isinstance(e, WrittenResult)] and not done.stopped


def test_written_rows_are_evals_numbers_on_the_cells_held_out_tokens(with_shots, base):
    # The same recipe as `eval --shots`: held_out(written=for_adapters(...)) beside the cell's own prompt
    from tuning import written
    from tuning.evaluate import held_out, rouge_compare
    from tuning.rows import split_rows

    (cell,), held = with_shots[-1].results, split_rows(ROWS, CONFIG)[1]
    for row in with_shots[-1].written:
        examples = written.for_adapters(base, [cell.soft], ROWS, CONFIG.dataset, row.examples)
        expected = held_out(base, cell.soft, held, written=examples)
        assert (row.tokens, row.acts) == (examples.tokens, [r.act for r in examples.examples])
        assert row.held_out_ppl_written == pytest.approx(expected["written"].perplexity, rel=1e-9)
        assert row.held_out_ppl_base == cell.held_out_ppl_base == pytest.approx(expected["base"].perplexity, rel=1e-6)
        rouge = rouge_compare(base, written.embeddings(base, examples), held[:1], Decoding(max_new_tokens=4))
        assert row.rouge_written == rouge["tuned"] and row.rouge_base == cell.rouge_base
        assert [r["tuned_text"] for r in row.rouge_acts] == [r["tuned_text"] for r in rouge["rows"]]


def test_a_written_prompt_that_does_not_fit_is_refused_before_anything_trains(tokenizer):
    from tuning.written import WrittenError

    small = make_base(tokenizer, n_positions=64)  # 4 whole prompts of these acts take over 64 positions
    with pytest.raises(WrittenError, match=r"the written prompt \(4 examples · \d+ tokens\) \+ the longest held-out "
                                           r"prompt \(\d+ tokens\) need \d+ positions, more than the model's 64-token"):
        next(run_sweep(small, ROWS, CONFIG, [(2, 1)], shots=(4,)))


def test_a_stopped_sweep_scores_no_written_rows(base, monkeypatch):
    import threading

    import tuning.sweep as sweep_module

    monkeypatch.setattr(sweep_module, "_score_written", lambda *a, **k: pytest.fail("scored after a stop"))
    stop = threading.Event()
    for event in run_sweep(base, ROWS, CONFIG, [(2, 2)], stop=stop, shots=(1,)):
        if isinstance(event, CellEvent) and isinstance(event.event, Step):
            stop.set()
    assert event.stopped and event.written == []


def test_csv_has_a_row_per_written_prompt_with_its_tokens_and_acts(with_shots, tmp_path):
    done = with_shots[-1]
    path = write_csv(done.results, tmp_path / "sweep.csv", done.written)
    with path.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["2×1", "1 example", "2 examples"]
    assert table[0]["context_tokens"] == "2" and table[0]["held_out_ppl_written"] == ""
    for row, w in zip(table[1:], done.written):
        assert row["context_tokens"] == str(w.tokens) and row["written_acts"] == "; ".join(w.acts)
        assert float(row["held_out_ppl_written"]) == w.held_out_ppl_written and row["held_out_ppl_tuned"] == ""


def test_plot_places_soft_and_written_prompts_by_the_context_they_take(with_shots, tmp_path):
    done = with_shots[-1]
    (cell,), (one, two) = done.results, done.written
    assert context_points(done.results, done.written) == [
        ("soft", 2, cell.held_out_ppl_tuned, "2×1"), ("written", one.tokens, one.held_out_ppl_written, "1 example"),
        ("written", two.tokens, two.held_out_ppl_written, "2 examples")]
    assert plot(done.results, tmp_path / "sweep.png", done.written).read_bytes()[:8] == PNG_MAGIC


def test_the_apps_context_figure_is_the_plots_left_panel_its_points_and_the_base_line(with_shots, tmp_path):
    done = with_shots[-1]
    (ax,) = context_figure(done.results, done.written).axes
    drawn = [tuple(xy) for collection in ax.collections for xy in collection.get_offsets()]
    assert drawn == [(x, y) for _, x, y, _ in context_points(done.results, done.written)]
    assert [t.get_text() for t in ax.texts] == ["2×1", "1 example", "2 examples"]
    (base_line,) = ax.get_lines()
    assert list(base_line.get_ydata()) == [done.results[0].held_out_ppl_base] * 2 and base_line.get_linestyle() == "--"
    assert ax.get_xlabel().startswith("context tokens the prompt takes")


def test_a_written_row_describes_itself_as_a_written_prompt_does(with_shots, base):
    from tuning import written

    for row in with_shots[-1].written:
        prompt = written.examples(base, ROWS, split_rows(ROWS, CONFIG)[1], row.examples, CONFIG.seed)
        assert row.describe() == prompt.describe() == f"{row.label} · {row.tokens:,} tokens"


def test_cli_sweep_shots_adds_written_rows_to_the_table_and_csv(tiny_model_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "--model", str(tiny_model_dir), "--dataset", str(tiny_csv), "--precision", "fp32",
                 "--grid", "2x1", "--batch-size", "4", "--held-out-fraction", "0.25", "--out", str(out),
                 "--shots", "2,1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    block = lines[lines.index("") + 1:]
    assert block[0].startswith("written prompt tokens") and block[1].startswith("1 example ")
    assert block[2].startswith("2 examples ") and block[3].startswith("wrote ")
    with (out / "sweep.csv").open(newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["label"] for r in table] == ["2×1", "1 example", "2 examples"]
    assert int(table[2]["context_tokens"]) > int(table[1]["context_tokens"]) > 2  # 2 examples hold the first one
    assert block[2].split()[2] == table[2]["context_tokens"]


@pytest.mark.parametrize("value", ["3", "1,x", ""])
def test_cli_sweep_shots_outside_the_offered_counts_is_a_usage_error(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--shots", value])
    assert exit_info.value.code == 2 and "argument --shots" in capsys.readouterr().err


def test_cli_sweep_writes_csv_and_png_and_prints_the_table(tiny_model_dir, tiny_csv, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["sweep", "--model", str(tiny_model_dir), "--dataset", str(tiny_csv), "--precision", "fp32",
                 "--grid", "2x1,3x1", "--batch-size", "4", "--held-out-fraction", "0.25", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    table = lines[next(i for i, line in enumerate(lines) if line.startswith("cell ")):]
    assert table[1].startswith("2×1 ") and table[2].startswith("3×1 ") and table[3].startswith("wrote ")
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert len((out / "sweep.csv").read_text(encoding="utf-8").splitlines()) == 3


def test_cli_sweep_bad_grid_is_one_line(capsys):
    assert main(["sweep", "--grid", "5by5"]) == 1
    assert capsys.readouterr().err.strip() == "error: grid cell '5by5' is not TOKENSxEPOCHS, e.g. 5x5 or 20x10"


def test_cli_sweep_has_help(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["sweep", "--help"])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0 and "--grid" in out and "--rouge" in out and "--out" in out
