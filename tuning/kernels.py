"""CPU speed tricks for GPT-2-shaped models, chosen for the device and precision by one call: `prepare`.

Each trick keeps the model's numbers (to rounding; tested) and changes only how they are
computed: PyTorch's attention kept off cuDNN on a GPU, eager attention on a CPU, a fused (on
bf16 CPUs: exact) GELU, GPT-2's `Conv1D` weights stored as `nn.Linear` stores its own, and on
CPUs where it wins, decoding steps multiplied with weights packed by oneDNN. The module flags
`EXACT_GELU` and `PACK_FOR_DECODING` force a choice either way (the bench compares both).

What it does not do: load a model (model.py) or pick the device and precision (hardware.py).
"""

from __future__ import annotations

import functools
import time

import torch

from .hardware import this_cpu_kind


def prepare(model: torch.nn.Module, device: torch.device, precision: str) -> None:
    """Every choice below for a model loaded on `device` in `precision` (resolved, not `auto`), in place."""
    attention_kernels(device)
    if device.type == "cpu" and model.config._attn_implementation == "sdpa":
        # On CPU, SDPA's flash-attention backward is slow: eager attention trains faster (docs/performance.md).
        model.set_attn_implementation("eager")
    _fuse_gelu(model, exact=exact_gelu(device, precision))
    _linear_layout(model)
    if packs_for_decoding(device, precision):
        _pack_for_decoding(model)


def attention_kernels(device: torch.device) -> None:
    """On a GPU, keep PyTorch's attention (SDPA) off cuDNN's kernels, for the whole process.

    cuDNN builds an execution plan for every new shape of an attention call, and ours change
    shape all the time: every training batch has its own length, every decoding step one more
    key. Where PyTorch picks cuDNN (bf16 on recent GPUs) that made bf16 the slow precision, in
    generation and in training (docs/performance.md). Without it SDPA takes the memory-efficient
    or flash kernels, which need no plan.
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

    Tanh GELU, the same formula in one kernel each way, trains faster; in float32 outputs agree
    to rounding (tested). `exact`: the erf GELU instead, whose CPU kernels are several times
    cheaper in bf16, where the tanh GELU was a tenth of a training step (docs/performance.md). The
    two differ by at most 4.7e-4, a sixteenth of a bf16 rounding step at 1.0: on tiny GPT-2s in
    bf16 the swap moved the logits about half as much as computing in bf16 instead of float32
    does (tests/test_model.py).
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
    that layout takes a slow path, about twice as slow as `linear` on `[out, in]`, equal at one
    row (docs/performance.md). The parameter stays a `[in, out]` view of the new storage, so
    state dicts, saving and loading see GPT-2's own layout; `.to()` keeps the strides.
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

    bf16: on an AMX CPU (where it was measured to win, docs/performance.md). fp32: where a probe
    finds it faster (`fp32_packing_wins`).
    """
    if PACK_FOR_DECODING is not None:
        return PACK_FOR_DECODING and device.type == "cpu"
    if device.type != "cpu":
        return False
    if precision == "bf16":
        return this_cpu_kind() == "amx"
    return precision == "fp32" and fp32_packing_wins()


@functools.lru_cache(maxsize=1)
def fp32_packing_wins() -> bool:
    """Whether oneDNN-packed weights multiply a decoding step's rows faster than `linear` in float32 here.

    A probe, once per process (a fraction of a second, 50 MB while it runs): CPU kinds disagree,
    and not by their flags. On an AVX2-only AMD EPYC the plain `linear` (MKL's sgemm) costs as
    much per row as if it read the weights once per row and packing wins by a lot; on an Intel
    Xeon with AMX it gains nothing in float32 (docs/performance.md). The probe multiplies two rows
    by a [16384, 768] matrix both ways, interleaved (a smaller one is lost in thread wake-ups and
    swings between processes); packed wins under 0.8x.
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

    A decoding step multiplies 1-3 rows by every weight; with each weight reordered once by
    `torch.ops.mkldnn._reorder_linear_weight` (the layout PyTorch's own compiler packs to) those
    products run faster in bf16 on an AMX CPU and in float32 on an AVX2-only AMD EPYC, with the
    same tokens; elsewhere packing gains nothing (docs/performance.md; `packs_for_decoding`
    decides). Only in inference mode (decoding), on the CPU and for at most `PACKED_ROWS` rows:
    training and scoring use the weights as they are. The packed copy is made at the first
    decoding step (a second copy of the weights: 250 MB for GPT-2-124M in bf16), dropped when
    the model moves (`.to()`) or is copied, and redone when a weight is replaced or changed in
    place where autograd sees it (its version counter; a change through `.data` is not seen:
    base weights never change here).
    """
    for module in model.modules():
        if type(module) in (torch.nn.Linear, _linear_conv1d()):
            module.__class__ = _packed(type(module))


@functools.cache
def _packed(cls: type) -> type:
    class Packed(cls):
        """`cls`, whose decoding steps use a oneDNN-packed copy of the weight (`_pack_for_decoding`)."""

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

