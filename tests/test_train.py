"""The training loop: events, learning, stopping, NaN handling, determinism, inits, truncation."""

from __future__ import annotations

import random
import threading

import pytest
import torch

import tuning.train as train_module
from tuning.config import TuneConfig
from tuning.data import Row
from tuning.generate import generate
from tuning.events import Done, EpochEnd, Start, Step, TrainingError
from tuning.rows import encode_rows, held_out_for, split_rows
from tuning.train import init_prompt, length_batches, lr_factor, train

from conftest import CORPUS


def rows_of(texts):
    return [Row(act=f"Act {i}", prompt=t, group=f"act {i}") for i, t in enumerate(texts)]


ROWS = rows_of(CORPUS)


def config(**kw):
    defaults = dict(model="tiny-gpt2", dataset="test", num_virtual_tokens=4, epochs=2, batch_size=2,
                    learning_rate=0.1, seed=0)
    return TuneConfig(**{**defaults, **kw})


def run(base, rows=ROWS, held=(), stop=None, **kw):
    return list(train(base, rows, config(**kw), held, stop))


def test_events_come_in_order_and_count_every_step(base):
    events = run(base, held=ROWS[:2], epochs=2)
    assert isinstance(events[0], Start) and isinstance(events[-1], Done)
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.step for s in steps] == list(range(1, events[0].total_steps + 1))
    assert events[0].total_steps == 2 * 3  # 5 rows in batches of 2, two epochs
    assert [e.epoch for e in events if isinstance(e, EpochEnd)] == [1, 2]
    assert all(e.held_out_loss is not None for e in events if isinstance(e, EpochEnd))
    assert steps[-1].eta == 0 and all(s.tokens_per_s > 0 for s in steps)


def test_throughput_counts_real_tokens_only(base):
    events = run(base, epochs=2)
    start, steps = events[0], [e for e in events if isinstance(e, Step)]
    assert start.train_tokens == sum(len(r) for r in encode_rows(base, ROWS, config()))
    assert steps[-1].tokens == 2 * start.train_tokens


def test_training_lowers_the_loss(base):
    events = run(base, epochs=8, learning_rate=0.3)
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert epochs[-1].train_loss < epochs[0].train_loss - 0.5


def test_training_lowers_the_held_out_loss_below_the_base_model(base):
    # Rows that share their opening words: what is learned on some helps the others.
    events = run(base, rows=ROWS[1:], held=ROWS[:1], epochs=8, learning_rate=0.3)
    epochs = [e for e in events if isinstance(e, EpochEnd)]
    assert epochs[-1].held_out_loss < epochs[-1].base_held_out_loss


def test_stop_between_steps_keeps_what_was_learned(base):
    stop = threading.Event()
    events = []
    for event in train(base, ROWS, config(epochs=5), (), stop):
        events.append(event)
        if isinstance(event, Step) and event.step == 3:
            stop.set()
    done = events[-1]
    assert isinstance(done, Done) and done.stopped and done.steps == 3
    assert [e.step for e in events if isinstance(e, Step)] == [1, 2, 3]
    assert not torch.equal(done.soft.embeddings, init_prompt(base, config(epochs=5)))
    assert generate(base, done.soft, "I want you to act as a poet.")  # usable


def test_stop_before_the_first_step_is_an_error(base):
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingError, match="before the first step"):
        run(base, stop=stop)


def test_nan_loss_ends_the_run_without_a_result(base, monkeypatch):
    real = train_module.token_losses

    def poisoned(b, soft, rows, score_first=True):
        loss, n = real(b, soft, rows, score_first)
        return loss * float("nan"), n

    monkeypatch.setattr(train_module, "token_losses", poisoned)
    events = []
    with pytest.raises(TrainingError, match="nan at step 1.*Nothing was saved"):
        for event in train(base, ROWS, config(), ()):
            events.append(event)
    assert not any(isinstance(e, Done) for e in events)


def test_same_seed_same_result(base):
    a = run(base, seed=3)[-1].soft.embeddings
    b = run(base, seed=3)[-1].soft.embeddings
    c = run(base, seed=4)[-1].soft.embeddings
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_text_init_uses_the_texts_token_embeddings_repeated(base):
    cfg = config(init="text", init_text="Hello world", num_virtual_tokens=5)
    ids = base.encode("Hello world")
    expected = base.model.get_input_embeddings().weight[(ids * 5)[:5]]
    assert torch.equal(init_prompt(base, cfg), expected.float())


def test_text_init_defaults_to_the_first_rows_prompt(base):
    events = run(base, init="text", epochs=1, learning_rate=1e-6)
    first = base.model.get_input_embeddings().weight[base.encode(ROWS[0].prompt)[:4]]
    assert torch.allclose(events[-1].soft.embeddings, first, atol=1e-3)


def test_instruction_init_is_the_generic_instruction_whatever_the_rows_or_init_text(base):
    ids = base.encode("I want you to act as")
    expected = base.model.get_input_embeddings().weight[(ids * 12)[:12]].float()
    cfg = config(init="instruction", num_virtual_tokens=12)
    assert torch.equal(init_prompt(base, cfg, fallback_text=ROWS[1].prompt), expected)
    assert torch.equal(init_prompt(base, config(init="instruction", num_virtual_tokens=12, init_text="Hello")), expected)


def test_sample_vocab_init_takes_rows_of_the_embedding_table(base):
    prompt = init_prompt(base, config(init="sample_vocab"))
    table = base.model.get_input_embeddings().weight
    assert all(any(torch.equal(p, t) for t in table) for p in prompt)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(base):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = init_prompt(base, config(seed=1, init="random"))
    after = torch.rand(1)
    assert torch.equal(a, init_prompt(base, config(seed=1, init="random")))
    assert not torch.equal(a, init_prompt(base, config(seed=2, init="random")))
    assert torch.equal(before, after)


def recorded_rates(monkeypatch) -> list[float]:
    """Make train()'s AdamW record the learning rate of every step it takes."""
    rates: list[float] = []

    class Recording(torch.optim.AdamW):
        def step(self, closure=None):
            rates.append(self.param_groups[0]["lr"])
            return super().step(closure)

    monkeypatch.setattr(torch.optim, "AdamW", Recording)
    return rates


def test_learning_rate_warms_up_then_decays_to_zero(base, monkeypatch):
    rates = recorded_rates(monkeypatch)
    run(base, epochs=5, batch_size=-(-len(ROWS) // 2), learning_rate=0.1, warmup_fraction=0.2)  # 10 steps, 2 warm-up
    assert rates == pytest.approx([0.05, 0.1, 0.1, 0.0875, 0.075, 0.0625, 0.05, 0.0375, 0.025, 0.0125])


def test_without_warmup_the_first_step_uses_the_full_rate(base, monkeypatch):
    rates = recorded_rates(monkeypatch)
    run(base, epochs=2, batch_size=-(-len(ROWS) // 2), learning_rate=0.1, warmup_fraction=0.0)  # 4 steps
    assert rates == pytest.approx([0.1, 0.075, 0.05, 0.025])


@pytest.mark.parametrize("steps, fraction, warmup", [(100, 0.1, 10), (7, 0.5, 4), (480, 0.0, 0), (3, 0.1, 0)])
def test_lr_factor_peaks_after_the_warmup_and_ends_at_zero(steps, fraction, warmup):
    f = lr_factor(steps, fraction)
    assert [f(s) for s in range(warmup)] == pytest.approx([(s + 1) / warmup for s in range(warmup)])
    assert f(warmup) == 1.0 and f(steps) == 0.0


@pytest.mark.parametrize("decay", [0.0, 0.5])
def test_weight_decay_shrinks_the_prompt_by_lr_times_decay(base, decay):
    # One step on every row: AdamW's own update is the same with or without decay (same
    # gradient at the same start), decoupled decay then takes lr * decay * prompt off on top.
    one_step = dict(epochs=1, batch_size=len(ROWS), learning_rate=0.1, init="sample_vocab")
    plain = run(base, **one_step)[-1].soft.embeddings
    decayed = run(base, weight_decay=decay, **one_step)[-1].soft.embeddings
    start = init_prompt(base, config(**one_step))
    assert torch.allclose(decayed, plain - 0.1 * decay * start, atol=1e-6)
    assert torch.equal(decayed, plain) == (decay == 0.0)


def test_rows_end_with_eos_and_long_rows_are_cut_to_the_context(base):
    long_row = Row("Long", "word " * 1000, "long")
    short, long_ids = encode_rows(base, [ROWS[0], long_row], config(num_virtual_tokens=6))
    assert short[-1] == base.eos_id
    assert len(long_ids) == base.max_positions - 6 and long_ids[-1] != base.eos_id


def test_length_batches_cover_every_row_once_grouped_by_length():
    lengths = [random.Random(1).randint(1, 50) for _ in range(23)]
    batches = length_batches(lengths, 4, random.Random(0))
    assert sorted(i for b in batches for i in b) == list(range(23))
    spans = [max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches]
    assert sum(spans) <= max(lengths) - min(lengths)


def test_choosing_acts_removes_them_from_the_held_out_side():
    rows = rows_of([f"prompt number {i}" for i in range(20)])
    cfg = TuneConfig(held_out_fraction=0.5, seed=0)
    _, held = split_rows(rows, cfg)
    chosen = held[0].act
    train_rows, held_after = split_rows(rows, TuneConfig(held_out_fraction=0.5, seed=0, acts=(chosen,)))
    assert [r.act for r in train_rows] == [chosen]
    assert chosen not in {r.act for r in held_after}


def test_no_rows_is_an_error(base):
    with pytest.raises(TrainingError, match="no rows"):
        run(base, rows=[])


def test_the_first_step_comes_before_any_held_out_scoring(base, monkeypatch):
    # A live chart's first point must not wait for the held-out rows to be scored.
    calls = []
    real = train_module.batch_losses
    monkeypatch.setattr(train_module, "batch_losses", lambda *a, **k: calls.append("score") or real(*a, **k))
    for event in train(base, ROWS, config(), ROWS[:2]):
        if isinstance(event, Step):
            break
    assert calls == []


def test_each_epoch_reports_the_base_models_held_out_loss(base):
    # Worked out here with the model's own forward: each held-out row with its eos, every token
    # after the first predicted by the one before (the first has no context), averaged per token.
    epochs = [e for e in run(base, held=ROWS[:2], epochs=2) if isinstance(e, EpochEnd)]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in ROWS[:2]:
            ids = torch.tensor([base.encode(row.prompt) + [base.eos_id]])
            logits = base.model(input_ids=ids).logits[0, :-1].float()
            total += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
            count += ids.shape[1] - 1
    assert epochs[0].base_held_out_loss == epochs[1].base_held_out_loss == pytest.approx(total / count, rel=1e-5)


def test_held_out_for_an_adapter_is_what_it_recorded_else_the_split():
    from tuning.model import SoftPrompt

    rows = rows_of([f"prompt number {i}" for i in range(20)])
    cfg = TuneConfig(held_out_fraction=0.5, seed=0, dataset="a.csv")
    _, split_held = split_rows(rows, cfg)
    recorded = SoftPrompt(torch.zeros(1, 4), "m", cfg, {"held_out_acts": ["Act 3", "Act 7"]})
    assert [r.act for r in held_out_for(recorded, rows, "a.csv")] == ["Act 3", "Act 7"]
    assert held_out_for(recorded, rows, "other.csv") == split_held
    foreign = SoftPrompt(torch.zeros(1, 4), "m", TuneConfig(held_out_fraction=0.5, acts=("Astronaut",)), {})
    assert held_out_for(foreign, rows, "a.csv") == split_held


def test_held_out_for_never_returns_an_act_the_adapter_trained_on():
    # One recorded held-out act is gone from the file (edited since): the others still count, and
    # a fallback split of the edited file (which mixes the acts anew) leaves the trained ones out.
    from tuning.model import SoftPrompt

    rows = rows_of([f"prompt number {i}" for i in range(20)])
    cfg = TuneConfig(held_out_fraction=0.5, seed=0, dataset="a.csv")
    trained_acts = [r.act for r in split_rows(rows, cfg)[0]]
    edited = [r for r in rows if r.act != "Act 3"]
    recorded = SoftPrompt(torch.zeros(1, 4), "m", cfg, {"held_out_acts": ["Act 3", "Act 7"], "acts": trained_acts})
    assert [r.act for r in held_out_for(recorded, edited, "a.csv")] == ["Act 7"]
    gone = SoftPrompt(torch.zeros(1, 4), "m", cfg, {"held_out_acts": ["Act 3"], "acts": trained_acts})
    reshuffled = held_out_for(gone, edited, "a.csv")
    assert reshuffled and not {r.act for r in reshuffled} & set(trained_acts)
    assert not {r.act for r in held_out_for(gone, rows, "other.csv")} & set(trained_acts)


def test_held_out_for_skips_recorded_acts_that_are_not_text():
    from tuning.model import SoftPrompt

    rows = rows_of([f"prompt number {i}" for i in range(20)])
    cfg = TuneConfig(held_out_fraction=0.5, seed=0, dataset="a.csv")
    odd = SoftPrompt(torch.zeros(1, 4), "m", cfg, {"held_out_acts": [1, None, "Act 7"], "acts": "not a list"})
    assert [r.act for r in held_out_for(odd, rows, "a.csv")] == ["Act 7"]


# --- held-out scoring scales with the run (issue "A visitor's first minute")
# One act against 15 held-out acts: scoring them all at every epoch end would cost far more
# than the training (plan.epoch_batches), so this run is short; five acts against two is long.
HELD = [Row(act=f"Held {i}", prompt=f"{t} Held-out act number {i}.", group=f"held {i}") for i, t in enumerate(CORPUS * 3)]


def scored_by_prompt(monkeypatch) -> list[list[tuple[int, ...]]]:
    """Records, per scoring with a prompt (one an epoch end), the held-out rows it scored, sorted."""
    real, calls = train_module.batch_losses, []

    def spy(model_base, soft, rows, batches):
        if soft is not None:
            calls.append(sorted(tuple(rows[i]) for batch in batches for i in batch))
        return real(model_base, soft, rows, batches)

    monkeypatch.setattr(train_module, "batch_losses", spy)
    return calls


@pytest.mark.timeout(120)
def test_a_short_run_saves_the_loss_of_every_held_out_row_as_a_run_that_scores_them_all(base, monkeypatch):
    import math

    import tuning.plan as plan
    from tuning.evaluate import held_out, mean_loss

    short = run(base, rows=ROWS[:1], held=HELD, epochs=3)
    assert all(e.held_out_acts < len(HELD) for e in short if isinstance(e, EpochEnd))  # the precondition: short
    soft = short[-1].soft
    metrics, encoded = soft.meta["metrics"], encode_rows(base, HELD, soft.config)
    assert metrics["held_out_loss"] == mean_loss(base, soft.embeddings, encoded, soft.config.batch_size)
    evaluated = held_out(base, soft, HELD)  # what the Evaluate tab and `eval` show
    assert (metrics["held_out_loss"], metrics["base_held_out_loss"]) == (evaluated["tuned"].loss, evaluated["base"].loss)

    monkeypatch.setattr(plan, "EPOCH_SCORING_LIMIT", math.inf)  # every run long: all rows at every epoch end
    everything = run(base, rows=ROWS[:1], held=HELD, epochs=3)
    assert all(e.held_out_acts == len(HELD) for e in everything if isinstance(e, EpochEnd))
    assert everything[-1].soft.meta["metrics"] == metrics


@pytest.mark.timeout(120)
def test_a_short_runs_epoch_ends_score_one_seeded_subset_of_the_stated_size(base, monkeypatch):
    from tuning.evaluate import mean_loss
    from tuning.plan import SUBSET_MIN_ACTS, SUBSET_SHARE

    scored = scored_by_prompt(monkeypatch)
    events = run(base, rows=ROWS[:1], held=HELD, epochs=3, seed=0)
    ends = [e for e in events if isinstance(e, EpochEnd)]
    encoded = encode_rows(base, HELD, config())
    subset = scored[0]
    assert scored == [subset, subset, sorted(map(tuple, encoded))]  # the same subset, then every row at the end
    assert [e.held_out_acts for e in ends] == [len(subset)] * 3
    # batches of 2 rows of ~27 tokens: two reach the 4 acts, a third would pass a quarter of the tokens
    assert len(subset) == SUBSET_MIN_ACTS and sum(map(len, subset)) < 1.1 * SUBSET_SHARE * sum(map(len, encoded))
    # the last point is the subset's too (taken from the final full scoring), as mean_loss gives it
    rows = [r for r in encoded if tuple(r) in subset]
    soft = events[-1].soft
    assert ends[-1].held_out_loss == mean_loss(base, soft.embeddings, rows, 2)
    assert ends[0].base_held_out_loss == ends[-1].base_held_out_loss == mean_loss(base, None, rows, 2)

    scored.clear()
    run(base, rows=ROWS[:1], held=HELD, epochs=2, seed=0)
    assert scored[0] == subset  # same seed, same subset
    scored.clear()
    run(base, rows=ROWS[:1], held=HELD, epochs=2, seed=1)
    assert scored[0] != subset  # another seed draws another (for seeds 0 and 1 here)


@pytest.mark.timeout(120)
def test_a_long_run_scores_every_held_out_row_at_every_epoch_end(base, monkeypatch):
    from tuning.evaluate import mean_loss

    # 40 training acts against 8 held-out ones (more than a short run's few): scoring them all is cheap
    scored = scored_by_prompt(monkeypatch)
    events = run(base, rows=rows_of(CORPUS * 8), held=HELD[:8], epochs=3)
    encoded = encode_rows(base, HELD[:8], config())
    assert events[0].epoch_held_out_share == 1.0
    assert scored == [sorted(map(tuple, encoded))] * 3
    assert [e.held_out_acts for e in events if isinstance(e, EpochEnd)] == [8] * 3
    soft = events[-1].soft
    assert soft.meta["metrics"]["held_out_loss"] == mean_loss(base, soft.embeddings, encoded, 2)


@pytest.mark.timeout(120)
def test_the_estimate_counts_what_a_short_run_scores(base, monkeypatch):
    # plan.scored_tokens (behind gpu.training_seconds) against the tokens the run really scored
    from tuning.plan import scored_tokens

    real, tokens = train_module.batch_losses, []

    def counting(model_base, soft, rows, batches):
        tokens.append(sum(len(rows[i]) for batch in batches for i in batch))
        return real(model_base, soft, rows, batches)

    monkeypatch.setattr(train_module, "batch_losses", counting)
    events = run(base, rows=ROWS[:1], held=HELD, epochs=3)
    held = [len(r) for r in encode_rows(base, HELD, config())]
    assert sum(tokens) == scored_tokens(events[0].train_tokens, held, 2, 0, epochs=3) < 4 * sum(held)


@pytest.mark.timeout(120)
def test_a_stopped_short_run_saves_every_held_out_rows_loss_for_the_kept_prompt(base):
    from tuning.evaluate import mean_loss

    stop, events = threading.Event(), []
    for event in train(base, ROWS[:1], config(epochs=4), HELD, stop):
        events.append(event)
        if isinstance(event, EpochEnd) and event.epoch == 2:
            stop.set()
    done, encoded = events[-1], encode_rows(base, HELD, config())
    assert done.stopped and all(e.held_out_acts < len(HELD) for e in events if isinstance(e, EpochEnd))
    metrics = done.soft.meta["metrics"]
    assert metrics["held_out_loss"] == mean_loss(base, done.soft.embeddings, encoded, 2)
    assert metrics["base_held_out_loss"] == mean_loss(base, None, encoded, 2)
