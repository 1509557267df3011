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

Batching is exact in float32 (to 1e-6) but not in bf16: on a GPT-2-124M-shaped model (random
weights, this project's CPU) the base row's logits moved by up to 0.02 next to a tuned row, and
differed between a 5- and a 13-token partner from step 35 on: enough to flip a greedy near-tie.
Side-by-side display accepts that; metrics decode each continuation alone (evaluate.iter_rouge).

Texts are returned for display: without the whitespace they open with (`display_text`).
`stream_ids` returns the raw token ids.

What it does not do: choose adapters or format output for a UI.
"""

from __future__ import annotations

import math
import queue
import threading
from dataclasses import dataclass
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
from transformers.generation.streamers import BaseStreamer

from .model import Base, SoftPrompt, prompt_inputs


class GenerationError(ValueError):
    """Input or settings generation cannot use; the message is one sentence for the user."""


@dataclass
class Decoding:
    max_new_tokens: int = 64  # 1-1024, also capped by the context
    do_sample: bool = False  # False: greedy
    temperature: float = 0.8  # > 0; lower is more conservative (sampling only)
    top_p: float = 0.95  # (0, 1]; nucleus size (sampling only)
    top_k: int = 50  # 0 turns it off (sampling only)
    repetition_penalty: float = 1.0  # 1 is off; 1.1-1.3 discourages loops (over generated tokens)
    # 0 is off; n > 0: no n tokens in a row appear twice in the continuation. 3 by default: on
    # SmolLM2 greedy text looped (27-33% repeated word 4-grams), with 3 neither column did and
    # the tuned column's ROUGE-L held; repetition penalties and sampling scored lower (README "Decoding")
    no_repeat_ngram_size: int = 3
    seed: int = 0  # sampling seed; the same for base and tuned

    def __post_init__(self) -> None:
        def bad(name, rule):
            raise GenerationError(f"{name} must be {rule}, got {getattr(self, name)!r}")

        for name, lo, hi in (("max_new_tokens", 1, 1024), ("top_k", 0, 100_000), ("no_repeat_ngram_size", 0, 100),
                             ("seed", 0, 2**32 - 1)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                bad(name, f"a whole number from {lo} to {hi}")
        for name, lo, hi in (("temperature", 1e-3, 10.0), ("top_p", 1e-3, 1.0), ("repetition_penalty", 1.0, 10.0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not lo <= v <= hi:
                bad(name, f"a number from {lo:g} to {hi:g}")
        if not isinstance(self.do_sample, bool):
            bad("do_sample", "true or false")


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


LEAN_DECODE = True  # decode_steps rather than HF `generate` (README "Performance": measured per CPU kind)


@torch.inference_mode()
def decode_steps(base: Base, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor,
                 decoding: Decoding, cancel: threading.Event | None = None) -> Iterator[list[int]]:
    """What HF `generate` does for our batches, without its per-step machinery: one token per row per step.

    The prompt pass computes logits at the last position only; each later step feeds the new
    tokens with the KV cache, one more mask column and the next position per row. The same
    logits processors as `generate` (no-repeat n-grams, repetition penalty, our seeded
    sampler) see the generated tokens only, in float32; a row past its end-of-text gets the pad
    token, and decoding stops when every row has ended, after `max_new_tokens`, or on `cancel`.
    Token for token the same as `generate` (tests/test_generate.py).
    """
    model, rows = base.model, embeds.shape[0]
    processors = _processors(decoding, rows, base.device)
    eos, pad = base.eos_id, base.tokenizer.pad_token_id
    cache = DynamicCache(config=model.config)
    out = model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, cache=cache, use_cache=True,
                logits_to_keep=1)
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
        mask = torch.cat([mask, mask.new_ones(rows, 1)], dim=-1)
        position = position + 1
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=position, cache=cache, use_cache=True)
        logits = out.logits[:, -1, :]


def stream_ids(
    base: Base, prompts: Sequence[torch.Tensor | SoftPrompt | None], ids: list[int], decoding: Decoding | None = None
) -> Iterator[list[list[int]]]:
    """Continue token ids once per prompt (None = the base model) in one batch; yields every row's new ids so far.

    A row that produced end-of-text stops growing (the eos itself is not included). Closing
    the iterator early stops the generation. `ids` must already fit the context (fit_input).
    """
    decoding = decoding or Decoding()
    tensors = [p.embeddings if isinstance(p, SoftPrompt) else p for p in prompts]
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
            if LEAN_DECODE:
                for step in decode_steps(base, embeds, mask, positions, decoding, cancel):
                    streamer.queue.put(step)
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
    base: Base, prompts: Sequence[torch.Tensor | SoftPrompt | None], text: str, decoding: Decoding | None = None
) -> Iterator[list[str]]:
    """Continue `text` once per prompt (None = the base model) in one batch; yields every row's text so far.

    Every row uses the same decoding settings and seed. Texts are `display_text`s (no leading
    whitespace), so a row can stay "" for a step or two while the model writes new lines.
    Input longer than the context allows is cut from the front (fit_input).
    """
    decoding = decoding or Decoding()
    if not isinstance(text, str) or not text.strip():
        raise GenerationError("the input text is empty")
    ids = base.encode(text)
    num_virtual = max((_length(p) for p in prompts), default=0)
    ids, _ = fit_input(base, ids, num_virtual, decoding.max_new_tokens)
    for rows in stream_ids(base, prompts, ids, decoding):
        yield [display_text(base.tokenizer.decode(r, skip_special_tokens=True)) for r in rows]


def _length(prompt: torch.Tensor | SoftPrompt | None) -> int:
    if prompt is None:
        return 0
    return prompt.num_virtual_tokens if isinstance(prompt, SoftPrompt) else prompt.shape[0]


def stream_compare(
    base: Base, prompts: Sequence[SoftPrompt | torch.Tensor], text: str, decoding: Decoding | None = None
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
