"""The reference adapters (tuning.reference): the seed's two runs, trained once per model and dataset."""

from __future__ import annotations

import json

import pytest

from app_fixtures import write_assets
from tuning import adapters, reference
from tuning.cli import main
from tuning.data import load_rows
from tuning.model import load_base


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_assets(tmp_path_factory.mktemp("reference"))


def test_a_references_name_belongs_to_its_model_and_dataset():
    a = reference.name("openai-community/gpt2", "fka/awesome-chatgpt-prompts", 20, 10)
    assert a.startswith("reference-20x10-gpt2-") and adapters.sanitize_name(a) == a
    assert a != reference.name("/models/other/gpt2", "fka/awesome-chatgpt-prompts", 20, 10)  # same short name
    assert a != reference.name("openai-community/gpt2", "prompts.csv", 20, 10)
    assert reference.name("/x/SmolLM2-135M-Instruct.Q4_1.gguf", "d", 5, 5).startswith("reference-5x5-SmolLM2-135M")


@pytest.mark.slow  # trains both reference adapters (55 steps): 11-42 s in the fast tier on 2 busy cores
def test_both_references_are_trained_saved_and_then_found(assets, tmp_path):
    model, dataset = assets
    assert reference.missing(tmp_path, model, dataset) == [(5, 5), (20, 10)]
    events = list(reference.train_references(load_base(model), load_rows(dataset), model, dataset, tmp_path))
    saved = [e for e in events if isinstance(e, reference.ReferenceSaved)]
    assert [e.label for e in saved] == ["5×5", "20×10"]
    assert reference.missing(tmp_path, model, dataset) == []
    record = json.loads((saved[1].folder / adapters.META_FILE).read_text())
    assert record["meta"]["reference"] == {"grid": [20, 10], "model": model, "dataset": dataset}
    assert record["config"]["seed"] == 0 and record["config"]["acts"] == []  # all training acts, seed 0
    # another model's references are its own: nothing of this one's counts for it
    assert reference.missing(tmp_path, model + "-other", dataset) == [(5, 5), (20, 10)]
    # saved ones are not trained again
    assert list(reference.train_references(load_base(model), load_rows(dataset), model, dataset, tmp_path)) == []


def test_a_stopped_reference_is_not_saved(assets, tmp_path):
    import threading

    model, dataset = assets
    stop = threading.Event()
    for event in reference.train_references(load_base(model), load_rows(dataset), model, dataset, tmp_path, stop):
        if event.event.__class__.__name__ == "Step":
            stop.set()
    assert reference.missing(tmp_path, model, dataset) == [(5, 5), (20, 10)]


def test_references_do_not_count_against_the_visitors_caps(assets, tmp_path):
    model, dataset = assets
    list(reference.train_references(load_base(model), load_rows(dataset), model, dataset, tmp_path, cells=[(5, 5)]))
    soft = adapters.load(reference.name(model, dataset, 5, 5), tmp_path)
    adapters.save(soft, "a-visitors-own", tmp_path, max_count=1, max_bytes=10**9)  # the reference is not counted
    with pytest.raises(adapters.AdapterError, match="at most 1 adapters"):
        adapters.save(soft, "a-second-one", tmp_path, max_count=1)


@pytest.mark.slow  # trains both reference adapters (55 steps): 11-42 s in the fast tier on 2 busy cores
def test_the_cli_trains_the_missing_references_and_says_which_are_saved(assets, tmp_path, capsys):
    model, dataset = assets
    args = ["--adapters-dir", str(tmp_path), "reference", "--model", model, "--dataset", dataset]
    assert main(args) == 0
    assert reference.missing(tmp_path, model, dataset) == []
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.count("already saved") == 2 and reference.name(model, dataset, 20, 10) in out


def test_compares_examples_open_prompts_of_acts_the_references_never_trained_on():
    from tuning.config import TuneConfig
    from tuning.data import Row
    from tuning.reference import example_openings, opening
    from tuning.rows import split_rows

    rows = [Row(f"Act {i}", f"I want you to act as a role number {i}. You will do task {i}.", f"act {i}")
            for i in range(40)] + [Row("Odd", "Pretend you are a cat. Meow.", "odd")]
    examples = example_openings(rows, "m", "d", count=3)
    train, held = split_rows(rows, TuneConfig(model="m", dataset="d", seed=0))
    assert len(examples) == 3 and all(e.endswith(".") and e.startswith("I want you to act as") for e in examples)
    assert set(examples) <= {opening(r.prompt) for r in held}
    assert not set(examples) & {opening(r.prompt) for r in train}
    assert example_openings(rows, "m", "d", count=3) == examples  # the same every start
    assert opening("No full stop here and quite long " * 10, max_chars=40).endswith("…")
