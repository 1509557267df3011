"""The four calls that may run on a borrowed GPU: one training, one sweep, one generation, one evaluation.

On a ZeroGPU Space each is a `spaces.GPU` call whose duration is computed from its arguments;
anywhere else it is a plain call. Tabs call them through this module (`gpu_calls.TRAIN_ON_GPU(...)`),
so a test can swap one, or reload the module with a stand-in `spaces`. On ZeroGPU `spaces` must be
imported before torch: `app.py` imports this module first.
"""

from __future__ import annotations

try:  # before torch: on a ZeroGPU Space `spaces` patches it; elsewhere spaces.GPU returns the function as it is
    import spaces
except ImportError:  # not installed (Spaces installs its own; it is not in requirements.txt)
    spaces = None

import functools
from typing import Callable

from tuning import gpu


def on_gpu(fn: Callable, duration: Callable) -> Callable:
    """`fn` as a ZeroGPU call (`spaces.GPU`, its `duration` computed from the call's arguments).

    On a ZeroGPU Space the call runs in a worker that borrows a GPU; anywhere else (no `spaces`,
    or `spaces` off ZeroGPU) it runs here. What `tuning.gpu` guarantees for it: arguments and
    results pickle, the model moves to the GPU inside the call, a stop crosses as a file, and an
    error inside comes out as an event and is raised again here with its sentence (`gpu.carrying`).
    """
    carried = gpu.carrying(fn)
    call = spaces.GPU(duration=duration)(carried) if spaces is not None else carried

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return gpu.reraising(call(*args, **kwargs))
    return run


# One training, one sweep, one generation, one evaluation: each owns the GPU for its call only.
TRAIN_ON_GPU = on_gpu(gpu.train_run, gpu.train_duration)
SWEEP_ON_GPU = on_gpu(gpu.sweep_run, gpu.sweep_duration)
GENERATE_ON_GPU = on_gpu(gpu.generate_run, gpu.generate_duration)
EVALUATE_ON_GPU = on_gpu(gpu.evaluate_run, gpu.evaluate_duration)
