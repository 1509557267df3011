"""`python -m tuning`: train, generate, eval, list, delete end to end on a tiny local model."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tuning.cli import main, side_by_side

ROOT = Path(__file__).resolve().parents[1]


def train_args(model, csv, adapters, *extra):
    return ["--adapters-dir", str(adapters), "train", "--model", str(model), "--dataset", str(csv),
            "--num-virtual-tokens", "4", "--epochs", "2", "--batch-size", "2", "--learning-rate", "0.1",
            "--precision", "fp32", "--held-out-fraction", "0.25", *extra]


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tiny_csv, tmp_path_factory):
    adapters = tmp_path_factory.mktemp("adapters")
    assert main(train_args(tiny_model_dir, tiny_csv, adapters, "--name", "cli-run")) == 0
    return adapters


def test_train_saves_a_named_adapter(trained, capsys):
    assert (trained / "cli-run" / "adapter_model.safetensors").is_file()
    assert main(["--adapters-dir", str(trained), "list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("name") and "cli-run" in out


def test_generate_prints_base_and_tuned_side_by_side(trained, capsys):
    assert main(["--adapters-dir", str(trained), "generate", "I want you to act as a poet.",
                 "--adapter", "cli-run", "--max-new-tokens", "8", "--precision", "fp32"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("base") and "| tuned (cli-run)" in header


def test_eval_prints_base_and_tuned_perplexity(trained, capsys):
    assert main(["--adapters-dir", str(trained), "eval", "--adapter", "cli-run", "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("held-out: 2 acts")
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:]}
    assert set(rows) == {"base", "tuned"} and all(ppl > 1 for _, ppl in rows.values())


def test_train_on_one_act(tiny_model_dir, tiny_csv, tmp_path, capsys):
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--act", "rapper", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "saved adapter 'rapper-4tok-1ep-" in out.lower()


def test_delete_removes_the_adapter(tiny_model_dir, tiny_csv, tmp_path):
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "gone", "--epochs", "1")) == 0
    assert main(["--adapters-dir", str(tmp_path), "delete", "gone"]) == 0
    assert not (tmp_path / "gone").exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "/nonexistent/prompts.csv"], "error: no dataset file at /nonexistent/prompts.csv"),
        (["train", "--num-virtual-tokens", "0"], "error: num_virtual_tokens must be from 1 to 100"),
        (["train", "--dataset", "{csv}", "--act", "Astronaut"], "error: no act named 'Astronaut'"),
        (["generate", "hi", "--adapter", "../app.py"], "error: "),
        (["eval", "--adapter", "missing"], "error: no adapter named 'missing'"),
        (["delete", "/etc/passwd"], "error: "),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(argv, message, tiny_csv, tmp_path, capsys):
    argv = [a.replace("{csv}", str(tiny_csv)) for a in argv]
    assert main(["--adapters-dir", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


@pytest.mark.parametrize("command", ["train", "generate", "eval", "list", "delete"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m tuning" in capsys.readouterr().out


def test_train_help_lists_every_config_field(capsys):
    import dataclasses

    from tuning.config import TuneConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    flags = {"acts": "--act", "text_only": "--all-types"}
    for f in dataclasses.fields(TuneConfig):
        assert flags.get(f.name, "--" + f.name.replace("_", "-")) in out


def test_module_runs_as_a_program(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuning", "--adapters-dir", str(tmp_path), "list"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "no adapters in" in result.stdout


def test_side_by_side_wraps_two_columns():
    text = side_by_side(("base", "a " * 30), ("tuned", "b"), width=43)
    lines = text.splitlines()
    assert lines[0] == "base                 | tuned"
    assert all(len(line) <= 43 for line in lines) and len(lines) > 4


def test_first_ctrl_c_asks_to_stop_and_the_second_aborts():
    import os
    import signal

    from tuning.cli import ctrl_c_stops

    before = signal.getsignal(signal.SIGINT)
    stop, restore = ctrl_c_stops()
    try:
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.is_set()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    finally:
        restore()
    assert signal.getsignal(signal.SIGINT) is before
