"""The seed's experiment, trained once per base model and dataset and kept: the reference adapters.

`reference-5x5-…` (5 virtual tokens × 5 epochs) and `reference-20x10-…` (20 × 10), both on all
training acts, seed 0, the default recipe: the two runs the seed notebook compares. The app
trains the missing ones in the background when it starts (pausing whenever a visitor trains)
and opens Compare on them; `python -m tuning reference` trains them from a terminal.

A reference belongs to one base model and one dataset: its name ends with the model's short
name and a digest of both, so an app started with another `--model` trains that model's own
and never reuses or overwrites another's. Names starting with `reference-` are kept for these:
they do not count against a server's adapter caps (adapters._check_room) and the app will not
let a visitor save, upload or delete one.

What it does not do: decide when to train (the app's job registry and the CLI do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from . import adapters
from .config import TuneConfig
from .data import Row
from .model import Base, SoftPrompt
from .events import Done, Event
from .rows import split_rows
from .train import train

GRID: tuple[tuple[int, int], ...] = ((5, 5), (20, 10))  # (virtual tokens, epochs): the seed's two runs
PREFIX = adapters.RESERVED_PREFIX


def name(model: str, dataset: str, tokens: int, epochs: int) -> str:
    """The folder name of one reference adapter.

    >>> name("openai-community/gpt2", "fka/awesome-chatgpt-prompts", 5, 5)
    'reference-5x5-gpt2-876eb6'
    """
    short = re.sub(r"\.gguf$", "", model.rstrip("/").replace("\\", "/").split("/")[-1], flags=re.I)
    digest = hashlib.sha1(f"{model}\n{dataset}".encode()).hexdigest()[:6]
    return adapters.sanitize_name(f"{PREFIX}{tokens}x{epochs}-{short[:32]}-{digest}")


def is_reference(adapter_name: str) -> bool:
    return adapter_name.startswith(PREFIX)


def saved(root: Path | str, model: str, dataset: str) -> dict[tuple[int, int], str]:
    """The references of this model and dataset that are saved under `root`: {(tokens, epochs): name}."""
    names = {a["name"] for a in adapters.list_adapters(root)}
    return {cell: name(model, dataset, *cell) for cell in GRID if name(model, dataset, *cell) in names}


def missing(root: Path | str, model: str, dataset: str) -> list[tuple[int, int]]:
    have = saved(root, model, dataset)
    return [cell for cell in GRID if cell not in have]


@dataclass
class ReferenceEvent:
    cell: tuple[int, int]  # (virtual tokens, epochs)
    name: str  # the adapter it will be saved as
    event: Event  # what train() yielded

    @property
    def label(self) -> str:  # "20×10"
        return f"{self.cell[0]}×{self.cell[1]}"


@dataclass
class ReferenceSaved:
    label: str
    name: str
    folder: Path


def train_references(
    base: Base,
    rows: Sequence[Row],
    model: str,
    dataset: str,
    root: Path | str,
    stop: threading.Event | None = None,
    cells: Sequence[tuple[int, int]] | None = None,
    save: Callable[[SoftPrompt, str, Path | str], Path] = adapters.save,
) -> Iterator[ReferenceEvent | ReferenceSaved]:
    """Train and save each reference in `cells` (default: the missing ones), one after the other.

    Every training event comes wrapped in a ReferenceEvent; a finished one is saved, by
    `save(soft, name, root)`, and announced with ReferenceSaved. A stopped one is not saved (a
    reference is the whole run).
    """
    config = TuneConfig(model=model, dataset=dataset, seed=0)  # the default recipe
    for tokens, epochs in missing(root, model, dataset) if cells is None else cells:
        cell = dataclasses.replace(config, num_virtual_tokens=tokens, epochs=epochs)
        label, target = f"{tokens}×{epochs}", name(model, dataset, tokens, epochs)
        train_rows, held = split_rows(rows, cell)
        for event in train(base, train_rows, cell, held, stop):
            yield ReferenceEvent((tokens, epochs), target, event)
            if isinstance(event, Done):
                if event.stopped:
                    return
                event.soft.meta["reference"] = {"grid": [tokens, epochs], "model": model, "dataset": dataset}
                folder = save(event.soft, target, root)
                yield ReferenceSaved(label, target, folder)


def opening(prompt: str, max_chars: int = 120) -> str:
    """A prompt's first sentence, what a visitor types to see how a tuned prompt continues it.

    >>> opening("I want you to act as a storyteller. You will come up with stories.")
    'I want you to act as a storyteller.'
    """
    text = " ".join(prompt.split())
    end = next((i + 1 for i, ch in enumerate(text) if ch in ".!?" and (i + 1 == len(text) or text[i + 1] == " ")),
               len(text))
    first = text[:end]
    return first if len(first) <= max_chars else first[:max_chars].rsplit(" ", 1)[0] + "…"


def example_openings(rows: Sequence[Row], model: str, dataset: str, count: int = 4) -> list[str]:
    """Openings of acts the reference adapters never trained on: inputs that show what they learned.

    A tuned prompt learned to continue the way the dataset's prompts go, so the opening of a
    held-out act's prompt shows the payoff (and is no training text it could have memorized).
    Those that open like most prompts ("I want you to act as …") come first, in the split's order.
    """
    _, held = split_rows(rows, TuneConfig(model=model, dataset=dataset, seed=0))  # the references' split
    openings = list(dict.fromkeys(opening(r.prompt) for r in held if r.prompt.strip()))
    openings.sort(key=lambda text: not text.lower().startswith("i want you to act as"))
    return openings[:count]
