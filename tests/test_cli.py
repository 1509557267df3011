"""`python -m tuning`: train, generate, eval, list, delete end to end on a tiny local model."""

from __future__ import annotations

import json
import math
import re
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
    header, row = out.splitlines()
    assert header.split()[:6] == ["name", "tokens", "held-out", "ppl", "x", "base"] and row.startswith("cli-run")
    metrics = json.loads((trained / "cli-run" / "tuning_meta.json").read_text())["meta"]["metrics"]
    tuned, base = math.exp(metrics["held_out_loss"]), math.exp(metrics["base_held_out_loss"])
    assert row.split()[1:4] == ["4", f"{tuned:.2f}", f"{tuned / base:.2f}x"]


def test_list_lines_up_its_columns_for_long_names(tmp_path, capsys):
    import torch

    from tuning import adapters
    from tuning.config import TuneConfig
    from tuning.model import SoftPrompt

    for name in ("a", "reference-20x10-SmolLM2-135M-Instruct.Q4_1-764d64"):
        adapters.save(SoftPrompt(torch.zeros(3, 8), "some/model", TuneConfig(num_virtual_tokens=3)), name, tmp_path)
    assert main(["--adapters-dir", str(tmp_path), "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = {line.index("some/model") for line in lines[1:]}
    assert len(lines) == 3 and len(starts) == 1 and lines[0].index("base model") in starts  # one column for all


def test_generate_prints_base_and_tuned_side_by_side(trained, capsys):
    assert main(["--adapters-dir", str(trained), "generate", "I want you to act as a poet.",
                 "--adapter", "cli-run", "--max-new-tokens", "8", "--precision", "fp32"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("base") and "| tuned (cli-run)" in header


@pytest.fixture(scope="module")
def two_adapters(trained):
    """Adapters "A" (the trained prompt) and "B" (its negation) next to cli-run, and "foreign", made for another model."""
    import dataclasses

    from tuning import adapters

    soft = adapters.load("cli-run", trained)
    adapters.save(soft, "A", trained)
    adapters.save(dataclasses.replace(soft, embeddings=-soft.embeddings), "B", trained)
    adapters.save(dataclasses.replace(soft, base_model="another/model"), "foreign", trained)
    return trained


def generate_args(adapters_dir, *adapter_names, extra=()):
    names = [a for name in adapter_names for a in ("--adapter", name)]
    return ["--adapters-dir", str(adapters_dir), "generate", "I want you to act as a poet.", *names,
            "--max-new-tokens", "8", "--precision", "fp32", *extra]


def test_generate_compares_two_adapters_in_three_columns(two_adapters, capsys):
    assert main(generate_args(two_adapters, "A", "B")) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert header.startswith("base") and "| tuned (A)" in header and header.rstrip().endswith("| tuned (B)")


def test_generate_json_is_one_object_keyed_by_adapter_name(two_adapters, capsys):
    import json

    from tuning import adapters
    from tuning.generate import Decoding, generate
    from tuning.model import load_base

    assert main(generate_args(two_adapters, "A", "B", extra=["--json"])) == 0
    result = json.loads(capsys.readouterr().out)  # fails on anything else printed to stdout
    assert list(result) == ["base", "A", "B"] and all(isinstance(v, str) for v in result.values())
    base = load_base(adapters.load("A", two_adapters).base_model, "fp32")
    decoding = Decoding(max_new_tokens=8)
    assert result["base"] == generate(base, None, "I want you to act as a poet.", decoding)
    assert result["B"] == generate(base, adapters.load("B", two_adapters, base=base), "I want you to act as a poet.", decoding)
    assert result["A"] != result["B"]


def test_generate_json_with_one_adapter(two_adapters, capsys):
    import json

    assert main(generate_args(two_adapters, "A", extra=["--json", "--sample", "--seed", "3"])) == 0
    assert list(json.loads(capsys.readouterr().out)) == ["base", "A"]


def from_written_ids(base, baseline, text, decoding):
    """The plain way: the base model continuing the token ids of [written prompt; text], alone."""
    from tuning.generate import display_text, stream_ids

    rows = [[]]
    for rows in stream_ids(base, [None], list(baseline.ids) + base.encode(text), decoding):
        pass
    return display_text(base.tokenizer.decode(rows[0], skip_special_tokens=True))


def test_generate_shots_json_adds_the_written_text_decoded_as_from_its_token_ids(two_adapters, tiny_csv, capsys):
    from tuning import adapters, written
    from tuning.data import load_rows
    from tuning.generate import Decoding, generate

    assert main(generate_args(two_adapters, "A", extra=["--json", "--shots", "2"])) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["base", "written", "A"]
    base, soft = loaded(two_adapters, "A")
    examples = written.for_adapters(base, [soft], load_rows(str(tiny_csv)), soft.config.dataset, 2)
    decoding = Decoding(max_new_tokens=8)
    text = "I want you to act as a poet."
    assert result["written"] == from_written_ids(base, examples, text, decoding)  # float32: batching changes nothing
    assert result["base"] == generate(base, None, text, decoding) and result["A"] == generate(base, soft, text, decoding)
    assert result["written"] != result["base"]


def test_generate_written_text_json_with_two_adapters(two_adapters, capsys):
    from tuning import written
    from tuning.generate import Decoding

    assert main(generate_args(two_adapters, "A", "B", extra=["--json", "--written", "You are a poet. Rhyme."])) == 0
    result = json.loads(capsys.readouterr().out)
    assert list(result) == ["base", "written", "A", "B"]
    base, _ = loaded(two_adapters, "A")
    own = written.from_text(base, "You are a poet. Rhyme.")
    assert result["written"] == from_written_ids(base, own, "I want you to act as a poet.", Decoding(max_new_tokens=8))


def test_generate_shots_puts_a_written_column_between_base_and_tuned(two_adapters, tiny_csv, capsys, monkeypatch):
    from tuning import written
    from tuning.data import load_rows

    monkeypatch.setenv("COLUMNS", "160")
    assert main(generate_args(two_adapters, "A", extra=["--shots", "1"])) == 0
    lines = capsys.readouterr().out.splitlines()
    base, soft = loaded(two_adapters, "A")
    examples = written.for_adapters(base, [soft], load_rows(str(tiny_csv)), soft.config.dataset, 1)
    assert lines[0] == f"written prompt: 1 example from the training side: {examples.examples[0].act}"
    assert [title.strip() for title in lines[1].split("|")] == ["base", f"written ({examples.describe()})", "tuned (A)"]


def test_generate_refuses_shots_and_written_together(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "hi", "--adapter", "A", "--shots", "2", "--written", "You are a poet."])
    assert exit_info.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["--adapter", "written", "--json", "--shots", "1"], "error: --json names the written prompt's text 'written'"),
    (["--adapter", "A", "--written", " \n"], "error: --written is empty"),
    (["--adapter", "A", "--dataset", "other.csv"], "error: --dataset applies to --shots only"),
])
def test_generate_refuses_a_bad_written_choice_before_loading(two_adapters, argv, message, capsys, monkeypatch):
    must_not_load(monkeypatch)
    assert main(["--adapters-dir", str(two_adapters), "generate", "hi", *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_generate_refuses_a_written_prompt_that_leaves_no_room_with_the_numbers(two_adapters, capsys):
    # 241 tokens of GPT-2's: 8 new tokens still fit beside them, so generation would have cut the input to make room
    text, own_text = "I want you to act as a poet.", "Rhyme. " * 60
    assert main(generate_args(two_adapters, "A", extra=["--json", "--written", own_text])) == 1
    captured = capsys.readouterr()
    base, _ = loaded(two_adapters, "A")
    own = len(base.encode(own_text))
    need = own + len(base.encode(text)) + 8
    assert captured.out == "" and captured.err.strip().splitlines()[-1] == (
        f"error: the written prompt (your text · {own} tokens) + the input ({len(base.encode(text))} tokens) + "
        f"8 new tokens need {need} positions, more than the model's 256-token context; "
        "use fewer examples or a shorter text")


@pytest.mark.parametrize(
    "names, message",
    [
        (["A", "B", "cli-run"], "error: give one or two adapters to compare with the base model, got 3"),
        (["A", "A"], "error: the adapter 'A' is named twice"),
        (["A", "missing"], "error: no adapter named 'missing'"),
        (["A", "foreign"], "error: 'A' was trained on "),
        (["base"], "error: --json names the base model's text 'base'"),
    ],
)
def test_generate_refuses_bad_adapter_choices_in_one_line(two_adapters, names, message, capsys):
    assert main(generate_args(two_adapters, *names, extra=["--json"])) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert captured.out == "" and len(err) == 1 and err[0].startswith(message)


def test_generate_with_a_foreign_adapter_for_a_named_model_is_refused(two_adapters, tiny_model_dir, capsys):
    assert main(generate_args(two_adapters, "foreign", extra=["--model", str(tiny_model_dir)])) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: the adapter was trained on another/model, the loaded model is {tiny_model_dir}; "
        f"if {tiny_model_dir} is a local copy of another/model, add --hub-model another/model")


@pytest.mark.parametrize("command", ["generate", "eval"])
def test_a_local_copy_named_by_hub_model_runs_an_adapter_of_that_hub_id(command, two_adapters, tiny_model_dir, capsys):
    # Offline, the advice is "start with a local model": an adapter trained on the Hub id must run on the copy.
    argv = (generate_args(two_adapters, "foreign", extra=["--json"]) if command == "generate"
            else ["--adapters-dir", str(two_adapters), "eval", "--adapter", "foreign", "--precision", "fp32"])
    argv += ["--model", str(tiny_model_dir), "--hub-model", "another/model"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert ('"foreign"' in out) if command == "generate" else out.startswith("held-out: ")
    from tuning.model import load_base
    assert load_base(str(tiny_model_dir), "fp32").hub_id is None  # the cached model kept its own names


def test_an_adapter_that_does_not_name_its_model_asks_for_model(two_adapters, capsys):
    import json
    import shutil

    shutil.copytree(two_adapters / "A", two_adapters / "anonymous")
    (two_adapters / "anonymous" / "tuning_meta.json").unlink()  # a plain PEFT adapter
    config_path = two_adapters / "anonymous" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config["base_model_name_or_path"] = None
    config_path.write_text(json.dumps(config))
    assert main(["--adapters-dir", str(two_adapters), "eval", "--adapter", "anonymous"]) == 1
    assert capsys.readouterr().err == ("error: the adapter does not record which model it was trained on; "
                                       "name it with --model\n")


def test_eval_prints_base_and_tuned_perplexity(trained, capsys):
    assert main(["--adapters-dir", str(trained), "eval", "--adapter", "cli-run", "--precision", "fp32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("held-out: 2 acts")
    rows = {line.split()[0]: [float(x) for x in line.split()[1:]] for line in lines[2:]}
    assert set(rows) == {"base", "tuned"} and all(ppl > 1 for _, ppl in rows.values())


def eval_args(adapters_dir, *extra):
    return ["--adapters-dir", str(adapters_dir), "eval", "--adapter", "cli-run", "--precision", "fp32", *extra]


def loaded(adapters_dir, name="cli-run"):
    """(base, soft) as the CLI loads them: the adapter checked against its own tiny model, in fp32."""
    from tuning import adapters
    from tuning.model import load_base

    base = load_base(adapters.load(name, adapters_dir).base_model, "fp32")
    return base, adapters.load(name, adapters_dir, base=base)


def test_eval_with_shots_scores_base_written_and_tuned_on_one_shared_token_count(trained, tiny_csv, capsys):
    from tuning import written
    from tuning.data import load_rows
    from tuning.evaluate import held_out
    from tuning.rows import held_out_for

    assert main(eval_args(trained, "--shots", "2")) == 0
    lines = capsys.readouterr().out.splitlines()
    base, soft = loaded(trained)
    rows = load_rows(str(tiny_csv))
    examples = written.for_adapters(base, [soft], rows, str(tiny_csv), 2)
    expected = held_out(base, soft, held_out_for(soft, rows, str(tiny_csv)), 8, written=examples)
    assert lines[0] == f"held-out: 2 acts, {expected['base'].tokens:,} tokens of {tiny_csv}"  # the count, once
    assert lines[1] == "written prompt: 2 examples from the training side: " + ", ".join(r.act for r in examples.examples)
    table = {line.rsplit(maxsplit=2)[0]: line.split()[-2:] for line in lines[3:]}
    assert list(table) == ["base", f"written ({examples.describe()})", "tuned"]
    for name, (loss, ppl) in zip(("base", "written", "tuned"), table.values()):
        assert (loss, ppl) == (f"{expected[name].loss:.4f}", f"{expected[name].perplexity:.2f}"), name
    assert expected["written"].tokens == expected["base"].tokens == expected["tuned"].tokens


def test_eval_with_shots_adds_written_to_the_rouge_line(trained, tiny_csv, capsys, monkeypatch):
    # A random tiny model's continuations share no word with the prompts (every score is 0.0), so
    # the call is watched: the written prompt's own embeddings must reach ROUGE-L, and its score the line.
    import torch

    import tuning.evaluate
    from tuning import written
    from tuning.data import load_rows

    real, calls = tuning.evaluate.rouge_compare, []

    def watched(*args, **kwargs):
        calls.append((kwargs, real(*args, **kwargs)))
        return calls[-1][1]

    monkeypatch.setattr(tuning.evaluate, "rouge_compare", watched)
    assert main(eval_args(trained, "--shots", "1", "--rouge", "1", "--max-new-tokens", "6")) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    base, soft = loaded(trained)
    examples = written.for_adapters(base, [soft], load_rows(str(tiny_csv)), str(tiny_csv), 1)
    ((kwargs, rouge),) = calls
    assert torch.equal(kwargs["written"], written.embeddings(base, examples))
    assert last == (f"ROUGE-L on 1 held-out acts (greedy, 6 new tokens): base {rouge['base']:.4f}  "
                    f"written {rouge['written']:.4f}  tuned {rouge['tuned']:.4f}")


def test_eval_refuses_examples_that_do_not_fit_the_context_in_one_line_with_the_numbers(trained, tmp_path, capsys):
    import csv

    long = tmp_path / "long.csv"  # prompts of about 80 tokens: 4 of them overflow the tiny model's 256 positions
    with long.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows([("act", "prompt")] + [(f"Act {i}", f"I want you to act as act {i}. " + "Say more. " * 25)
                                                       for i in range(8)])
    assert main(eval_args(trained, "--dataset", str(long), "--shots", "4")) == 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()  # after the line that says which model loads
    assert captured.out == "" and len(err) == 2 and err[0].startswith("loading ")
    assert re.fullmatch(r"error: the written prompt \(4 examples · [\d,]+ tokens\) \+ the longest held-out prompt "
                        r"\([\d,]+ tokens\) need [\d,]+ positions, more than the model's 256-token context; "
                        r"use fewer examples or a shorter text", err[1]), err[1]


def test_eval_refuses_examples_that_leave_no_room_for_rouge_continuations_before_scoring(trained, capsys, monkeypatch):
    import tuning.evaluate

    monkeypatch.setattr(tuning.evaluate, "held_out", lambda *a, **k: pytest.fail("scored before refusing"))
    assert main(eval_args(trained, "--shots", "4", "--rouge", "1", "--max-new-tokens", "240")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.fullmatch(r"error: the written prompt \(4 examples · \d+ tokens\) \+ the longest act instruction "
                        r"\(\d+ tokens\) \+ 240 new tokens need \d+ positions, more than the model's 256-token "
                        r"context; use fewer examples or a shorter text", last), last


@pytest.mark.parametrize("command", ["eval", "generate", "report"])
def test_shots_outside_the_offered_counts_is_a_usage_error(command, capsys):
    argv = {"eval": ["eval", "--adapter", "a"], "generate": ["generate", "hi", "--adapter", "a"],
            "report": ["report", "a", "--out", "x"]}[command]
    with pytest.raises(SystemExit) as exit_info:
        main([*argv, "--shots", "3"])
    assert exit_info.value.code == 2 and "--shots: invalid choice: 3" in capsys.readouterr().err


def test_the_cli_and_the_written_prompts_offer_the_configs_one_tuple_of_shot_counts():
    from tuning import cli, config, written

    assert cli.SHOTS is config.SHOTS and written.SHOTS is config.SHOTS


def test_train_on_one_act(tiny_model_dir, tiny_csv, tmp_path, capsys):
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--act", "rapper", "--epochs", "1")) == 0
    out = capsys.readouterr().out
    assert "saved adapter 'rapper-4tok-1ep-" in out.lower()


def test_delete_removes_the_adapter(tiny_model_dir, tiny_csv, tmp_path):
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "gone", "--epochs", "1")) == 0
    assert main(["--adapters-dir", str(tmp_path), "delete", "gone"]) == 0
    assert not (tmp_path / "gone").exists()


def test_train_refuses_a_taken_name_before_training_and_overwrites_only_when_asked(trained, tiny_model_dir, tiny_csv, capsys, monkeypatch):
    before = (trained / "cli-run" / "adapter_model.safetensors").read_bytes()
    loads = []
    monkeypatch.setattr("tuning.model.load_base", lambda *a, **k: loads.append(a) or pytest.fail("loaded the model"))
    assert main(train_args(tiny_model_dir, tiny_csv, trained, "--name", "cli-run")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "an adapter named 'cli-run' already exists" in err[0] and "--overwrite" in err[0]
    assert (trained / "cli-run" / "adapter_model.safetensors").read_bytes() == before and not loads
    monkeypatch.undo()
    assert main(train_args(tiny_model_dir, tiny_csv, trained, "--name", "cli-copy", "--epochs", "1")) == 0
    assert main(train_args(tiny_model_dir, tiny_csv, trained, "--name", "cli-copy", "--epochs", "1",
                           "--learning-rate", "0.3", "--overwrite")) == 0
    from tuning import adapters
    assert adapters.load("cli-copy", trained).config.learning_rate == 0.3


def test_two_unnamed_runs_in_the_same_second_keep_both(tiny_model_dir, tiny_csv, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("tuning.cli._default_name", lambda config: "all-4tok-1ep-20260101-000000")
    for _ in range(2):
        assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--epochs", "1")) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["all-4tok-1ep-20260101-000000", "all-4tok-1ep-20260101-000000-2"]


def test_train_into_a_folder_that_cannot_be_written_fails_before_training(tiny_model_dir, tiny_csv, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(train_args(tiny_model_dir, tiny_csv, blocker, "--name", "x")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot save adapters in {blocker}")


def test_a_save_that_fails_after_training_keeps_the_prompt_elsewhere(tiny_model_dir, tiny_csv, tmp_path, capsys, monkeypatch):
    from tuning import adapters

    real_save = adapters.save

    def full_disk(soft, name, root, *a, **k):
        if root == tmp_path:
            raise OSError(28, "No space left on device")
        return real_save(soft, name, root, *a, **k)

    monkeypatch.setattr(adapters, "save", full_disk)
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "kept", "--epochs", "1")) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after the loading line and the progress bar
    assert last.startswith("error: ") and "No space left on device" in last and "it was saved in " in last
    rescued = Path(last.split("it was saved in ")[1].split(" instead")[0])
    try:
        assert adapters.load_folder(rescued).num_virtual_tokens == 4 and rescued.name == "kept"
    finally:
        import shutil
        shutil.rmtree(rescued.parent)


@pytest.mark.timeout(120)
def test_a_reference_that_cannot_be_saved_is_kept_in_a_temp_folder_named_in_the_error(tiny_model_dir, tiny_csv, tmp_path,
                                                                                      capsys, monkeypatch):
    import tempfile

    from tuning import adapters, reference

    root, temp = tmp_path / "adapters", tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # the system's temp folder, here one this test owns
    monkeypatch.setattr(reference, "GRID", ((2, 1), (3, 1)))  # the seed's two runs, shortened to one epoch each
    real_save = adapters.save

    def full_disk(soft, name, folder, *a, **k):
        if Path(folder) == root:
            raise OSError(28, "No space left on device")
        return real_save(soft, name, folder, *a, **k)

    monkeypatch.setattr(adapters, "save", full_disk)
    model, dataset = str(tiny_model_dir), str(tiny_csv)
    assert main(["--adapters-dir", str(root), "reference", "--model", model, "--dataset", dataset]) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: the adapter could not be saved in {root} ") and "No space left on device" in last
    assert last.endswith(" instead: copy that folder into your adapters folder")
    rescued = Path(last.split("it was saved in ")[1].split(" instead")[0])
    first = reference.name(model, dataset, *reference.GRID[0])
    assert rescued.parent.parent == temp and rescued.name == first
    soft = adapters.load_folder(rescued)
    assert soft.num_virtual_tokens == reference.GRID[0][0] and soft.meta["reference"]["grid"] == list(reference.GRID[0])
    assert reference.missing(root, model, dataset) == list(reference.GRID)  # nothing half-saved where it failed


@pytest.mark.parametrize("value", ["0", "-1", "x"])
def test_eval_batch_size_must_be_positive(value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--adapter", "a", "--batch-size", value])
    assert exit_info.value.code == 2 and "--batch-size" in capsys.readouterr().err


def test_an_output_the_os_refuses_is_one_line_not_a_traceback(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["bench", "--json", str(blocker / "bench.json")]) == 1  # refused before any measuring
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: cannot save the bench's JSON in")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "/nonexistent/prompts.csv"], "error: no dataset file at /nonexistent/prompts.csv"),
        (["train", "--num-virtual-tokens", "0"], "error: num_virtual_tokens must be from 1 to 100"),
        (["train", "--dataset", "{csv}", "--act", "Astronaut"], "error: no act named 'Astronaut'"),
        (["eval", "--adapter", "missing"], "error: no adapter named 'missing'"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_1(argv, message, tiny_csv, tmp_path, capsys):
    argv = [a.replace("{csv}", str(tiny_csv)) for a in argv]
    assert main(["--adapters-dir", str(tmp_path), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


@pytest.mark.parametrize("name", ["../outside", "{outside}", "adapters/../../outside"])
@pytest.mark.parametrize("command", ["generate", "delete"])
def test_a_name_that_leads_out_of_the_adapters_folder_is_refused_and_touches_nothing(command, name, tiny_model_dir,
                                                                                      tmp_path, capsys):
    # A real adapter of the tiny model, with a sentinel, where each name leads: a name check that
    # let one through would generate with it (exit 0) or delete it, not print this refusal.
    import torch

    from tuning import adapters
    from tuning.config import TuneConfig
    from tuning.model import SoftPrompt

    outside = adapters.save(SoftPrompt(torch.zeros(3, 64), str(tiny_model_dir), TuneConfig(num_virtual_tokens=3)),
                            "outside", tmp_path)
    (outside / "sentinel.txt").write_text("planted")
    (tmp_path / "adapters").mkdir()
    planted = sorted(p.name for p in outside.iterdir())
    name = name.format(outside=outside)
    argv = ["generate", "hi", "--adapter", name, "--max-new-tokens", "2"] if command == "generate" else ["delete", name]
    assert main(["--adapters-dir", str(tmp_path / "adapters"), *argv]) == 1
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {name!r} is not a valid adapter name"]
    assert sorted(p.name for p in outside.iterdir()) == planted and (outside / "sentinel.txt").read_text() == "planted"


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


def test_help_and_usage_errors_load_neither_torch_nor_transformers():
    code = ("import sys\nfrom tuning.cli import main\nfor argv in (['generate', '--help'], ['train', '--epochs', 'x']):\n"
            "    try:\n        main(argv)\n    except SystemExit as e:\n        print(e.code)\n"
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.stdout.split()[-4:] == ["0", "2", "False", "False"], result.stdout + result.stderr


def test_module_runs_as_a_program(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tuning", "--adapters-dir", str(tmp_path), "list"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "no adapters in" in result.stdout


def test_side_by_side_wraps_two_columns():
    text = side_by_side(("base", "a " * 30), ("tuned", "b"), width=43)
    lines = text.splitlines()
    assert lines[0] == "base                 | tuned"
    assert all(len(line) <= 43 for line in lines) and len(lines) > 4


def test_side_by_side_wraps_three_columns():
    text = side_by_side(("base", "a " * 30), ("tuned (A)", ""), ("tuned (B)", "b\n\nc"), width=50)
    lines = text.splitlines()
    assert lines[0] == "base           | tuned (A)      | tuned (B)"
    assert lines[2] == "a a a a a a a  | (nothing)      | b"
    assert lines[4] == "a a a a a a a  |                | c"
    assert all(len(line) <= 50 for line in lines) and len(lines) == 2 + 5


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


def test_a_name_taken_while_training_is_kept_and_the_run_saved_under_a_free_one(tiny_model_dir, tiny_csv, tmp_path, capsys,
                                                                                monkeypatch):
    import tuning.train

    real_train = tuning.train.train

    def meanwhile(*a, **k):  # another run (or a pull) saves "mine" while this one trains
        for event in real_train(*a, **k):
            if not (tmp_path / "mine").exists():
                (tmp_path / "mine").mkdir()
                (tmp_path / "mine" / "theirs.txt").write_text("another run's adapter")
            yield event

    monkeypatch.setattr(tuning.train, "train", meanwhile)
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "mine", "--epochs", "1")) == 0
    captured = capsys.readouterr()
    assert (tmp_path / "mine" / "theirs.txt").read_text() == "another run's adapter"
    assert "saved adapter 'mine-2'" in captured.out and "saving this one as 'mine-2'" in captured.err
    from tuning import adapters
    assert adapters.load("mine-2", tmp_path).num_virtual_tokens == 4


def test_init_text_trains_from_that_text(tiny_model_dir, tiny_csv, tmp_path, capsys):
    from tuning import adapters

    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "t", "--epochs", "1",
                           "--init-text", "You are a poet")) == 0
    config = adapters.load("t", tmp_path).config
    assert (config.init, config.init_text) == ("text", "You are a poet")
    assert main(train_args(tiny_model_dir, tiny_csv, tmp_path, "--name", "u", "--init", "random",
                           "--init-text", "You are a poet")) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --init-text seeds the prompt only with --init text, not --init random")


def must_not_load(monkeypatch):
    monkeypatch.setattr("tuning.model.load_base", lambda *a, **k: pytest.fail("loaded the model"))


@pytest.mark.parametrize("argv, message", [
    (["eval", "--adapter", "cli-run", "--rouge", "-1"], "error: --rouge is a number of held-out acts, 0 or more, got -1"),
    (["eval", "--adapter", "cli-run", "--rouge", "2", "--max-new-tokens", "0"], "error: max_new_tokens must be"),
    (["report", "cli-run", "--out", "{out}", "--max-new-tokens", "0"], "error: max_new_tokens must be"),
    (["report", "cli-run", "--out", "{blocker}/out"], "error: cannot save the report in {blocker}/out"),
    (["sweep", "--rouge", "-2"], "error: --rouge is a number of held-out acts, 0 or more, got -2"),
])
def test_bad_flags_fail_before_the_model_loads(argv, message, trained, tmp_path, capsys, monkeypatch):
    must_not_load(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    fill = {"{out}": str(tmp_path / "out"), "{blocker}": str(blocker)}
    for key, value in fill.items():
        argv = [a.replace(key, value) for a in argv]
        message = message.replace(key, value)
    assert main(["--adapters-dir", str(trained), *argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message)


def test_reference_into_a_folder_that_cannot_be_written_fails_before_loading(tiny_model_dir, tiny_csv, tmp_path, capsys,
                                                                             monkeypatch):
    must_not_load(monkeypatch)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    assert main(["--adapters-dir", str(blocker), "reference", "--model", str(tiny_model_dir),
                 "--dataset", str(tiny_csv)]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: cannot save adapters in {blocker}")


def test_ctrl_c_outside_training_is_one_word_and_exit_130(monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr("tuning.cli.cmd_list", interrupted)
    assert main(["list"]) == 130
    assert capsys.readouterr().err == "aborted\n"


def test_output_cut_short_by_a_closed_pipe_ends_quietly(tmp_path):
    # `python -m tuning acts | head -1`: no error line, no "Exception ignored", exit 0
    import csv

    path = tmp_path / "many.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "prompt"])
        writer.writerows((f"Act number {i} with a long enough name", f"prompt {i} " * 5) for i in range(6000))
    process = subprocess.Popen([sys.executable, "-m", "tuning", "acts", "--dataset", str(path)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert process.stdout.readline().startswith(b"Act number 0")
    process.stdout.close()
    assert process.wait(timeout=60) == 0
    assert process.stderr.read() == b""


# --- Ctrl-C in a real process: README "the first Ctrl-C stops after the current step and saves what was
# learned, a second aborts (exit status 130, as does a Ctrl-C while the model loads)"


def tuning_process(argv: list[str], stderr, before_main: str = "") -> subprocess.Popen:
    """`python -m tuning ARGV` in a process of its own (unbuffered, stdout piped), `before_main` run first in it."""
    import os

    import signal

    code = f"import sys\n{before_main}\nfrom tuning.cli import main\nsys.exit(main(sys.argv[1:]))"
    # Ctrl-C as a terminal delivers it: a SIGINT ignored in this process (the way a runner may start
    # the suite) would be inherited, and Python then never raises KeyboardInterrupt in the child.
    return subprocess.Popen([sys.executable, "-c", code, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def read_until(stream, start: str) -> list[str]:
    """The lines of `stream` up to and including the first that starts with `start` (all of them if none does)."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.startswith(start):
            break
    return lines


@pytest.mark.slow  # starts a process
@pytest.mark.timeout(180)
def test_the_first_ctrl_c_in_a_training_stops_after_the_step_and_saves_what_was_learned(tiny_model_dir, tiny_csv,
                                                                                         tmp_path):
    import signal

    from tuning import adapters

    # 50 epochs of 6 one-row steps: far from over when the first epoch's line comes
    argv = train_args(tiny_model_dir, tiny_csv, tmp_path / "adapters", "--name", "halted", "--epochs", "50",
                      "--batch-size", "1")
    with open(tmp_path / "stderr", "w") as err:
        process = tuning_process(argv, err)
        try:
            seen = read_until(process.stdout, "epoch 1:")  # a first epoch trained: there is something to keep
            assert seen[-1].startswith("epoch 1:"), "".join(seen)
            process.send_signal(signal.SIGINT)
            out, _ = process.communicate(timeout=120)
        finally:
            process.kill()
    assert process.returncode == 0, (tmp_path / "stderr").read_text()[-2000:]
    assert "stopping after this step (Ctrl-C again to abort)" in out
    last = out.strip().splitlines()[-1]
    assert last.startswith("stopped early after ") and "saved adapter 'halted'" in last
    steps = int(last.split("stopped early after ")[1].split()[0])
    saved = adapters.load("halted", tmp_path / "adapters")
    assert 6 <= steps < 50 * 6 and saved.meta["steps"] == steps and saved.num_virtual_tokens == 4


@pytest.mark.slow  # starts a process
@pytest.mark.timeout(180)
def test_a_ctrl_c_while_the_model_loads_aborts_with_exit_status_130(tiny_model_dir, tiny_csv, tmp_path):
    import signal

    # the weights take their time to read: the process is inside the model's loading until the signal
    slow_weights = """
import time
import transformers
read_weights = transformers.AutoModelForCausalLM.from_pretrained
def slowly(*args, **kwargs):
    print("reading the weights", flush=True)
    time.sleep(120)
    return read_weights(*args, **kwargs)
transformers.AutoModelForCausalLM.from_pretrained = slowly
"""
    argv = train_args(tiny_model_dir, tiny_csv, tmp_path / "adapters", "--name", "never")
    process = tuning_process(argv, subprocess.PIPE, slow_weights)
    try:
        seen = read_until(process.stdout, "reading the weights")
        assert seen[-1].startswith("reading the weights"), "".join(seen)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130 and err.strip().splitlines()[-1] == "aborted", err[-2000:]
    assert not (tmp_path / "adapters" / "never").exists()
