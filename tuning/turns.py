"""Decoding goes first on a shared CPU: a training pauses between two steps while a generation runs.

One server process trains and generates at once (the app: one visitor's training, another's
Compare). On a CPU both want every core, and the generation, which someone watches token by
token, suffered most: it took 1.69x as long while a training ran in the same process
(docs/performance.md).
So `decode_steps` runs inside `decoding()`, and `train()` calls `let_decoding_run()` before each
step and each held-out scoring: it waits until no decoding runs, at most `MAX_PAUSE_S` and
`PAUSE_PER_STEP` times the last step's time (a busy Compare tab slows a training, it cannot stop
it). The wait is not training time: a run's tokens/s and the Train tab's ETA leave it out.
`train()` yields a `Paused` event before it waits, so a progress line can say why nothing moves.

On a GPU nothing waits: the two do not share the CPU's cores.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Iterator

import torch

MAX_PAUSE_S = 10.0  # the longest one training step waits for decoding (about one 200-token, three-column answer)
PAUSE_PER_STEP = 5.0  # and at most this many times the last step's own time: a training keeps a sixth of the CPU

_cond = threading.Condition()
_decoding = 0  # generations running on the CPU now


@contextlib.contextmanager
def decoding(device: torch.device) -> Iterator[None]:
    """Mark a generation on `device` as running (a CPU's trainings wait between steps meanwhile)."""
    global _decoding
    if device.type != "cpu":
        yield
        return
    with _cond:
        _decoding += 1
    try:
        yield
    finally:
        with _cond:
            _decoding -= 1
            _cond.notify_all()


def let_decoding_run(device: torch.device, stop=None, max_wait: float | None = None,
                     last_step_s: float | None = None) -> float:
    """Before a training step on `device`: wait while a generation runs on the CPU; the seconds waited.

    Returns at once on a GPU or when nothing decodes; otherwise when the last generation ends,
    `stop` (anything with `is_set()`) is set, checked every 0.1 s, or the limit has passed:
    `max_wait` (default MAX_PAUSE_S), and at most PAUSE_PER_STEP times `last_step_s`, so
    generations that follow one another without a break slow a training by a bounded share.
    """
    if device.type != "cpu":
        return 0.0
    limit = pause_limit(max_wait, last_step_s)
    started = time.perf_counter()
    with _cond:
        while _decoding and not (stop is not None and stop.is_set()):
            left = limit - (time.perf_counter() - started)
            if left <= 0:
                break
            _cond.wait(min(left, 0.1))
    return time.perf_counter() - started


def pause_limit(max_wait: float | None = None, last_step_s: float | None = None) -> float:
    """The longest one pause may last: `max_wait` (default MAX_PAUSE_S), at most PAUSE_PER_STEP × `last_step_s`.

    >>> pause_limit(), pause_limit(last_step_s=0.5), pause_limit(3.0, last_step_s=10.0)
    (10.0, 2.5, 3.0)
    """
    limit = MAX_PAUSE_S if max_wait is None else max_wait
    return limit if last_step_s is None else min(limit, PAUSE_PER_STEP * last_step_s)


def decoding_now() -> int:
    """How many generations run on the CPU now."""
    with _cond:
        return _decoding
