"""Training events -> chart points, log lines and the progress line (tuning.progress), without a server."""

from __future__ import annotations

import pytest

from tuning.config import TuneConfig
from tuning.model import SoftPrompt
from tuning.progress import RunView, duration, held_out_points, number
from tuning.train import Done, EpochEnd, Start, Step


def done(steps, stopped=False, held=2.0, base_held=3.0, elapsed=10.0):
    soft = SoftPrompt(embeddings=None, base_model="m", config=TuneConfig(),
                      meta={"metrics": {"held_out_loss": held, "base_held_out_loss": base_held}})
    return Done(soft=soft, stopped=stopped, steps=steps, elapsed=elapsed)


def step(n, elapsed, epoch=1, total=4):
    return Step(step=n, total_steps=total, epoch=epoch, loss=4.0 - n / 10, tokens=100 * n, tokens_per_s=100.0,
                elapsed=elapsed, eta=0.0)


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
    view.add(step(1, 1.0, total=20))  # 1 s a step; scoring 40 rows is 10 batches at a third of a step each
    plain = 19 * 1.0
    assert view.eta() > plain  # ETA 6s for a run that took 30 s more: the old estimate ignored scoring
    assert view.eta() == pytest.approx(plain + 3 * 10 / 3)  # epoch 1 scores tuned and base, epoch 2 tuned
    for n in range(2, 11):
        view.add(step(n, float(n), total=20))
    view.add(EpochEnd(1, 3.0, 2.9, 3.1, 16.0))  # the first epoch end took 6 s: 3 s a scoring, measured
    view.add(step(11, 17.0, epoch=2, total=20))
    assert view.eta() == pytest.approx(9 * 1.0 + 3.0)


def test_the_first_estimate_for_one_act_scores_the_held_out_rows_at_one_row_a_step():
    # Seen in the app (SmolLM2, one act, 5 steps): "about 26s left" after step 1 for 60 s still to
    # come, because scoring 20 held-out rows was guessed as 5 batches of 4 while a step trained 1 row.
    view = RunView(step_cap=5, epochs=5, batch_size=4)
    view.add(Start(5, 1, 20, 100))
    view.add(step(1, 2.0, total=5))  # 2 s a step of one row; scoring 20 rows: 20 rows at a third of a step each
    assert view.eta() == pytest.approx(4 * 2.0 + 6 * 20 * 2.0 / 3)  # 5 epoch ends; the first also scores the base


def test_stop_is_said_until_the_run_ends_then_what_was_kept():
    view = RunView(step_cap=10, epochs=1)
    view.add(Start(10, 10, 2, 100))
    view.add(step(2, 1.0, total=10))
    view.request_stop()
    view.add(step(3, 1.5, total=10))  # the step under way when Stop was pressed
    assert view.progress == "stopping after this step… (step 3 / 10)"
    view.add(done(3, stopped=True, held=2.5, base_held=3.0, elapsed=2.0))
    assert view.progress == "stopped at step 3 / 10 · the prompt so far is kept"
    assert view.log[-1] == "stopped at step 3 of 10 after 2s: the prompt as it was after step 3 is kept (held-out loss 2.500)."
    # a stopped run still draws where its prompt ended up, and the base line
    assert (3, 2.5, "held-out") in view.points and (0, 3.0, "base held-out") in view.points


def test_a_run_that_reaches_the_servers_step_cap_is_done_not_stopped():
    view = RunView(step_cap=2, epochs=5)
    view.add(Start(10, 8, 0, 100))
    view.add(step(2, 1.0, total=10))
    view.add(done(2, stopped=True, held=None, base_held=None))
    assert view.progress == "step 2 / 2 · done"


def test_the_reference_line_says_what_is_saved_where_the_run_is_and_when_it_waits():
    from tuning.progress import ReferenceView
    from tuning.reference import ReferenceEvent, ReferenceSaved

    view = ReferenceView()
    assert view.line() == "Training the reference adapters: loading the model…"
    view.add(ReferenceSaved("5×5", "reference-5x5-gpt2-abc123", None))
    view.add(ReferenceEvent((20, 10), "reference-20x10-gpt2-abc123", Start(480, 189, 20, 9000)))
    view.add(ReferenceEvent((20, 10), "reference-20x10-gpt2-abc123", step(120, 60.0, total=480)))
    assert view.line().startswith("Training the reference adapters (5×5 saved): 20×10 at step 120 / 480, about ")
    assert view.line(paused=True).endswith("20×10 at step 120 / 480, paused while a visitor trains")


def sweep_cell(cell, label, inner):
    from tuning.sweep import CellEvent
    return CellEvent(cell=cell, label=label, event=inner)


def cell_result(tokens, epochs, steps, stopped):
    from tuning.sweep import CellResult
    return CellResult(label=f"{tokens}×{epochs}", num_virtual_tokens=tokens, epochs=epochs, held_out_ppl_base=20.0, held_out_ppl_tuned=9.0,
                      rouge_base=None, rouge_tuned=None, seconds=5.0, steps=steps, steps_per_epoch=1,
                      stopped=stopped, history={}, soft=None)


def test_a_sweep_stopped_in_its_second_cell_says_so_and_charts_the_cut_cell():
    from tuning.progress import SweepView
    from tuning.sweep import SweepDone, SweepStart

    view = SweepView(cells=2, x_end=9, labels=["2×2", "3×3"])
    view.add(SweepStart(total_steps=13, labels=view.labels, train_rows=1, held_out_rows=1))
    for n in (1, 2):
        view.add(sweep_cell(0, "2×2", step(n, n, epoch=n, total=2)))
        view.add(sweep_cell(0, "2×2", EpochEnd(n, 3.0, 2.5, 3.0, n)))
    view.add(sweep_cell(0, "2×2", done(2)))
    first = cell_result(2, 2, 2, False)
    view.add(first)
    for n in (1, 2):  # the second cell is stopped at its step 2, before its first epoch ends
        view.add(sweep_cell(1, "3×3", step(n, n, total=9)))
    view.add(sweep_cell(1, "3×3", done(2, stopped=True, held=2.2)))
    cut = cell_result(3, 3, 2, True)
    view.add(cut)
    view.add(SweepDone(results=[first, cut], stopped=True))
    assert view.progress == "stopped: 1 of 2 cells finished, 3×3 cut at step 2 · 10s of training"
    assert (2, 2.2, "3×3 held-out") in view.points  # not left off the chart


def test_a_sweep_stopped_before_any_epoch_ended_still_draws_the_base_line():
    from tuning.progress import SweepView

    view = SweepView(cells=1, x_end=4, labels=["2×2"])
    view.add(sweep_cell(0, "2×2", step(1, 1, total=4)))
    view.add(sweep_cell(0, "2×2", done(1, stopped=True, held=2.2, base_held=3.0)))
    assert {(0, 3.0, "base held-out"), (4, 3.0, "base held-out"), (1, 2.2, "2×2 held-out")} <= set(view.points)
