"""written.py: the written-prompt baseline — which examples, and that it is scored and decoded on the soft prompt's terms."""

from __future__ import annotations

import pytest
import torch
from conftest import ACTS

from tuning import written
from tuning.config import TuneConfig
from tuning.data import Row, normalise
from tuning.evaluate import batch_losses, compare, held_out, pooled, rouge_compare
from tuning.generate import Decoding, stream_ids
from tuning.model import SoftPrompt
from tuning.rows import encode_rows, split_rows

ROWS = [Row(act=a, prompt=p, group=normalise(a)) for a, p in ACTS.items()]
MORE = ROWS + [Row(act=f"Act {i}", prompt=f"I want you to act as act {i}. You will do thing {i}.", group=f"act {i}")
               for i in range(30)]


def _soft(base, tokens=3, init_seed=0, **config):
    torch.manual_seed(init_seed)
    return SoftPrompt(torch.randn(tokens, base.hidden_size) * 0.5, "tiny-gpt2",
                      TuneConfig(num_virtual_tokens=tokens, **config))


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("k", written.SHOTS)
def test_examples_never_come_from_a_held_out_act(seed, k):
    _, held = split_rows(MORE, TuneConfig(seed=seed, held_out_fraction=0.3))
    drawn = written.draw(MORE, held, k, seed)
    assert len(drawn) == k and len(set(drawn)) == k
    assert not {r.group for r in drawn} & {r.group for r in held}


def test_the_same_seed_gives_the_same_examples_and_draws_are_nested():
    held = MORE[:3]
    first = written.draw(MORE, held, 4, seed=7)
    assert written.draw(list(reversed(MORE)), held, 4, seed=7) == first  # file order does not matter
    assert written.draw(MORE, held, 2, seed=7) == first[:2]
    assert written.draw(MORE, held, 1, seed=7) == first[:1]
    others = {tuple(r.act for r in written.draw(MORE, held, 4, seed=s)) for s in range(8)}
    assert len(others) > 1  # the seed chooses


def test_too_few_acts_to_draw_from_is_refused_in_a_sentence():
    with pytest.raises(written.WrittenError, match=r"4 examples were asked for but only 2 acts"):
        written.draw(ROWS, ROWS[2:], 4, seed=0)


def test_examples_are_whole_prompts_each_ended_as_training_reads_a_row(base):
    picked = ROWS[:2]
    w = written.from_examples(base, picked)
    expected = [i for r in picked for i in base.encode(r.prompt) + [base.eos_id]]
    assert list(w.ids) == expected
    assert w.describe() == f"2 examples · {len(expected)} tokens"
    assert written.from_examples(base, picked[:1]).label == "1 example"


def test_own_text_is_kept_apart_from_the_input(base):
    w = written.from_text(base, "Answer as a rapper would")
    assert list(w.ids) == base.encode("Answer as a rapper would\n") and w.label == "your text"
    assert list(written.from_text(base, "Rhyme.\n\n").ids) == base.encode("Rhyme.\n\n")
    with pytest.raises(written.WrittenError, match="empty"):
        written.from_text(base, "  \n")


def test_written_scores_are_over_the_same_positions_as_scoring_each_row_alone(base):
    soft = _soft(base)
    w = written.examples(base, ROWS, ROWS[5:], 2, seed=0)
    rows = encode_rows(base, ROWS[5:], soft.config)
    result = compare(base, soft, rows, batch_size=3, written=written.embeddings(base, w))
    assert result["written"].tokens == result["base"].tokens == result["tuned"].tokens
    # The plain way: the model given the token ids of [written; row], scored on the row's tokens after its first.
    total, count = 0.0, 0
    for row in rows:
        ids = torch.tensor([list(w.ids) + row])
        with torch.no_grad():
            logits = base.model(input_ids=ids).logits[0].float()
        start = w.tokens + 1  # row[1] sits here; the position before it predicts it
        total += torch.nn.functional.cross_entropy(logits[start - 1 : -1], ids[0, start:], reduction="sum").item()
        count += len(row) - 1
    assert result["written"].tokens == count
    assert result["written"].loss == pytest.approx(total / count, rel=1e-5)
    # and it is the base model's loss row by row with the written prompt in front, batched or alone
    alone = pooled(batch_losses(base, written.embeddings(base, w), rows, [[i] for i in range(len(rows))]))
    assert result["written"].loss == pytest.approx(alone, rel=1e-5)
    assert result["written"].loss != pytest.approx(result["base"].loss, rel=1e-3)  # the prompt changed something


def test_held_out_refuses_a_written_prompt_that_does_not_fit_with_the_numbers(base):
    soft = _soft(base)
    long = written.Written(ids=tuple([5] * (base.max_positions - 3)), examples=tuple(ROWS[:4]))
    with pytest.raises(written.WrittenError,
                       match=rf"4 examples · {base.max_positions - 3} tokens.*longest held-out prompt.*"
                             rf"{base.max_positions}-token context"):
        held_out(base, soft, ROWS[5:], written=long)


def test_held_out_scores_written_with_the_adapters_own_encoding(base):
    soft = _soft(base)
    w = written.examples(base, ROWS, ROWS[5:], 1, seed=0)
    result = held_out(base, soft, ROWS[5:], written=w)
    plain = held_out(base, soft, ROWS[5:])
    assert set(result) == {"base", "tuned", "written"}
    assert result["base"] == plain["base"] and result["tuned"] == plain["tuned"]


def test_a_written_row_decodes_as_the_model_does_from_the_token_ids(base):
    w = written.from_text(base, "I want you to act as a poet.")
    ids = base.encode("Tell me about the sea.")
    decoding = Decoding(max_new_tokens=12, no_repeat_ngram_size=0)
    *_, through_embeddings = stream_ids(base, [written.embeddings(base, w), None], ids, decoding)
    *_, from_ids = stream_ids(base, [None], list(w.ids) + ids, decoding)
    assert through_embeddings[0] == from_ids[0]
    assert through_embeddings[0] != through_embeddings[1] or through_embeddings[0] == []


def test_rouge_with_a_written_prompt_scores_a_third_continuation(base):
    soft = _soft(base)
    w = written.embeddings(base, written.examples(base, ROWS, ROWS[5:], 1, seed=0))
    decoding = Decoding(max_new_tokens=6)
    result = rouge_compare(base, soft, ROWS[5:7], decoding, written=w)
    assert set(result) == {"base", "tuned", "written", "rows"}
    alone = rouge_compare(base, w, ROWS[5:7], decoding)
    assert [r["written_text"] for r in result["rows"]] == [r["tuned_text"] for r in alone["rows"]]
    assert result["written"] == pytest.approx(alone["tuned"])


def test_examples_beside_two_adapters_avoid_both_held_out_sides_with_the_first_seed(base):
    first = _soft(base)
    first.meta["held_out_acts"] = [r.act for r in MORE[:4]]
    second = _soft(base, init_seed=1, seed=5)
    second.meta["held_out_acts"] = [r.act for r in MORE[4:9]]
    for softs in ([first, second], [second, first]):
        w = written.for_adapters(base, softs, MORE, softs[0].config.dataset, 4)
        assert not {r.group for r in w.examples} & {r.group for r in MORE[:9]}
        assert w.examples == tuple(written.draw(MORE, MORE[:9], 4, softs[0].config.seed))
