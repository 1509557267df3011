"""Decoding goes first on a shared CPU (tuning.turns): a training waits between two steps while a generation runs."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from tuning import turns
from tuning.config import TuneConfig
from tuning.data import Row
import tuning.generate
from tuning.generate import Decoding, generate, stream_many
from tuning.progress import RunView
from tuning.events import Paused, Step
from tuning.train import train

from conftest import CORPUS

CPU, GPU = torch.device("cpu"), torch.device("cuda")
pytestmark = pytest.mark.timeout(60)


_holders: list[threading.Thread] = []


@pytest.fixture(autouse=True)
def no_generation_left_running():
    yield
    while _holders:
        _holders.pop().join(10)
    assert turns.decoding_now() == 0


def hold_decoding(seconds: float, device=CPU) -> None:
    """A generation 'running' on `device` for `seconds` in another thread, from the moment this returns."""
    began = threading.Event()

    def run():
        with turns.decoding(device):
            began.set()
            time.sleep(seconds)

    thread = threading.Thread(target=run, daemon=True)
    _holders.append(thread)
    thread.start()
    assert began.wait(5)


def test_nothing_decoding_means_no_wait():
    assert turns.decoding_now() == 0 and turns.let_decoding_run(CPU) < 0.05


def test_a_step_waits_until_the_generation_ends():
    hold_decoding(0.6)
    waited = turns.let_decoding_run(CPU)
    assert 0.4 < waited < 3.0 and turns.decoding_now() == 0


def test_the_wait_is_capped_and_a_stop_ends_it():
    hold_decoding(3.0)
    assert 0.2 < turns.let_decoding_run(CPU, max_wait=0.3) < 1.5  # a busy Compare tab cannot stop training for good
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    assert turns.let_decoding_run(CPU, stop) < 2.0


def test_the_wait_is_at_most_a_few_times_the_last_steps_own_time():
    hold_decoding(3.0)  # Compare busy without a break: a training with 0.1 s steps still steps every ~0.5 s
    assert 0.3 < turns.let_decoding_run(CPU, last_step_s=0.1) < 1.5


def test_a_gpu_never_waits_and_a_gpu_generation_holds_no_cpu_step():
    hold_decoding(1.0, device=GPU)  # marks nothing
    assert turns.decoding_now() == 0 and turns.let_decoding_run(CPU) < 0.05
    hold_decoding(1.0)
    assert turns.let_decoding_run(GPU) == 0.0


def test_a_generation_marks_itself_while_it_decodes(base, monkeypatch):
    seen = []
    real = turns.decoding

    def spy(device):
        seen.append(device.type)
        return real(device)

    monkeypatch.setattr(turns, "decoding", spy)
    generate(base, None, "I want you to act as a poet.", Decoding(max_new_tokens=3))
    assert seen == ["cpu"] and turns.decoding_now() == 0


def test_training_takes_its_next_step_after_the_generation_and_leaves_the_wait_out_of_its_speed(base, monkeypatch):
    monkeypatch.setattr(turns, "PAUSE_PER_STEP", 1000.0)  # the tiny model's steps take milliseconds
    rows = [Row(act=f"Act {i}", prompt=t, group=f"act {i}") for i, t in enumerate(CORPUS)]
    config = TuneConfig(model="tiny-gpt2", dataset="test", num_virtual_tokens=4, epochs=1, batch_size=2,
                        learning_rate=0.1, seed=0)
    events = train(base, rows, config)
    next(events)  # Start
    first = next(events)
    assert isinstance(first, Step)
    hold_decoding(1.0)
    started = time.perf_counter()
    paused = next(events)  # said before the wait, so a progress line can say it at once
    assert isinstance(paused, Paused) and paused.step == first.step and time.perf_counter() - started < 0.5
    second = next(events)
    assert isinstance(second, Step) and time.perf_counter() - started > 0.7
    assert second.elapsed - first.elapsed > 0.7  # the wall clock saw the wait…
    assert second.tokens / second.tokens_per_s < 0.7  # …the training time did not
    list(events)


def test_the_train_line_says_paused_while_it_waits_and_where_it_is_once_it_steps_again(base, monkeypatch):
    monkeypatch.setattr(turns, "PAUSE_PER_STEP", 1e6)  # one pause lasts the whole generation: at most 3 s
    monkeypatch.setattr(turns, "MAX_PAUSE_S", 3.0)
    rows = [Row(act=f"Act {i}", prompt=t, group=f"act {i}") for i, t in enumerate(CORPUS)]
    config = TuneConfig(model="tiny-gpt2", dataset="test", num_virtual_tokens=4, epochs=1, batch_size=2,
                        learning_rate=0.1, seed=0)
    view, lines = RunView(step_cap=3, epochs=1, batch_size=2), []
    events = train(base, rows, config)
    for _ in range(2):  # Start, the first step
        view.add(next(events))
    hold_decoding(0.5)
    for event in events:
        view.add(event)
        lines.append(view.progress)
    assert lines[0] == "step 1 / 3 · paused while a generation runs on this CPU (at most 3s)"
    assert lines[1].startswith("step 2 / 3 · epoch 1 / 1 ·") and "paused" not in " ".join(lines[1:])
    assert view.finished


def test_two_generations_in_one_process_run_at_once_and_each_gets_its_own_text(base, monkeypatch):
    """README: generation serves four users at once. Nothing in the engine makes one generation wait for
    another: the second decodes from its first token to its last while the first is paused halfway, both count
    as decoding meanwhile, and each (sampling, with its own seed) gets the text it gets alone."""
    soft = torch.randn(4, base.hidden_size, generator=torch.Generator().manual_seed(1)) * 0.5
    first_args = (base, [None, soft], "I want you to act as a poet.", Decoding(max_new_tokens=12, do_sample=True, seed=3))
    second_args = (base, [None], "I want you to act as a linux terminal.", Decoding(max_new_tokens=12, do_sample=True, seed=7))
    alone = [list(stream_many(*first_args))[-1], list(stream_many(*second_args))[-1]]

    real = tuning.generate.decode_steps
    first_halfway, second_done = threading.Event(), threading.Event()
    decoding_meanwhile = []  # generations running on this CPU at each of the second one's steps

    def paused_halfway(base, embeds, *args, **kwargs):
        """The first generation (its two rows tell it apart) waits after its third token for the second to end."""
        for i, step in enumerate(real(base, embeds, *args, **kwargs)):
            if embeds.shape[0] == 1:
                decoding_meanwhile.append(turns.decoding_now())
            yield step
            if embeds.shape[0] == 2 and i == 2:
                first_halfway.set()
                # a generation that waits for another's end would hold the second here: fail, not hang
                assert second_done.wait(10), "the second generation did not run while the first was halfway"

    monkeypatch.setattr(tuning.generate, "decode_steps", paused_halfway)
    first = stream_many(*first_args)
    first_texts = [next(first)]
    assert first_halfway.wait(10)
    *_, second = stream_many(*second_args)
    second_done.set()
    *_, first_text = [*first_texts, *first]
    assert decoding_meanwhile and set(decoding_meanwhile) == {2}
    assert [first_text, second] == alone and all(first_text) and all(second)
