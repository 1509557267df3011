"""Resuming a saved adapter: numbering and history continue, the optimizer state is saved, checked and used."""

from __future__ import annotations

import dataclasses
import math
import threading

import pytest
import torch
from safetensors.torch import load_file, save_file

import tuning.train as train_module
from tuning import adapters
from tuning.adapters import OPTIMIZER_FILE, AdapterError, load, save
from tuning.cli import main
from tuning.config import TuneConfig
from tuning.data import Row
from tuning.model import SoftPrompt
from tuning.events import Done, Start, Step, TrainingError
from tuning.history import trained_so_far
from tuning.train import resume_config, resume_note, train

from conftest import CORPUS

ROWS = [Row(act=f"Act {i}", prompt=t, group=f"act {i}") for i, t in enumerate(CORPUS)]  # 3 steps per epoch


def config(**kw) -> TuneConfig:
    defaults = dict(model="tiny-gpt2", dataset="test", num_virtual_tokens=4, epochs=2, batch_size=2,
                    learning_rate=0.1, seed=0)
    return TuneConfig(**{**defaults, **kw})


def run(base, cfg, resume=None, stop_after=None, **kw) -> list:
    """All events of one run; with `stop_after`, asks it to stop once that many steps were seen."""
    stop, events = threading.Event(), []
    for event in train(base, ROWS, cfg, (), stop, resume=resume, **kw):
        events.append(event)
        if isinstance(event, Step) and stop_after is not None and len([e for e in events if isinstance(e, Step)]) >= stop_after:
            stop.set()
    return events


def done(events) -> SoftPrompt:
    return events[-1].soft


@pytest.fixture(scope="module")
def two_epochs(base) -> SoftPrompt:
    return done(run(base, config(epochs=2)))


def test_resumed_run_numbers_steps_and_epochs_on_and_extends_the_history(base, two_epochs):
    events = run(base, resume_config(two_epochs, 1), resume=two_epochs, resume_name="first")
    start, steps, end = events[0], [e for e in events if isinstance(e, Step)], events[-1]
    assert isinstance(start, Start) and (start.resumed_at, start.total_steps) == (6, 9)
    assert [(s.step, s.epoch) for s in steps] == [(7, 3), (8, 3), (9, 3)]
    assert isinstance(end, Done) and end.steps == 3
    soft = end.soft
    old, new = two_epochs.meta["history"], soft.meta["history"]
    assert new["step"] == list(range(1, 10)) and new["epoch"] == [1, 2, 3]
    assert new["train_loss"][:6] == old["train_loss"] and new["train_loss"][6:] == [s.loss for s in steps]
    assert soft.config.epochs == 3 and soft.meta["steps"] == 9 and trained_so_far(soft) == (9, 3)
    assert soft.meta["resumed"] == [{"from": "first", "at_step": 6, "at_epoch": 2, "epochs": 1,
                                     "fresh_optimizer": False, "created": soft.meta["created"]}]
    assert two_epochs.meta["history"]["step"] == list(range(1, 7))  # the saved prompt is left alone


def test_a_run_stopped_mid_epoch_resumes_at_the_next_epoch(base):
    stopped = done(run(base, config(epochs=2), stop_after=4))  # epoch 1 (3 steps) and one step of epoch 2
    assert trained_so_far(stopped) == (4, 1)
    soft = done(run(base, resume_config(stopped, 1), resume=stopped))
    assert soft.meta["history"]["step"] == list(range(1, 8)) and soft.meta["history"]["epoch"] == [1, 2]
    assert soft.config.epochs == 2


def test_the_history_records_the_step_each_epoch_ended_at_whatever_the_batch_size(base, two_epochs):
    from tuning.history import held_out_points

    assert two_epochs.meta["history"]["epoch_step"] == [3, 6]  # 6 rows in batches of 2
    soft = done(run(base, resume_config(two_epochs, 2, batch_size=4), resume=two_epochs))  # then 2 steps an epoch
    history = soft.meta["history"]
    assert history["epoch_step"] == [3, 6, 8, 10] and history["step"][-1] == 10
    scored = {**history, "held_out_loss": [4.0, 3.0, 2.0, 1.0]}
    assert [step for step, _, _ in held_out_points(scored, steps_per_epoch=2)] == [3, 6, 8, 10]  # not 2, 4, 6, 8


def test_a_history_saved_before_epoch_steps_resumes_with_them_estimated(base, two_epochs):
    old = {k: v for k, v in two_epochs.meta["history"].items() if k != "epoch_step"}
    soft = done(run(base, resume_config(two_epochs, 1), resume=dataclasses.replace(two_epochs, meta={**two_epochs.meta, "history": old})))
    assert soft.meta["history"]["epoch_step"] == [3, 6, 9]


def test_resumed_batches_come_in_the_order_a_longer_run_would_see_next(base, monkeypatch):
    orders = []
    real = train_module.length_batches

    def recording(lengths, batch_size, rng):
        orders.append(real(lengths, batch_size, rng))
        return orders[-1]

    monkeypatch.setattr(train_module, "length_batches", recording)
    one = done(run(base, config(epochs=1)))
    run(base, config(epochs=2))
    first_run, straight = orders[0], orders[1:3]
    orders.clear()
    run(base, resume_config(one, 1), resume=one)
    assert first_run == straight[0] and orders[-1] == straight[1] != straight[0]


def test_optimizer_state_round_trips_through_save_and_load_bit_exactly(tmp_path, two_epochs):
    save(two_epochs, "a", tmp_path)
    loaded = load("a", tmp_path)
    assert set(loaded.optimizer_state) == {"exp_avg", "exp_avg_sq", "step"}
    for key, value in two_epochs.optimizer_state.items():
        assert value.dtype == torch.float32 and torch.equal(loaded.optimizer_state[key], value)
    assert loaded.optimizer_state["step"].item() == 6  # AdamW's own count: one per training step


def test_saved_optimizer_state_shapes_the_first_resumed_step(base, two_epochs):
    # A fresh AdamW's first step moves every number by about the learning rate (m/sqrt(v) = g/|g|);
    # continuing the saved moments does not.
    lr = 0.01
    fresh = dataclasses.replace(two_epochs, optimizer_state=None)
    moved = {}
    for label, soft in (("saved", two_epochs), ("fresh", fresh)):
        after = done(run(base, resume_config(soft, 1, learning_rate=lr), resume=soft, stop_after=1))
        moved[label] = (after.embeddings - two_epochs.embeddings).abs()
    assert torch.allclose(moved["fresh"], torch.full_like(moved["fresh"], lr), rtol=1e-2)
    assert not torch.allclose(moved["saved"], moved["fresh"], rtol=1e-1)


def test_folder_without_optimizer_file_loads_and_resumes_with_a_fresh_optimizer(base, tmp_path, two_epochs):
    (save(two_epochs, "old", tmp_path) / OPTIMIZER_FILE).unlink()
    soft = load("old", tmp_path)
    assert soft.optimizer_state is None and "fresh AdamW" in resume_note(soft)
    assert resume_note(two_epochs) is None
    resumed = done(run(base, resume_config(soft, 1), resume=soft))
    assert resumed.meta["resumed"][-1]["fresh_optimizer"] is True
    assert resumed.optimizer_state["step"].item() == 3  # counted from this run's first step
    assert (save(resumed, "old", tmp_path) / OPTIMIZER_FILE).is_file()  # from now on it is kept


def test_folder_with_optimizer_file_still_loads_in_peft(tmp_path, two_epochs, monkeypatch):
    from peft import PeftModel
    from transformers import GPT2Config, GPT2LMHeadModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = save(two_epochs, "a", tmp_path)
    assert (folder / OPTIMIZER_FILE).is_file()
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=64, n_head=2, vocab_size=100, n_positions=64))
    peft_model = PeftModel.from_pretrained(model, str(folder))
    assert torch.equal(peft_model.get_prompt_embedding_to_save("default"), two_epochs.embeddings)


def with_history(soft: SoftPrompt, epochs: int) -> SoftPrompt:
    """`soft` claiming `epochs` finished epochs of one step each."""
    history = {"step": list(range(1, epochs + 1)), "train_loss": [1.0] * epochs, "epoch": list(range(1, epochs + 1)),
               "held_out_loss": [None] * epochs, "epoch_train_loss": [1.0] * epochs, "epoch_step": list(range(1, epochs + 1))}
    return dataclasses.replace(soft, meta={**soft.meta, "history": history})


@pytest.mark.parametrize("change, message", [
    (lambda s: (s, config(num_virtual_tokens=5, epochs=1)),
     "the adapter has 4 virtual tokens but the settings say 5; a resumed prompt keeps its length"),
    (lambda s: (dataclasses.replace(s, embeddings=torch.zeros(4, 32), optimizer_state=None), config(epochs=1)),
     "the adapter's hidden size is 32, the loaded model's is 64"),
    (lambda s: (dataclasses.replace(s, base_model="openai-community/gpt2"), config(epochs=1)),
     "the adapter was trained on openai-community/gpt2, the loaded model is tiny-gpt2"),
    (lambda s: (with_history(s, 48), config(epochs=5)),
     "the adapter has trained 48 epochs; 5 more would make 53, over the limit of 50"),
    (lambda s: (dataclasses.replace(s, meta={"history": {"step": ["one"]}}), config(epochs=1)),
     "loss history is not in the form training writes"),
])
def test_an_adapter_that_does_not_fit_is_refused_in_one_sentence(base, two_epochs, change, message):
    soft, cfg = change(two_epochs)
    with pytest.raises(TrainingError, match=message):
        run(base, cfg, resume=soft)


def test_resume_config_keeps_the_adapters_settings_and_checks_the_total(two_epochs):
    cfg = resume_config(two_epochs, 3, learning_rate=0.01)
    assert cfg == dataclasses.replace(two_epochs.config, epochs=3, learning_rate=0.01)
    with pytest.raises(ValueError, match="learning_rate must be from"):
        resume_config(two_epochs, 3, learning_rate=0.0)
    with pytest.raises(TrainingError, match="2 epochs; 49 more would make 51"):
        resume_config(two_epochs, 49)
    with pytest.raises(TrainingError, match="keeps its length"):
        resume_config(two_epochs, 1, num_virtual_tokens=8)


def _write(folder, **tensors):
    save_file(tensors, str(folder / OPTIMIZER_FILE))


def _state(folder):
    # copies: load_file maps the file, which the tamper is about to overwrite
    return {k: v.clone() for k, v in load_file(str(folder / OPTIMIZER_FILE)).items()}


@pytest.mark.parametrize("tamper, message", [
    (lambda f: _write(f, **_state(f), evil=torch.zeros(1)), "exactly the keys"),
    (lambda f: _write(f, **{k: v for k, v in _state(f).items() if k != "step"}), "exactly the keys"),
    (lambda f: _write(f, **{**_state(f), "exp_avg": torch.zeros(4, 63)}), r"exp_avg is \[4, 63\], expected \[4, 64\]"),
    (lambda f: _write(f, **{**_state(f), "exp_avg": torch.zeros(4, 64, dtype=torch.float16)}), "must be a float32"),
    (lambda f: _write(f, **{**_state(f), "exp_avg": torch.full((4, 64), math.nan)}), "NaN or infinity"),
    (lambda f: _write(f, **{**_state(f), "exp_avg_sq": -torch.ones(4, 64)}), "negative"),
    (lambda f: _write(f, **{**_state(f), "step": torch.tensor(2.5)}), "whole number"),
    (lambda f: _write(f, **{**_state(f), "step": torch.tensor(0.0)}), "whole number"),
    (lambda f: _write(f, **{**_state(f), "step": torch.tensor([6.0])}), r"step is \[1\], expected \[\]"),
    (lambda f: _write(f, **_state(f), pad=torch.zeros(100_000)), "at most"),
    (lambda f: torch.save(_state(f), str(f / OPTIMIZER_FILE)), "not a readable safetensors"),
    (lambda f: (f / OPTIMIZER_FILE).write_bytes(b"garbage"), "not a readable safetensors"),
])
def test_a_hostile_optimizer_file_is_refused(tmp_path, two_epochs, tamper, message):
    folder = save(two_epochs, "a", tmp_path)
    tamper(folder)
    with pytest.raises(AdapterError, match=message):
        load("a", tmp_path)
    assert adapters.list_adapters(tmp_path) == []


def test_an_optimizer_file_that_is_a_link_is_refused(tmp_path, two_epochs):
    folder = save(two_epochs, "a", tmp_path)
    outside = tmp_path / "elsewhere.safetensors"
    (folder / OPTIMIZER_FILE).rename(outside)
    (folder / OPTIMIZER_FILE).symlink_to(outside)
    with pytest.raises(AdapterError, match="must be a plain file"):
        load("a", tmp_path)


def test_save_refuses_an_optimizer_state_that_does_not_fit_and_writes_nothing(tmp_path, two_epochs):
    bad = dataclasses.replace(two_epochs, optimizer_state={**two_epochs.optimizer_state, "exp_avg": torch.zeros(3, 64)})
    with pytest.raises(AdapterError, match=r"exp_avg is \[3, 64\], expected \[4, 64\]"):
        save(bad, "a", tmp_path)
    assert list(tmp_path.iterdir()) == []


def cli_train(model, csv, adapters_dir, *extra):
    return ["--adapters-dir", str(adapters_dir), "train", "--model", str(model), "--dataset", str(csv),
            "--num-virtual-tokens", "4", "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.1",
            "--precision", "fp32", "--held-out-fraction", "0.25", "--name", "r", *extra]


def test_cli_resume_trains_more_epochs_and_saves_under_the_same_name(tiny_model_dir, tiny_csv, tmp_path, capsys):
    assert main(cli_train(tiny_model_dir, tiny_csv, tmp_path)) == 0
    before = load("r", tmp_path)
    steps, _ = trained_so_far(before)
    capsys.readouterr()
    assert main(["--adapters-dir", str(tmp_path), "train", "--resume", "r", "--epochs", "1",
                 "--learning-rate", "0.05"]) == 0
    out = capsys.readouterr().out
    assert f"resuming r at step {steps} (epoch 2) for 1 more epochs" in out
    assert "in all) in" in out and "saved adapter 'r'" in out
    after = load("r", tmp_path)
    assert after.config == dataclasses.replace(before.config, epochs=3, learning_rate=0.05)
    history = after.meta["history"]
    assert history["step"][:steps] == before.meta["history"]["step"] and history["step"][steps] == steps + 1
    assert history["epoch"] == [1, 2, 3] and after.meta["resumed"][0]["from"] == "r"
    assert after.optimizer_state["step"].item() > before.optimizer_state["step"].item()
    assert [a["name"] for a in adapters.list_adapters(tmp_path)] == ["r"]


def test_cli_resume_under_another_name_keeps_the_original(tiny_model_dir, tiny_csv, tmp_path):
    assert main(cli_train(tiny_model_dir, tiny_csv, tmp_path, "--epochs", "1")) == 0
    before = load("r", tmp_path).embeddings
    assert main(["--adapters-dir", str(tmp_path), "train", "--resume", "r", "--epochs", "1", "--name", "r2"]) == 0
    assert torch.equal(load("r", tmp_path).embeddings, before)
    assert load("r2", tmp_path).config.epochs == 2


@pytest.mark.parametrize("extra, message", [
    (["--resume", "missing"], "error: no adapter named 'missing'"),
    (["--resume", "r", "--num-virtual-tokens", "8"], "error: the adapter has 4 virtual tokens but the settings say 8"),
    (["--resume", "r", "--init", "text"], "error: --init and --init-text do not apply to --resume"),
    (["--resume", "r", "--epochs", "50"], "error: the adapter has trained 1 epochs; 50 more would make 51"),
])
def test_cli_resume_errors_are_one_line(tiny_model_dir, tiny_csv, tmp_path, capsys, extra, message):
    assert main(cli_train(tiny_model_dir, tiny_csv, tmp_path, "--epochs", "1")) == 0
    capsys.readouterr()
    assert main(["--adapters-dir", str(tmp_path), "train", *extra]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)
