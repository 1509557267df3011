"""The difference a soft prompt makes, in numbers: held-out perplexity, ROUGE-L, per-token gains, nearest tokens.

- `compare`: held-out loss and perplexity, base vs tuned; `held_out` encodes an adapter's
  held-out rows and compares them, the one recipe the CLI, the report and the GPU call share. Both models are scored on the same
  tokens of each row: every token after the first (the base model has no context to predict
  the first one from; the tuned model would have its soft prompt). Rows are batched by
  length, without gradients. Given a written prompt (written.py), "written" is the base model with
  that text in front, scored on those same tokens: the baseline a soft prompt has to beat.
- `rouge_compare` / `iter_rouge`: ROUGE-L of continuations (the default decoding: greedy, no
  repeated 3-grams) of "I want you to act as
  a <act>." against the act's real prompt, base vs tuned (and written). Each continuation is decoded
  alone, so a score never depends on what else shared its batch (see generate.py on bf16).
- `token_gains`: how much more (or less) likely the tuned model makes each token of a text.
- `nearest_tokens`: the vocabulary tokens each virtual token lies closest to.

What it does not do: train, choose rows (rows.py does), or format for a UI.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

from .data import Row
from .generate import Decoding, generate
from .model import Base, SoftPrompt, token_losses
from .rows import encode_rows
from .written import Written, check_fits
from .written import embeddings as written_embeddings

ROUGE_NEW_TOKENS = 64  # each ROUGE-L continuation's length unless a Decoding says otherwise


@dataclass
class Metrics:
    loss: float  # mean cross-entropy per token, nats
    perplexity: float  # exp(loss)
    tokens: int  # how many tokens were scored


def scoring_batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """The row indices of each batch `mean_loss` scores: rows sorted by length (ties keep their order), cut every `batch_size`.

    >>> scoring_batches([5, 1, 4, 2, 3], 2)
    [[1, 3], [4, 2], [0]]
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[k : k + batch_size] for k in range(0, len(order), batch_size)]


@torch.no_grad()
def batch_losses(base: Base, soft: torch.Tensor | None, rows: Sequence[list[int]],
                 batches: Sequence[Sequence[int]]) -> list[tuple[float, int]]:
    """(summed loss, tokens scored) of each batch of `rows` (token id lists) named by `batches`' indices."""
    out = []
    for batch in batches:
        loss_sum, n = token_losses(base, soft, [rows[i] for i in batch], score_first=False)
        out.append((loss_sum.item(), n))
    return out


def pooled(scores: Sequence[tuple[float, int]]) -> float:
    """The token-weighted mean of `batch_losses`' scores, summed in the order given.

    All of a `scoring_batches` split, in order, gives exactly `mean_loss`'s number; some of them,
    in order, gives that of those batches' rows.

    >>> pooled([(6.0, 2), (3.0, 1)])
    3.0
    """
    total, count = 0.0, 0
    for loss_sum, n in scores:
        total += loss_sum
        count += n
    if count == 0:
        raise ValueError("there are no tokens to score (every row is shorter than two tokens)")
    return total / count


def mean_loss(base: Base, soft: torch.Tensor | None, rows: Sequence[list[int]], batch_size: int = 8) -> float:
    """Token-weighted mean loss of `rows` (token id lists) with `soft` in front (None = base model)."""
    return pooled(batch_losses(base, soft, rows, scoring_batches([len(r) for r in rows], batch_size)))


def compare(base: Base, soft: SoftPrompt, rows: Sequence[list[int]], batch_size: int = 8,
            written: torch.Tensor | None = None) -> dict[str, Metrics]:
    """{"base": Metrics, "tuned": Metrics} over the same tokens of `rows`, and "written" with `written` in front.

    `written` (`written.embeddings`) is scored on exactly the positions base and tuned are: every
    token of each row after the first, the prompt in front changing only what precedes them.
    """
    count = sum(max(len(r) - 1, 0) for r in rows)
    out = {}
    prompts = [("base", None), ("tuned", soft.embeddings)] + ([("written", written)] if written is not None else [])
    for name, prompt in prompts:
        loss = mean_loss(base, prompt, rows, batch_size)
        out[name] = Metrics(loss=loss, perplexity=math.exp(loss), tokens=count)
    return out


def held_out(base: Base, soft: SoftPrompt, rows: Sequence[Row], batch_size: int | None = None,
             written: Written | None = None) -> dict[str, Metrics]:
    """`compare` on held-out `rows`, encoded as `soft` was trained (its max length and virtual tokens).

    The one held-out recipe of `eval`, the run report and the GPU call: which rows are held out
    is the caller's choice (rows.held_out_for); `batch_size` defaults to the adapter's own.
    With `written`, "written" is the base model with that text in front, on the same tokens;
    a written prompt too long for the longest row is refused (`written.check_fits`).

    >>> held_out(base, soft, held_out_for(soft, rows, soft.config.dataset))["tuned"].perplexity   # doctest: +SKIP
    18.4
    """
    encoded = encode_rows(base, list(rows), soft.config)
    prompt = None
    if written is not None:
        check_fits(base, written, max((len(r) for r in encoded), default=0), what="the longest held-out prompt")
        prompt = written_embeddings(base, written)
    return compare(base, soft, encoded, soft.config.batch_size if batch_size is None else batch_size, prompt)


# ---------------------------------------------------------------------------------------
# ROUGE-L of greedy generations against the real prompt


def _words(text: str) -> list[str]:
    """Lowercase word tokens: "Act as a Linux-Terminal!" -> ['act', 'as', 'a', 'linux', 'terminal']"""
    return re.findall(r"\w+", text.lower())


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence, one DP row at a time (O(len(a) * len(b)) time, O(len(b)) memory)."""
    row = [0] * (len(b) + 1)
    for x in a:
        diagonal = 0  # row[j - 1] of the previous row
        for j, y in enumerate(b, start=1):
            diagonal, row[j] = row[j], diagonal + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def _rouge_words(candidate: Sequence[str], reference: Sequence[str]) -> float:
    lcs = _lcs(candidate, reference)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(candidate), lcs / len(reference)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1: the longest common subsequence of lowercase word tokens (`\\w+`), as an F-score.

    Lin (2004)'s example: reference "police killed the gunman", candidate "police kill the
    gunman": the LCS is "police the gunman" (3 words), precision 3/4, recall 3/4, F1 0.75.
    Empty text on either side scores 0.0.

    >>> rouge_l("police kill the gunman", "police killed the gunman")
    0.75
    """
    return _rouge_words(_words(candidate), _words(reference))


def repeated_ngrams(text: str, n: int = 4) -> float:
    """Share of the text's word n-grams that already appeared earlier in it: 0.0 (no loop) to nearly 1.0.

    Words as ROUGE-L counts them (lowercase `\\w+`). A text with fewer than n words has no
    n-grams and scores 0.0. Used to choose the default decoding: a greedy loop ("I am a poet.
    I am a poet. ...") scores high, ordinary prose near 0.

    >>> round(repeated_ngrams("a b c d a b c d"), 6)  # 5 four-grams; "a b c d" again is 1 of them
    0.2
    """
    words = _words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def act_instruction(act: str) -> str:
    """The sentence the dataset's prompts open with, for an act's display name.

    >>> act_instruction("Linux Terminal (2)"), act_instruction("Ethereum Developer"), act_instruction("An Ethereum Developer")
    ('I want you to act as a Linux Terminal.', 'I want you to act as an Ethereum Developer.', 'I want you to act as an Ethereum Developer.')
    """
    act = re.sub(r" \(\d+\)$", "", act.strip())  # data.load_rows numbers duplicate acts
    first, _, rest = act.partition(" ")
    if first.lower() in ("a", "an", "the") and rest:
        return f"I want you to act as {first.lower()} {rest}."
    # "an" before a vowel letter, as the prompts themselves write it ("an ethereum developer"),
    # but "a" before u: the dataset says "a UX/UI developer", "a unit tester".
    article = "an" if act[:1].lower() in "aeio" else "a"
    return f"I want you to act as {article} {act}."


def _reference(prompt: str, instruction: str) -> list[str]:
    """The prompt's words after the instruction when the prompt opens with it (the generation never repeats it).

    >>> _reference("I want you to act as a poet. You will write.", "I want you to act as a poet.")
    ['you', 'will', 'write']
    """
    words, head = _words(prompt), _words(instruction)
    return words[len(head):] if words[: len(head)] == head and len(words) > len(head) else words


def check_rouge_fits(base: Base, written: Written, rows: Sequence[Row], decoding: Decoding | None = None) -> None:
    """Refuse, with the numbers, a written prompt that leaves no room for the longest of `rows`' act instructions
    and its continuation: `generate` would cut the instruction to make room, and score another question."""
    if rows:
        longest = max(len(base.encode(act_instruction(r.act))) for r in rows)
        new_tokens = (decoding or Decoding(max_new_tokens=ROUGE_NEW_TOKENS)).max_new_tokens
        check_fits(base, written, longest, new_tokens, what="the longest act instruction")


def base_continuations(base: Base, rows: Sequence[Row], decoding: Decoding | None = None) -> list[str]:
    """The base model's continuation of `act_instruction(row.act)` for each row, each decoded alone.

    A sweep decodes these once and passes them to every cell's `rouge_compare(base_texts=...)`:
    its base column is then the same in every cell by construction.
    """
    decoding = decoding or Decoding(max_new_tokens=ROUGE_NEW_TOKENS)
    return [generate(base, None, act_instruction(row.act), decoding) for row in rows]


def iter_rouge(
    base: Base,
    soft: SoftPrompt | torch.Tensor | None,
    rows: Sequence[Row],
    decoding: Decoding | None = None,
    base_texts: Sequence[str] | None = None,
    written: torch.Tensor | None = None,
) -> Iterator[dict]:
    """For each row, continue `act_instruction(row.act)` with base and tuned and score both.

    Yields one dict per row, in order: {"act", "input", "base_text", "tuned_text",
    "base_rouge", "tuned_rouge"}, and "written_text", "written_rouge" with `written` (a written
    prompt's `embeddings`) in front of the base model. The reference is the row's prompt without its opening
    instruction when it has one (see `_reference`), so neither model is scored on words it
    was given. The default decoding (greedy, no repeated 3-grams, 64 new tokens) unless
    `decoding` says otherwise.

    Each continuation is decoded alone (`generate`), not next to the other one: in bf16 a
    row's greedy text can change with the batch it shares (generate.py), and a score must
    not. `base_texts` (from `base_continuations`, same rows and decoding) skips decoding the
    base model again. Texts are shown without leading whitespace, which ROUGE-L ignores anyway.
    """
    decoding = decoding or Decoding(max_new_tokens=ROUGE_NEW_TOKENS)
    if base_texts is not None and len(base_texts) != len(rows):
        raise ValueError(f"{len(base_texts)} base continuations were given for {len(rows)} rows")
    for i, row in enumerate(rows):
        instruction = act_instruction(row.act)
        base_text = generate(base, None, instruction, decoding) if base_texts is None else base_texts[i]
        tuned_text = generate(base, soft, instruction, decoding)
        reference = _reference(row.prompt, instruction)
        result = {
            "act": row.act,
            "input": instruction,
            "base_text": base_text,
            "tuned_text": tuned_text,
            "base_rouge": _rouge_words(_words(base_text), reference),
            "tuned_rouge": _rouge_words(_words(tuned_text), reference),
        }
        if written is not None:
            result["written_text"] = generate(base, written, instruction, decoding)
            result["written_rouge"] = _rouge_words(_words(result["written_text"]), reference)
        yield result


def rouge_compare(
    base: Base,
    soft: SoftPrompt | torch.Tensor | None,
    rows: Sequence[Row],
    decoding: Decoding | None = None,
    progress: Callable[[int, int], None] | None = None,
    base_texts: Sequence[str] | None = None,
    written: torch.Tensor | None = None,
) -> dict:
    """Mean ROUGE-L of base and tuned generations over `rows`: {"base": float, "tuned": float, "rows": [...]}.

    "rows" holds `iter_rouge`'s dicts. `progress(done, total)` is called after each row, for a bar.
    `base_texts`: the base continuations already decoded (`base_continuations`), see `iter_rouge`.
    With `written`, "written" is the mean of the base model with that prompt in front.
    """
    if not rows:
        raise ValueError("there are no held-out acts to generate for")
    scored = []
    for result in iter_rouge(base, soft, rows, decoding, base_texts, written):
        scored.append(result)
        if progress is not None:
            progress(len(scored), len(rows))
    out = {name: sum(r[f"{name}_rouge"] for r in scored) / len(scored)
           for name in ("base", "tuned", "written") if f"{name}_rouge" in scored[0]}
    out["rows"] = scored
    return out


# ---------------------------------------------------------------------------------------
# per-token view and nearest vocabulary tokens


@torch.no_grad()
def _token_logprobs(base: Base, prompt: torch.Tensor | None, ids: list[int]) -> torch.Tensor:
    """`[len(ids) - 1]` float32: log p(ids[j] | prompt, ids[:j]) for j >= 1 (the tokens `compare` scores)."""
    losses, _ = token_losses(base, prompt, [ids], score_first=False, reduction="none")
    return -losses


def token_gains(base: Base, soft: SoftPrompt | torch.Tensor | None, text: str) -> list[tuple[str, float]]:
    """(token text, log p_tuned - log p_base) for every token of `text` but the first, in nats.

    The first token is left out: the base model has no context to predict it from (the same
    tokens `compare` scores). Positive means the soft prompt made the token more likely;
    the gains sum to base loss minus tuned loss over the text. Token texts come from
    decoding each id alone, so they keep their leading spaces and join back into the text
    (after its first token). Text beyond the context (after the virtual tokens) is cut.

    >>> token_gains(base, soft, "I want you to act as a poet.")   # doctest: +SKIP
    [(' want', 0.02), (' you', 0.11), ..., (' poet', 2.31), ('.', 0.4)]
    """
    prompt = soft.embeddings if isinstance(soft, SoftPrompt) else soft
    n_virtual = 0 if prompt is None else prompt.shape[0]
    ids = base.encode(text)[: base.max_positions - n_virtual]
    if len(ids) < 2:
        raise ValueError("the text needs at least two tokens to compare how likely they are")
    gains = _token_logprobs(base, prompt, ids) - _token_logprobs(base, None, ids)
    return [(base.tokenizer.decode([i]), g) for i, g in zip(ids[1:], gains.tolist())]


@torch.no_grad()
def nearest_tokens(base: Base, soft: SoftPrompt | torch.Tensor, k: int = 5) -> list[list[tuple[str, float]]]:
    """For each virtual token, the `k` vocabulary tokens whose input embeddings are closest by cosine similarity.

    Returns `[num_virtual_tokens][k]` pairs (token text, similarity in [-1, 1]), most similar
    first. Trained soft prompts usually sit far from every real token (similarities of
    0.1-0.3 are common), so read this as a hint, not a translation.

    >>> # a prompt made of the embedding rows of " poet" and " rapper":
    >>> nearest_tokens(base, table[[ids_poet, ids_rapper]], k=1)   # doctest: +SKIP
    [[(' poet', 1.0)], [(' rapper', 1.0)]]
    """
    prompt = soft.embeddings if isinstance(soft, SoftPrompt) else soft
    table = base.model.get_input_embeddings().weight
    vocab = torch.nn.functional.normalize(table.float(), dim=-1)  # [V, hidden]
    rows = torch.nn.functional.normalize(prompt.to(table.device).float(), dim=-1)  # [v, hidden]
    values, indices = (rows @ vocab.T).topk(min(k, vocab.shape[0]), dim=-1)
    decode = base.tokenizer.decode
    return [[(decode([i]), s) for i, s in zip(ids, sims)] for ids, sims in zip(indices.tolist(), values.tolist())]
