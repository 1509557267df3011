"""Generation: base and tuned continuations of the same text, streamed, with the KV cache.

Each row of a batch is `[soft prompt; token embeddings]` (model.prompt_inputs) passed to the
base model as `inputs_embeds`, left-padded with explicit position ids so every row sees the
positions it would see alone, then decoded with the KV cache by `decode_steps` (the same tokens
as the model's own `generate`, without its per-step machinery; `LEAN_DECODE = False` uses
`generate`). We do not call `PeftModel.generate`: with
transformers 5.24 + peft 0.21 its cached path returns wrong tokens after the first for
prompt tuning (tests/test_generate.py compares our cached output with a step-by-step
uncached reference, token for token).

Sampling draws from one `torch.Generator` per row seeded with `Decoding.seed`, not from the
global RNG: the base row samples the same tokens alone or next to one or two tuned rows, and
two sessions sampling at once cannot disturb each other.

Batching is exact in float32 (to 1e-6) but not in bf16: a row's logits move a little with the
rows beside it, enough to flip a greedy near-tie (docs/decoding.md).
Side-by-side display accepts that; metrics decode each continuation alone (evaluate.iter_rouge).

Texts are returned for display: without the whitespace they open with (`display_text`).
`stream_ids` returns the raw token ids.

What it does not do: choose adapters or format output for a UI.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from typing import Iterator, Sequence

import torch
from transformers import (
    DynamicCache,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    NoRepeatNGramLogitsProcessor,
    RepetitionPenaltyLogitsProcessor,
    StoppingCriteria,
    StoppingCriteriaList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)
from transformers.cache_utils import DynamicLayer
from transformers.generation.streamers import BaseStreamer

from . import turns
from .config import Decoding, GenerationError  # beside TuneConfig, torch-free (the CLI's --help reads Decoding)
from .model import Base, SoftPrompt, prompt_inputs
from .written import Written
from .written import embeddings as written_embeddings

Prompt = torch.Tensor | SoftPrompt | Written | None  # what goes in front of a row: None is the base model alone


def fit_input(base: Base, ids: list[int], num_virtual: int, max_new_tokens: int) -> tuple[list[int], int]:
    """Keep the last input tokens that fit `num_virtual + input + max_new_tokens <= context`.

    Returns (kept ids, how many were cut from the front). Refuses when nothing would fit.

    >>> # GPT-2 (1,024 positions), 20 virtual, 64 new: at most 940 input tokens are kept
    """
    room = base.max_positions - num_virtual - max_new_tokens
    if room < 1:
        raise GenerationError(
            f"{num_virtual} virtual tokens + {max_new_tokens} new tokens leave no room for input "
            f"in the model's {base.max_positions}-token context; ask for fewer new tokens"
        )
    if len(ids) <= room:
        return ids, 0
    return ids[-room:], len(ids) - room


class _SampleWithGenerators(LogitsProcessor):
    """Draw each row's next token with its own seeded generator; leave only that token possible.

    With this last in the processor list and greedy decoding, `generate` picks the sampled token.
    """

    def __init__(self, seed: int, rows: int, device: torch.device):
        self.generators = [torch.Generator(device=device).manual_seed(seed) for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        probs = torch.softmax(scores.float(), dim=-1)
        picks = [torch.multinomial(probs[i], 1, generator=g) for i, g in enumerate(self.generators)]
        out = torch.full_like(scores, -math.inf)
        for i, pick in enumerate(picks):
            out[i, pick] = 0.0
        return out


class _Cancelled(StoppingCriteria):
    def __init__(self, flag: threading.Event):
        self.flag = flag

    def __call__(self, input_ids, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.flag.is_set(), dtype=torch.bool, device=input_ids.device)


class _QueueStreamer(BaseStreamer):
    """Hands each step's new tokens (one per row) to the consuming thread."""

    def __init__(self):
        self.queue: queue.Queue = queue.Queue()

    def put(self, value: torch.Tensor) -> None:
        if value.dim() == 1:  # the first put is the prompt ids (empty with inputs_embeds): skip it
            self.queue.put(value.tolist())

    def end(self) -> None:
        pass


def _processors(decoding: Decoding, rows: int, device: torch.device) -> LogitsProcessorList:
    procs = LogitsProcessorList()
    if decoding.repetition_penalty != 1.0:
        procs.append(RepetitionPenaltyLogitsProcessor(decoding.repetition_penalty))
    if decoding.no_repeat_ngram_size:
        # It reads `input_ids`, which with inputs_embeds hold the generated tokens only: the
        # input text may repeat, the continuation never repeats one of its own n-grams.
        procs.append(NoRepeatNGramLogitsProcessor(decoding.no_repeat_ngram_size))
    if decoding.do_sample:
        procs.append(TemperatureLogitsWarper(decoding.temperature))
        if decoding.top_k:
            procs.append(TopKLogitsWarper(decoding.top_k))
        if decoding.top_p < 1.0:
            procs.append(TopPLogitsWarper(decoding.top_p))
        procs.append(_SampleWithGenerators(decoding.seed, rows, device))
    return procs


PACE_MIN_STEPS = 16
_pace: dict[int, float] = {}  # rows -> seconds per new token of this process's last generation of that many rows


def decode_pace(rows: int = 1) -> float | None:
    """Seconds per new token of this process's last generation of `rows` rows, as measured (None: none yet).

    Without one of exactly `rows`, the nearest measured batch above it stands in (more rows take
    longer per step: an upper bound); only a smaller one measured gives None. What an estimate of
    work still to come goes by (the Sweep tab's ROUGE-L before a sweep starts).
    """
    known = sorted(n for n in _pace if n >= rows)
    return _pace[known[0]] if known else None


LEAN_DECODE = True  # decode_steps rather than HF `generate` (measured per CPU kind: docs/performance.md)
GPT2_STEP = True  # decoding steps of a GPT-2 through GPT2Step rather than the model's forward (docs/performance.md)


class ReservedLayer(DynamicLayer):
    """A KV-cache layer that writes each step's keys and values into room reserved once.

    transformers' `DynamicLayer` concatenates the whole cache with the new position at every
    step: 24 copies of a growing tensor per GPT-2 step, a visible share of a decode's time. Here
    `keys`/`values` are views of the filled part of tensors sized for the prompt plus every new
    token, so attention reads exactly the positions so far (`StaticCache`, which attends over its
    whole reserved length, was slower: docs/performance.md). Past the room it grows, doubling.
    """

    def __init__(self, room: int):
        super().__init__()
        self.room, self.length = room, 0

    @staticmethod
    def _positions(like: torch.Tensor, n: int) -> torch.Tensor:
        """Unfilled room for `n` positions shaped like `like` ([..., positions, dim])."""
        return like.new_empty(*like.shape[:-2], n, like.shape[-1])

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device = key_states.device
        self._keys, self._values = self._positions(key_states, self.room), self._positions(value_states, self.room)
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self._keys.shape[-2]:
            more = max(end, 2 * self._keys.shape[-2]) - self.length
            self._keys, self._values = (torch.cat([t[..., : self.length, :], self._positions(t, more)], dim=-2)
                                        for t in (self._keys, self._values))
        self._keys[..., self.length : end, :] = key_states
        self._values[..., self.length : end, :] = value_states
        self.length = end
        self.keys, self.values = self._keys[..., :end, :], self._values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def reset(self) -> None:
        self.length = 0
        super().reset()

    def _unsupported(self, *args, **kwargs):
        raise NotImplementedError("a ReservedLayer serves decode_steps: no cropping, reordering or batch changes")

    crop = batch_repeat_interleave = batch_select_indices = reorder_cache = _unsupported


def reserved_cache(model: torch.nn.Module, room: int) -> DynamicCache:
    """The model's `DynamicCache` with every plain layer a `ReservedLayer` of `room` positions (sliding ones kept)."""
    cache = DynamicCache(config=model.config)
    cache.layers = [ReservedLayer(room) if type(layer) is DynamicLayer else layer for layer in cache.layers]
    return cache


class GPT2Step:
    """A GPT-2 decoding step written out: new tokens in, last-position logits out, the cache updated.

    The same operations in the same order as transformers' eager GPT-2 (`GPT2Block`,
    `eager_attention_forward`), on the model's own modules' weights (so packed or relaid
    linears and the GELU in use are the ones that run), without the forward's Python: module
    calls, argument handling, the causal mask rebuilt every step. The padding mask becomes an
    additive bias once. Same logits as the model's forward (tests/test_generate.py); that Python
    was a large share of a decode's time (docs/performance.md).
    Only for what it writes out: a `GPT2LMHeadModel` on a CPU (where the model has eager
    attention and `decode_steps` reserves the cache) in eval mode, no cross-attention, no
    reordered upcast attention, and no forward hooks anywhere, since they would not run (`fits`);
    the prompt pass stays the model's.
    """

    @staticmethod
    def fits(model: torch.nn.Module) -> bool:
        from transformers import GPT2LMHeadModel

        config = model.config
        return (GPT2_STEP and type(model) is GPT2LMHeadModel and model.device.type == "cpu" and not model.training
                and config._attn_implementation == "eager" and not config.reorder_and_upcast_attn
                and not config.add_cross_attention
                and not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
                and not (torch.nn.modules.module._global_forward_hooks
                         or torch.nn.modules.module._global_forward_pre_hooks))

    def __init__(self, model: torch.nn.Module, cache: DynamicCache, mask: torch.Tensor, room: int):
        body, config = model.transformer, model.config
        self.heads, self.width = config.n_head, config.n_embd
        self.wte, self.wpe, self.ln_f, self.head = body.wte.weight, body.wpe.weight, body.ln_f, model.lm_head.forward
        self.blocks = [
            (block.ln_1, block.attn.c_attn.forward, block.attn.scaling, block.attn.c_proj.forward,
             block.ln_2, block.mlp.c_fc.forward, block.mlp.act.forward, block.mlp.c_proj.forward, layer)
            for block, layer in zip(body.h, cache.layers)
        ]
        dtype = self.wte.dtype
        self.bias = torch.zeros(mask.shape[0], 1, 1, max(room, mask.shape[1]), dtype=dtype, device=mask.device)
        self.bias[:, 0, 0, : mask.shape[1]].masked_fill_(mask == 0, torch.finfo(dtype).min)
        self.cache = cache

    def _norm(self, x: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
        return torch.nn.functional.layer_norm(x, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """`tokens` and `positions` [rows, 1] -> logits [rows, vocab] at that position."""
        rows, heads, width = tokens.shape[0], self.heads, self.width
        length = self.cache.get_seq_length() + 1  # the positions attended to, this one included
        if length > self.bias.shape[-1]:  # past the room: every later position is real
            self.bias = torch.cat([self.bias, torch.zeros_like(self.bias)], dim=-1)
        bias = self.bias[..., :length]
        x = torch.nn.functional.embedding(tokens, self.wte) + torch.nn.functional.embedding(positions, self.wpe)
        for ln_1, c_attn, scaling, c_proj, ln_2, c_fc, act, mlp_proj, layer in self.blocks:
            query, key, value = c_attn(self._norm(x, ln_1)).split(width, dim=2)
            query = query.view(rows, 1, heads, -1).transpose(1, 2)
            key, value = layer.update(key.view(rows, 1, heads, -1).transpose(1, 2),
                                      value.view(rows, 1, heads, -1).transpose(1, 2))
            weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
            weights = torch.nn.functional.softmax(weights + bias, dim=-1).type(value.dtype)
            attended = torch.matmul(weights, value).transpose(1, 2).reshape(rows, 1, width)
            x = c_proj(attended) + x
            x = x + mlp_proj(act(c_fc(self._norm(x, ln_2))))
        return self.head(self._norm(x, self.ln_f))[:, -1, :]


@torch.inference_mode()
def decode_steps(base: Base, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 decoding: Decoding, cancel: threading.Event | None = None) -> Iterator[list[int]]:
    """What HF `generate` does for our batches, without its per-step machinery: one token per row per step.

    The prompt pass computes logits at the last position only; each later step feeds the new
    tokens with the KV cache (`ReservedLayer`s on a CPU), one more mask column and the next
    position per row, through `GPT2Step` where it fits. The same logits processors as `generate` (no-repeat
    n-grams, repetition penalty, our seeded sampler) see the generated tokens only, in float32;
    a row past its end-of-text gets the pad token, and decoding stops when every row has ended,
    after `max_new_tokens`, or on `cancel`. Token for token the same as `generate`
    (tests/test_generate.py).
    """
    model, rows = base.model, embeds.shape[0]
    processors = _processors(decoding, rows, base.device)
    eos, pad = base.eos_id, base.tokenizer.pad_token_id
    room = embeds.shape[1] + decoding.max_new_tokens
    on_cpu = base.device.type == "cpu"  # a GPU keeps transformers' cache: the reserved one is measured on CPUs only
    cache = reserved_cache(model, room) if on_cpu else DynamicCache(config=model.config)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
    step_by_hand = GPT2Step(model, cache, mask, room) if GPT2Step.fits(model) else None  # fits: on a CPU only
    logits = out.logits[:, -1, :]
    generated = torch.empty((rows, 0), dtype=torch.long, device=base.device)
    ended = torch.zeros(rows, dtype=torch.bool, device=base.device)
    position = positions[:, -1:]
    for step in range(decoding.max_new_tokens):
        token = processors(generated, logits.float()).argmax(-1)
        token = torch.where(ended, torch.full_like(token, pad), token)
        generated = torch.cat([generated, token[:, None]], dim=-1)
        ended |= token == eos
        yield token.tolist()
        if bool(ended.all()) or step == decoding.max_new_tokens - 1 or (cancel is not None and cancel.is_set()):
            return
        position = position + 1
        if step_by_hand is not None:
            logits = step_by_hand(token[:, None], position)
            continue
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
        logits = out.logits[:, -1, :]


def stream_ids(
    base: Base, prompts: Sequence[Prompt], ids: list[int], decoding: Decoding | None = None
) -> Iterator[list[list[int]]]:
    """Continue token ids once per prompt (None = the base model) in one batch; yields every row's new ids so far.

    A `Written` prompt becomes its token embeddings here, on the model's device: it crosses into a
    ZeroGPU worker as token ids. A row that produced end-of-text stops growing (the eos itself is
    not included). Closing the iterator early stops the generation. `ids` must already fit the
    context (fit_input).
    """
    decoding = decoding or Decoding()
    tensors = [p.embeddings if isinstance(p, SoftPrompt) else written_embeddings(base, p) if isinstance(p, Written)
               else p for p in prompts]
    for t in tensors:
        if t is not None and (t.dim() != 2 or t.shape[1] != base.hidden_size):
            raise GenerationError(
                f"the soft prompt has shape {tuple(t.shape)}; this model needs [tokens, {base.hidden_size}]"
            )
    embeds, mask, positions = prompt_inputs(base, list(tensors), [ids] * len(tensors), pad_left=True)
    streamer, cancel = _QueueStreamer(), threading.Event()
    failure: list[BaseException] = []

    def work():
        try:
            with turns.decoding(base.device):  # a training in this process waits between its steps
                if LEAN_DECODE:
                    started, steps = time.perf_counter(), 0
                    for step in decode_steps(base, embeds, mask, positions, decoding, cancel):
                        streamer.queue.put(step)
                        steps += 1
                    if steps >= PACE_MIN_STEPS:  # a few steps are mostly the prompt's forward pass
                        _pace[len(tensors)] = (time.perf_counter() - started) / steps
                else:
                    config = GenerationConfig(
                        max_new_tokens=decoding.max_new_tokens, do_sample=False,
                        eos_token_id=base.eos_id, pad_token_id=base.tokenizer.pad_token_id,
                    )
                    base.model.generate(
                        inputs_embeds=embeds, attention_mask=mask, position_ids=positions,
                        generation_config=config, logits_processor=_processors(decoding, len(tensors), base.device),
                        stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]), streamer=streamer,
                    )
        except BaseException as e:  # re-raised in the consuming thread
            failure.append(e)
        finally:
            streamer.queue.put(None)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    out: list[list[int]] = [[] for _ in tensors]
    done = [False] * len(tensors)
    try:
        while (step := streamer.queue.get()) is not None:
            for i, token in enumerate(step):
                if done[i]:
                    continue
                if token == base.eos_id:
                    done[i] = True
                else:
                    out[i].append(token)
            yield [list(o) for o in out]
    finally:
        cancel.set()  # the consumer went away (or we finished): stop decoding
        worker.join()
    if failure:
        raise failure[0]


def display_text(text: str) -> str:
    """A continuation as a reader sees it: without the spaces and new lines it opens with.

    GPT-2 often starts a continuation with a new line or two; shown as is, that is blank lines
    above the answer. Only the start is touched. ROUGE-L counts words, so scores do not change.

    >>> display_text("\\n\\nI'm a rapper.")
    "I'm a rapper."
    """
    return text.lstrip()


def stream_many(
    base: Base, prompts: Sequence[Prompt], text: str, decoding: Decoding | None = None
) -> Iterator[list[str]]:
    """Continue `text` once per prompt (None = the base model) in one batch; yields every row's text so far.

    Every row uses the same decoding settings and seed. Texts are `display_text`s (no leading
    whitespace), so a row can stay "" for a step or two while the model writes new lines.
    Input longer than the context allows is cut from the front (fit_input).
    """
    decoding = decoding or Decoding()
    for rows in stream_ids(base, prompts, _input_ids(base, prompts, text, decoding.max_new_tokens), decoding):
        yield [display_text(base.tokenizer.decode(r, skip_special_tokens=True)) for r in rows]


def _input_ids(base: Base, prompts: Sequence[Prompt], text: str, max_new_tokens: int) -> list[int]:
    """`text`'s ids as every row of a `stream_many` batch gets them: cut from the front to fit beside the longest prompt."""
    if not isinstance(text, str) or not text.strip():
        raise GenerationError("the input text is empty")
    num_virtual = max((prompt_length(p) for p in prompts), default=0)
    return fit_input(base, base.encode(text), num_virtual, max_new_tokens)[0]


def prompt_length(prompt: Prompt) -> int:
    """The positions a prompt takes in front of the input: 0 for the base model, else its (virtual) tokens."""
    if prompt is None:
        return 0
    if isinstance(prompt, SoftPrompt):
        return prompt.num_virtual_tokens
    return prompt.tokens if isinstance(prompt, Written) else prompt.shape[0]


def contexts(base: Base, prompts: Sequence[Prompt], text: str, max_new_tokens: int) -> list[tuple[int, int]]:
    """(prompt tokens, input tokens) that each row of `stream_many(base, prompts, text)` reads before its first new token.

    What a column costs in context: every row gets the same input ids (cut to fit the longest
    prompt, as `stream_many` cuts them); a row's prompt is 0 for the base model, its virtual
    tokens for a soft prompt, its token count for a written one.

    >>> contexts(base, [None, written_164, soft_20], "I want you to act as a rapper.", 64)   # doctest: +SKIP
    [(0, 9), (164, 9), (20, 9)]
    """
    ids = _input_ids(base, prompts, text, max_new_tokens)
    return [(prompt_length(p), len(ids)) for p in prompts]


def stream_compare(
    base: Base, prompts: Sequence[SoftPrompt | torch.Tensor | Written], text: str, decoding: Decoding | None = None
) -> Iterator[tuple[str, ...]]:
    """(base text, one text per prompt) so far, all decoded in one batch of `1 + len(prompts)` rows.

    The prompts may have different lengths (shorter rows are left-padded). Same decoding
    settings and seed for every row; with sampling, each row's draws do not depend on the
    other rows. Texts are `display_text`s.

    >>> for base_text, a_text, b_text in stream_compare(base, [soft_a, soft_b], text):   # doctest: +SKIP
    ...     print(base_text, "|", a_text, "|", b_text)
    """
    if not prompts:
        raise GenerationError("there is no prompt to compare the base model with")
    for texts in stream_many(base, [None, *prompts], text, decoding):
        yield tuple(texts)


def stream_pair(base: Base, soft: SoftPrompt | torch.Tensor | None, text: str, decoding: Decoding | None = None) -> Iterator[tuple[str, str]]:
    """(base text so far, tuned text so far), decoded side by side in one batch of two (`stream_compare`)."""
    yield from stream_compare(base, [soft], text, decoding)


def generate(base: Base, soft: SoftPrompt | torch.Tensor | None, text: str, decoding: Decoding | None = None) -> str:
    """The whole continuation of `text` with `soft` in front (None = the base model), decoded alone.

    Returned as a `display_text` (no leading whitespace).
    """
    result = ""
    for (result,) in stream_many(base, [soft], text, decoding):
        pass
    return result
