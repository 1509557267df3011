"""`python -m tuning bench`: how fast we train and generate on this machine, against the seed's recipe.

Everything runs offline on a GPT-2-124M-shaped model (`GPT2Config()`, random weights) with the
real GPT-2 tokenizer and the prompts of a local .csv, in a few minutes:

- seed recipe: `transformers.Trainer` + PEFT `PromptTuningConfig` (20 virtual tokens, random
  init), fp32, batch 8, `DataCollatorForLanguageModeling(mlm=False)` over the raw `prompt`
  column, as the project started;
- ours: `train.train()` with the default TuneConfig (precision auto, default batch size); again
  in fp32; where the machine pads batches to a multiple of 16 positions (bf16 on AMX,
  `Base.length_multiple`), once more without that padding; where ours puts the prompt in front
  of every row (on a GPU, `Base.shares_prompt`), once more with it computed once per batch;
- every part trains one epoch over the same timed rows (`steps` x 8 rows drawn, seeded, from
  the training split), after an untimed epoch over the same rows, so the parts do the same work,
  the timed epoch is the steady state of a longer run (every batch shape met before: on AMX each
  new one builds its kernels) and the speed-up is a ratio of times; the seed recipe shuffles the
  rows into its own batches of 8, as the Trainer does, the same way both times;
- cold start: ours' untimed epoch is the first after the model loads, over the same rows and
  batches as the timed one, so first epoch against steady state is a ratio of two times;
- quality: held-out loss after that epoch, ours vs ours in fp32 (random weights: the losses
  are those of an untrained model, but bf16 rounding shows up in them all the same);
- ceiling: a bf16 (and fp32) matmul measured in the same run; prompt tuning costs about
  4 x parameters FLOPs per position (forward plus activation gradients, no weight gradients);
- generation: one 64-token greedy continuation vs base + tuned side by side (`stream_pair`) vs
  three columns; where ours generates in bf16 (or fp16), the same again in fp32;
- written vs soft: the same continuation with a 2-example written prompt in front (written.py:
  two training acts' prompts, a few hundred tokens) against ours' 20-token soft prompt, each
  decoded alone: what the context a written prompt takes costs in decoding time.

Throughput counts useful tokens: the text tokens of the timed rows, as the seed recipe's
tokenizer call gives them (the same count for every part), never padding or virtual positions;
ours also learns the eos that ends each row, which is extra work it is not credited for. Each
training part runs in its own spawned process, after its warm-up, so its peak memory
(`ru_maxrss`) is its own and one part's allocations cannot slow the next; on a GPU each part
also reports the most GPU memory its tensors held (`torch.cuda.max_memory_allocated`). Ours then takes one
more (untimed) step on the whole training split's largest batch and reports that peak too: the
timed rows are a sample, and a real run meets that batch every epoch.

What it does not do: assert anything about the numbers (tests check the machinery only).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import platform
import resource
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
DEFAULT_DATASET = SHARED / "awesome-chatgpt-prompts" / "prompts-2025-01.csv"
DEFAULT_TOKENIZER = SHARED / "gpt2-tokenizer"
GENERATION_TEXT = "I want you to act as a travel guide. I will write you my location and you will suggest places to visit."

SEED_BATCH = 8  # the seed recipe's per_device_train_batch_size
SEED_VIRTUAL = 20  # the seed recipe's num_virtual_tokens
WRITTEN_EXAMPLES = 2  # the written prompt timed against ours' soft prompt: the app's middle choice (written.SHOTS)


class BenchError(ValueError):
    """The benchmark cannot run as asked (a missing file, a bad setting); one sentence."""


@dataclass
class BenchPart:
    """What one spawned part needs; plain values only, so it pickles."""

    dataset: str
    tokenizer_dir: str
    model_config: dict  # GPT2Config overrides; {} is GPT-2-124M
    steps: int  # timed rows: steps x SEED_BATCH
    warmup: int  # untimed epochs over the timed rows before the timed one (ours: the first is the cold one)
    precision: str = "auto"
    batch_size: int | None = None  # ours; None: TuneConfig's default
    length_multiple: int | None = None  # ours: Base.pad_to_multiple_of; None: the machine's choice
    share_prompt: bool | None = None  # ours: Base.share_prompt; None: the device's choice
    exact_gelu: bool | None = None  # kernels.EXACT_GELU; None: the machine's choice
    packed: bool | None = None  # kernels.PACK_FOR_DECODING; None: the machine's choice
    gpt2_step: bool | None = None  # generate.GPT2_STEP; None: the default (GPT2Step wherever it fits)
    prompt: list | None = None  # a trained soft prompt, for generation
    written_examples: int = 0  # generation: also time this many written examples in front (0: not timed)
    new_tokens: int = 64
    repeats: int = 5


def run(
    steps: int = 12,
    warmup: int = 1,
    dataset: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
    model_config: dict | None = None,
    new_tokens: int = 64,
    repeats: int = 5,
    out: Callable[[str], None] = print,
    batch_size: int | None = None,
    length_multiple: int | None = None,
    fp32_generation: bool | None = None,
    other_gelu: bool | None = None,
    other_packing: bool | None = None,
    model_step: bool | None = None,
) -> dict:
    """Run every part and print a Markdown table; returns the numbers as a dict.

    `steps` counts the seed recipe's batches of 8: every part trains on the same `steps x 8`
    timed rows, after `warmup` untimed epochs over those rows. `batch_size` is ours (default: the
    TuneConfig default). `model_config` overrides `GPT2Config()` (tests pass a tiny one).
    `length_multiple` pads our batches to that many positions (default: `Base.length_multiple`,
    the machine's choice); when ours pads, it also runs without padding ("ours, exact lengths"),
    so the machine that pads shows what the padding buys. `fp32_generation` also times generation
    in fp32 (default: when ours generates in another precision), for choosing decode precision per job.
    `other_gelu` also trains ours with the other GELU (default: where ours uses the exact one,
    `kernels.exact_gelu`); `other_packing` also generates the other way, packed or plain weights
    (default: where ours packs, `kernels.packs_for_decoding`; only a CPU packs); `model_step` also generates
    with the model's own forward at every step instead of `generate.GPT2Step` (default: where GPT2Step
    runs, a CPU): each lever the machine pulls is measured against not pulling it, in the same run.

    >>> r = run(steps=10)                                  # doctest: +SKIP
    >>> r["speedup"], r["ours"]["peak_mb"]                 # doctest: +SKIP
    (6.3, 1450.0)
    """
    _check_settings(steps, warmup, length_multiple)
    dataset = _existing(dataset, DEFAULT_DATASET, "dataset", "--dataset")
    tokenizer_dir = _existing(tokenizer_dir, DEFAULT_TOKENIZER, "tokenizer folder", "--tokenizer")
    os.environ["HF_HUB_OFFLINE"] = "1"  # inherited by the spawned parts: everything here is local
    from .config import TuneConfig

    ours_batch = TuneConfig().batch_size if batch_size is None else TuneConfig(batch_size=batch_size).batch_size
    job = BenchPart(str(dataset), str(tokenizer_dir), dict(model_config or {}), steps, warmup,
                    new_tokens=new_tokens, repeats=repeats, batch_size=ours_batch, length_multiple=length_multiple)
    result: dict = {"machine": machine(), "warmup": warmup}
    rows = SEED_BATCH * steps
    out(f"seed recipe: Trainer, fp32, batch {SEED_BATCH}, {rows} rows: {_epochs(warmup)} untimed, then one timed ...")
    result["seed"] = _spawn(_seed_recipe, job)
    out(_so_far(result["seed"]))
    out(f"ours: train(), precision auto, batch {ours_batch}, the same rows ...")
    result["ours"] = _spawn(_ours, job)
    out(_so_far(result["ours"]))
    ours = result["ours"]

    def ours_also(key: str, what: str, variant: BenchPart) -> None:
        """Ours once more, one setting changed: the comparison a lever line of docs/performance.md quotes."""
        out(f"ours {what} ...")
        result[key] = _spawn(_ours, variant)
        result[key].pop("prompt")  # generation uses the default run's prompt
        out(_so_far(result[key]))

    if ours["length_multiple"] != 1:
        ours_also("ours_exact", f"without padding batches to a multiple of {ours['length_multiple']} positions",
                  replace(job, length_multiple=1))
    if not ours["shares_prompt"]:
        ours_also("ours_shared", "with the prompt computed once per batch (two passes)", replace(job, share_prompt=True))
    if other_gelu or (other_gelu is None and ours["exact_gelu"]):
        ours_also("ours_other_gelu", f"with {_gelu_name(not ours['exact_gelu'])}",
                  replace(job, exact_gelu=not ours["exact_gelu"]))
    ours_also("ours_fp32", "in fp32", replace(job, precision="fp32"))
    out("matmul ceiling ...")
    result["matmul_gflops"] = {"bf16": matmul_gflops(torch.bfloat16), "fp32": matmul_gflops(torch.float32)}
    out(f"generation, {new_tokens} new tokens ...")
    _generation_parts(result, replace(job, prompt=ours.pop("prompt")), out, fp32_generation, other_packing, model_step)

    _add_ratios(result)
    out(report(result))
    return result


def _generation_parts(result: dict, job: BenchPart, out: Callable[[str], None], fp32_generation: bool | None,
                      other_packing: bool | None, model_step: bool | None) -> None:
    """Generation with ours' trained prompt (`job.prompt`) and a written prompt, then each decoding lever the other way.

    The written prompt is timed in the default part only: the levers compare ours with ours.
    """
    result["generation"] = _spawn(_generation, replace(job, written_examples=WRITTEN_EXAMPLES))
    if fp32_generation or (fp32_generation is None and result["generation"]["precision"] != "fp32"):
        out("generation in fp32 ...")
        result["generation_fp32"] = _spawn(_generation, replace(job, precision="fp32"))
    if (other_packing and _device().type == "cpu") or (other_packing is None and result["generation"]["packed"]):
        out(f"generation with {'plain' if result['generation']['packed'] else 'packed'} weights ...")
        result["generation_other_packing"] = _spawn(_generation, replace(job, packed=not result["generation"]["packed"]))
    if (model_step and _device().type == "cpu") or (model_step is None and result["generation"].get("gpt2_step")):
        out("generation with the model's forward at every step ...")
        result["generation_model_step"] = _spawn(_generation, replace(job, gpt2_step=False))


def _add_ratios(result: dict) -> None:
    """The comparisons the report quotes, from the parts' numbers: speed-up, ceiling, precision, cold start."""
    ours, seed, fp32 = result["ours"], result["seed"], result["ours_fp32"]
    result["speedup"] = ours["tokens_per_s"] / seed["tokens_per_s"]
    flops = result["matmul_gflops"]["bf16" if ours["precision"] == "bf16" else "fp32"] * 1e9
    result["ceiling_positions_per_s"] = flops / (4 * ours["n_params"])
    result["ceiling_fraction"] = ours["positions_per_s"] / result["ceiling_positions_per_s"]
    result["held_out_loss_rel_diff"] = abs(ours["held_out_loss"] - fp32["held_out_loss"]) / fp32["held_out_loss"]
    gen = result["generation"]
    result["generation_ratio"] = gen["pair_s"] / gen["single_s"]
    result["three_columns_ratio"] = gen["three_s"] / gen["single_s"]
    result["cold_training_ratio"] = ours["tokens_per_s"] / ours["cold_tokens_per_s"]  # > 1: the first epoch is slower
    result["cold_generation_ratio"] = gen["cold_single_s"] / gen["single_s"]
    if "written" in gen:  # the same continuation, alone, with each kind of prompt in front
        result["written_vs_soft"] = {
            "new_tokens": gen["new_tokens"], "input_tokens": gen["input_tokens"], "written": gen["written"],
            "soft": {"context_tokens": gen["soft_tokens"], "seconds": gen["single_s"],
                     "generated_tokens": gen["generated_tokens"]},
            "ratio": gen["written"]["seconds"] / gen["single_s"],
        }


def _check_settings(steps, warmup, length_multiple) -> None:
    """Refuse (BenchError) settings the parts cannot run with, before minutes of measuring."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise BenchError(f"steps must be a whole number of at least 1, got {steps!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise BenchError(f"warmup must be a whole number of at least 1, got {warmup!r}")
    if length_multiple is not None and (isinstance(length_multiple, bool) or not isinstance(length_multiple, int)
                                        or not 1 <= length_multiple <= 256):
        raise BenchError(f"length multiple must be a whole number from 1 to 256, got {length_multiple!r}")


def _epochs(n: int) -> str:
    return "one epoch" if n == 1 else f"{n} epochs"


def _so_far(part: dict) -> str:
    """One line as a training part finishes, so a long run shows its numbers before the table."""
    cold = f", first epoch {part['cold_tokens_per_s']:,.0f}" if part.get("cold_tokens_per_s") else ""
    return f"  {part['seconds']:.1f} s, {part['tokens_per_s']:,.0f} useful tokens/s{cold}"


def report(r: dict) -> str:
    """The results as Markdown, ready for docs/performance.md."""
    m, seed, ours, fp32, gen = r["machine"], r["seed"], r["ours"], r["ours_fp32"], r["generation"]
    lines = [
        f"Machine: {m['cpu']} ({m['cpu_kind']}){', GPU ' + m['gpu'] if m.get('gpu') else ''}, {m['cores']} cores ({m['threads']} torch threads), torch {m['torch']}, "
        f"transformers {m['transformers']}; matmul 2048^3: bf16 {r['matmul_gflops']['bf16']:.0f} GFLOP/s, "
        f"fp32 {r['matmul_gflops']['fp32']:.0f} GFLOP/s. Model: GPT-2-124M shape ({ours['n_params'] / 1e6:.1f}M "
        "parameters), random weights.",
        "",
        f"Every part trains one epoch over the same {seed['rows']} rows ({seed['tokens']:,} text tokens), "
        f"after {_epochs(r['warmup'])} over the same rows, untimed (ours: the first is its cold start).",
        "",
    ]
    gpu = seed.get("gpu_peak_mb") is not None  # the parts ran on a GPU: its memory is the one that counts
    lines += [
        "| training | precision | batch | steps | seconds | useful tokens/s | positions/s | cold tokens/s | "
        + ("peak RAM | peak GPU memory |" if gpu else "peak memory |"),
        "|---|---|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""),
    ]
    padded = f": batches padded to a multiple of {ours['length_multiple']}" if ours["length_multiple"] != 1 else ""
    parts = [("seed recipe (Trainer + PEFT)", seed), (f"ours (default{padded})", ours)]
    if "ours_exact" in r:
        parts.append(("ours, exact batch lengths", r["ours_exact"]))
    if "ours_shared" in r:
        parts.append(("ours, prompt computed once per batch", r["ours_shared"]))
    if "ours_other_gelu" in r:
        parts.append((f"ours, {_gelu_name(r['ours_other_gelu']['exact_gelu'])}", r["ours_other_gelu"]))
    for name, part in parts + [("ours, fp32", fp32)]:
        cold = f"{part['cold_tokens_per_s']:.0f}" if "cold_tokens_per_s" in part else "-"
        lines.append(
            f"| {name} | {part['precision']} | {part['batch_size']} | {part['steps']} | {part['seconds']:.1f} "
            f"| {part['tokens_per_s']:.0f} | {part['positions_per_s']:.0f} | {cold} | {part['peak_mb']:.0f} MB |"
            + (f" {part['gpu_peak_mb']:.0f} MB |" if gpu else "")
        )
    lines += [
        "",
        f"- speed-up, useful tokens/s, ours / seed recipe: **{r['speedup']:.1f}x**",
        f"- ours vs the FLOP ceiling (4 x {ours['n_params'] / 1e6:.1f}M FLOPs per position at the measured "
        f"{ours['precision']} matmul rate): {ours['positions_per_s']:.0f} of {r['ceiling_positions_per_s']:.0f} "
        f"positions/s ({100 * r['ceiling_fraction']:.0f}%)",
        f"- held-out loss after the same {ours['steps']} steps: {ours['precision']} {ours['held_out_loss']:.4f}, "
        f"fp32 {fp32['held_out_loss']:.4f} ({100 * r['held_out_loss_rel_diff']:.2f}% apart; random weights)",
        f"- generation, {gen['new_tokens']} new tokens, greedy, {gen['precision']}, median of {gen['repeats']}: "
        f"one continuation {gen['single_s']:.2f} s, base + tuned side by side {gen['pair_s']:.2f} s "
        f"(**{r['generation_ratio']:.2f}x**), base + two tuned {gen['three_s']:.2f} s "
        f"(**{r['three_columns_ratio']:.2f}x**)"
        + (f"; peak GPU memory {gen['gpu_peak_mb']:.0f} MB" if gpu else ""),
        f"- peak memory over the whole training split (ours, one more step on its largest batch, "
        f"{len(ours['largest_batch_rows'])} rows of {min(ours['largest_batch_rows'])}-{max(ours['largest_batch_rows'])} "
        f"tokens): {ours['largest_batch_peak_mb']:.0f} MB (the timed rows alone: {ours['peak_mb']:.0f} MB)"
        + (f"; on the GPU {ours['largest_batch_gpu_peak_mb']:.0f} MB (timed rows {ours['gpu_peak_mb']:.0f} MB)" if gpu else ""),
        f"- cold start (the first after the model loads) vs warm: training epoch (the same rows and batches) {ours['cold_tokens_per_s']:.0f} vs "
        f"{ours['tokens_per_s']:.0f} useful tokens/s (**{r['cold_training_ratio']:.2f}x** slower), generation "
        f"{gen['cold_single_s']:.2f} vs {gen['single_s']:.2f} s (**{r['cold_generation_ratio']:.2f}x**)",
    ]
    if "written_vs_soft" in r:
        w = r["written_vs_soft"]
        written, soft = w["written"], w["soft"]
        lines.append(
            f"- a written prompt vs a soft prompt in front of the same {w['input_tokens']}-token input, {w['new_tokens']} "
            f"new tokens, each decoded alone ({gen['precision']}, median of {gen['repeats']}): {written['examples']} "
            f"examples, {written['context_tokens']} context tokens, {written['seconds']:.2f} s vs "
            f"{soft['context_tokens']} virtual tokens {soft['seconds']:.2f} s (**{w['ratio']:.2f}x**; "
            f"{written['generated_tokens']} and {soft['generated_tokens']} tokens generated)"
        )
    return "\n".join(lines + _lever_lines(r))


def _lever_lines(r: dict) -> list[str]:
    """One line per lever the run also measured the other way (decode precision, packing, GELU, padding, ...)."""
    ours, gen, lines = r["ours"], r["generation"], []
    if "generation_fp32" in r:
        g32 = r["generation_fp32"]
        lines.append(
            f"- generation in fp32 instead of {gen['precision']} (decode precision per job): {_generation_vs(g32, gen)} "
            f"({g32['generated_tokens']} and {gen['generated_tokens']} tokens generated)"
        )
    for key, flag, what in (
        ("generation_other_packing", "packed", "the weights packed for decoding vs plain"),
        ("generation_model_step", "gpt2_step",
         "GPT-2's decoding step written out (`GPT2Step`) vs the model's forward at every step"),
    ):  # a decoding lever the run also measured the other way: with it, then without
        if key in r:
            on, off = (gen, r[key]) if gen[flag] else (r[key], gen)
            lines.append(f"- generation with {what} ({on['precision']}): {_generation_vs(on, off)}")
    if "ours_other_gelu" in r:
        other = r["ours_other_gelu"]
        exact, tanh = (ours, other) if ours["exact_gelu"] else (other, ours)
        lines.append(
            f"- the exact GELU vs GPT-2's tanh GELU ({ours['precision']}): {_warm_and_cold(exact, tanh)}; held-out "
            f"loss {exact['held_out_loss']:.4f} vs {tanh['held_out_loss']:.4f}"
        )
    if "ours_exact" in r:
        lines.append(
            f"- batches padded to a multiple of {ours['length_multiple']} positions (fewer kernel shapes) vs exact "
            f"lengths: {_warm_and_cold(ours, r['ours_exact'])}"
        )
    if "ours_shared" in r:
        lines.append(
            "- the prompt in front of every row, one pass (fewer kernel launches) vs computed once per batch, two "
            "passes (fewer FLOPs; positions/s counts the prompt in every row for the first, so compare useful "
            f"tokens/s): {_warm_and_cold(ours, r['ours_shared'])}"
        )
    return lines


def _generation_vs(a: dict, b: dict) -> str:
    """Two generation parts' median seconds side by side, a first."""
    return (f"one continuation {a['single_s']:.2f} vs {b['single_s']:.2f} s, side by side {a['pair_s']:.2f} vs "
            f"{b['pair_s']:.2f} s, three columns {a['three_s']:.2f} vs {b['three_s']:.2f} s, cold "
            f"{a['cold_single_s']:.2f} vs {b['cold_single_s']:.2f} s")


def _gelu_name(exact: bool) -> str:
    return "the exact GELU" if exact else "GPT-2's tanh GELU"


def _warm_and_cold(ours: dict, other: dict) -> str:
    """Ours against another way of running ours: useful tokens/s warm and cold, and their ratios."""
    return (
        f"{ours['tokens_per_s']:.0f} vs {other['tokens_per_s']:.0f} useful tokens/s warm "
        f"(**{ours['tokens_per_s'] / other['tokens_per_s']:.2f}x**), {ours['cold_tokens_per_s']:.0f} vs "
        f"{other['cold_tokens_per_s']:.0f} cold (**{ours['cold_tokens_per_s'] / other['cold_tokens_per_s']:.2f}x**)"
    )


def machine() -> dict:
    import transformers

    from .hardware import cpu_kind, cpu_model

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"cpu": cpu_model(), "cpu_kind": cpu_kind(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "gpu": gpu, "torch": torch.__version__, "transformers": transformers.__version__,
            "platform": platform.platform()}


def matmul_gflops(dtype: torch.dtype, n: int = 2048, repeat: int = 10, budget_s: float = 30.0) -> float:
    """GFLOP/s of an `n x n @ n x n` matmul in `dtype` (2 n^3 FLOPs each), after two warm-up runs, on the
    device the parts run on (the GPU when there is one).

    A 512^3 probe first: where the full measurement would take over `budget_s` (bf16 emulated on
    a CPU without native bf16 can take minutes for the 12 products), the probe's own rate is
    returned instead.
    """
    probe = _matmul_rate(dtype, 512, 3)
    if (repeat + 2) * 2 * n**3 / (probe * 1e9) > budget_s:
        return probe
    return _matmul_rate(dtype, n, repeat)


def _matmul_rate(dtype: torch.dtype, n: int, repeat: int) -> float:
    device = _device()
    a, b = torch.randn(n, n, device=device).to(dtype), torch.randn(n, n, device=device).to(dtype)
    for _ in range(2):
        a @ b
    _sync()
    t = time.perf_counter()
    for _ in range(repeat):
        a @ b
    _sync()
    return 2 * n**3 * repeat / (time.perf_counter() - t) / 1e9


def _device() -> torch.device:
    from .hardware import pick_device

    return pick_device()


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _existing(path, default: Path, what: str, flag: str) -> Path:
    if path is None:
        if not default.exists():
            raise BenchError(f"no {what} at {default}; pass {flag} PATH")
        return default
    path = Path(path).expanduser()
    if not path.exists():
        raise BenchError(f"no {what} at {path}")
    return path


def _spawn(part: Callable[[BenchPart], dict], job: BenchPart) -> dict:
    """Run one part in a fresh process: its peak memory is its own, nothing it allocated stays."""
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(part, (job,))


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _gpu_peak_mb() -> float | None:
    """The most GPU memory this part's tensors have held (PyTorch's allocator), or None without a GPU.

    On a GPU the process's RAM (`_peak_mb`) is mostly libraries and the CUDA context; the
    memory the work itself needs is here.
    """
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def _training_rows(job: BenchPart):
    """(config, timed rows, held-out rows): the same for every part.

    The timed rows are drawn, seeded and without repeats, from our training split; only a file
    with fewer training rows than asked for is repeated (tests use a tiny one).
    """
    import random

    from .config import TuneConfig
    from .data import load_rows
    from .rows import split_rows

    config = TuneConfig(model="gpt2-124m-random", dataset=job.dataset, precision=job.precision, epochs=1,
                        **({} if job.batch_size is None else {"batch_size": job.batch_size}))
    rows, held = split_rows(load_rows(job.dataset), config)
    order = list(rows)
    random.Random(0).shuffle(order)
    return config, _cycle(order, SEED_BATCH * job.steps), held


def _cycle(rows: list, n: int) -> list:
    """The first n of rows, rows, rows, ..."""
    return (rows * math.ceil(n / len(rows)))[:n]


def _seed_max_length(job: BenchPart) -> int:
    from transformers import GPT2Config

    return GPT2Config(**job.model_config).n_positions - SEED_VIRTUAL


def _useful_tokens(job: BenchPart, config, rows, tok) -> int:
    """Text tokens of `rows` that both recipes train on: the prompt's tokens, cut where either cuts them."""
    cap = min(_seed_max_length(job), config.max_length)
    return sum(min(len(tok(r.prompt)["input_ids"]), cap) for r in rows)


def _random_base(job: BenchPart, model_id: str, precision: str):
    """GPT-2 with the same random weights in every part: drawn in float32 from seed 0, then cast to the run's dtype.

    Drawn in bf16 directly, the weights would be whatever that torch version's bf16 `normal_`
    gives, which changed between torch versions (docs/performance.md), and a comparison of
    precisions must not also compare two random models.
    """
    from transformers import AutoModelForCausalLM, GPT2Config

    from . import kernels
    from .hardware import resolve_precision
    from .model import _DTYPES, from_model

    if job.exact_gelu is not None:  # this part's own process: the flags are its own
        kernels.EXACT_GELU = job.exact_gelu
    if job.packed is not None:
        kernels.PACK_FOR_DECODING = job.packed
    if job.gpt2_step is not None:
        from . import generate as generate_module

        generate_module.GPT2_STEP = job.gpt2_step
    device = _device()
    resolved = resolve_precision(precision, device)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(GPT2Config(**job.model_config), dtype=torch.float32)
    model = model.to(device=device, dtype=_DTYPES[resolved])
    return from_model(model, _tokenizer(job), model_id, resolved)


def _quiet() -> None:
    """Keep a part's output to our own lines: no deprecation notes or Trainer log dicts."""
    import warnings

    from transformers.utils import logging

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.set_verbosity_error()


def _tokenizer(job: BenchPart):
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast.from_pretrained(job.tokenizer_dir)
    tok.pad_token = tok.eos_token
    return tok


def _seed_recipe(job: BenchPart) -> dict:
    """The seed's recipe, as it was: Trainer, fp32, batch 8, LM collator over the raw prompts."""
    import tempfile

    from peft import PromptTuningConfig, get_peft_model
    from transformers import (
        DataCollatorForLanguageModeling, GPT2Config, GPT2LMHeadModel, PrinterCallback, Trainer, TrainerCallback,
        TrainingArguments,
    )

    _quiet()
    torch.manual_seed(0)
    tok = _tokenizer(job)
    config, timed, _ = _training_rows(job)
    model = get_peft_model(
        GPT2LMHeadModel(GPT2Config(**job.model_config)),
        PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=SEED_VIRTUAL, prompt_tuning_init="RANDOM"),
    )
    collate = DataCollatorForLanguageModeling(tok, mlm=False)
    batches: list[int] = []  # positions per timed batch, padding and virtual ones included

    def counting_collator(items):
        batch = collate(items)
        size, length = batch["input_ids"].shape
        batches.append(size * (length + SEED_VIRTUAL))
        return batch

    class Clock(TrainerCallback):
        start = end = None

        def on_train_begin(self, args, state, control, **kwargs):
            Clock.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            Clock.end = time.perf_counter()

    max_length = _seed_max_length(job)
    with tempfile.TemporaryDirectory() as out_dir:
        def trainer(rows, collator, callbacks=()):
            args = TrainingArguments(
                output_dir=out_dir, per_device_train_batch_size=SEED_BATCH, num_train_epochs=1,
                learning_rate=3e-2, use_cpu=not torch.cuda.is_available(), report_to=[], save_strategy="no", logging_strategy="no",
                disable_tqdm=True, dataloader_num_workers=0, seed=0,
            )
            features = [dict(tok(r.prompt, truncation=True, max_length=max_length)) for r in rows]
            t = Trainer(model=model, args=args, train_dataset=features, data_collator=collator,
                        callbacks=list(callbacks))
            t.remove_callback(PrinterCallback)  # it prints the final metrics dict
            return t

        for _ in range(job.warmup):  # the same rows in the same batches (seed=0): every shape met before
            trainer(timed, collate).train()
        trainer(timed, counting_collator, [Clock()]).train()
    seconds = Clock.end - Clock.start
    tokens = _useful_tokens(job, config, timed, tok)
    return {
        "precision": "fp32", "batch_size": SEED_BATCH, "rows": len(timed), "steps": len(batches),
        "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds, "positions_per_s": sum(batches) / seconds,
        "peak_mb": _peak_mb(), "gpu_peak_mb": _gpu_peak_mb(),
    }


def _ours(job: BenchPart) -> dict:
    """train() with the default TuneConfig (precision and batch size from the job): untimed epochs, then the timed one.

    Each is a fresh run over the timed rows with the same seed, so the same batches in the same
    order: the first, right after the model loaded, is the cold start (on AMX every new batch
    shape builds its kernels), the timed one the steady state, and the two compare as times.
    """
    from .events import Done, EpochEnd, Start, Step
    from .train import train

    _quiet()
    config, timed, held = _training_rows(job)
    base = _random_base(job, config.model, config.precision)
    base.pad_to_multiple_of = job.length_multiple
    base.share_prompt = job.share_prompt
    cold_seconds = None
    for _ in range(job.warmup):
        for event in train(base, timed, config):
            if isinstance(event, Start):
                began = time.perf_counter()
            elif isinstance(event, Step) and event.step == event.total_steps and cold_seconds is None:
                cold_seconds = time.perf_counter() - began
    positions = [0]  # every position the transformer computes: virtual, text and padding

    def count(module, args, kwargs):
        embeds = kwargs["inputs_embeds"]
        positions[0] += embeds.shape[0] * embeds.shape[1]

    hook = base.model.base_model.register_forward_pre_hook(count, with_kwargs=True)
    for event in train(base, timed, config, held):
        if isinstance(event, Start):
            start = time.perf_counter()
        elif isinstance(event, Step) and event.step == event.total_steps:
            end, steps, counted = time.perf_counter(), event.step, positions[0]
        elif isinstance(event, EpochEnd):
            held_out_loss = event.held_out_loss
        elif isinstance(event, Done):
            done = event
    hook.remove()
    seconds = end - start
    tokens = _useful_tokens(job, config, timed, base.tokenizer)
    peak_timed, gpu_peak_timed = _peak_mb(), _gpu_peak_mb()
    largest = _largest_batch_step(base, config, done.soft.embeddings)
    return {
        "precision": base.precision, "batch_size": config.batch_size, "length_multiple": base.length_multiple,
        "shares_prompt": base.shares_prompt,
        "exact_gelu": any(type(m) is torch.nn.GELU for m in base.model.modules()),
        "rows": len(timed), "steps": steps,
        "tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds, "positions_per_s": counted / seconds,
        "held_out_loss": held_out_loss, "cold_tokens_per_s": tokens / cold_seconds, "cold_seconds": cold_seconds,
        "n_params": sum(p.numel() for p in base.model.parameters()),
        "peak_mb": peak_timed, "gpu_peak_mb": gpu_peak_timed, "prompt": done.soft.embeddings.tolist(),
        "largest_batch_rows": largest, "largest_batch_peak_mb": _peak_mb(), "largest_batch_gpu_peak_mb": _gpu_peak_mb(),
    }


def _largest_batch_step(base, config, prompt: torch.Tensor) -> list[int]:
    """One training step on the largest batch of the whole training split; returns its row lengths.

    The timed rows are a sample, and a batch's activations (kept for the backward pass) grow
    with rows x length: a real run meets the split's largest batch once an epoch, so that step
    sets the peak memory a user sees, not the timed sample's.
    """
    import random

    from .data import load_rows
    from .model import token_losses
    from .rows import encode_rows, split_rows
    from .train import length_batches

    rows, _ = split_rows(load_rows(config.dataset), config)
    data = encode_rows(base, rows, config)
    lengths = [len(d) for d in data]
    batch = max(length_batches(lengths, config.batch_size, random.Random(0)),
                key=lambda b: len(b) * max(lengths[i] for i in b))
    soft = torch.nn.Parameter(prompt.to(base.device, torch.float32))
    loss, _ = token_losses(base, soft, [data[i] for i in batch])
    loss.backward()
    return sorted(lengths[i] for i in batch)


def _generation(job: BenchPart) -> dict:
    """Median seconds of one continuation, of base + tuned side by side, and of base + two tuned (Compare's three
    columns: a 20-token and a 5-token prompt, as the two reference adapters have)."""
    import statistics

    from . import written
    from .generate import Decoding, GPT2Step, generate, stream_compare, stream_pair
    from .kernels import packs_for_decoding

    _quiet()
    base = _random_base(job, "gpt2-124m-random", job.precision)
    soft = torch.tensor(job.prompt)
    decoding = Decoding(max_new_tokens=job.new_tokens)

    def single():
        generate(base, soft, GENERATION_TEXT, decoding)

    def pair():
        for _ in stream_pair(base, soft, GENERATION_TEXT, decoding):
            pass

    def three():
        for _ in stream_compare(base, [soft, soft[:5]], GENERATION_TEXT, decoding):
            pass

    parts = [("single_s", single), ("pair_s", pair), ("three_s", three)]
    examples = _written_prompt(job, base) if job.written_examples else None
    if examples is not None:
        in_front = written.embeddings(base, examples)
        parts.append(("written_s", lambda: generate(base, in_front, GENERATION_TEXT, decoding)))
    t = time.perf_counter()
    single()  # the first generation after the model loaded: the cold one
    cold = time.perf_counter() - t
    for _, fn in parts:  # warm-up: every kind of batch met once, untimed
        fn()
    runs: dict[str, list[float]] = {name: [] for name, _ in parts}
    for _ in range(job.repeats):  # interleaved, so a slow spell of a shared machine hits all alike
        for name, fn in parts:
            t = time.perf_counter()
            fn()
            runs[name].append(time.perf_counter() - t)
    timings = {name: statistics.median(times) for name, times in runs.items()}
    # how many tokens one continuation really has: decoding stops at end-of-text, which random
    # weights in another precision may reach at another step
    ids = base.encode(GENERATION_TEXT)
    generated = _generated(base, soft, ids, decoding)
    extra = {}
    if examples is not None:
        extra = {"input_tokens": len(ids), "soft_tokens": soft.shape[0], "written": {
            "examples": len(examples.examples), "acts": [r.act for r in examples.examples],
            "context_tokens": examples.tokens, "seconds": timings.pop("written_s"),
            "generated_tokens": _generated(base, in_front, ids, decoding)}}
    return {**timings, "cold_single_s": cold, "generated_tokens": generated, "precision": base.precision,
            "packed": packs_for_decoding(base.device, base.precision), "gpt2_step": GPT2Step.fits(base.model),
            "new_tokens": job.new_tokens, "repeats": job.repeats, **extra,
            "peak_mb": _peak_mb(), "gpu_peak_mb": _gpu_peak_mb()}


def _generated(base, prompt: torch.Tensor, ids: list[int], decoding) -> int:
    """Tokens one continuation of `ids` with `prompt` in front really has (it may end at end-of-text early)."""
    from .generate import stream_ids

    generated = 0
    for (row,) in stream_ids(base, [prompt], ids, decoding):
        generated = len(row)
    return generated


def _written_prompt(job: BenchPart, base):
    """`job.written_examples` training acts' prompts, drawn as the app draws them (the split's held-out side
    and seed), refused with the numbers when they leave no room for the input and every new token."""
    from . import written
    from .data import load_rows

    config, _, held = _training_rows(job)
    examples = written.examples(base, load_rows(job.dataset), held, job.written_examples, config.seed)
    written.check_fits(base, examples, len(base.encode(GENERATION_TEXT)), job.new_tokens)
    return examples
