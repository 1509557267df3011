"""The training loop: prompt tuning written out as one plain generator of events.

`train()` learns a `[num_virtual_tokens, hidden]` float32 tensor in front of a frozen base
model and yields `Start`, `Step`, `EpochEnd` and finally `Done` (which carries the
`SoftPrompt`); `Paused` before a step that waits for a generation on the same CPU (`turns`). A UI turns the events into a chart, the CLI into a progress bar, tests into
assertions. Stopping is a `threading.Event` checked between steps; what was learned so far
comes back in `Done(stopped=True)`. A NaN/inf loss raises `TrainingError` and returns nothing.

Resuming: `train(..., resume=soft)` starts from a saved prompt and its AdamW state and trains
`config.epochs` more epochs; step and epoch numbers, and the loss history, continue the saved
ones (`resume_config` plans such a run, `resume_note` says when the optimizer starts fresh).

What it does not do: load models or data (model.py, data.py), choose or tokenize rows (rows.py),
save files (adapters.py). Its events are events.py's, its loss history's shape history.py's.

Choices, each measured or explained in docs/performance.md:
- the base model keeps its own dtype (bf16 on CPUs that have it), the prompt and the loss
  are float32;
- rows of similar length are batched together (little padding), batch order shuffled per
  epoch with the seed;
- loss is computed only at real token positions (model.token_losses);
- the base stays in eval mode (no dropout): it is shared with other sessions and that
  makes a run deterministic for a given seed.

Data parallel: started as several processes (`accelerate launch`, `torchrun`, `mpirun`), each
process scores its share of every global batch (`config.batch_size` rows, the same length-sorted
batches in the same seeded order everywhere) and the summed prompt gradients and token counts
are all-reduced, so every process takes the step one process would take on the whole batch.
Every process scores the same held-out rows in full (the same number everywhere). One process
alone never imports accelerate nor touches torch.distributed.

Held-out scoring scales with the run: each epoch end scores the held-out rows for the chart, and
a short run (plan.epoch_batches: one whose training is cheap next to scoring them all, such as
one act) scores a seeded subset there, the same at every epoch end, and all of them once at its
end. What Done saves (`metrics`) is always the whole held-out side's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import random
import threading
import time
from datetime import datetime, timezone
from typing import Iterator, Sequence

import torch

from . import turns
from .config import TuneConfig
from .data import Row
from .evaluate import batch_losses, pooled, scoring_batches
from .events import Done, EpochEnd, Event, Paused, Snapshot, Start, Step, TrainingError
from .history import HISTORY_KEYS, record_epoch, saved_history, trained_so_far
from .model import Base, SoftPrompt, token_losses
from .plan import epoch_batches
from .rows import encode_rows


def data_parallel() -> tuple[int, int]:
    """(this process's rank, number of processes); (0, 1) unless started as several processes.

    Joins the process group the launcher prepared, through accelerate's `PartialState` (gloo on
    CPUs, nccl on GPUs, which also picks this process's GPU), so call it before loading the model.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    sizes = (os.environ.get(k) for k in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"))
    if max((int(v) for v in sizes if v and v.isdigit()), default=1) <= 1:
        return 0, 1
    from accelerate import PartialState

    # cpu= must be explicit: PartialState() on a machine without GPUs joins the group but then
    # reports one process (accelerate 1.15).
    PartialState(cpu=not torch.cuda.is_available())
    return dist.get_rank(), dist.get_world_size()


def _shard_losses(
    base: Base, prompt: torch.nn.Parameter, rows: list[list[int]], rank: int, world: int
) -> tuple[torch.Tensor, int]:
    """This process's share of one global batch: backward of its summed loss, then all-reduce.

    Leaves in `prompt.grad` the gradient of (sum of losses over the whole batch / its token
    count), the same as one process computing `loss_sum / count` on all of `rows`. Returns the
    whole batch's summed loss and token count, equal on every process.
    """
    import torch.distributed as dist

    mine = rows[rank::world]  # a short last batch can leave a process nothing to do
    if mine:
        loss_sum, count = token_losses(base, prompt, mine)
        loss_sum.backward()
    else:
        loss_sum, count = torch.zeros((), device=prompt.device), 0
        prompt.grad = torch.zeros_like(prompt)
    # one all-reduce for the gradient, the loss and the count together
    flat = torch.cat([prompt.grad.flatten(), torch.stack([loss_sum.detach().float(), loss_sum.new_tensor(float(count))])])
    dist.all_reduce(flat)
    total, count = flat[-2], int(flat[-1].item())
    prompt.grad.copy_(flat[:-2].view_as(prompt.grad) / count)
    return total, count


def _any_process(flag: bool, world: int, device: torch.device) -> bool:
    """True when `flag` is set in any process (so all of them stop at the same step)."""
    if world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([float(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def length_batches(lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Group row indices of similar length into batches, then shuffle the batch order.

    >>> length_batches([5, 1, 4, 2], 2, random.Random(0))  # batches {1, 3} (lengths 1, 2) and {2, 0}
    [[1, 3], [2, 0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches


def init_prompt(base: Base, config: TuneConfig, fallback_text: str | None = None) -> torch.Tensor:
    """The starting `[num_virtual_tokens, hidden]` float32 tensor, reproducible from the seed.

    random: PEFT's own init (`nn.Embedding`, N(0, 1)). sample_vocab: embeddings of tokens
    drawn uniformly from the vocabulary (PEFT's SAMPLE_VOCAB). text: embeddings of the
    text's tokens, repeated or cut to length (PEFT's TEXT logic, done here with the loaded
    tokenizer because PEFT's would load a tokenizer by name, possibly from the network).
    instruction: text init from `config.INSTRUCTION` ("I want you to act as"), whatever
    `init_text` says; on SmolLM2 it beat the others (docs/quality.md).
    """
    from peft import PromptTuningConfig
    from peft.tuners.prompt_tuning.model import PromptEmbedding

    from .config import INSTRUCTION

    n = config.num_virtual_tokens
    table = base.model.get_input_embeddings()
    if config.init in ("text", "instruction"):
        text = INSTRUCTION if config.init == "instruction" else config.init_text or fallback_text
        ids = base.encode(text or "")
        if not ids:
            raise TrainingError("init 'text' needs a non-empty init text")
        ids = (ids * math.ceil(n / len(ids)))[:n]
        with torch.no_grad():
            return table(torch.tensor(ids, device=base.device)).float().cpu().clone()
    peft_init = {"random": "RANDOM", "sample_vocab": "SAMPLE_VOCAB"}[config.init]
    peft_config = PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n, token_dim=base.hidden_size,
        num_transformer_submodules=1, prompt_tuning_init=peft_init,
    )
    # fork_rng: seed PEFT's init without disturbing anyone else's use of the global RNG state
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(config.seed)
        return PromptEmbedding(peft_config, table).embedding.weight.detach().float().cpu().clone()


def lr_factor(steps: int, warmup_fraction: float):
    """The learning-rate multiplier for step s of a run of `steps`: linear warm-up from 0, then linear decay to 0.

    `s` counts the steps taken so far (LambdaLR's), so step s + 1 uses factor(s). Warm-up lasts
    `round(warmup_fraction * steps)` steps (none at 0.0) and its first step already moves the
    prompt (1/warmup of the rate, not 0).

    >>> f = lr_factor(10, 0.2)   # 2 warm-up steps
    >>> [round(f(s), 3) for s in range(11)]
    [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125, 0.0]
    """
    warmup = round(warmup_fraction * steps)

    def factor(s: int) -> float:
        if s < warmup:
            return (s + 1) / warmup
        return max(0.0, 1.0 - (s - warmup) / max(1, steps - warmup))

    return factor


def resume_config(soft: SoftPrompt, epochs: int, **changes) -> TuneConfig:
    """The settings for `train(..., resume=soft)`: the adapter's own, `epochs` more epochs, and `changes`.

    `epochs` counts the new epochs only; the saved ones plus these must stay within TuneConfig's
    cap. `changes` may set other fields (learning_rate, batch_size, dataset, ...), not the
    number of virtual tokens, which is the prompt's shape. Re-validated like any TuneConfig.

    >>> resume_config(soft_trained_10_epochs, 5, learning_rate=0.01).epochs   # doctest: +SKIP
    5
    """
    config = dataclasses.replace(soft.config, epochs=epochs, **changes)
    _check_resume(soft, config)
    return config


def resume_note(soft: SoftPrompt) -> str | None:
    """One sentence for the user when resuming `soft` cannot continue its optimizer; None when it can."""
    if soft.optimizer_state is not None:
        return None
    return ("this adapter has no saved optimizer state (it is older or was trained elsewhere), "
            "so training continues from its prompt with a fresh AdamW optimizer")


def _check_resume(soft: SoftPrompt, config: TuneConfig, base: Base | None = None) -> tuple[int, int]:
    """Refuse to resume `soft` with `config` (on `base`) when the prompt does not fit; (steps, epochs) it did."""
    if config.num_virtual_tokens != soft.num_virtual_tokens:
        raise TrainingError(
            f"the adapter has {soft.num_virtual_tokens} virtual tokens but the settings say "
            f"{config.num_virtual_tokens}; a resumed prompt keeps its length"
        )
    if base is not None and soft.embeddings.shape[1] != base.hidden_size:
        raise TrainingError(
            f"the adapter's hidden size is {soft.embeddings.shape[1]}, the loaded model's is {base.hidden_size}"
        )
    if base is not None and (why := base.mismatch(soft.base_model)):
        raise TrainingError(why)
    state = soft.optimizer_state
    if state is not None and (set(state) != {"exp_avg", "exp_avg_sq", "step"}
                              or any(state[k].shape != soft.embeddings.shape for k in ("exp_avg", "exp_avg_sq"))):
        raise TrainingError("the adapter's optimizer state does not have its prompt's shape")
    steps, epochs = trained_so_far(soft)
    try:
        dataclasses.replace(config, epochs=epochs + config.epochs)  # the total the result will record
    except ValueError:
        raise TrainingError(
            f"the adapter has trained {epochs} epochs; {config.epochs} more would make {epochs + config.epochs}, "
            "over the limit of 50"
        ) from None
    return steps, epochs


def _start_prompt(base: Base, config: TuneConfig, first_text: str, resume: SoftPrompt | None):
    """(the prompt as a trainable float32 Parameter on the model's device, its AdamW optimizer).

    A new prompt starts from `init_prompt`; a resumed one from its saved embeddings and, when it
    has them, AdamW's moments and step count.
    """
    if resume is None:
        prompt = torch.nn.Parameter(init_prompt(base, config, first_text).to(base.device))
    else:
        prompt = torch.nn.Parameter(resume.embeddings.detach().to(base.device, torch.float32).clone())
    optimizer = torch.optim.AdamW([prompt], lr=config.learning_rate, weight_decay=config.weight_decay)
    if resume is not None and resume.optimizer_state is not None:
        # AdamW's moments and step count carry on, so the first resumed step is the one the saved
        # run would have taken next (scaled by the new learning rate), not a fresh Adam's first
        # sign-like step of size lr on every number. load_state_dict puts each tensor where
        # AdamW wants it (the moments on the prompt's device, `step` as it keeps it).
        saved = optimizer.state_dict()
        saved["state"] = {0: {k: v.detach().clone() for k, v in resume.optimizer_state.items()}}
        optimizer.load_state_dict(saved)
    return prompt, optimizer


def _lr_schedule(optimizer: torch.optim.Optimizer, planned: int, config: TuneConfig):
    """Linear warm-up over config.warmup_fraction of this run's `planned` steps, then linear decay to zero.

    (docs/quality.md measures both.) A resumed run starts a fresh warm-up and decay from
    config.learning_rate: the saved run's own schedule ended at zero, so continuing it would
    not move the prompt; restarting it is a warm restart (SGDR), and a lower --learning-rate
    makes the restart gentler.
    """
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor(planned, config.warmup_fraction))


def _loss_scaler(base: Base, world: int) -> torch.amp.GradScaler:
    """fp16 (GPUs without bf16): the loss is scaled up before backward so small gradients through
    the fp16 model do not flush to zero; the prompt, its gradient and AdamW stay float32. Off
    (a pass-through) otherwise. The data-parallel path does its own backward and all-reduce; it
    runs in bf16/fp32."""
    return torch.amp.GradScaler(base.device.type, enabled=base.precision == "fp16" and world == 1)


def _step(base: Base, prompt: torch.nn.Parameter, rows: list[list[int]], optimizer, scaler, rank: int, world: int,
          where: str, learning_rate: float) -> tuple[float, float, int]:
    """One optimizer step on one global batch: (mean loss per token, summed loss, tokens counted).

    A NaN/inf loss raises TrainingError (naming `where`, e.g. "step 3 (epoch 1)") before the prompt moves.
    """
    if world == 1:
        loss_sum, count = token_losses(base, prompt, rows)
    else:
        optimizer.zero_grad(set_to_none=True)
        loss_sum, count = _shard_losses(base, prompt, rows, rank, world)
    loss = loss_sum / count
    if not torch.isfinite(loss):
        raise TrainingError(
            f"the loss became {loss.item()} at {where}; "
            f"try a lower learning rate than {learning_rate:g}. Nothing was saved."
        )
    if world == 1:
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
    scaler.unscale_(optimizer)  # clip the true gradient
    torch.nn.utils.clip_grad_norm_([prompt], 1.0)
    scaler.step(optimizer)  # skipped (and the scale lowered) when fp16 overflowed
    scaler.update()
    return loss.item(), loss_sum.item(), count


@dataclasses.dataclass
class _HeldOut:
    """The held-out rows in `mean_loss`'s batches, and which of those batches every epoch end scores."""

    rows: list[list[int]]
    batches: list[list[int]]  # evaluate.scoring_batches: row indices
    each_epoch: list[int]  # plan.epoch_batches: all batch numbers for a long run, a seeded few for a short one
    base_memo: dict  # the base model's (loss sum, tokens) per batch, keyed by its rows: each batch is scored once

    @classmethod
    def of(cls, rows: list[list[int]], train_tokens: int, config: TuneConfig, memo: dict | None) -> _HeldOut:
        lengths = [len(r) for r in rows]
        return cls(rows, scoring_batches(lengths, config.batch_size),
                   epoch_batches(train_tokens, lengths, config.batch_size, config.seed), {} if memo is None else memo)

    @property
    def acts(self) -> int:
        """Held-out rows an epoch end's points are scored on."""
        return sum(len(self.batches[b]) for b in self.each_epoch)

    @property
    def share(self) -> float:
        """Share of the held-out tokens an epoch end's points are scored on (1.0: all of them)."""
        tokens = [sum(len(self.rows[i]) for i in batch) for batch in self.batches]
        return sum(tokens[b] for b in self.each_epoch) / sum(tokens) if sum(tokens) else 1.0


def _score_held_out(base: Base, prompt: torch.Tensor, held: _HeldOut,
                    everything: bool) -> tuple[tuple[float, float], tuple[float, float] | None]:
    """((the prompt's, the base model's) mean loss on the epoch-end batches, (the base model's, the
    prompt's) on all of them, as Done's metrics hold them, or None when not all were scored).

    `everything`: score all batches (a short run's end; a long run scores them all anyway). The
    base model's scores come from `held.base_memo` where a batch was scored before. Each mean is
    `evaluate.pooled` over its batches in order: on all of them, exactly `mean_loss`'s number.
    """
    numbers = list(range(len(held.batches))) if everything else held.each_epoch
    tuned = dict(zip(numbers, batch_losses(base, prompt.detach(), held.rows, [held.batches[b] for b in numbers])))
    keys = {b: tuple(tuple(held.rows[i]) for i in held.batches[b]) for b in numbers}
    if new := [b for b in numbers if keys[b] not in held.base_memo]:
        for b, score in zip(new, batch_losses(base, None, held.rows, [held.batches[b] for b in new])):
            held.base_memo[keys[b]] = score
    untuned = {b: held.base_memo[keys[b]] for b in numbers}
    epoch = pooled([tuned[b] for b in held.each_epoch]), pooled([untuned[b] for b in held.each_epoch])
    if len(numbers) < len(held.batches):
        return epoch, None
    return epoch, (pooled([untuned[b] for b in numbers]), pooled([tuned[b] for b in numbers]))


def _epoch_end_scores(base: Base, prompt: torch.Tensor, held: _HeldOut, last: bool, world: int, stop, step: int,
                      last_step_s: float | None):
    """An epoch end's scoring, after giving way to a generation on this CPU (yields Paused first).

    Returns (through `yield from`) the prompt's and the base model's loss on the epoch-end
    batches, `_score_held_out`'s scores of all held-out rows (or None) and the seconds it took.
    """
    if not held.rows:
        return None, None, None, 0.0
    if world == 1:
        yield from _before_scoring(base.device, stop, step, last_step_s)
    t_scoring = time.perf_counter()
    (held_loss, base_held), everything = _score_held_out(base, prompt, held, last)
    return held_loss, base_held, everything, time.perf_counter() - t_scoring


def _batch_order(lengths: list[int], config: TuneConfig, done_epochs: int) -> random.Random:
    """The seeded RNG that shuffles the batches, past the shuffles of a resumed prompt's `done_epochs`.

    A resumed run replays the saved epochs' shuffles, so on the same rows it sees the batch
    order a single longer run would have seen next, not epoch 1's order again.
    """
    rng = random.Random(config.seed)
    for _ in range(done_epochs):
        length_batches(lengths, config.batch_size, rng)
    return rng


def _pause_or_stop(world: int, device: torch.device, stop, step: int, last_step_s: float | None):
    """Before a step: give way to a generation on this CPU (yields Paused first), then whether to stop.

    Returns (through `yield from`) True when `stop` is set in any process, so all stop at the same step.
    """
    if world == 1 and device.type == "cpu" and turns.decoding_now():  # a generation goes first
        yield Paused(step, turns.pause_limit(last_step_s=last_step_s))  # (the wait is not training time)
        turns.let_decoding_run(device, stop, last_step_s=last_step_s)
    return _any_process(stop is not None and stop.is_set(), world, device)


def _before_scoring(device: torch.device, stop, step: int, last_step_s: float | None):
    """Before a held-out scoring: give way to a generation on this CPU, announced by a Paused event."""
    if device.type == "cpu" and turns.decoding_now():
        yield Paused(step, turns.pause_limit(last_step_s=last_step_s))
    turns.let_decoding_run(device, stop, last_step_s=last_step_s)


def train(base: Base, train_rows: Sequence[Row], config: TuneConfig, held_out_rows: Sequence[Row] = (),
          stop: threading.Event | None = None, resume: SoftPrompt | None = None, resume_name: str | None = None,
          base_scores: dict | None = None, snapshot_every: int = 0) -> Iterator[Event]:
    """Prompt-tune `base` on `train_rows`; yields Start, then Step per batch and EpochEnd per epoch, then Done.

    With `resume`, training continues that prompt (and its optimizer state, when it has one)
    for `config.epochs` more epochs: steps and epochs are numbered on from its history, the
    result's history is the old one followed by the new, its config records the epochs of
    both runs, and `meta["resumed"]` lists each resume (from `resume_name`, at which step).
    `base_scores`: a dict the caller keeps across runs on the same `base` (a sweep's cells): the
    base model scores each distinct batch of held-out rows once and reads it from there after.
    `snapshot_every` > 0: also a Snapshot of the prompt after every that many steps.
    Refused (TrainingError) when the prompt does not fit `config` or `base`.

    >>> for event in train(base, rows, TuneConfig(epochs=1)):   # doctest: +SKIP
    ...     if isinstance(event, Step): print(event.step, event.loss)
    """
    if not train_rows:
        raise TrainingError("there are no rows to train on")
    done_steps, done_epochs = _check_resume(resume, config, base) if resume is not None else (0, 0)
    t0, device, (rank, world) = time.perf_counter(), base.device, data_parallel()
    data = encode_rows(base, train_rows, config)
    lengths = [len(r) for r in data]
    held = _HeldOut.of(encode_rows(base, held_out_rows, config) if held_out_rows else [], sum(lengths), config,
                       base_scores)
    rng = _batch_order(lengths, config, done_epochs)
    planned = math.ceil(len(data) / config.batch_size) * config.epochs  # this run's steps
    total = done_steps + planned  # the last step's number
    prompt, optimizer = _start_prompt(base, config, train_rows[0].prompt, resume)
    schedule, scaler = _lr_schedule(optimizer, planned, config), _loss_scaler(base, world)

    yield Start(total, len(data), len(held.rows), sum(lengths), resumed_at=done_steps, epoch_held_out_share=held.share)
    history = saved_history(resume) if resume is not None else {k: [] for k in HISTORY_KEYS}
    step, tokens_done, train_time, stopped = done_steps, 0, 0.0, False
    full = (None, None)  # (base model's, prompt's) loss on all held-out rows, when last scored: what a prompt kept now saves
    last_step_s: float | None = None  # the last step's own seconds: bounds a pause for a generation
    for epoch in range(done_epochs + 1, done_epochs + config.epochs + 1):
        epoch_loss, epoch_tokens = 0.0, 0
        for batch in length_batches(lengths, config.batch_size, rng):
            stopped = yield from _pause_or_stop(world, device, stop, step, last_step_s)
            if stopped:
                break
            t_step = time.perf_counter()
            loss, loss_sum, count = _step(base, prompt, [data[i] for i in batch], optimizer, scaler, rank, world,
                                          f"step {step + 1} (epoch {epoch})", config.learning_rate)
            schedule.step()
            step, tokens_done = step + 1, tokens_done + count
            epoch_loss, epoch_tokens = epoch_loss + loss_sum, epoch_tokens + count
            last_step_s = time.perf_counter() - t_step
            train_time += last_step_s
            history["step"].append(step)
            history["train_loss"].append(loss)
            yield Step(step=step, total_steps=total, epoch=epoch, loss=loss, tokens=tokens_done,
                       tokens_per_s=tokens_done / train_time, elapsed=time.perf_counter() - t0,
                       eta=(total - step) * train_time / (step - done_steps))
            if snapshot_every and (step - done_steps) % snapshot_every == 0:
                yield Snapshot(_kept(base, prompt, optimizer, config, resume, resume_name, train_rows, held_out_rows,
                                     history, full,
                                     _run_meta(step, True, t0, world, tokens_done, train_time), (done_steps, done_epochs)), step,
                               time.perf_counter() - t0)
        if stopped:
            break
        last = epoch == done_epochs + config.epochs  # the run's last epoch end scores every held-out row
        held_loss, base_held, everything, scoring = yield from _epoch_end_scores(base, prompt, held, last, world, stop,
                                                                                 step, last_step_s)
        full = everything or full
        record_epoch(history, epoch, step, held_loss, epoch_loss / epoch_tokens)
        yield EpochEnd(epoch, epoch_loss / epoch_tokens, held_loss, base_held, time.perf_counter() - t0, scoring,
                       held.acts if held.rows else None)

    if step == done_steps:
        raise TrainingError("training was stopped before the first step; there is nothing to keep")
    if stopped and held.rows:  # the kept prompt is not the one the last epoch measured
        full = _score_held_out(base, prompt, held, everything=True)[1]
    run = _run_meta(step, stopped, t0, world, tokens_done, train_time)
    soft = _kept(base, prompt, optimizer, config, resume, resume_name, train_rows, held_out_rows, history,
                 full, run, (done_steps, done_epochs))
    yield Done(soft=soft, stopped=stopped, steps=step - done_steps, elapsed=time.perf_counter() - t0)


def _run_meta(step: int, stopped: bool, t0: float, world: int, tokens_done: int, train_time: float) -> dict:
    return {"steps": step, "stopped": stopped, "train_seconds": round(time.perf_counter() - t0, 2), "processes": world,
            "tokens_per_s": round(tokens_done / train_time, 1) if train_time else None}


def _kept(base: Base, prompt: torch.nn.Parameter, optimizer, config: TuneConfig, resume: SoftPrompt | None,
          resume_name: str | None, train_rows: Sequence[Row], held_out_rows: Sequence[Row], history: dict,
          held_losses: tuple, run: dict, done: tuple[int, int]) -> SoftPrompt:
    """The prompt a run keeps now (its Done, or a Snapshot), with a resumed adapter's history and settings carried on."""
    # a resumed prompt records every epoch it has had, so labels like "20x15" stay true
    kept = config if resume is None else dataclasses.replace(config, epochs=done[1] + config.epochs)
    history = {key: list(values) for key, values in history.items()}  # a snapshot must not grow with the run
    soft = _trained_prompt(base, prompt, optimizer, kept, train_rows, held_out_rows, history, held_losses, run)
    if resume is not None:
        soft.meta = _resumed_meta(resume, soft.meta, resume_name, *done, config.epochs)
    return soft


def _trained_prompt(base: Base, prompt: torch.nn.Parameter, optimizer, config: TuneConfig, train_rows: Sequence[Row],
                    held_out_rows: Sequence[Row], history: dict, held_losses: tuple, run: dict) -> SoftPrompt:
    """The SoftPrompt a run keeps: the prompt and AdamW's state on the CPU, and the meta adapters.py saves.

    `held_losses`: (the base model's, the kept prompt's) mean held-out loss, None where not
    scored; `run`: steps, stopped, train_seconds, tokens_per_s and processes, as train() measured them.
    """
    cfg = base.model.config
    state = optimizer.state[prompt]
    return SoftPrompt(
        embeddings=prompt.detach().float().cpu().clone(),
        base_model=base.model_id,
        config=config,
        optimizer_state={
            "exp_avg": state["exp_avg"].detach().float().cpu().clone(),
            "exp_avg_sq": state["exp_avg_sq"].detach().float().cpu().clone(),
            "step": torch.as_tensor(state["step"]).detach().float().cpu().reshape(()).clone(),
        } if state else None,  # none when fp16 overflowed at every step (the scaler skipped them all)
        meta={
            "dataset": config.dataset,
            "acts": [r.act for r in train_rows],
            "held_out_acts": [r.act for r in held_out_rows],
            "history": history,
            "metrics": {
                "base_held_out_loss": held_losses[0],
                "held_out_loss": held_losses[1],
                "final_train_loss": history["train_loss"][-1],
            },
            "steps": run["steps"],
            "stopped": run["stopped"],
            "train_seconds": run["train_seconds"],
            "tokens_per_s": run["tokens_per_s"],
            "precision": base.precision,
            "device": base.device.type,  # cpu | cuda: what the speed above was measured on
            "processes": run["processes"],  # data-parallel processes that trained it
            "num_layers": getattr(cfg, "num_hidden_layers", None),
            "num_attention_heads": getattr(cfg, "num_attention_heads", None),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def _resumed_meta(resume: SoftPrompt, meta: dict, name: str | None, steps: int, epochs: int, more: int) -> dict:
    """A resumed run's meta: this run's, over the saved one's other keys, with acts merged and the resume listed.

    `acts` becomes every act either run trained on and `held_out_acts` drops them, so evaluating
    the result never scores an act it trained on. `resumed` gains one entry per resume.
    """
    old = resume.meta
    acts = list(dict.fromkeys(resume.meta_texts("acts") + meta["acts"]))
    trained = set(acts)
    resumed = [r for r in old.get("resumed", []) if isinstance(r, dict)] if isinstance(old.get("resumed"), list) else []
    resumed.append({
        "from": name, "at_step": steps, "at_epoch": epochs, "epochs": more,
        "fresh_optimizer": resume.optimizer_state is None, "created": meta["created"],
    })
    return {
        **old, **meta, "acts": acts, "held_out_acts": [a for a in meta["held_out_acts"] if a not in trained],
        "resumed": resumed,
    }
