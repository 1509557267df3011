"""evaluate.py: ROUGE-L, its base-vs-tuned comparison, per-token gains and nearest tokens, on a tiny model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import ACTS, CORPUS

from tuning.data import Row
from tuning.config import TuneConfig
from tuning.evaluate import (
    act_instruction, base_continuations, compare, held_out, nearest_tokens, repeated_ngrams, rouge_compare, rouge_l,
    token_gains,
)
from tuning.generate import Decoding, generate
from tuning.model import SoftPrompt, token_losses
from tuning.rows import encode_rows


@pytest.mark.parametrize(
    "candidate, reference, expected",
    [
        ("the cat sat on the mat", "the cat sat on the mat", 1.0),
        ("The Cat, sat!", "the cat sat", 1.0),  # case and punctuation do not count
        ("red green blue", "one two three", 0.0),
        ("police kill the gunman", "police killed the gunman", 0.75),  # LCS 3 of 4 and 4
        ("the cat sat on the mat", "the cat is on the mat", 5 / 6),
        ("a b", "a b c d", 2 * (1 * 0.5) / 1.5),  # precision 1, recall 1/2
        ("", "anything", 0.0),
        ("\n\nthe cat sat", "the cat sat", 1.0),  # leading new lines (which display_text drops) do not count
    ],
)
def test_rouge_l_known_answers(candidate, reference, expected):
    assert rouge_l(candidate, reference) == pytest.approx(expected)


@pytest.mark.parametrize(
    "text, n, expected",
    [
        ("a b c d a b c d", 4, 1 / 5),  # five 4-grams, "a b c d" is seen twice
        ("I am a poet. I am a poet. I am a poet.", 4, 5 / 9),  # 9 four-grams, only the first 4 are new
        ("the quick brown fox jumps over the lazy dog", 4, 0.0),
        ("The Cat sat. the cat SAT!", 3, 1 / 4),  # case and punctuation do not count
        ("too short", 4, 0.0),  # no 4-gram at all
        ("", 4, 0.0),
        ("a a a a", 1, 3 / 4),
    ],
)
def test_repeated_ngrams_known_answers(text, n, expected):
    assert repeated_ngrams(text, n) == pytest.approx(expected)


@pytest.mark.parametrize(
    "act, sentence",
    [
        ("Linux Terminal", "I want you to act as a Linux Terminal."),
        ("Linux Terminal (2)", "I want you to act as a Linux Terminal."),
        ("Ethereum Developer", "I want you to act as an Ethereum Developer."),
        ("An Ethereum Developer", "I want you to act as an Ethereum Developer."),
        ("Speech-Language Pathologist (SLP)", "I want you to act as a Speech-Language Pathologist (SLP)."),
    ],
)
def test_act_instruction_reads_like_the_prompts(act, sentence):
    assert act_instruction(act) == sentence


def test_held_out_scores_rows_encoded_as_the_adapter_was_trained(base):
    rows = [Row(act, prompt, act.lower()) for act, prompt in list(ACTS.items())[:3]]
    config = TuneConfig(num_virtual_tokens=3, max_length=12, batch_size=2)  # max_length cuts the longer prompts
    soft = SoftPrompt(torch.randn(3, base.hidden_size, generator=torch.Generator().manual_seed(0)), "tiny", config)
    expected = compare(base, soft, encode_rows(base, rows, config), batch_size=2)
    assert held_out(base, soft, rows) == expected
    assert held_out(base, soft, rows, batch_size=1)["tuned"].loss == pytest.approx(expected["tuned"].loss, rel=1e-4)


def test_rouge_compare_scores_base_and_tuned_per_row(base):
    rows = [Row(act, prompt, act.lower()) for act, prompt in list(ACTS.items())[:2]]
    soft = torch.randn(3, base.hidden_size, generator=torch.Generator().manual_seed(0))
    seen = []
    result = rouge_compare(base, soft, rows, Decoding(max_new_tokens=8), progress=lambda d, t: seen.append((d, t)))
    assert [r["act"] for r in result["rows"]] == ["Rapper", "Poet"]
    assert seen == [(1, 2), (2, 2)]
    for name in ("base", "tuned"):
        scores = [r[f"{name}_rouge"] for r in result["rows"]]
        assert all(0.0 <= s <= 1.0 for s in scores)
        assert result[name] == pytest.approx(sum(scores) / 2)


def test_rouge_scores_each_continuation_decoded_alone(base):
    # Alone, not in a batch with the other model's row: in bf16 the batch can change a greedy text.
    rows = [Row(act, prompt, act.lower()) for act, prompt in list(ACTS.items())[:2]]
    soft = torch.randn(3, base.hidden_size, generator=torch.Generator().manual_seed(0))
    decoding = Decoding(max_new_tokens=8)
    result = rouge_compare(base, soft, rows, decoding)
    for r in result["rows"]:
        assert r["base_text"] == generate(base, None, r["input"], decoding)
        assert r["tuned_text"] == generate(base, soft, r["input"], decoding)
    assert [r["base_text"] for r in result["rows"]] == base_continuations(base, rows, decoding)


def test_given_base_continuations_are_scored_instead_of_decoded(base):
    rows = [Row(act, prompt, act.lower()) for act, prompt in list(ACTS.items())[:2]]
    given = ["You will come up with powerful lyrics", "nothing alike"]
    result = rouge_compare(base, None, rows, Decoding(max_new_tokens=4), base_texts=given)
    assert [r["base_text"] for r in result["rows"]] == given
    reference = ACTS["Rapper"].removeprefix("I want you to act as a rapper. ")  # the words after the instruction
    expected = rouge_l(given[0], reference)
    assert expected > 0 and result["rows"][0]["base_rouge"] == pytest.approx(expected)
    assert result["rows"][1]["base_rouge"] == 0.0


def test_base_continuations_must_match_the_rows(base):
    rows = [Row(act, prompt, act.lower()) for act, prompt in list(ACTS.items())[:2]]
    with pytest.raises(ValueError, match="1 base continuations were given for 2 rows"):
        rouge_compare(base, None, rows, Decoding(max_new_tokens=4), base_texts=["one"])


def test_token_gains_sum_to_the_loss_difference(base):
    text = CORPUS[0]
    soft = torch.randn(4, base.hidden_size, generator=torch.Generator().manual_seed(1))
    gains = token_gains(base, soft, text)
    ids = base.encode(text)
    assert len(gains) == len(ids) - 1
    assert "".join(t for t, _ in gains) == base.tokenizer.decode(ids[1:])  # spaces kept
    with torch.no_grad():
        base_loss, n = token_losses(base, None, [ids], score_first=False)
        tuned_loss, m = token_losses(base, soft, [ids], score_first=False)
    assert n == m == len(gains)
    assert sum(g for _, g in gains) == pytest.approx((base_loss - tuned_loss).item(), abs=1e-3)


def test_token_gains_are_zero_without_a_prompt(base):
    assert all(g == pytest.approx(0.0, abs=1e-6) for _, g in token_gains(base, None, CORPUS[1]))


def test_token_gains_need_two_tokens(base):
    with pytest.raises(ValueError, match="at least two tokens"):
        token_gains(base, None, "a")


def test_nearest_tokens_finds_the_embedding_rows_a_prompt_is_made_of(base):
    ids = base.encode(" poet rapper terminal")[:3]
    table = base.model.get_input_embeddings().weight
    nearest = nearest_tokens(base, table[ids].detach().clone(), k=4)
    assert len(nearest) == 3 and all(len(n) == 4 for n in nearest)
    for token_id, candidates in zip(ids, nearest):
        text, similarity = candidates[0]
        assert text == base.tokenizer.decode([token_id]) and similarity == pytest.approx(1.0, abs=1e-5)
        assert [s for _, s in candidates] == sorted((s for _, s in candidates), reverse=True)


def test_eval_with_rouge_prints_base_and_tuned(tiny_model_dir, tiny_csv, tmp_path, capsys):
    from tuning.cli import main

    assert main(["--adapters-dir", str(tmp_path), "train", "--model", str(tiny_model_dir), "--dataset", str(tiny_csv),
                 "--num-virtual-tokens", "2", "--epochs", "1", "--precision", "fp32", "--held-out-fraction", "0.25",
                 "--name", "r"]) == 0
    capsys.readouterr()
    assert main(["--adapters-dir", str(tmp_path), "eval", "--adapter", "r", "--precision", "fp32",
                 "--rouge", "1", "--max-new-tokens", "8"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("ROUGE-L"))
    scores = [float(x) for x in line.split(":")[1].replace("base", "").replace("tuned", "").split()]
    assert len(scores) == 2 and all(0 <= s <= 1 and math.isfinite(s) for s in scores)


def test_check_rouge_fits_refuses_a_written_prompt_that_crowds_out_an_instruction_and_its_continuation(base):
    from tuning import written
    from tuning.evaluate import act_instruction, check_rouge_fits

    rows = [Row(act, prompt, act.lower()) for act, prompt in ACTS.items()][:2]
    longest = max(len(base.encode(act_instruction(r.act))) for r in rows)
    room = base.max_positions - longest - 10  # exactly what 10 new tokens leave
    fits = written.Written(ids=tuple([5] * room), text="x")
    check_rouge_fits(base, fits, rows, Decoding(max_new_tokens=10))
    check_rouge_fits(base, written.Written(ids=tuple([5] * base.max_positions), text="x"), [])  # no act: nothing to fit
    with pytest.raises(written.WrittenError, match=rf"your text · {room} tokens\) \+ the longest act instruction "
                                                   rf"\({longest} tokens\) \+ 11 new tokens need {base.max_positions + 1}"):
        check_rouge_fits(base, fits, rows, Decoding(max_new_tokens=11))
