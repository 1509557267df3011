"""Which rows a run trains on and which it holds out, and the token ids it trains on.

`split_rows` turns a config into (training rows, held-out rows); `held_out_for` finds the acts a
saved adapter never trained on; `encode_rows` tokenizes rows the way training and scoring read
them. Training, evaluation, reports, plans and the GPU estimates all choose rows here, so
they agree on which act is held out.

What it does not do: load or split the dataset itself (data.py), train (train.py) or score (evaluate.py).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from .config import TuneConfig
from .data import DataError, Row, find_act, select, split_by_act
from .events import TrainingError
from .model import Base, SoftPrompt


def split_rows(rows: Sequence[Row], config: TuneConfig) -> tuple[list[Row], list[Row]]:
    """Which rows to train on and which to hold out, by act.

    With no `config.acts`: the seeded split's training side. With acts named: exactly those
    rows (even ones the split would hold out); the held-out side then drops their acts, so a
    held-out act is never trained on.
    """
    train_rows, held = split_by_act(list(rows), config.held_out_fraction, config.seed)
    if config.acts:
        train_rows = select(list(rows), config.acts)
        trained = {r.group for r in train_rows}
        held = [r for r in held if r.group not in trained]
    return train_rows, held


def held_out_for(soft: SoftPrompt, rows: Sequence[Row], dataset: str) -> list[Row]:
    """The acts `soft` never trained on: the ones it recorded when it was trained on `dataset`, else the split's.

    Recorded held-out acts that are no longer in the file are skipped; when none is left (or the
    dataset is another one) the seeded split stands in, without the config's own acts when this
    dataset does not have them (an adapter trained elsewhere). Whichever way, no act the adapter
    recorded as trained on is ever returned: a split of an edited file mixes the acts anew.
    """
    trained = set()
    for name in soft.meta_texts("acts"):
        try:
            trained.add(find_act(rows, name).group)
        except DataError:
            pass  # not in this file: nothing to leave out
    if soft.config.dataset == dataset:
        kept = []
        for name in soft.meta_texts("held_out_acts"):
            try:
                row = find_act(rows, name)
            except DataError:
                continue  # renamed or deleted since training
            if row not in kept:
                kept.append(row)
        if kept:
            return [r for r in kept if r.group not in trained]
    try:
        held = split_rows(rows, soft.config)[1]
    except DataError:
        held = split_rows(rows, dataclasses.replace(soft.config, acts=()))[1]
    return [r for r in held if r.group not in trained]


def encode_rows(base: Base, rows: Sequence[Row], config: TuneConfig) -> list[list[int]]:
    """Tokenize each prompt and end it with eos, truncated so virtual + text tokens fit the context.

    The eos is a label like any other token (padding is masked by position, not by id), so
    the tuned model learns where a prompt ends. A truncated row gets no eos: it did not end.
    """
    budget = min(config.max_length, base.max_positions - config.num_virtual_tokens)
    if budget < 2:
        raise TrainingError(
            f"{config.num_virtual_tokens} virtual tokens leave no room in the model's {base.max_positions}-token context"
        )
    out = []
    for row in rows:
        ids = base.encode(row.prompt)
        out.append(ids + [base.eos_id] if len(ids) < budget else ids[:budget])
    return out
