"""Which hardware we run on, and the precision that suits it: device, CPU model and kind, `auto` precision.

Read where it is cheap (/proc/cpuinfo, torch.cuda); nothing here changes a model. The kernels a
model then uses on that hardware are kernels.py's choice, the model itself model.py's. `ModelError`
is defined here because `resolve_precision` is the first thing that can refuse a model, and
model.py imports this module, not the other way round.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch

from .config import PRECISIONS


class ModelError(ValueError):
    """A model that cannot be loaded or used as asked; the message is one sentence for the user."""


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
def this_cpu_kind() -> str:
    """`cpu_kind()` of this machine, read once."""
    return cpu_kind()


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

    Not oneDNN's own "bf16 supported" answer: it says yes on any AVX-512 CPU, where bf16 is
    emulated and a training step ran 3-4x slower than in fp32 (docs/performance.md).
    """
    if precision not in PRECISIONS:
        raise ModelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_kind() in ("amx", "avx512_bf16") else "fp32"

