"""The base model, loaded once per process, and the one place where a soft prompt meets it.

A tuned model is a tensor: prompt tuning learns `[num_virtual_tokens, hidden]` numbers and
nothing else, so a `SoftPrompt` carries that tensor plus what produced it. Training,
generation and evaluation all prepend it the same way (`prompt_inputs`), through
`inputs_embeds` on the shared, frozen base model. That keeps the base read-only (any
number of sessions can use different prompts at once) and lets `generate` use its KV
cache, which `PeftModel.generate(use_cache=True)` gets wrong for prompt tuning with
transformers 5.24 + peft 0.21 (wrong tokens after the first).

What this file does not do: training (train.py), decoding (generate.py), files (adapters.py).
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

from .config import DEFAULT_MODEL, PRECISIONS, TuneConfig, same_model
from .data import hub_reachable, is_connection_error, offline_mode

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class ModelError(ValueError):
    """A model that cannot be loaded or used as asked; the message is one sentence for the user."""


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

        oneDNN builds kernels for every new matmul shape, and on AMX the first epoch was ~25%
        slower than the second (issue 12; each batch length a new shape); lengths in steps of 16
        give a batch of 4 rows a multiple of 64 positions. Elsewhere there is nothing to win: on
        a Xeon without AMX (fp32, and emulated bf16) the first pass was not consistently slower,
        and padding showed no consistent difference within the VM's noise (docs/performance.md "Speed II").
        """
        if self.pad_to_multiple_of is not None:
            m = self.pad_to_multiple_of
            if isinstance(m, bool) or not isinstance(m, int) or m < 1:
                raise ModelError(f"pad_to_multiple_of must be a whole number of at least 1, got {m!r}")
            return m
        cpu_amx = self.device.type == "cpu" and self.precision == "bf16" and _this_cpu_kind() == "amx"
        return AMX_LENGTH_MULTIPLE if cpu_amx else 1

    @property
    def shares_prompt(self) -> bool:
        """Whether a training or scoring batch computes its soft prompt's positions once
        (`_behind_shared_prompt`, two passes) or in front of every row (one pass).

        Once saves FLOPs, which bound a step on a CPU: 1,150 against 1,316 ms for a step of 4
        rows of ~58 tokens (GPT-2-124M shape, fp32, Xeon without AMX). A GPU step is bound by
        kernel launches instead (docs/performance.md "GPU": 35-38 ms whatever the precision), and the two
        passes launch more: 2,405 against 1,325 top-level ATen ops for that step. So one pass
        on a GPU: 14,409 against 7,644 useful tokens/s on an H200 (bench, bf16, GPT-2-124M shape).
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


def zero_gpu() -> bool:
    """True on a ZeroGPU Space (`spaces` reads the same variable)."""
    return os.environ.get("SPACES_ZERO_GPU", "").lower() in ("1", "t", "true")


def pick_device() -> torch.device:
    """Where a model loads: the GPU when there is one, except on a ZeroGPU Space, where the server
    process has none of its own (a decorated call borrows one: `gpu.on_accelerator` moves it there)."""
    return torch.device("cuda") if torch.cuda.is_available() and not zero_gpu() else torch.device("cpu")


def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name from /proc/cpuinfo (Linux), else what `platform` knows."""
    import platform

    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.lower().startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


@functools.lru_cache(maxsize=1)
def _this_cpu_kind() -> str:
    return cpu_kind()


AMX_LENGTH_MULTIPLE = 16


def cpu_kind(cpuinfo: str | None = None) -> str:
    """'amx' (Intel AMX: bf16 tiles), 'avx512_bf16' (AVX-512 with native bf16 dot products) or 'other'.

    Read from /proc/cpuinfo's flags (`cpuinfo` for tests); 'other' where that file does not exist.
    """
    flags = set()
    for line in (_cpuinfo() if cpuinfo is None else cpuinfo).splitlines():
        if line.startswith("flags"):
            flags.update(line.partition(":")[2].split())
            break
    return "amx" if "amx_bf16" in flags else "avx512_bf16" if "avx512_bf16" in flags else "other"


def resolve_precision(precision: str, device: torch.device) -> str:
    """'auto' -> bf16 where the hardware computes it natively (AMX or AVX-512 BF16 CPUs, Ampere+ GPUs),
    fp16 on older GPUs, else fp32.

    Not oneDNN's own "bf16 supported" answer: it says yes on any AVX-512 CPU, where bf16 is emulated
    and a GPT-2-sized matmul ran at 49-50 GFLOP/s against fp32's 193-218, and a GPT-2-124M training
    step 4.45 s against 1.31-1.51 s (Intel Xeon without AVX-512 BF16, 2 cores, quiet): 3-4x slower.
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_kind() in ("amx", "avx512_bf16") else "fp32"


def from_model(model: torch.nn.Module, tokenizer, model_id: str, precision: str = "auto") -> Base:
    """Wrap an already built model (tests build tiny ones): freeze it, eval mode, cast, set the pad token.

    GPT-2 has no pad token; we reuse eos as pad and mask padding by the attention mask, never
    by token id, so the eos that ends every training row is still learned.
    """
    device = next(model.parameters()).device
    resolved = resolve_precision(precision, device)
    model.to(_DTYPES[resolved]).eval().requires_grad_(False)
    attention_kernels(device)
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        # On CPU, SDPA's flash-attention backward is slow: eager attention trained 467-488 useful
        # tokens/s against 381-432 for SDPA (GPT-2-124M shape, bf16, 2 cores, same run, 4 runs).
        model.set_attn_implementation("eager")
    _fuse_gelu(model, exact=exact_gelu(device, resolved))
    _linear_layout(model)
    if packs_for_decoding(device, resolved):
        _pack_for_decoding(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if tokenizer.eos_token_id is None:
        raise ModelError(f"the tokenizer of {model_id} has no end-of-text token")
    return Base(model=model, tokenizer=tokenizer, model_id=model_id, precision=resolved, requested_precision=precision)


def attention_kernels(device: torch.device) -> None:
    """On a GPU, keep PyTorch's attention (SDPA) off cuDNN's kernels, for the whole process.

    cuDNN builds an execution plan for every new shape of an attention call, and ours change
    shape all the time: every training batch has its own length, every decoding step one more
    key. PyTorch 2.11 picked cuDNN for bf16 on an H200, where it made bf16 the slow precision:
    a 64-token generation took 3.43 s warm (5.84 s cold) with it and 0.53 s (0.93 s) without,
    a training step 520 ms on a new batch length against 57 ms (41 against 35 ms on lengths seen
    before); the bench's training ran at 1,634 useful tokens/s in bf16 against 12,205 in fp32,
    which never uses cuDNN attention (GPT-2-124M shape, batch 4, one process). Without it SDPA
    takes the memory-efficient or flash kernels, which need no plan.
    """
    if device.type == "cuda":
        torch.backends.cuda.enable_cudnn_sdp(False)


EXACT_GELU: bool | None = None  # None: bf16 on a CPU (`exact_gelu`); True/False to compare


def exact_gelu(device: torch.device, precision: str) -> bool:
    """Whether GPT-2's tanh-approximated GELU is computed as the exact (erf) GELU (`_fuse_gelu`)."""
    if EXACT_GELU is not None:
        return EXACT_GELU
    return device.type == "cpu" and precision == "bf16"


def _fuse_gelu(model: torch.nn.Module, exact: bool = False) -> None:
    """Swap GPT-2's `gelu_new` (seven element-wise passes written in Python) for PyTorch's fused GELU.

    Tanh GELU, the same formula in one kernel each way: training went from 499 to 526 useful
    tokens/s (GPT-2-124M shape, bf16, batch 8, 2 cores, same rows); in float32 outputs agree to
    rounding (tested). `exact`: the erf GELU instead, whose CPU kernels are cheaper: a [256, 3072]
    bf16 tensor on 2 AMX cores took 0.21 ms forward against 1.30 (1.19 backward with tanh), on a
    Xeon without AMX 0.47 + 1.07 ms forward and backward against 1.87 + 1.54; with tanh the GELU
    was 11% of a bf16 training step's CPU time on AMX (profiled). The two differ by at most
    4.7e-4, a sixteenth of a bf16 rounding step at 1.0: on tiny GPT-2s in bf16 the swap moved the
    logits about half as much as computing in bf16 instead of float32 does (tests/test_model.py).
    So bf16 on a CPU uses it (`exact_gelu`); float32 keeps GPT-2's own approximation, and so does
    a model loaded on a GPU, bound by kernel launches rather than by this kernel (one loaded on a
    CPU and moved to a GPU, as ZeroGPU does, keeps what it was loaded with).
    """
    from transformers.activations import GELUTanh, NewGELUActivation

    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, torch.nn.GELU() if exact else GELUTanh())


def _linear_layout(model: torch.nn.Module) -> None:
    """Store GPT-2's `Conv1D` weights as `nn.Linear` stores its own, [out, in] row by row, and multiply with `linear`.

    `Conv1D` keeps `[in, out]` and calls `addmm(bias, x, W)`; for the few rows of a decoding step
    that layout takes the slow path: a [2-3, 768] x [768, 3072] product ran 0.63-0.68 ms against
    0.28-0.31 ms as `linear` on [3072, 768] (fp32, Intel Xeon without AVX-512 BF16, 2 cores), equal
    at one row. The parameter stays a `[in, out]` view of the new storage, so state dicts, saving
    and loading see GPT-2's own layout; `.to()` keeps the strides.
    """
    from transformers.pytorch_utils import Conv1D

    for module in model.modules():
        if type(module) is Conv1D:
            rows = module.weight.detach().t().contiguous()  # [out, in]
            module.weight = torch.nn.Parameter(rows.t(), requires_grad=module.weight.requires_grad)
            module.__class__ = _linear_conv1d()


@functools.cache
def _linear_conv1d() -> type:
    from transformers.pytorch_utils import Conv1D

    class LinearConv1D(Conv1D):
        """GPT-2's Conv1D whose weight is a [in, out] view of [out, in] storage: multiplies with `linear`."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.linear(x, self.weight.t(), self.bias)

    return LinearConv1D


PACK_FOR_DECODING: bool | None = None  # None: where measured to win (packs_for_decoding); True/False to compare
PACKED_ROWS = 16  # inputs of at most this many rows (a decoding step: one per column) use the packed weights


def packs_for_decoding(device: torch.device, precision: str) -> bool:
    """Whether decoding steps multiply with weights packed for the CPU's matmul kernels (`_pack_for_decoding`).

    bf16: on an AMX CPU (measured there). fp32: where a probe finds it faster (`fp32_packing_wins`).
    """
    if PACK_FOR_DECODING is not None:
        return PACK_FOR_DECODING and device.type == "cpu"
    if device.type != "cpu":
        return False
    if precision == "bf16":
        return _this_cpu_kind() == "amx"
    return precision == "fp32" and fp32_packing_wins()


@functools.lru_cache(maxsize=1)
def fp32_packing_wins() -> bool:
    """Whether oneDNN-packed weights multiply a decoding step's rows faster than `linear` in float32 here.

    A probe, once per process (0.25-0.37 s on an AVX2-only AMD EPYC, 50 MB while it runs): the CPU kinds disagree, and
    not by their flags. On an AMD EPYC with AVX2 only (2 cores) the plain `linear` (MKL's sgemm)
    costs as much per row as if it read the weights once per row: GPT-2's 50,257-row head took
    25.6 ms for two rows and 34.6 ms for three against 7.4 and 6.8 ms packed, and base + tuned
    took 1.9x one column. On the Intel Xeon with AMX packing gained nothing in float32 (one row:
    25.5 vs 26.6 ms for the blocks). The probe multiplies two rows by a [16384, 768] matrix both
    ways, interleaved (a smaller one is lost in thread wake-ups: a [3072, 768] probe swung from
    0.67x to 1.35x between processes on the EPYC, this one 0.48-0.56x); packed wins under 0.8x.
    """
    import statistics

    try:
        with torch.inference_mode():
            weight, rows = torch.randn(16384, 768), torch.randn(2, 768)
            packed = torch.ops.mkldnn._reorder_linear_weight(weight, 1)  # as `_packed_weight` packs
            ways = {"plain": lambda: torch.nn.functional.linear(rows, weight),
                    "packed": lambda: torch.ops.mkldnn._linear_pointwise(rows, packed, None, "none", [], "")}
            times: dict[str, list[float]] = {name: [] for name in ways}
            for n in range(10):
                for name, way in ways.items():
                    t = time.perf_counter()
                    way()
                    if n >= 2:  # the first runs build the kernels and wake the threads
                        times[name].append(time.perf_counter() - t)
    except (RuntimeError, AttributeError):  # a torch without oneDNN
        return False
    return statistics.median(times["packed"]) < 0.8 * statistics.median(times["plain"])


def _pack_for_decoding(model: torch.nn.Module) -> None:
    """Let every linear layer multiply a decoding step's few rows with a copy of its weight packed by oneDNN.

    A decoding step multiplies 1-3 rows by every weight; in bf16 on an AMX CPU the plain
    `linear` spent 14.2 ms a step on GPT-2-124M's 48 block matrices and 7.0 ms on the head,
    against 9.1 and 2.5 ms with weights reordered once by `torch.ops.mkldnn._reorder_linear_weight`
    (the layout PyTorch's own compiler packs to; 2 cores, one row; the same tokens, logits within
    bf16 rounding). In float32, and on that CPU, packing gained nothing (25.5 vs 26.6 ms, 10.6 vs 10.2 ms); on
    an AVX2-only AMD EPYC it gains a lot in float32 (`fp32_packing_wins` decides). Only in inference mode (decoding), on the CPU and for at most `PACKED_ROWS` rows:
    training and scoring use the weights as they are. The packed copy is made at the first
    decoding step (a second copy of the weights: 250 MB for GPT-2-124M in bf16), dropped when
    the model moves (`.to()`) or is copied, and redone when a weight is replaced or changed in
    place where autograd sees it (its version counter; a change through `.data` is not seen:
    base weights never change here). Measured end to end in the same process, same text (3
    interleaved rounds on a shared machine whose timings swung by a third): the first generation after load 2.41 ->
    1.69 s, one column 2.51 -> 2.31 s, two 2.77 -> 2.42 s, three 2.87 -> 2.55 s (medians).
    """
    for module in model.modules():
        if type(module) in (torch.nn.Linear, _linear_conv1d()):
            module.__class__ = _packed(type(module))


@functools.cache
def _packed(cls: type) -> type:
    class Packed(cls):
        """`cls`, whose decoding steps use a oneDNN-packed copy of the weight (model._pack_for_decoding)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if torch.is_inference_mode_enabled() and x.device.type == "cpu" and x.numel() <= PACKED_ROWS * x.shape[-1]:
                packed = _packed_weight(self)
                if packed is not None:
                    return torch.ops.mkldnn._linear_pointwise(x, packed, self.bias, "none", [], "")
            return super().forward(x)

        def _apply(self, fn, recurse=True):  # .to(), .float(), ...: the packed copy would be stale and held in RAM
            self.__dict__.pop("_packed_weight", None)
            return super()._apply(fn, recurse)

        def __getstate__(self):  # deepcopy and pickle: oneDNN's packed tensor has no storage to copy
            state = dict(self.__dict__)
            state.pop("_packed_weight", None)
            return state

    Packed.__name__ = Packed.__qualname__ = f"Packed{cls.__name__}"
    return Packed


def _packed_weight(module: torch.nn.Module) -> torch.Tensor | None:
    """The module's weight as oneDNN packs it for a few rows, made once and redone if the weight changed.

    None where oneDNN cannot pack this dtype on this CPU (bf16 needs AVX-512 or AVX-NE-CONVERT;
    a model cast after it was packed): the layer then multiplies as it is.
    """
    rows = module.weight if isinstance(module, torch.nn.Linear) else module.weight.t()  # [out, in]
    key = (rows.data_ptr(), 0 if rows.is_inference() else rows._version, rows.dtype, rows.device)
    cached = module.__dict__.get("_packed_weight")  # not a parameter or buffer: state dicts never see it
    if cached is None or cached[0] != key:
        try:
            packed = torch.ops.mkldnn._reorder_linear_weight(rows.detach().contiguous(), 1)
        except RuntimeError:
            packed = None
        cached = (key, packed)
        module.__dict__["_packed_weight"] = cached
    return cached[1]


_load_lock = threading.Lock()
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
        return _load_base_cached(model_id, precision, device)


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
    return from_model(model.to(dev), tokenizer, model_id, resolved)


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
    virtual tokens computes 20 prompt positions instead of 160. Trained 499 against 469
    useful tokens/s with batch 8 (GPT-2-124M shape, bf16, 2 cores, same sample of rows).

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
