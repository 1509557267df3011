"""The written-prompt baseline in the app: Compare's Written column, Evaluate's third score, the API's `shots`.

The callbacks are called directly (no server) on the tiny model and the 12-act fixture, beside
two saved adapters that hold out different acts and were trained with different seeds.
"""

from __future__ import annotations

import re

import gradio as gr
import pytest
import torch

from app_fixtures import write_assets
from tuning import adapters, written
from tuning.config import TuneConfig
from tuning.generate import Decoding, stream_many
from tuning.jobs import Jobs
from tuning.model import SoftPrompt
from ui import api, gpu_calls
from ui.charts import shown_text
from ui.session import Context, Session
from ui.tabs.compare import NO_PROMPT, NO_WRITTEN, OWN_TEXT, WRITTEN_CHOICES, cost_line, generate, written_column
from ui.tabs.evaluate import evaluate_run

TEXT = "I want you to act as a poet."
SAMPLE = dict(max_new=8, mode="sample", temperature=0.8, top_p=0.95, top_k=50, penalty=1.0, seed=3)
HELD = {"a": ["Poet", "Chef", "Doctor"], "b": ["Rapper", "Historian", "Comedian"]}  # each adapter's held-out acts


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    folder = tmp_path_factory.mktemp("written-app")
    model, dataset = write_assets(folder)
    ctx = Context(model, dataset, folder / "adapters", jobs=Jobs(grace=5.0))
    base = ctx.base()
    for seed, (name, held) in enumerate(HELD.items(), start=5):
        torch.manual_seed(seed)
        config = TuneConfig(num_virtual_tokens=3 + seed, model=model, dataset=dataset, seed=seed)
        soft = SoftPrompt(torch.randn(config.num_virtual_tokens, base.hidden_size) * 0.5, model, config,
                          meta={"held_out_acts": held})
        adapters.save(soft, name, ctx.root)
    return ctx


def soft(ctx, name: str) -> SoftPrompt:
    return adapters.load(name, ctx.root, ctx.base())


def compare(ctx, choice=NO_WRITTEN, own_text="", b="b", text=TEXT, **decoding):
    """Every update of one Compare generation: (base, tuned, second tuned, written, cost line, written prompt shown)."""
    settings = {**SAMPLE, **decoding}
    return list(generate(ctx, text, "a", *settings.values(), Session(), b, 3, choice, own_text))


def batches(monkeypatch) -> list:
    """The prompts of every GENERATE_ON_GPU call from here on (each call is one batch)."""
    calls, real = [], gpu_calls.GENERATE_ON_GPU

    def recording(base, prompts, text, decoding):
        calls.append(list(prompts))
        return real(base, prompts, text, decoding)

    monkeypatch.setattr(gpu_calls, "GENERATE_ON_GPU", recording)
    return calls


@pytest.mark.parametrize("choice, own_text", [("2 examples", ""), (OWN_TEXT, "Answer as a poet would, in rhyme.")])
def test_the_written_column_is_the_row_beside_base_of_the_same_batch(ctx, monkeypatch, choice, own_text):
    calls = batches(monkeypatch)
    *_, (base_text, a_text, b_text, written_text, cost, shown) = compare(ctx, choice, own_text)
    a, b = soft(ctx, "a"), soft(ctx, "b")
    prompt = (written.from_text(ctx.base(), own_text) if own_text
              else written.for_adapters(ctx.base(), [a, b], ctx.rows(), ctx.dataset, 2))
    assert len(calls) == 1 and calls[0][0] == prompt and len(calls[0]) == 3  # one batch: written, a, b (base added)
    *_, expected = stream_many(ctx.base(), [None, written.embeddings(ctx.base(), prompt), a, b], TEXT,
                               Decoding(**{"max_new_tokens": 8, "do_sample": True, "temperature": 0.8, "top_p": 0.95,
                                           "top_k": 50, "seed": 3, "no_repeat_ngram_size": 3}))
    assert [base_text, written_text, a_text, b_text] == [shown_text(t) for t in expected]
    assert written_text != base_text


def test_without_a_written_prompt_the_batch_and_the_columns_are_as_before(ctx, monkeypatch):
    calls = batches(monkeypatch)
    *_, (base_text, a_text, b_text, written_text, cost, shown) = compare(ctx, NO_WRITTEN, b=NO_PROMPT)
    assert [len(c) for c in calls] == [1] and isinstance(calls[0][0], SoftPrompt)
    assert base_text and a_text and b_text == written_text == shown == ""
    assert cost.startswith("One batch of 2 columns: ")


@pytest.mark.parametrize("k", written.SHOTS)
def test_the_examples_shown_are_drawn_with_the_first_adapters_seed_and_never_held_out_by_either(ctx, k):
    choice = WRITTEN_CHOICES[written.SHOTS.index(k) + 1]
    for first, second in (("a", "b"), ("b", "a")):
        updates = list(generate(ctx, TEXT, first, *SAMPLE.values(), Session(), second, 3, choice, ""))
        shown = updates[-1][5]
        acts = re.findall(r"^\d+\. \*\*(.+?)\*\*: ", shown, flags=re.M)
        held = HELD["a"] + HELD["b"]
        expected = written.draw(ctx.rows(), [r for r in ctx.rows() if r.act in held], k, soft(ctx, first).config.seed)
        assert acts == [r.act for r in expected] and not set(acts) & set(held)
        for row in expected:
            assert row.prompt in shown  # the whole prompt the model was given, not just its act


def test_each_column_header_says_the_context_it_costs(ctx):
    updates = compare(ctx, "2 examples")
    headers = updates[0]
    base = ctx.base()
    picked = written.for_adapters(base, [soft(ctx, "a"), soft(ctx, "b")], ctx.rows(), ctx.dataset, 2).examples
    tokens = sum(len(base.encode(r.prompt)) + 1 for r in picked)  # each prompt, then end-of-text
    a_virtual, b_virtual = soft(ctx, "a").num_virtual_tokens, soft(ctx, "b").num_virtual_tokens
    assert headers[1].constructor_args == {"label": f"Tuned: a · {a_virtual} virtual tokens", "value": ""}
    assert headers[2].constructor_args == {"label": f"Tuned: b · {b_virtual} virtual tokens", "value": ""}
    assert headers[3].constructor_args == {"label": f"Written: 2 examples · {tokens} tokens", "value": ""}
    n = len(base.encode(TEXT))
    cost = updates[-1][4]
    assert re.fullmatch(
        rf"One batch of 4 columns: \d+\.\d s for \d+ new tokens? · context: base {n} tokens · "
        rf"written {tokens + n} \({tokens} \+ {n}\) · tuned {a_virtual + n} \({a_virtual} virtual \+ {n}\) · "
        rf"second tuned {b_virtual + n} \({b_virtual} virtual \+ {n}\)", cost), cost


def test_the_cost_line_reads_each_columns_context():
    assert cost_line(["base", "written", "tuned"], [(0, 9), (164, 9), (20, 9)], 3.14, 64) == (
        "One batch of 3 columns: 3.1 s for 64 new tokens · context: base 9 tokens · written 173 (164 + 9) · "
        "tuned 29 (20 virtual + 9)")


def test_own_text_too_long_for_the_context_is_refused_with_the_numbers_and_nothing_is_decoded(ctx, monkeypatch):
    calls = batches(monkeypatch)
    long = "Answer as a poet would, in rhyme. " * 40
    tokens, n = len(ctx.base().encode(long)), len(ctx.base().encode(TEXT))
    with pytest.raises(gr.Error, match=rf"the written prompt \(your text · {tokens} tokens\) \+ the input \({n} tokens\) "
                                       rf"\+ 8 new tokens need {tokens + n + 8} positions, more than the model's "
                                       rf"256-token context"):
        compare(ctx, OWN_TEXT, long)
    assert calls == []
    with pytest.raises(gr.Error, match="the written prompt is empty"):
        compare(ctx, OWN_TEXT, "  ")


def test_the_written_column_and_its_text_box_show_only_when_chosen():
    text, column, box, shown, cost = written_column(NO_WRITTEN)
    assert not text.constructor_args["visible"] and not column.constructor_args["visible"]
    assert not box.constructor_args["visible"] and shown == cost == ""
    text, column, box, _, _ = written_column("2 examples")
    assert not text.constructor_args["visible"] and column.constructor_args == {"label": "Written", "value": "",
                                                                                 "visible": True}
    assert box.constructor_args["visible"]
    assert written_column(OWN_TEXT)[0].constructor_args["visible"]


def test_evaluate_scores_the_written_prompt_on_the_same_held_out_tokens(ctx):
    *_, (ppl, rouge, summary, rows) = evaluate_run(ctx, "a", 1, 6, Session(), "2 examples",
                                                    progress=lambda *args, **kwargs: None)
    a = soft(ctx, "a")
    prompt = written.for_adapters(ctx.base(), [a], ctx.rows(), ctx.dataset, 2)
    from tuning.evaluate import held_out
    from tuning.rows import held_out_for

    expected = held_out(ctx.base(), a, held_out_for(a, ctx.rows(), ctx.dataset), written=prompt)
    assert list(ppl["model"]) == ["base", "written", "tuned"]
    assert list(ppl["perplexity"]) == pytest.approx([expected[s].perplexity for s in ("base", "written", "tuned")])
    assert f"({expected['base'].tokens} tokens): base " in summary and summary.count(" tokens)") == 2  # once, + the label
    assert f"written ({prompt.describe()}) " in summary
    assert list(rows.columns) == ["act", "base text", "written text", "tuned text", "base ROUGE-L", "written ROUGE-L",
                                  "tuned ROUGE-L"]
    assert list(rouge["model"]) == ["base", "written", "tuned"]


def test_the_api_compares_with_a_written_prompt_and_says_what_it_was(ctx):
    answer = api.compare_texts(ctx, TEXT, "a", "b", 6, shots=2)
    prompt = written.for_adapters(ctx.base(), [soft(ctx, "a"), soft(ctx, "b")], ctx.rows(), ctx.dataset, 2)
    assert set(answer) == {"base", "a", "b", "written", "written_prompt"}
    assert answer["written_prompt"] == {"label": "2 examples", "tokens": prompt.tokens,
                                        "examples": [r.act for r in prompt.examples]}
    assert answer["written"] != answer["base"]
    assert set(api.compare_texts(ctx, TEXT, "a", "", 6)) == {"base", "a"}
    scores = api.evaluate_adapter(ctx, "a", 0, shots=1)
    assert set(scores["perplexity"]) == {"base", "written", "tuned"} and scores["written_prompt"]["label"] == "1 example"


@pytest.mark.parametrize("shots", [3, -1, 2.5, "2", True])
def test_the_api_refuses_other_example_counts_in_one_sentence(ctx, shots):
    with pytest.raises(gr.Error, match=r"shots must be one of 0, 1, 2, 4 \(0: no written prompt\), got "):
        api.compare_texts(ctx, TEXT, "a", "", 6, shots=shots)
