"""Held-out loss and perplexity, base vs tuned, over the same tokens.

Both models are scored on the same tokens of each row: every token after the first (the
base model has no context to predict the first one from; the tuned model would have its
soft prompt). Rows are batched by length, without gradients.

What it does not do: generation-based metrics (ROUGE-L) and per-token views come later.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch

from .model import Base, SoftPrompt, token_losses


@dataclass
class Metrics:
    loss: float  # mean cross-entropy per token, nats
    perplexity: float  # exp(loss)
    tokens: int  # how many tokens were scored


@torch.no_grad()
def mean_loss(base: Base, soft: torch.Tensor | None, rows: Sequence[list[int]], batch_size: int = 8) -> float:
    """Token-weighted mean loss of `rows` (token id lists) with `soft` in front (None = base model)."""
    order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    total, count = 0.0, 0
    for k in range(0, len(order), batch_size):
        loss_sum, n = token_losses(base, soft, [rows[i] for i in order[k : k + batch_size]], score_first=False)
        total += loss_sum.item()
        count += n
    if count == 0:
        raise ValueError("there are no tokens to score (every row is shorter than two tokens)")
    return total / count


def compare(base: Base, soft: SoftPrompt, rows: Sequence[list[int]], batch_size: int = 8) -> dict[str, Metrics]:
    """{"base": Metrics, "tuned": Metrics} over the same tokens of `rows`."""
    count = sum(max(len(r) - 1, 0) for r in rows)
    out = {}
    for name, prompt in (("base", None), ("tuned", soft.embeddings)):
        loss = mean_loss(base, prompt, rows, batch_size)
        out[name] = Metrics(loss=loss, perplexity=math.exp(loss), tokens=count)
    return out
