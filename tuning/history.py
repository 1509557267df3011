"""A run's loss history, as train() writes it into an adapter's metadata and as it is read back.

`meta["history"]` holds parallel lists: per step `step` and `train_loss`; per epoch `epoch`,
`held_out_loss`, `epoch_train_loss` and `epoch_step` (the step that ended it). `saved_history`
reads it back checked (it may come from an upload), `trained_so_far` says where a resumed run
goes on from.

`held_out_points` places each epoch's held-out loss on the step axis, for every chart that draws one.

What it does not do: train (train.py) or draw (progress.py, report.py, sweep.py).
"""

from __future__ import annotations

import math

from .events import TrainingError
from .model import SoftPrompt

# epoch_step: the step each epoch ended at (a continued run may change the batch size, or go on
# from a stopped epoch, so epoch x steps-per-epoch does not say where an epoch's held-out loss goes)
HISTORY_KEYS = ("step", "train_loss", "epoch", "held_out_loss", "epoch_train_loss", "epoch_step")


def record_epoch(history: dict[str, list], epoch: int, step: int, held_out_loss: float | None,
                 train_loss: float) -> None:
    """Append one finished epoch to `history`: its number, the step that ended it, its losses."""
    history["epoch"].append(epoch)
    history["epoch_step"].append(step)
    history["held_out_loss"].append(held_out_loss)
    history["epoch_train_loss"].append(train_loss)


def trained_so_far(soft: SoftPrompt) -> tuple[int, int]:
    """(steps, epochs) `soft` has trained, read from its loss history; (0, 0) when it has none.

    A run stopped mid-epoch counts all its steps but only its finished epochs, so resuming it
    starts the next epoch after the last finished one. A history that is not the shape train()
    writes (an edited or foreign tuning_meta.json) is refused: its numbers cannot be continued.
    """
    history = saved_history(soft)
    return (history["step"][-1] if history["step"] else 0), (history["epoch"][-1] if history["epoch"] else 0)


def estimated_epoch_steps(history: dict) -> list[int]:
    """Where each epoch ended, for a history saved without `epoch_step`: its steps spread evenly over its epochs.

    >>> estimated_epoch_steps({"step": [1, 2, 3, 4, 5], "epoch": [1, 2]})
    [3, 5]
    """
    steps, epochs = history.get("step") or [], history.get("epoch") or []
    if not steps or not epochs:
        return [1] * len(epochs)
    per_epoch = math.ceil(steps[-1] / max(epochs[-1], 1))
    return [max(1, min(e * per_epoch, steps[-1])) if isinstance(e, int) else 1 for e in epochs]


def saved_history(soft: SoftPrompt) -> dict[str, list]:
    """`soft`'s loss history as train() writes it, checked; every key empty when it has none."""
    history = soft.meta.get("history")
    if not history:
        return {k: [] for k in HISTORY_KEYS}
    bad = TrainingError("this adapter's loss history is not in the form training writes, so it cannot be continued")
    if not isinstance(history, dict) or not all(isinstance(history.get(k, []), list) for k in HISTORY_KEYS):
        raise bad
    history = {k: list(history.get(k, [])) for k in HISTORY_KEYS}
    if len(history["epoch_step"]) != len(history["epoch"]):  # saved before epoch_step: the even spread
        history["epoch_step"] = estimated_epoch_steps(history)
    whole = [n for k in ("step", "epoch", "epoch_step") for n in history[k]]
    if any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in whole):
        raise bad
    if len(history["step"]) != len(history["train_loss"]) or not (
        len(history["epoch"]) == len(history["held_out_loss"]) == len(history["epoch_train_loss"])
    ):
        raise bad
    return history


def held_out_points(history: dict, steps_per_epoch: int, series: str = "held-out") -> list[tuple[int, float, str]]:
    """Each epoch's held-out loss at the step that ended the epoch (the run's last step for a cut epoch).

    Where the history records those steps (`epoch_step`, since a continued run may have changed the
    batch size) they are used; an older history's epochs are placed every `steps_per_epoch` steps.

    >>> held_out_points({"step": [1, 2, 3], "epoch": [1, 2], "held_out_loss": [3.0, None]}, 2)
    [(2, 3.0, 'held-out')]
    >>> held_out_points({"step": [1, 2, 3], "epoch": [1, 2], "epoch_step": [1, 3], "held_out_loss": [3.0, 2.0]}, 2)
    [(1, 3.0, 'held-out'), (3, 2.0, 'held-out')]
    """
    last = history["step"][-1] if history["step"] else 0
    ends = history.get("epoch_step") or []
    if len(ends) != len(history["epoch"]):
        ends = [min(e * steps_per_epoch, last) for e in history["epoch"]]
    return [(end, loss, series) for end, loss in zip(ends, history["held_out_loss"]) if loss is not None]
