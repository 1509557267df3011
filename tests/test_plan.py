"""Planning a run or a sweep before it starts (tuning.plan): steps, caps, notes, errors by label."""

from __future__ import annotations

import pytest

from tuning.config import TuneConfig
from tuning.data import Row
from tuning.formatting import plural
from tuning.plan import PlanError, checked_config, estimate_seconds, plan_run, plan_sweep

ROWS = [Row(f"Act {i}", f"I want you to act as act {i}. " + "word " * i, f"act {i}") for i in range(40)]


def test_plural_says_one_act_and_two_acts():
    assert [plural(1, "act"), plural(2, "act"), plural(2000, "step")] == ["1 act", "2 acts", "2,000 steps"]


def test_a_run_within_the_caps_is_planned_as_asked():
    plan = plan_run(ROWS, TuneConfig(epochs=3, batch_size=4), max_steps=2000, max_epochs=50)
    assert len(plan.train_rows) + len(plan.held_out_rows) == 40 and plan.held_out_rows
    assert plan.steps_per_epoch == -(-len(plan.train_rows) // 4)
    assert plan.step_cap == plan.planned_steps == 3 * plan.steps_per_epoch and plan.notes == ()


def test_epochs_that_need_too_many_steps_are_cut_with_a_note():
    plan = plan_run(ROWS, TuneConfig(epochs=10, batch_size=4), max_steps=20)  # 36 rows: 9 steps an epoch
    assert plan.config.epochs == 2 and plan.step_cap == 18
    assert plan.notes == ("epochs cut from 10 to 2 to stay within 20 steps",)


def test_one_epoch_longer_than_the_cap_stops_at_the_cap():
    plan = plan_run(ROWS, TuneConfig(epochs=1, batch_size=1), max_steps=5)
    assert plan.config.epochs == 1 and plan.step_cap == 5
    assert plan.notes == ("this run stops after 5 steps (one epoch is 36 steps)",)


def test_more_epochs_than_the_server_runs_are_refused_not_clamped():
    with pytest.raises(PlanError, match="Epochs: 50 is more than this server runs \\(3\\)"):
        plan_run(ROWS, TuneConfig(epochs=50), max_epochs=3)


@pytest.mark.parametrize("settings, message", [
    (dict(learning_rate=20.0), "^Learning rate must be from"),
    (dict(num_virtual_tokens=0), "^Virtual tokens must be from 1 to 100"),
    (dict(batch_size=2.5), "^Batch size must be a whole number"),
])
def test_config_errors_name_the_setting_by_its_label(settings, message):
    with pytest.raises(PlanError, match=message):
        checked_config(**settings)


def test_a_sweep_is_checked_whole_before_anything_trains():
    plan = plan_sweep(ROWS, TuneConfig(batch_size=4), [(5, 2), (20, 3)], max_steps=100, max_epochs=3, max_cells=4)
    assert plan.total_steps == 5 * plan.steps_per_epoch and plan.longest_epochs == 3
    with pytest.raises(PlanError, match="grid cell 0×1: Virtual tokens must be from 1 to 100"):
        plan_sweep(ROWS, TuneConfig(), [(5, 1), (0, 1)])
    with pytest.raises(PlanError, match="grid cell 5×4 asks for 4 epochs; this server allows at most 3"):
        plan_sweep(ROWS, TuneConfig(), [(5, 4)], max_epochs=3)
    with pytest.raises(PlanError, match="the grid has 3 cells; this server runs at most 2"):
        plan_sweep(ROWS, TuneConfig(), [(1, 1)] * 3, max_cells=2)
    with pytest.raises(PlanError, match="this sweep needs 27 steps; this server allows 10"):
        plan_sweep(ROWS, TuneConfig(batch_size=4), [(5, 1), (5, 2)], max_steps=10)
    with pytest.raises(PlanError, match="the grid is empty"):
        plan_sweep(ROWS, TuneConfig(), [])


def test_an_estimate_needs_a_measured_speed():
    assert estimate_seconds(1000, None) is None
    assert estimate_seconds(1000, 500.0) == 2.0
    # 2 epochs of 900 tokens, 100 held-out tokens scored 3 times (the base model once): each at SCORING_COST
    assert estimate_seconds(1800, 300.0, scored_tokens=300) == pytest.approx((1800 + 0.45 * 300) / 300)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_short_run_scores_whole_seeded_batches_a_few_acts_or_about_a_quarter_of_the_tokens(seed):
    from tuning.evaluate import scoring_batches
    from tuning.plan import SUBSET_MIN_ACTS, SUBSET_SHARE, epoch_batches

    lengths = [30 + 7 * i % 50 for i in range(20)]  # 20 held-out acts, 100 tokens of training: short
    chosen = epoch_batches(100, lengths, 4, seed)
    assert chosen == epoch_batches(100, lengths, 4, seed) == sorted(chosen)
    batches = scoring_batches(lengths, 4)
    rows = [i for b in chosen for i in batches[b]]
    biggest = max(sum(lengths[i] for i in batch) for batch in batches)
    assert SUBSET_MIN_ACTS <= len(rows) < 20
    assert sum(lengths[i] for i in rows) <= max(SUBSET_SHARE * sum(lengths), biggest)  # a quarter, or the first batch
    assert len({tuple(epoch_batches(100, lengths, 4, s)) for s in range(4)}) > 1  # the seed draws them
    assert epoch_batches(100_000, lengths, 4, seed) == list(range(5))  # long: every batch


def test_the_scored_tokens_of_a_run_count_its_epoch_ends_and_its_last_full_scoring():
    from tuning.plan import scored_tokens

    held = [10] * 8  # 80 tokens in four batches of two
    assert scored_tokens(1000, held, 2, 0, epochs=5) == 5 * 80 + 80  # long: everything each end, the base once
    assert scored_tokens(10, held, 2, 0, epochs=5) == 4 * 40 + 80 + 80  # short: half each end but the last
    assert scored_tokens(10, [], 2, 0, epochs=5) == 0
