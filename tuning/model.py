"""The base model, loaded once per process, and the one place where a soft prompt meets it.

A tuned model is a tensor: prompt tuning learns `[num_virtual_tokens, hidden]` numbers and
nothing else, so a `SoftPrompt` carries that tensor plus what produced it. Training,
generation and evaluation all prepend it the same way (`prompt_inputs`), through
`inputs_embeds` on the shared, frozen base model. That keeps the base read-only (any
number of sessions can use different prompts at once) and lets `generate` use its KV
cache, which `PeftModel.generate(use_cache=True)` gets wrong for prompt tuning with
transformers 5.24 + peft 0.21 (wrong tokens after the first).

What this file does not do: training (train.py), decoding (generate.py), files (adapters.py),
choose the device and precision (hardware.py) or the kernels (kernels.py).
"""

from __future__ import annotations

import functools
import itertools
import os
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import kernels
from .config import DEFAULT_MODEL, TuneConfig, same_model
from .hardware import ModelError, pick_device, resolve_precision, this_cpu_kind
from .hubprobe import hub_reachable, is_connection_error, offline_mode

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
AMX_LENGTH_MULTIPLE = 16  # bf16 batches on an AMX CPU are padded to a multiple of this many positions


_bases: "weakref.WeakValueDictionary[int, Base]" = weakref.WeakValueDictionary()  # key -> loaded model
_keys = itertools.count()


def _loaded(key: int) -> "Base":
    """The Base a pickled reference names (see Base.__reduce__)."""
    base = _bases.get(key)
    if base is None:
        raise ModelError("this process has not loaded the model a pickled Base refers to; "
                         "a Base can only be unpickled in the process that loaded it or a fork of it")
    return base


@dataclass(eq=False)
class Base:
    """A frozen causal LM in eval mode with its tokenizer. Shared read-only by every session.

    Pickles as a reference, not as weights: a ZeroGPU call runs in a forked worker that
    already holds the model (inherited from the server), so the argument that crosses is a
    key into this process's loaded models (`_bases`), which the fork has too.
    """

    model: torch.nn.Module
    tokenizer: object
    model_id: str
    precision: str  # the resolved one: fp32 | bf16 | fp16
    requested_precision: str = "auto"  # what was asked (a GPU worker resolves `auto` again for its GPU)
    # Training and scoring batches are padded to a multiple of this many positions (see
    # `length_multiple`); None: chosen for the machine when used. Set it to compare (the bench does).
    pad_to_multiple_of: int | None = None
    # A batch with a soft prompt computes the prompt's positions once (True) or in every row
    # (False); None: chosen for the device (`shares_prompt`). Set it to compare (the bench does).
    share_prompt: bool | None = None
    # The Hub id of a local copy (`python app.py --model /models/gpt2 --hub-model openai-community/gpt2`):
    # an adapter trained on either name fits (`is_model`)
    hub_id: str | None = None
    # init=False: a copy (dataclasses.replace) gets its own key, so it never takes the original's
    # place in `_bases` and leaves it unpicklable once the copy is gone
    key: int = field(default_factory=lambda: next(_keys), init=False, repr=False)

    def __post_init__(self) -> None:
        _bases[self.key] = self

    def __reduce__(self):
        return _loaded, (self.key,)

    def is_model(self, name: str) -> bool:
        """Whether an adapter recorded as trained on `name` was trained on this model (ids, old ids, `hub_id`)."""
        return same_model(name, self.model_id) or (self.hub_id is not None and same_model(name, self.hub_id))

    def mismatch(self, trained_on: str) -> str | None:
        """None when an adapter recorded as trained on `trained_on` fits this model, else the sentence refusing it.

        'unknown' (a plain PEFT adapter that names no model) fits. A model loaded from a local
        path without a `hub_id` is told how to say which Hub model it is a copy of.
        """
        if trained_on == "unknown" or self.is_model(trained_on):
            return None
        hint = (f"; if {self.model_id} is a local copy of {trained_on}, add --hub-model {trained_on}"
                if self.hub_id is None and os.path.exists(os.path.expanduser(self.model_id)) else "")
        return f"the adapter was trained on {trained_on}, the loaded model is {self.model_id}{hint}"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.precision]

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().weight.shape[1]

    @property
    def length_multiple(self) -> int:
        """Positions a training or scoring batch is padded to a multiple of: 16 for bf16 on an AMX
        CPU, else 1 (no padding beyond the batch's longest row).

        oneDNN builds kernels for every new matmul shape, so on AMX, where each batch length was
        a new shape, the first epoch ran markedly slower than the second; lengths in steps of 16
        give a batch of 4 rows a multiple of 64 positions. Elsewhere padding showed no consistent
        gain (docs/performance.md).
        """
        if self.pad_to_multiple_of is not None:
            m = self.pad_to_multiple_of
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                raise ModelError(f"pad_to_multiple_of must be a whole number of at least 1, got {m!r}")
            return m
        cpu_amx = self.device.type == "cpu" and self.precision == "bf16" and this_cpu_kind() == "amx"
        return AMX_LENGTH_MULTIPLE if cpu_amx else 1

    @property
    def shares_prompt(self) -> bool:
        """Whether a training or scoring batch computes its soft prompt's positions once
        (`_behind_shared_prompt`, two passes) or in front of every row (one pass).

        Once saves FLOPs, which bound a step on a CPU. A GPU step is bound by kernel launches
        instead, and the two passes launch nearly twice as many ops: one pass there
        (docs/performance.md).
        """
        if self.share_prompt is not None:
            return bool(self.share_prompt)
        return self.device.type == "cpu"

    @property
    def max_positions(self) -> int:
        """How many positions (virtual tokens + input + new tokens) the model can attend over."""
        return context_length(self.model.config)

    @property
    def eos_id(self) -> int:
        return self.tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


@dataclass(eq=False)
class SoftPrompt:
    """A trained prompt: `embeddings` is `[num_virtual_tokens, hidden]` float32 on the CPU.

    `meta` holds what produced it (dataset, acts, loss history, held-out metrics, created
    time); adapters.py writes it next to PEFT's files.

    `optimizer_state` is AdamW's state for the prompt after its last step, so a resumed run
    continues the same optimizer (train.py `train(resume=...)`): `exp_avg` and `exp_avg_sq`
    `[num_virtual_tokens, hidden]` float32 on the CPU, and `step` a float32 scalar tensor (torch's
    own type for it). None when unknown (an older adapter, or one trained elsewhere).
    """

    embeddings: torch.Tensor
    base_model: str
    config: TuneConfig
    meta: dict = field(default_factory=dict)
    optimizer_state: dict[str, torch.Tensor] | None = None

    @property
    def num_virtual_tokens(self) -> int:
        return self.embeddings.shape[0]

    def meta_texts(self, key: str) -> list[str]:
        """The strings of the list `meta[key]` (acts, held-out acts): a pulled adapter's metadata may hold anything."""
        value = self.meta.get(key)
        return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def context_length(config) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    raise ModelError(f"cannot tell the context length of a {type(config).__name__} model")


def from_model(model: torch.nn.Module, tokenizer, model_id: str, precision: str = "auto") -> Base:
    """Wrap an already built model (tests build tiny ones): freeze it, eval mode, cast, set the pad token.

    GPT-2 has no pad token; we reuse eos as pad and mask padding by the attention mask, never
    by token id, so the eos that ends every training row is still learned.
    """
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    model.to(_DTYPES[resolved]).eval().requires_grad_(False)
    kernels.prepare(model, device, resolved)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of {model_id} has no end-of-text token")
    return Base(model=model, tokenizer=tokenizer, model_id=model_id, precision=resolved, requested_precision=precision)


_load_lock = threading.Lock()
_last_failures: dict[str, str] = {}  # model id -> the sentence of its last failed load; gone once it loads
DOWNLOAD_RETRY_S = 60.0  # after a Hub model could not be downloaded, the same error at once this long (seconds)
_now = time.monotonic  # a module attribute so tests can move the clock
_download_failures: dict[str, tuple[float, str]] = {}  # model id -> (_now() when it failed, the sentence)


def load_base(model_id: str = DEFAULT_MODEL, precision: str = "auto", device: str | None = None) -> Base:
    """Load a causal LM by Hub id, local folder or `.gguf` file, once per process (cached).

    A Hub id that cannot be downloaded (no connection, HF_HUB_OFFLINE) fails within a few
    seconds with one sentence that names `--model PATH`; for DOWNLOAD_RETRY_S seconds after,
    the same id fails at once with the same sentence, then the Hub is asked again. Files already
    in the local Hugging Face cache load without the Hub.

    >>> base = load_base("openai-community/gpt2")          # doctest: +SKIP
    >>> base.max_positions, base.precision                  # doctest: +SKIP
    (1024, 'bf16')
    """
    _raise_if_failed_recently(model_id)  # at once, even while another load holds the lock
    # One lock: two sessions asking at once must not load the weights twice.
    with _load_lock:
        _raise_if_failed_recently(model_id)  # it may have failed while this call waited
        try:
            base = _load_base_cached(model_id, precision, device)
        except ModelError as e:
            _last_failures[model_id] = str(e)
            raise
        _last_failures.pop(model_id, None)
        return base


def load_problem(model_id: str) -> str | None:
    """Why `model_id` did not load at its last try (the ModelError's sentence), or None once it has loaded.

    Never waits and never loads: a page asks it to say, under its header, that nothing can work
    until the model loads. None too while the first load is still under way.
    """
    return _last_failures.get(model_id)


def _raise_if_failed_recently(model_id: str) -> None:
    failed = _download_failures.get(model_id)
    if failed is not None and _now() - failed[0] < DOWNLOAD_RETRY_S:
        raise ModelError(failed[1])


def _download_failed(model_id: str, why: str) -> ModelError:
    """The one sentence for a Hub model that could not be downloaded, remembered for DOWNLOAD_RETRY_S."""
    message = (f"could not download {model_id} from the Hugging Face Hub ({why}); start with a local model: "
               "--model PATH (a folder saved with save_pretrained, or a .gguf file)")
    _download_failures[model_id] = (_now(), message)
    return ModelError(message)


@functools.lru_cache(maxsize=2)
def _load_base_cached(model_id: str, precision: str, device: str | None) -> Base:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dev = torch.device(device) if device else pick_device()
    resolved = resolve_precision(precision, dev)
    kwargs: dict = {}
    model_kwargs: dict = {}
    source = model_id
    path = Path(os.path.expanduser(model_id))
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelError(f"no GGUF file at {model_id}")
        from transformers import GgufConfig

        unpacked = _unpacked_gguf(path, resolved)
        if (unpacked / "config.json").is_file():
            source = str(unpacked)
        else:
            source, kwargs["gguf_file"] = str(path.parent), path.name
            # Unpack the quantized blocks into a plain dense model: transformers would otherwise keep
            # them packed and compute every matmul in float32, which made bf16 training crawl here.
            model_kwargs = {"quantization_config": GgufConfig(gguf_file=path.name, dequantize=True)}
    elif model_id.startswith(("/", ".", "~")) and not path.exists():
        raise ModelError(f"no model folder at {model_id}")
    elif path.exists() and not path.is_dir():
        raise ModelError(f"{model_id} is a file; give a model folder, a .gguf file or a Hub id")
    hub_id = not path.exists()  # what is left once folders and files are handled
    offline = offline_mode()
    if hub_id and not offline and not hub_reachable(model_id, "model"):
        # No Hub: the local cache, if it has the files, instead of ~30 s of retries that end in the same error.
        kwargs["local_files_only"] = True
        # transformers 5.24 does not pass local_files_only on to its look-up of a PEFT adapter
        # config, which then retries the Hub for ~25 s even though the model is in the cache.
        model_kwargs["adapter_kwargs"] = {"local_files_only": True}
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=_DTYPES[resolved], **kwargs, **model_kwargs)
    except (OSError, ValueError) as e:  # not found, no network, gated repo, not a causal LM
        cannot_reach = offline or kwargs.get("local_files_only") or is_connection_error(e)
        if hub_id and isinstance(e, OSError) and cannot_reach:
            raise _download_failed(model_id, "HF_HUB_OFFLINE is set" if offline else "no connection") from None
        raise ModelError(f"could not load the model {model_id!r}: {str(e).strip().splitlines()[0]}") from e
    if kwargs.get("gguf_file"):
        _keep_unpacked(model, tokenizer, _unpacked_gguf(path, resolved))
    return from_model(model.to(dev), tokenizer, model_id, resolved)


def _unpacked_gguf(path: Path, precision: str) -> Path:
    """Where a GGUF file's unpacked model is kept: a saved model loads far faster than a GGUF is read
    (docs/performance.md, "Time to the payoff").

    Keyed by the file's path, size and modification time and the precision, so a changed file is
    unpacked anew. Under $TUNING_CACHE_DIR, else ~/.cache/prompt-tuning.
    """
    import hashlib

    stat = path.resolve().stat()
    key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{precision}".encode()).hexdigest()[:16]
    root = Path(os.environ.get("TUNING_CACHE_DIR") or Path.home() / ".cache" / "prompt-tuning")
    return root / "gguf" / f"{path.stem}-{precision}-{key}"


def _keep_unpacked(model: torch.nn.Module, tokenizer, target: Path) -> None:
    """Save the unpacked model for the next start; a full disk or a read-only home only costs that speed."""
    import shutil
    import tempfile

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpacking-"))
        try:
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
            staging.rename(target)  # whole or not at all: a half-written copy is never loaded
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError:
        pass


def prompt_inputs(
    base: Base,
    soft: torch.Tensor | None | list[torch.Tensor | None],
    rows: list[list[int]],
    pad_left: bool = False,
    multiple: int = 1,
    limit: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Embed token rows with a soft prompt in front, padded into one batch.

    `soft` is one `[v, hidden]` tensor for every row, None for the base model, or a list
    with one of those per row. Returns `inputs_embeds [B, T, hidden]` in the model's dtype,
    `attention_mask [B, T]` and `position_ids [B, T]`. Positions count real positions only,
    so a left-padded row sees the same positions as it would alone (GPT-2's learned
    positions otherwise shift under left padding).

    >>> # rows [[5, 6, 7], [8]] with one 2-token prompt, right padding:
    >>> # mask [[1,1,1,1,1], [1,1,1,0,0]], positions [[0,1,2,3,4], [0,1,2,2,2]]

    `multiple`: the batch is padded (masked, as any padding) to a multiple of that many
    positions, so fewer distinct shapes reach the kernels (`Base.length_multiple`), unless that
    would go past `limit` positions.
    """
    device, dtype = base.device, base.dtype
    table = base.model.get_input_embeddings()
    prompts = soft if isinstance(soft, list) else [soft] * len(rows)
    prompts = [None if p is None else p.to(device=device, dtype=dtype) for p in prompts]
    lengths = [(0 if p is None else p.shape[0]) + len(r) for p, r in zip(prompts, rows)]
    total = max(lengths)
    rounded = -(-total // multiple) * multiple
    if limit is None or rounded <= limit:
        total = rounded
    embeds = torch.zeros(len(rows), total, base.hidden_size, device=device, dtype=dtype)
    mask = torch.zeros(len(rows), total, dtype=torch.long, device=device)
    for i, (prompt, row, n) in enumerate(zip(prompts, rows, lengths)):
        parts = [table(torch.tensor(row, dtype=torch.long, device=device)).to(dtype)]
        if prompt is not None:
            parts.insert(0, prompt)
        start = total - n if pad_left else 0
        embeds[i, start : start + n] = torch.cat(parts)
        mask[i, start : start + n] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, positions


def token_losses(
    base: Base, soft: torch.Tensor | None, rows: list[list[int]], score_first: bool = True, reduction: str = "sum"
) -> tuple[torch.Tensor, int]:
    """Summed next-token cross-entropy over the real tokens of `rows`, and how many tokens it covers.

    Row `[t0, t1, ..., tn]` with a soft prompt: position of the last virtual token predicts
    t0, t0 predicts t1, and so on (as PEFT trains it). `score_first=False` skips t0, which
    the base model cannot predict (it has no context), so base and tuned are scored on the
    same tokens. Logits are computed only at scored positions, in float32, so a 50k-vocab
    logit tensor for every padded position is never built. `reduction="none"` returns the
    per-token losses instead of their sum, row after row.

    On a CPU the soft prompt's own positions are computed once per batch, not once per row
    (`_behind_shared_prompt`; `Base.shares_prompt` says where): same numbers as `[soft; tokens]`
    for every row in one pass (tested).
    """
    if not any(rows):
        return torch.zeros((), dtype=torch.float32, device=base.device), 0
    body = base.model.base_model  # the transformer without its LM head
    multiple = base.length_multiple
    if soft is not None and base.shares_prompt:
        flat, first = _behind_shared_prompt(base, soft, rows, multiple)
        width = (flat.shape[0] - 1) // len(rows)  # text positions per row, padding included
        starts, firsts = [i * width for i in range(len(rows))], [first] * len(rows)
    else:  # one pass, the prompt (if any) in front of every row
        v = 0 if soft is None else soft.shape[0]
        embeds, mask, positions = prompt_inputs(base, soft, rows, multiple=multiple, limit=base.max_positions)
        hidden = body(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).last_hidden_state
        flat, width = hidden.flatten(0, 1), hidden.shape[1]
        starts = [i * width + v for i in range(len(rows))]
        firsts = [start - 1 if v else None for start in starts]
    # Which hidden state predicts which token, row after row: row i's t0 sits at index
    # starts[i], the prompt's last position (firsts[i]) predicts it, and position j - 1 predicts t_j.
    index, targets = [], []
    for i, row in enumerate(rows):
        if score_first and firsts[i] is not None and row:
            index.append(firsts[i])
            targets.append(row[0])
        index.extend(range(starts[i], starts[i] + len(row) - 1))
        targets.extend(row[1:])
    if not targets:
        return flat.new_zeros((), dtype=torch.float32), 0
    picked = flat[torch.tensor(index, device=flat.device)]
    target = torch.tensor(targets, device=flat.device)
    head = base.model.get_output_embeddings()
    if reduction == "sum" and getattr(head, "bias", None) is None:
        return _ChunkedCrossEntropy.apply(picked, head.weight, target, multiple), len(targets)
    logits = head(picked).float()
    return torch.nn.functional.cross_entropy(logits, target, reduction=reduction), len(targets)


def _behind_shared_prompt(
    base: Base, soft: torch.Tensor, rows: list[list[int]], multiple: int = 1
) -> tuple[torch.Tensor, int]:
    """Hidden states of `[soft; row]` for every row, with the prompt's positions computed once.

    Causal attention means the virtual positions only ever see the prompt itself, so their
    hidden states (and keys and values, at every layer) are the same in every row of a batch.
    We run the prompt alone once, keep its keys and values (with their gradient), and run the
    text rows behind them as a batch at positions v, v+1, ...: a batch of 8 rows with 20
    virtual tokens computes 20 prompt positions instead of 160, which trains faster on a CPU
    (docs/performance.md).

    Returns the text positions' hidden states flattened to `[B * T, hidden]` (row i, text
    position j at `i * T + j`) followed by the prompt's last position, and that last index.
    """
    body = base.model.base_model
    v, device = soft.shape[0], base.device
    prefix = body(
        inputs_embeds=soft.to(device=device, dtype=base.dtype)[None],
        position_ids=torch.arange(v, device=device)[None],
        use_cache=True,
    )
    cache = prefix.cache
    for layer in cache.layers:  # one prompt for the whole batch: a view, not a copy
        layer.keys = layer.keys.expand(len(rows), *layer.keys.shape[1:])
        layer.values = layer.values.expand(len(rows), *layer.values.shape[1:])
    embeds, mask, positions = prompt_inputs(base, None, rows, multiple=multiple, limit=base.max_positions - v)
    mask = torch.cat([mask.new_ones(len(rows), v), mask], dim=1)
    hidden = body(
        inputs_embeds=embeds, attention_mask=mask, position_ids=positions + v, cache=cache, use_cache=True
    ).last_hidden_state
    flat = torch.cat([hidden.flatten(0, 1), prefix.last_hidden_state[0, -1:]])
    return flat, flat.shape[0] - 1


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Summed cross-entropy of `hidden @ weight.T` against `target`, a few hundred positions at a time.

    The plain way keeps float32 logits and their gradient for every position at once
    (`positions x vocab`: 1,600 x 50,257 x 4 bytes = 320 MB, twice, for a batch of 4 long
    rows), which pushed training GPT-2 past 2.5 GB. Here each chunk's gradient with respect to
    the hidden states is computed during the forward pass and only that `[positions, hidden]`
    tensor is kept. Same numbers as `cross_entropy(head(hidden).float(), target, "sum")`; the
    head is frozen, so no weight gradient.
    """

    CHUNK = 256  # positions per chunk: 256 x 50,257 float32 logits = 51 MB

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, multiple: int = 1) -> torch.Tensor:
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        for s in range(0, hidden.shape[0], _ChunkedCrossEntropy.CHUNK):
            chunk = slice(s, s + _ChunkedCrossEntropy.CHUNK)
            t, h = target[chunk], hidden[chunk]
            k = len(t)
            if k % multiple:  # the last chunk, padded with zero rows to a shape seen before (length_multiple)
                h = torch.cat([h, h.new_zeros(multiple - k % multiple, h.shape[1])])
            # In place, one pass each: these element-wise passes over positions x vocab cost
            # more than the matmul on a CPU (logsumexp and then softmax again took twice this).
            logits = (h @ weight.t()).float()
            logits -= logits.amax(-1, keepdim=True)
            picked = logits[:k].gather(1, t[:, None])[:, 0]
            probs = logits.exp_()
            sums = probs.sum(-1)
            total += (sums[:k].log() - picked).sum()
            if grad is not None:  # d loss / d logits = softmax - one_hot
                probs /= sums[:, None]
                probs[torch.arange(k, device=t.device), t] -= 1
                probs[k:] = 0
                grad[chunk] = (probs.to(hidden.dtype) @ weight)[:k]
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None
