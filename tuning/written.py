"""A written prompt: text in front of the input, the baseline a soft prompt has to beat.

Prompt tuning's question is not only "does the soft prompt change the model?" but "is it better
than writing a prompt?". A written prompt is either k examples (whole prompts of training acts,
drawn with the run's seed, never a held-out act, each ended with end-of-text as training reads a
row: `rows.encode_rows`) or the user's own text. It goes in front of the input as the model's
own token embeddings, so every place that takes a soft prompt (`[tokens, hidden]` in front of
the input: generation in one batch, held-out scoring, ROUGE-L) takes it unchanged, and the
model sees exactly what it would see from the token ids.

What it does not do: choose the held-out side (rows.held_out_for) or score (evaluate.py).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .data import Row
from .config import SHOTS, TuneConfig  # SHOTS: written.SHOTS, as the app reads it
from .model import Base, SoftPrompt
from .rows import held_out_for, split_rows


class WrittenError(ValueError):
    """A written prompt that cannot be made or does not fit the context; the message is one sentence for the user."""


@dataclass(frozen=True)
class Written:
    """The token ids put in front of the input, and what they were made of."""

    ids: tuple[int, ...]
    examples: tuple[Row, ...] = ()  # the training acts' prompts, in the order they appear (empty: own text)
    text: str | None = None  # the user's own text (None: examples)

    @property
    def tokens(self) -> int:
        return len(self.ids)

    @property
    def label(self) -> str:
        """'2 examples', '1 example' or 'your text'."""
        if self.text is not None:
            return "your text"
        k = len(self.examples)
        return f"{k} example{'' if k == 1 else 's'}"

    def describe(self) -> str:
        """The label and the context it costs: '2 examples · 164 tokens'."""
        return f"{self.label} · {self.tokens:,} token{'' if self.tokens == 1 else 's'}"


def pool(rows: Sequence[Row], held: Sequence[Row]) -> list[Row]:
    """The rows examples may come from: every act but the held-out ones, in act order (not file order)."""
    held_groups = {r.group for r in held}
    return sorted((r for r in rows if r.group not in held_groups), key=lambda r: (r.group, r.act))


def draw(rows: Sequence[Row], held: Sequence[Row], k: int, seed: int) -> list[Row]:
    """`k` whole rows of acts outside `held`, chosen by `seed`: the same seed gives the same rows.

    Draws are nested: the first k of a seeded order of the pool, so 1 example is within 2 and 2 within 4.
    """
    if k < 1:
        raise WrittenError(f"the number of examples must be at least 1, got {k}")
    candidates = pool(rows, held)
    if len(candidates) < k:
        raise WrittenError(
            f"{k} examples were asked for but only {len(candidates)} act{'' if len(candidates) == 1 else 's'} "
            f"outside the held-out side {'is' if len(candidates) == 1 else 'are'} there to draw from"
        )
    random.Random(seed).shuffle(candidates)
    return candidates[:k]


def from_examples(base: Base, examples: Sequence[Row]) -> Written:
    """The examples' prompts, each ended with end-of-text, one after another."""
    ids: list[int] = []
    for row in examples:
        ids += base.encode(row.prompt) + [base.eos_id]
    return Written(ids=tuple(ids), examples=tuple(examples))


def examples(base: Base, rows: Sequence[Row], held: Sequence[Row], k: int, seed: int) -> Written:
    """`from_examples` of `draw(rows, held, k, seed)`."""
    return from_examples(base, draw(rows, held, k, seed))


def from_text(base: Base, text: str) -> Written:
    """The user's own text, with a new line after it unless it ends in white space, so it does not run into the input."""
    if not isinstance(text, str) or not text.strip():
        raise WrittenError("the written prompt is empty: write one, or choose examples or none")
    written = text if text[-1].isspace() else text + "\n"
    return Written(ids=tuple(base.encode(written)), text=text)


def check_fits(base: Base, written: Written, longest: int, new_tokens: int = 0, what: str = "the input") -> None:
    """Refuse, with the numbers, a written prompt that leaves no room for `longest` tokens of `what` (+ `new_tokens`)."""
    need = written.tokens + longest + new_tokens
    if need > base.max_positions:
        more = f" + {new_tokens:,} new tokens" if new_tokens else ""
        raise WrittenError(
            f"the written prompt ({written.describe()}) + {what} ({longest:,} tokens){more} need {need:,} positions, "
            f"more than the model's {base.max_positions:,}-token context; use fewer examples or a shorter text"
        )


@torch.no_grad()
def embeddings(base: Base, written: Written) -> torch.Tensor:
    """`[tokens, hidden]`: the written prompt's token embeddings, taken wherever a soft prompt is."""
    table = base.model.get_input_embeddings()
    return table(torch.tensor(written.ids, dtype=torch.long, device=base.device)).detach()


def for_adapters(base: Base, softs: Sequence[SoftPrompt], rows: Sequence[Row], dataset: str, k: int) -> Written:
    """`k` examples beside these adapters: drawn with the first one's seed, never an act any of them holds out.

    Without adapters the default split's held-out side and seed stand in.
    """
    if softs:
        held = [r for soft in softs for r in held_out_for(soft, rows, dataset)]
        seed = softs[0].config.seed
    else:
        config = TuneConfig(dataset=dataset)
        held, seed = split_rows(rows, config)[1], config.seed
    return examples(base, rows, held, k, seed)
