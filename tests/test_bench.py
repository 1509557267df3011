"""`python -m tuning bench`: the machinery, on a tiny GPT-2 for 1 + 1 steps (no timing assertions)."""

from __future__ import annotations

import pytest

from tuning import bench
from tuning.cli import main

from conftest import TOKENIZER_DIR, make_tokenizer


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    if TOKENIZER_DIR.is_dir():
        return TOKENIZER_DIR
    folder = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def result(tokenizer_dir, tiny_csv, monkeypatch_module):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    tiny = dict(vocab_size=len(make_tokenizer()), n_positions=128, n_embd=32, n_layer=2, n_head=2)
    lines = []
    r = bench.run(steps=1, warmup=1, dataset=tiny_csv, tokenizer_dir=tokenizer_dir, model_config=tiny,
                  new_tokens=4, repeats=1, out=lines.append)
    return r, lines


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_training_part_reports_throughput_and_memory(result):
    r, _ = result
    for part in ("seed", "ours", "ours_fp32"):
        assert r[part]["tokens"] > 0 and r[part]["tokens_per_s"] > 0 and r[part]["positions_per_s"] > 0
        assert r[part]["peak_mb"] > 0
    assert r["seed"]["batch_size"] == 8 and r["seed"]["precision"] == "fp32"
    assert r["ours_fp32"]["precision"] == "fp32"


def test_every_part_trains_on_the_same_rows(result):
    # One epoch over the same 1 x 8 timed rows (the tiny file repeats to give enough).
    r, _ = result
    assert r["seed"]["rows"] == r["ours"]["rows"] == r["ours_fp32"]["rows"] == 8
    assert r["seed"]["tokens"] == r["ours"]["tokens"] == r["ours_fp32"]["tokens"]
    assert r["seed"]["steps"] == 1 and r["ours"]["steps"] == 8 // r["ours"]["batch_size"]


def test_rows_are_drawn_from_the_training_split_and_never_held_out(tiny_csv, tokenizer_dir):
    job = bench.Job(str(tiny_csv), str(tokenizer_dir), {}, steps=2, warmup=1)
    config, warm, timed, held = bench._training_rows(job)
    assert (len(warm), len(timed)) == (8, 16)
    assert not {r.act for r in warm + timed} & {r.act for r in held}
    assert bench._training_rows(job)[2] == timed  # seeded: every part gets the same


def test_timed_rows_do_not_repeat_while_the_split_has_enough(tiny_csv, tokenizer_dir):
    from tuning.data import load_rows
    from tuning.train import split_rows

    job = bench.Job(str(tiny_csv), str(tokenizer_dir), {}, steps=1, warmup=1)
    config, *_ = bench._training_rows(job)
    n = len(split_rows(load_rows(str(tiny_csv)), config)[0])
    assert bench._cycle(list("abc"), 2) == ["a", "b"] and bench._cycle(list("abc"), 7) == list("abcabca")
    assert n < 8  # the tiny file is repeated ...
    real = bench.DEFAULT_DATASET
    if real.exists():  # ... the real one is not: 23 x 8 = 184 distinct rows of its 189
        job = bench.Job(str(real), str(tokenizer_dir), {}, steps=23, warmup=2)
        _, warm, timed, _ = bench._training_rows(job)
        assert len({r.act for r in timed}) == len(timed) == 184 and len(warm) == 16


def test_ratios_and_ceiling_are_computed(result):
    r, _ = result
    assert r["speedup"] > 0 and r["generation_ratio"] > 0
    assert r["matmul_gflops"]["bf16"] > 0 and r["matmul_gflops"]["fp32"] > 0
    assert r["ceiling_positions_per_s"] > 0 and r["ceiling_fraction"] > 0
    assert r["held_out_loss_rel_diff"] >= 0


def test_prints_a_markdown_table(result):
    r, lines = result
    table = lines[-1]
    assert table == bench.report(r)
    assert "| seed recipe (Trainer + PEFT) | fp32 | 8 |" in table and "speed-up" in table


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    assert main(["bench", "--dataset", str(tmp_path / "nope.csv")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no dataset at {tmp_path / 'nope.csv'}"


def test_steps_must_be_positive():
    with pytest.raises(bench.BenchError, match="steps must be"):
        bench.run(steps=0)
