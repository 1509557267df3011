"""`python -m tuning bench`: the machinery, on a tiny GPT-2 for 1 + 1 steps (no timing assertions).

Every figure is checked against numbers the test works out itself (the token count from the
tokenizer, the ratios from the raw times, the parameter count from the model), never against
the bench's own report.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tuning import bench
from tuning.cli import main
from tuning.config import TuneConfig

from conftest import TOKENIZER_DIR, make_tokenizer, need

TINY = dict(n_positions=128, n_embd=32, n_layer=2, n_head=2)  # GPT2Config overrides, with the vocabulary


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    if TOKENIZER_DIR.is_dir():
        return TOKENIZER_DIR
    folder = tmp_path_factory.mktemp("tokenizer")
    make_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def result(tokenizer_dir, tiny_csv, monkeypatch_module, slow_setup):
    monkeypatch_module.setenv("HF_HUB_OFFLINE", "1")
    lines = []
    # length_multiple=16: ours pads its batches as on an AMX machine, so the run also has the part without padding
    r = bench.run(steps=1, warmup=1, dataset=tiny_csv, tokenizer_dir=tokenizer_dir, model_config=tiny_config(),
                  new_tokens=4, repeats=1, out=lines.append, length_multiple=16, fp32_generation=True,
                  other_gelu=True, other_packing=True)
    return r, lines


def tiny_config() -> dict:
    return dict(vocab_size=len(make_tokenizer()), **TINY)


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_every_part_counts_the_text_tokens_of_the_same_timed_rows(result, tiny_csv, tokenizer_dir):
    # Recounted here: each timed row's prompt tokens, cut where either recipe cuts them (the seed
    # recipe at its context less its 20 virtual tokens, ours at TuneConfig's max_length).
    r, _ = result
    job = bench.BenchPart(str(tiny_csv), str(tokenizer_dir), tiny_config(), steps=1, warmup=1)
    timed = bench._training_rows(job)[1]
    keep = min(TINY["n_positions"] - 20, TuneConfig().max_length)
    tokens = sum(min(len(make_tokenizer()(row.prompt)["input_ids"]), keep) for row in timed)
    assert len(timed) == 8 and tokens > 8
    for part in ("seed", "ours", "ours_fp32"):
        assert (r[part]["rows"], r[part]["tokens"]) == (8, tokens), part


def test_each_part_trains_one_epoch_of_the_timed_rows_in_its_own_batches(result):
    r, _ = result
    assert (r["seed"]["precision"], r["seed"]["batch_size"], r["seed"]["steps"]) == ("fp32", 8, 1)
    ours = TuneConfig().batch_size
    assert (r["ours"]["batch_size"], r["ours"]["steps"]) == (ours, math.ceil(8 / ours))
    assert (r["ours_fp32"]["precision"], r["ours_fp32"]["steps"]) == ("fp32", math.ceil(8 / ours))


def test_throughput_is_the_counted_work_over_the_timed_seconds(result):
    r, _ = result
    for part in ("seed", "ours", "ours_fp32"):
        p = r[part]
        assert p["seconds"] > 0 and p["peak_mb"] > 0
        assert p["tokens_per_s"] == pytest.approx(p["tokens"] / p["seconds"])
        # every text token is a position; no row holds more than the model's context
        positions = round(p["positions_per_s"] * p["seconds"])  # a count, back from the rate
        assert p["tokens"] < positions <= p["rows"] * TINY["n_positions"], part
    # the seed recipe (PEFT) runs its 20 virtual tokens in front of every row
    assert round(r["seed"]["positions_per_s"] * r["seed"]["seconds"]) >= r["seed"]["tokens"] + 8 * 20


def test_peak_memory_also_covers_the_whole_splits_largest_batch(result, tiny_csv, tokenizer_dir):
    # The timed rows are a sample; the reported whole-split peak comes after a step on the batch
    # with the most positions among all of the training split's length-sorted batches.
    from tuning.data import load_rows
    from tuning.rows import split_rows
    from tuning.train import length_batches

    r, lines = result
    rows, _ = split_rows(load_rows(str(tiny_csv)), TuneConfig(dataset=str(tiny_csv)))
    tok = make_tokenizer()
    keep = min(TINY["n_positions"] - 20, TuneConfig().max_length)
    lengths = [min(len(tok(row.prompt)["input_ids"]) + 1, keep) for row in rows]  # + the eos
    batches = length_batches(lengths, TuneConfig().batch_size, __import__("random").Random(0))
    largest = max(batches, key=lambda b: len(b) * max(lengths[i] for i in b))
    for part in ("ours", "ours_fp32"):
        assert r[part]["largest_batch_rows"] == sorted(lengths[i] for i in largest), part
        assert r[part]["largest_batch_peak_mb"] >= r[part]["peak_mb"] > 0
    assert f"largest batch, {len(largest)} rows of" in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU reports")
def test_on_a_cpu_no_gpu_memory_is_reported(result):
    r, lines = result
    for part in ("seed", "ours", "ours_fp32", "generation"):
        assert r[part]["gpu_peak_mb"] is None, part
    assert "| peak memory |" in lines[-1] and "GPU memory" not in lines[-1] and "on the GPU" not in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="what a machine without a GPU reports")
def test_on_a_cpu_ours_computes_the_prompt_once_per_batch_and_runs_no_other_way(result):
    r, lines = result
    assert r["ours"]["shares_prompt"] and r["ours_fp32"]["shares_prompt"]
    assert "ours_shared" not in r and "once per batch" not in lines[-1]


def test_gpu_memory_is_the_allocators_peak(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda *a, **k: 3 * 2**30)
    assert bench._gpu_peak_mb() == 3072.0


def test_rows_are_drawn_from_the_training_split_and_never_held_out(tiny_csv, tokenizer_dir):
    job = bench.BenchPart(str(tiny_csv), str(tokenizer_dir), {}, steps=2, warmup=1)
    config, timed, held = bench._training_rows(job)
    assert len(timed) == 16
    assert not {r.act for r in timed} & {r.act for r in held}
    assert bench._training_rows(job)[1] == timed  # seeded: every part gets the same


def test_timed_rows_do_not_repeat_while_the_split_has_enough(tiny_csv, tokenizer_dir):
    from tuning.data import load_rows
    from tuning.rows import split_rows

    job = bench.BenchPart(str(tiny_csv), str(tokenizer_dir), {}, steps=1, warmup=1)
    config, *_ = bench._training_rows(job)
    n = len(split_rows(load_rows(str(tiny_csv)), config)[0])
    assert bench._cycle(list("abc"), 2) == ["a", "b"] and bench._cycle(list("abc"), 7) == list("abcabca")
    assert n < 8  # the tiny file is repeated


def test_timed_rows_of_the_real_snapshot_are_all_distinct(tokenizer_dir):
    real = bench.DEFAULT_DATASET
    need(real.is_file(), f"needs the dataset snapshot {real}")
    job = bench.BenchPart(str(real), str(tokenizer_dir), {}, steps=23, warmup=2)
    _, timed, _ = bench._training_rows(job)
    assert len({r.act for r in timed}) == len(timed) == 184  # 23 x 8 of its 189


def test_speed_up_is_the_ratio_of_the_two_times_on_the_same_tokens(result):
    r, _ = result
    seed, ours = r["seed"], r["ours"]
    assert r["speedup"] == pytest.approx(seed["seconds"] / ours["seconds"])
    gen = r["generation"]
    assert gen["single_s"] > 0 and r["generation_ratio"] == pytest.approx(gen["pair_s"] / gen["single_s"])
    assert r["three_columns_ratio"] == pytest.approx(gen["three_s"] / gen["single_s"])


def test_cold_start_is_reported_beside_the_warm_numbers(result):
    r, lines = result
    ours, gen = r["ours"], r["generation"]
    assert ours["cold_tokens_per_s"] > 0 and gen["cold_single_s"] > 0
    assert r["cold_training_ratio"] == pytest.approx(ours["tokens_per_s"] / ours["cold_tokens_per_s"])
    assert r["cold_generation_ratio"] == pytest.approx(gen["cold_single_s"] / gen["single_s"])
    assert f"**{r['cold_training_ratio']:.2f}x** slower" in lines[-1]
    assert r["machine"]["gpu"] is None  # no GPU here; on one the bench runs both recipes there and names it


@pytest.mark.timeout(120)
def test_the_cold_epoch_and_the_seeds_warm_up_run_the_timed_rows_in_the_timed_batches(tiny_csv, tokenizer_dir, monkeypatch):
    # In this process, with the training calls recorded: ours' untimed epoch (its cold start) and
    # the seed recipe's are the timed rows in the same batches, so the timed epoch meets no new
    # shape and first-epoch-vs-steady-state compares the same work.
    import transformers

    import tuning.train as train_module
    from tuning.events import Step

    monkeypatch.setattr(bench, "_quiet", lambda: None)
    job = bench.BenchPart(str(tiny_csv), str(tokenizer_dir), tiny_config(), steps=2, warmup=2)
    timed = bench._training_rows(job)[1]
    calls, real_train = [], train_module.train

    def recording_train(base, rows, config, *held, **kwargs):
        losses = []
        for event in real_train(base, rows, config, *held, **kwargs):
            if isinstance(event, Step):
                losses.append(event.loss)
            yield event
        calls.append((list(rows), config, bool(held), losses))

    monkeypatch.setattr(train_module, "train", recording_train)
    ours = bench._ours(job)
    assert len(calls) == 3  # two untimed epochs, then the timed one (which alone scores the held-out rows)
    assert all(rows == timed and config == calls[0][1] for rows, config, *_ in calls)
    assert [scored for _, _, scored, _ in calls] == [False, False, True]
    # a fresh run from the same seed each time: the same batches, step for step the same losses
    assert len(calls[0][3]) == 4 and calls[0][3] == calls[1][3] == calls[2][3]
    assert ours["cold_seconds"] > 0 and ours["cold_tokens_per_s"] == pytest.approx(ours["tokens"] / ours["cold_seconds"])

    seen = []

    class RecordingTrainer(transformers.Trainer):
        def train(self, *args, **kwargs):
            seen.append([list(batch["input_ids"].shape) for batch in self.get_train_dataloader()])
            return super().train(*args, **kwargs)

    monkeypatch.setattr(transformers, "Trainer", RecordingTrainer)
    bench._seed_recipe(job)
    assert len(seen) == 3 and seen[0] == seen[1] == seen[2]  # the same batches, so the same shapes, every time


def test_a_machine_that_pads_batches_also_measures_exact_lengths(result):
    r, lines = result
    ours, exact = r["ours"], r["ours_exact"]
    assert ours["length_multiple"] == 16 and exact["length_multiple"] == 1
    assert exact["tokens"] == ours["tokens"] and exact["steps"] == ours["steps"]  # the same rows, the same steps
    # padding computes more positions for the same tokens; every number is the same (same losses)
    assert exact["positions_per_s"] * exact["seconds"] < ours["positions_per_s"] * ours["seconds"]
    assert exact["held_out_loss"] == pytest.approx(ours["held_out_loss"], rel=1e-4)
    assert "| ours, exact batch lengths |" in lines[-1]
    assert f"({ours['tokens_per_s'] / exact['tokens_per_s']:.2f}x" in lines[-1].replace("**", "")


def test_generation_is_also_timed_in_fp32_when_asked(result):
    # on a machine whose `auto` is bf16 this part runs by itself, to choose decode precision per job
    r, lines = result
    g32, gen = r["generation_fp32"], r["generation"]
    assert g32["precision"] == "fp32" and g32["new_tokens"] == gen["new_tokens"]
    assert g32["single_s"] > 0 and g32["three_s"] > 0
    assert 1 <= g32["generated_tokens"] <= 4 and 1 <= gen["generated_tokens"] <= 4  # at most new_tokens; it may stop at eos
    assert f"one continuation {g32['single_s']:.2f} vs {gen['single_s']:.2f} s" in lines[-1]


def test_a_two_example_written_prompt_is_timed_against_ours_soft_prompt_alone(result, tiny_csv, tokenizer_dir):
    # The examples recounted here: two training acts drawn as the app draws them, each prompt and its eos
    from tuning import written
    from tuning.data import load_rows
    from tuning.rows import split_rows

    r, lines = result
    rows = load_rows(str(tiny_csv))
    drawn = written.draw(rows, split_rows(rows, TuneConfig(dataset=str(tiny_csv)))[1], 2, seed=0)
    tokens = sum(len(make_tokenizer()(row.prompt)["input_ids"]) + 1 for row in drawn)
    w = r["written_vs_soft"]
    assert w["written"]["acts"] == [row.act for row in drawn] and w["written"]["context_tokens"] == tokens
    assert w["soft"]["context_tokens"] == TuneConfig().num_virtual_tokens == 20
    assert w["input_tokens"] == len(make_tokenizer()(bench.GENERATION_TEXT)["input_ids"]) and w["new_tokens"] == 4
    assert w["soft"]["seconds"] == r["generation"]["single_s"] and w["written"]["seconds"] > 0
    assert w["ratio"] == pytest.approx(w["written"]["seconds"] / w["soft"]["seconds"])
    assert 1 <= w["written"]["generated_tokens"] <= 4
    assert "written" not in r["generation_fp32"]  # the levers' parts time ours only
    assert f"{tokens} context tokens, {w['written']['seconds']:.2f} s vs 20 virtual tokens" in lines[-1]


def test_the_other_gelu_trains_the_same_rows_with_nearly_the_same_loss(result):
    # asked for here, so the run also trains with the GELU it does not use by default: the exact one in fp32
    # (GPT-2's tanh by default), GPT-2's tanh in bf16 on a CPU that computes bf16 (the exact one by default)
    r, lines = result
    ours, other = r["ours"], r["ours_other_gelu"]
    assert other["exact_gelu"] is not ours["exact_gelu"]
    assert other["tokens"] == ours["tokens"] and other["steps"] == ours["steps"]
    assert other["held_out_loss"] == pytest.approx(ours["held_out_loss"], rel=1e-2)
    exact, tanh = (other, ours) if other["exact_gelu"] else (ours, other)
    assert f"| ours, {'the exact GELU' if other['exact_gelu'] else 'GPT-2' + chr(39) + 's tanh GELU'} |" in lines[-1]
    assert f"held-out loss {exact['held_out_loss']:.4f} vs {tanh['held_out_loss']:.4f}" in lines[-1]


def test_generation_is_also_timed_with_the_models_forward_at_every_step(result):
    # A tiny GPT-2 on this CPU decodes through GPT2Step by default; the run times the model's
    # own forward too, so the lever is measured end to end wherever it is pulled.
    r, lines = result
    gen, other = r["generation"], r["generation_model_step"]
    assert gen["gpt2_step"] and not other["gpt2_step"]
    assert other["precision"] == gen["precision"] and other["single_s"] > 0
    assert (f"written out (`GPT2Step`) vs the model's forward at every step ({gen['precision']}): one continuation "
            f"{gen['single_s']:.2f} vs {other['single_s']:.2f} s") in lines[-1]


def test_generation_is_also_timed_the_other_way_packed_or_plain(result):
    r, lines = result
    gen, other = r["generation"], r["generation_other_packing"]
    assert other["packed"] is not gen["packed"]  # asked, the run times it the other way too (a CPU's probe decides)
    assert other["precision"] == gen["precision"] and other["single_s"] > 0
    on, off = (gen, other) if gen["packed"] else (other, gen)
    (line,) = [line for line in lines if "the weights packed for decoding vs plain" in line]
    assert f"one continuation {on['single_s']:.2f} vs {off['single_s']:.2f} s" in line


@pytest.mark.parametrize("pads, generation_precision, on_gpu", [(False, "fp32", False), (True, "bf16", False),
                                                                 (False, "bf16", True)])
def test_the_extra_parts_run_by_themselves_only_where_they_measure_something(
        monkeypatch, tiny_csv, tokenizer_dir, pads, generation_precision, on_gpu):
    # The parts are stubbed (no model runs): a machine that neither pads nor generates in bf16
    # (this one) runs exactly seed, ours, ours fp32, generation, and generation with the model's
    # forward at every step (GPT2Step runs on every CPU); one that pads and generates in bf16
    # (AMX) also runs ours without padding and generation in fp32, without being asked. On a GPU
    # (bf16, no padding, the prompt in every row, no GPT2Step) ours also runs with the prompt
    # computed once per batch, and the table gets a column for the GPU's own peak memory.
    calls, written_parts = [], []
    gpu_mb = 600.0 if on_gpu else None  # what a GPU part reports as its allocator's peak

    def part(name, job):
        calls.append((name, job.precision, job.length_multiple))
        written_parts.append(job.written_examples)
        if name == "_generation":
            precision = generation_precision if job.precision == "auto" else job.precision
            packed = pads and precision == "bf16" if job.packed is None else job.packed  # AMX packs, in bf16
            by_hand = job.gpt2_step is not False and not on_gpu  # GPT2Step: every CPU, by default
            written = {"input_tokens": 22, "soft_tokens": 20, "written": {
                "examples": job.written_examples, "acts": ["Poet", "Chef"], "context_tokens": 150, "seconds": 1.5,
                "generated_tokens": 3}} if job.written_examples else {}
            return dict(single_s=1.0, pair_s=1.2, three_s=1.3, cold_single_s=1.1, precision=precision, packed=packed,
                        gpt2_step=by_hand, **written,
                        new_tokens=4, repeats=1, peak_mb=10.0, generated_tokens=4, gpu_peak_mb=gpu_mb)
        exact_gelu = pads and job.precision == "auto" if job.exact_gelu is None else job.exact_gelu  # bf16 on a CPU
        multiple = 16 if pads and name == "_ours" and job.precision == "auto" and job.length_multiple is None else 1
        shares = job.share_prompt if job.share_prompt is not None else not on_gpu
        return dict(precision="fp32", batch_size=4, length_multiple=multiple, shares_prompt=shares, exact_gelu=exact_gelu,
                    rows=8, steps=2, tokens=100, seconds=2.0,
                    tokens_per_s=50.0, positions_per_s=60.0, held_out_loss=3.0, cold_tokens_per_s=40.0, n_params=1000,
                    peak_mb=10.0, prompt=[[0.0]], largest_batch_rows=[5, 9], largest_batch_peak_mb=12.0,
                    gpu_peak_mb=gpu_mb, largest_batch_gpu_peak_mb=gpu_mb and gpu_mb + 100)

    monkeypatch.setattr(bench, "_spawn", lambda fn, job: part(fn.__name__, job))
    monkeypatch.setattr(bench, "matmul_gflops", lambda dtype: 1.0)
    lines = []
    r = bench.run(steps=1, warmup=1, dataset=tiny_csv, tokenizer_dir=tokenizer_dir, out=lines.append)
    names = [name for name, *_ in calls]
    # the written prompt is timed once, in the default generation part: the levers compare ours with ours
    assert [k for name, k in zip(names, written_parts) if name == "_generation"][0] == bench.WRITTEN_EXAMPLES == 2
    assert sum(map(bool, written_parts)) == 1 and r["written_vs_soft"]["ratio"] == 1.5
    assert ("- a written prompt vs a soft prompt in front of the same 22-token input, 4 new tokens, each decoded alone "
            "(" + r["generation"]["precision"] + ", median of 1): 2 examples, 150 context tokens, 1.50 s vs 20 virtual "
            "tokens 1.00 s (**1.50x**; 3 and 4 tokens generated)") in lines[-1]
    if pads:  # and bf16 on a CPU: the exact GELU and packed weights for decoding, each measured against the other way
        assert names == ["_seed_recipe", "_ours", "_ours", "_ours", "_ours"] + ["_generation"] * 4
        assert calls[2][2] == 1 and calls[-3][1] == "fp32"  # ours with exact lengths; generation in fp32
        assert r["ours"]["exact_gelu"] and not r["ours_other_gelu"]["exact_gelu"]
        assert r["generation"]["packed"] and not r["generation_other_packing"]["packed"]
        assert "ours (default: batches padded to a multiple of 16)" in lines[-1] and "generation in fp32 instead of bf16" in lines[-1]
        assert "| ours, GPT-2's tanh GELU |" in lines[-1] and "- the exact GELU vs GPT-2's tanh GELU" in lines[-1]
        assert "- generation with the weights packed for decoding vs plain (bf16)" in lines[-1]
    else:
        fp32_generation = ["_generation"] if generation_precision == "bf16" else []  # the GPU's case
        shared = ["_ours"] if on_gpu else []
        model_step = [] if on_gpu else ["_generation"]  # GPT2Step runs on a CPU: timed against the model's forward
        assert names == ["_seed_recipe", "_ours"] + shared + ["_ours", "_generation"] + fp32_generation + model_step
        assert ("generation_model_step" in r) == (not on_gpu)
        assert ("ours_shared" in r) == on_gpu
        assert "ours_exact" not in r and ("generation_fp32" in r) == bool(fp32_generation)
        assert "ours_other_gelu" not in r and "generation_other_packing" not in r
        assert "GELU" not in lines[-1] and "packed" not in lines[-1]
        assert "| ours (default) |" in lines[-1] and "exact" not in lines[-1]
        assert ("generation in fp32" in lines[-1]) == bool(fp32_generation)
    if on_gpu:
        assert calls[2][0] == "_ours" and r["ours_shared"]["shares_prompt"] and not r["ours"]["shares_prompt"]
        assert "| ours, prompt computed once per batch |" in lines[-1]
        assert "- the prompt in front of every row, one pass" in lines[-1]
        assert "| peak RAM | peak GPU memory |" in lines[-1] and "(**1.30x**); peak GPU memory 600 MB" in lines[-1] and "| 10 MB | 600 MB |" in lines[-1]
        assert "on the GPU 700 MB (timed rows 600 MB)" in lines[-1]
    else:
        assert "| peak memory |" in lines[-1] and "GPU" not in lines[-1]


def test_length_multiple_must_be_a_whole_number_in_range():
    for bad in (0, 257, 1.5, True):
        with pytest.raises(bench.BenchError, match="length multiple"):
            bench.run(length_multiple=bad)


def test_the_ceiling_is_the_matmul_rate_over_four_flops_per_parameter(result):
    r, _ = result
    n_params = sum(p.numel() for p in GPT2LMHeadModel(GPT2Config(**tiny_config())).parameters())
    ours = r["ours"]
    assert ours["n_params"] == n_params
    rate = r["matmul_gflops"]["bf16" if ours["precision"] == "bf16" else "fp32"] * 1e9
    assert r["ceiling_positions_per_s"] == pytest.approx(rate / (4 * n_params))
    assert r["ceiling_fraction"] == pytest.approx(ours["positions_per_s"] / r["ceiling_positions_per_s"])


def test_held_out_losses_are_an_untrained_models_and_their_gap_is_relative(result):
    r, _ = result
    ours, fp32 = r["ours"]["held_out_loss"], r["ours_fp32"]["held_out_loss"]
    # random weights and one step: about the loss of a uniform guess over the vocabulary
    assert abs(fp32 - math.log(len(make_tokenizer()))) < 1.0
    assert r["held_out_loss_rel_diff"] == pytest.approx(abs(ours - fp32) / fp32)


@pytest.mark.timeout(60)
def test_every_precision_trains_the_same_random_weights_whatever_bf16_draws_give(tiny_csv, tokenizer_dir, monkeypatch):
    # A torch whose bf16 normal_ is not the float32 draw rounded (here: it consumes the
    # generator twice): the bf16 part must still get the fp32 part's weights, rounded, or the
    # bench's held-out comparison of precisions compares two random models.
    real = torch.Tensor.normal_

    def other_bf16_draws(self, *args, **kwargs):
        if self.dtype == torch.bfloat16:
            real(self, *args, **kwargs)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "normal_", other_bf16_draws)
    job = bench.BenchPart(str(tiny_csv), str(tokenizer_dir), tiny_config(), steps=1, warmup=1)
    fp32 = bench._random_base(job, "tiny", "fp32").model.state_dict()
    bf16 = bench._random_base(job, "tiny", "bf16").model.state_dict()
    assert bf16.keys() == fp32.keys()
    for name, tensor in bf16.items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, fp32[name].to(torch.bfloat16)), name


def test_the_results_are_plain_json(result):
    r, _ = result  # what `bench --json` writes: no NaN, nothing json cannot hold
    assert json.loads(json.dumps(r, allow_nan=False)) == r


def test_prints_a_markdown_table_with_the_measured_speed_up(result):
    r, lines = result
    table = lines[-1]
    assert "| seed recipe (Trainer + PEFT) | fp32 | 8 | 1 |" in table
    assert f"**{r['seed']['seconds'] / r['ours']['seconds']:.1f}x**" in table


def test_missing_dataset_is_one_clear_error(tmp_path, capsys):
    assert main(["bench", "--dataset", str(tmp_path / "nope.csv")]) == 1
    assert capsys.readouterr().err.strip() == f"error: no dataset at {tmp_path / 'nope.csv'}"


def test_steps_must_be_positive():
    with pytest.raises(bench.BenchError, match="steps must be"):
        bench.run(steps=0)


def test_a_matmul_rate_too_slow_to_measure_at_full_size_is_the_probes(monkeypatch):
    # emulated bf16 on an AVX2-only CPU: 12 products of 2048^3 would take many minutes
    calls = []
    monkeypatch.setattr(bench, "_matmul_rate", lambda dtype, n, repeat: calls.append(n) or (0.3 if n == 512 else 50.0))
    assert bench.matmul_gflops(torch.bfloat16) == 0.3 and calls == [512]
    calls.clear()
    monkeypatch.setattr(bench, "_matmul_rate", lambda dtype, n, repeat: calls.append(n) or 200.0)
    assert bench.matmul_gflops(torch.float32) == 200.0 and calls == [512, 2048]
