"""Training events -> chart points, log lines and the progress line (tuning.progress), without a server."""

from __future__ import annotations

import pytest

from tuning.config import TuneConfig
from tuning.model import SoftPrompt
from tuning.formatting import duration, number
from tuning.history import held_out_points
from tuning.progress import RunView
from tuning.events import Done, EpochEnd, Start, Step


def done(steps, stopped=False, held=2.0, base_held=3.0, elapsed=10.0):
    soft = SoftPrompt(embeddings=None, base_model="m", config=TuneConfig(),
                      meta={"metrics": {"held_out_loss": held, "base_held_out_loss": base_held}})
    return Done(soft=soft, stopped=stopped, steps=steps, elapsed=elapsed)


def step(n, elapsed, epoch=1, total=4, in_steps=None):
    """Step n, `elapsed` s after the start, `in_steps` of them spent in steps (default: all, 100 tokens a step)."""
    in_steps = elapsed if in_steps is None else in_steps
    return Step(step=n, total_steps=total, epoch=epoch, loss=4.0 - n / 10, tokens=100 * n,
                tokens_per_s=100 * n / in_steps, elapsed=elapsed, eta=0.0)


def test_number_and_duration():
    assert [number(None), number(3.14159), number(3.14159, ".2f")] == ["–", "3.142", "3.14"]
    assert [duration(45), duration(130), duration(3720)] == ["45s", "2m 10s", "1h 2m"]


def test_held_out_points_sit_at_each_epochs_last_step_or_the_runs_last():
    history = {"step": [1, 2, 3], "epoch": [1, 2], "held_out_loss": [3.0, 2.5]}
    assert held_out_points(history, 2) == [(2, 3.0, "held-out"), (3, 2.5, "held-out")]


def test_a_whole_run_reads_as_points_log_and_a_done_line():
    view = RunView(step_cap=4, epochs=2, batch_size=4, notes=("epochs cut from 10 to 2 to stay within 4 steps",))
    events = [Start(4, 7, 1, 700), step(1, 1.0), step(2, 2.0), EpochEnd(1, 3.5, 3.0, 3.4, 2.6),
              step(3, 3.6, 2), step(4, 4.6, 2), EpochEnd(2, 3.2, 2.8, 3.4, 4.9), done(4, held=2.8, base_held=3.4)]
    for e in events:
        view.add(e)
    assert [p for p in view.points if p[2] == "train"] == [(s, 4.0 - s / 10, "train") for s in (1, 2, 3, 4)]
    assert [p for p in view.points if p[2] == "held-out"] == [(2, 3.0, "held-out"), (4, 2.8, "held-out")]
    assert [p for p in view.points if p[2] == "base held-out"] == [(0, 3.4, "base held-out"), (4, 3.4, "base held-out")]
    assert view.log[0] == "note: epochs cut from 10 to 2 to stay within 4 steps"
    assert view.log[1] == "training on 7 acts, 1 held out, 4 steps"
    assert view.log[-1] == "done: 4 steps in 10s; held-out loss 2.800."
    assert view.progress == "step 4 / 4 · done" and view.finished and not view.stopped


def test_one_act_and_one_step_are_singular():
    view = RunView(step_cap=1, epochs=1)
    view.add(Start(1, 1, 0, 10))
    view.add(step(1, 0.5, total=1))
    view.add(done(1, held=None, base_held=None))
    assert view.log == ["training on 1 act, 0 held out, 1 step", "done: 1 step in 10s; held-out loss –."]


def test_the_estimate_counts_the_held_out_scoring_still_to_come():
    view = RunView(step_cap=20, epochs=2, batch_size=4)
    view.add(Start(20, 40, 40, 4000))  # as many held-out rows as training rows: scoring is a real cost
    view.add(step(1, 1.0, total=20))  # 1 s a step; scoring 40 rows is 10 batches at 0.45 of a step each
    plain = 19 * 1.0
    assert view.eta() > plain  # ETA 6s for a run that took 30 s more: the old estimate ignored scoring
    assert view.eta() == pytest.approx(plain + 3 * 10 * 0.45)  # epoch 1 scores tuned and base, epoch 2 tuned
    for n in range(2, 11):
        view.add(step(n, float(n), total=20))
    view.add(EpochEnd(1, 3.0, 2.9, 3.1, 16.0))  # the first epoch end took 6 s: 3 s a scoring, measured
    view.add(step(11, 17.0, epoch=2, total=20, in_steps=11.0))
    assert view.eta() == pytest.approx(9 * 1.0 + 3.0)


def test_a_pause_between_steps_is_not_taken_for_work():
    # Seen with the reference adapters: paused 10 minutes for a visitor's run, then "about 7h 31m left".
    view = RunView(step_cap=20, epochs=2, batch_size=4)
    view.add(Start(20, 40, 40, 4000))
    for n in range(1, 10):
        view.add(step(n, float(n), total=20))  # 1 s a step
    view.add(step(10, 610.0, total=20, in_steps=10.0))  # resumed after a 600 s pause
    assert view.eta() == pytest.approx(10 * 1.0 + 3 * 10 * 0.45)  # scoring still guessed: 3 scorings of 10 batches
    view.add(EpochEnd(1, 3.0, 2.9, 3.1, 1300.0, scoring_seconds=2.0))  # paused again before scoring tuned and base
    assert view.eta() == pytest.approx(10 * 1.0 + 1.0)  # one scoring left, 1 s as measured


def test_the_reference_line_before_its_first_step_says_whether_it_waits_or_loads():
    from tuning.progress import ReferenceView

    view = ReferenceView()
    assert view.line(paused=False).endswith(": loading the model…")
    assert view.line(paused=True).endswith(": waiting while a visitor trains")


def test_the_reference_line_says_when_it_gives_way_to_a_generation_until_its_next_step():
    from tuning.progress import ReferenceView
    from tuning.reference import ReferenceEvent
    from tuning.events import Paused

    view = ReferenceView()
    for event in (Start(20, 8, 2, 800), step(1, 1.0, total=20), Paused(1, 2.4)):
        view.add(ReferenceEvent((5, 5), "reference-5x5", event))
    assert view.line() == ("Training the reference adapters: 5×5 at step 1 / 20, "
                           "paused while a generation runs on this CPU (at most 2s)")
    assert view.line(paused=True).endswith("5×5 at step 1 / 20, paused while a visitor trains")
    view.add(ReferenceEvent((5, 5), "reference-5x5", step(2, 2.0, total=20)))
    assert "paused" not in view.line() and view.line().endswith("left")


def test_the_sweep_estimate_adds_rouge_l_at_the_pace_of_the_cells_already_scored(monkeypatch):
    from tuning import progress
    from tuning.progress import SweepView
    from tuning.sweep import CellEvent, CellResult, SweepStart

    now = [100.0]
    monkeypatch.setattr(progress, "clock", lambda: now[0])
    view = SweepView(cells=3, rouge_acts=3, labels=["2×1", "3×1", "4×1"])
    view.add(SweepStart(total_steps=12, labels=["2×1", "3×1", "4×1"], train_rows=8, held_out_rows=3))

    def cell(i, label, events):
        for e in events:
            view.add(CellEvent(cell=i, label=label, event=e))

    def result(label):
        return CellResult(label, 2, 1, 3.0, 2.0, 0.1, 0.2, 40.0, 4, 4, False, {}, None)

    cell(0, "2×1", [step(2, 20.0)])  # 10 s a step, 10 steps to go; ROUGE-L not measured yet
    assert view.progress.endswith("about 1m 40s of training left, then ROUGE-L")
    cell(0, "2×1", [step(4, 40.0), done(4, elapsed=40.0)])
    assert view.progress == "cell 2×1: scoring ROUGE-L on up to 3 held-out acts…"
    now[0] += 50.0  # the first cell's ROUGE-L took 50 s (the base model's continuations too)
    view.add(result("2×1"))
    cell(1, "3×1", [step(2, 20.0)])  # 6 steps left (60 s), two cells' ROUGE-L at the only pace measured (2 x 50 s)
    assert view.progress.endswith("about 2m 40s left")
    cell(1, "3×1", [step(4, 40.0), done(4, elapsed=40.0)])  # 4 steps of the last cell (40 s), two cells to score
    assert view.progress == "cell 3×1: scoring ROUGE-L on up to 3 held-out acts… · about 2m 20s left"
    now[0] += 30.0  # a later cell: 30 s, the pace from now on
    view.add(result("3×1"))
    cell(2, "4×1", [step(2, 20.0)])
    assert view.progress.endswith("about 50s left")  # 20 s of training, 30 s of ROUGE-L


def test_without_rouge_l_the_sweep_estimate_is_the_training_left():
    from tuning.progress import SweepView
    from tuning.sweep import CellEvent, SweepStart

    view = SweepView(cells=1)
    view.add(SweepStart(total_steps=4, labels=["2×1"], train_rows=4, held_out_rows=1))
    view.add(CellEvent(cell=0, label="2×1", event=step(1, 10.0)))
    assert view.progress.endswith("about 30s left")


def test_a_sweep_cell_paused_for_a_generation_says_so_until_its_next_step():
    from tuning.progress import SweepView
    from tuning.sweep import CellEvent, SweepStart
    from tuning.events import Paused

    view = SweepView(cells=2)
    view.add(SweepStart(total_steps=8, labels=["2×1", "4×1"], train_rows=4, held_out_rows=1))
    for e in [step(1, 10.0), step(2, 20.0), step(3, 30.0), step(4, 40.0), done(4, elapsed=40.0)]:
        view.add(CellEvent(cell=0, label="2×1", event=e))
    view.add(CellEvent(cell=1, label="4×1", event=step(1, 10.0)))
    view.add(CellEvent(cell=1, label="4×1", event=Paused(1, 2.6)))
    assert view.progress == "step 5 / 8 · cell 4×1 · paused while a generation runs on this CPU (at most 3s)"
    view.add(CellEvent(cell=1, label="4×1", event=step(2, 20.0)))
    assert view.progress.startswith("step 6 / 8 · cell 4×1 (2 / 2)") and "paused" not in view.progress


def test_before_any_cell_is_scored_the_sweep_estimate_counts_rouge_l_at_a_pace_timed_before():
    from tuning.progress import SweepView
    from tuning.sweep import CellEvent, SweepStart

    # 0.1 s a token: 2 cells, 3 acts asked for but 2 held out: (base + 2 cells) x 2 acts x 64 tokens = 38.4 s
    view = SweepView(cells=2, rouge_acts=3, labels=["2×1", "4×1"], rouge_pace=0.1)
    view.add(SweepStart(total_steps=8, labels=["2×1", "4×1"], train_rows=4, held_out_rows=2))
    view.add(CellEvent(cell=0, label="2×1", event=step(2, 20.0)))  # 6 steps left at 10 s: 60 s
    assert view.progress.endswith("epoch 1 · about 1m 38s left")
    unknown = SweepView(cells=2, rouge_acts=3, labels=["2×1", "4×1"])  # no generation timed yet
    unknown.add(SweepStart(total_steps=8, labels=["2×1", "4×1"], train_rows=4, held_out_rows=2))
    unknown.add(CellEvent(cell=0, label="2×1", event=step(2, 20.0)))
    assert unknown.progress.endswith("epoch 1 · about 1m 00s of training left, then ROUGE-L")


def test_a_short_runs_estimate_counts_its_subset_scorings_and_the_full_one_at_the_end():
    # One act, 20 held-out acts, each epoch end scoring a quarter of their tokens (Start says so).
    view = RunView(step_cap=5, epochs=5, batch_size=4)
    view.add(Start(5, 1, 20, 100, epoch_held_out_share=0.25))
    view.add(step(1, 1.0, total=5))  # 1 s a step of one row: a whole held-out side guessed at 20 * 0.45 = 9 s
    # five ends at a quarter, the last a whole side for the prompt and the base model's rest, the first the base's quarter
    assert view.eta() == pytest.approx(4 * 1.0 + (5 * 0.25 + 2 * 0.75 + 0.25) * 9)
    long = RunView(step_cap=5, epochs=5, batch_size=4)
    long.add(Start(5, 1, 20, 100))
    long.add(step(1, 1.0, total=5))
    assert long.eta() == pytest.approx(4 * 1.0 + (5 + 1) * 9)  # every end scores everything, the first twice
    view.add(EpochEnd(1, 3.6, 3.5, 3.6, 2.0, scoring_seconds=1.0, held_out_acts=5))  # a quarter, twice: 2 s a side
    assert view.eta() == pytest.approx(4 * 1.0 + (4 * 0.25 + 2 * 0.75) * 2.0)


def test_a_short_run_says_how_many_acts_its_points_are_on_and_ends_with_every_acts_loss():
    view = RunView(step_cap=2, epochs=2, batch_size=4)
    for event in (Start(2, 1, 20, 100, epoch_held_out_share=0.25), step(1, 1.0, total=2),
                  EpochEnd(1, 3.618, 3.545, 3.6, 8.0, scoring_seconds=6.0, held_out_acts=5), step(2, 9.0, total=2),
                  EpochEnd(2, 3.5, 3.4, 3.6, 30.0, scoring_seconds=20.0, held_out_acts=5),
                  done(2, held=3.476, base_held=3.542, elapsed=30.0)):
        view.add(event)
    assert view.log == ["training on 1 act, 20 held out, 2 steps",
                            "epoch 1: train 3.618, held-out 3.545 on 5 of 20 held-out acts (8s)",
                            "epoch 2: train 3.500, held-out 3.400 on 5 of 20 held-out acts (30s)",
                            "done: 2 steps in 30s; held-out loss 3.476 on all 20 held-out acts, base model 3.542."]
    # the chart keeps to the subset: its points and the base model's line on the same 5 acts
    assert [p for p in view.points if p[2] != "train"] == [
        (1, 3.545, "held-out"), (0, 3.6, "base held-out"), (2, 3.6, "base held-out"), (2, 3.4, "held-out")]


def test_after_its_cells_a_sweep_says_which_written_prompt_it_scores_and_keeps_the_rows():
    from tuning.progress import SweepView
    from tuning.sweep import CellEvent, CellResult, SweepDone, SweepStart, WrittenResult

    cell = CellResult("2×1", 2, 1, 3.0, 2.0, None, None, 40.0, 4, 4, False, {}, None)
    rows = [WrittenResult(f"{k} example{'s' * (k > 1)}", k, 20 * k, ["Poet"] * k, 3.0, 2.5, None, None) for k in (1, 4)]
    view = SweepView(cells=1, labels=["2×1"], shots=(4, 1, 4))  # each count once, in order, as run_sweep scores them
    view.add(SweepStart(total_steps=4, labels=["2×1"], train_rows=4, held_out_rows=1))
    view.add(CellEvent(cell=0, label="2×1", event=done(4, elapsed=40.0)))
    view.add(cell)
    assert view.progress == "scoring the written prompts: 1 example (1 / 2)…"
    view.add(rows[0])
    assert view.progress == "scoring the written prompts: 4 examples (2 / 2)…"
    view.add(rows[1])
    view.add(SweepDone([cell], stopped=False, written=rows))
    assert view.progress == "done: 1 of 1 cell in 40s of training · 2 written prompts scored" and view.written == rows


@pytest.mark.parametrize("stopped, scored, line", [
    (True, 0, "stopped: 0 of 1 cell finished, 2×1 cut at step 4 · 40s of training · written prompts not scored"),
    (False, 1, "done: 1 of 1 cell in 40s of training · stopped after 1 of 2 written prompts"),
])
def test_a_stopped_sweep_says_how_many_written_prompts_it_scored(stopped, scored, line):
    from tuning.progress import SweepView
    from tuning.sweep import CellResult, SweepDone, WrittenResult

    cell = CellResult("2×1", 2, 1, 3.0, 2.0, None, None, 40.0, 4, 4, stopped, {}, None)
    rows = [WrittenResult("1 example", 1, 20, ["Poet"], 3.0, 2.5, None, None)][:scored]
    view = SweepView(cells=1, labels=["2×1"], shots=(1, 2))
    view.add(cell)
    for row in rows:
        view.add(row)
    view.add(SweepDone([cell], stopped=stopped, written=rows))
    assert view.progress == line
