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


# --- the Sweep tab's written rows --------------------------------------------------------


def recording_sweeps(monkeypatch) -> list:
    """(shots, events) of every run_sweep the app starts from here on: the real sweep, its events kept."""
    import tuning.sweep

    calls, real = [], tuning.sweep.run_sweep

    def recording(*args, **kwargs):
        calls.append((kwargs.get("shots", ()), []))
        for event in real(*args, **kwargs):
            calls[-1][1].append(event)
            yield event

    monkeypatch.setattr(tuning.sweep, "run_sweep", recording)  # gpu.sweep_run imports it at each call
    return calls


def test_the_tabs_sweep_scores_the_ticked_written_prompts_and_shows_run_sweeps_numbers(ctx, monkeypatch):
    from types import SimpleNamespace

    from tuning.formatting import number
    from tuning.sweep import WrittenResult, context_points
    from ui.tabs.sweep import start_sweep

    calls = recording_sweeps(monkeypatch)
    updates = list(start_sweep(ctx, "2x1", 1, 0.1, 4, 0, Session(), SimpleNamespace(session_hash="sweep-written"),
                               shots=["2 examples", "1 example"]))
    chart, progress, table, csv_file, _ = updates[-1]
    ((shots, events),) = calls
    rows = [e for e in events if isinstance(e, WrittenResult)]
    assert shots == (1, 2) and [w.examples for w in rows] == [1, 2]
    assert list(table["cell"]) == ["2×1"] + [f"{k} example{'s' * (k > 1)} · {w.tokens:,} tokens"
                                             for k, w in zip((1, 2), rows)]
    for shown, w in zip(table.to_dict("records")[1:], rows):  # one row per k, run_sweep's numbers as the table words them
        assert (shown["tokens"], shown["epochs"], shown["seconds"]) == (w.tokens, "–", "–")
        assert shown["held-out ppl base"] == number(w.held_out_ppl_base, ".2f") == table["held-out ppl base"][0]
        assert shown["held-out ppl tuned"] == number(w.held_out_ppl_written, ".2f") != "–"
        assert (shown["ROUGE-L base"], shown["ROUGE-L tuned"]) == (number(w.rouge_base), number(w.rouge_written))
        assert shown["ROUGE-L tuned"] != "–"  # ROUGE-L was asked for: the written prompt's continuation was scored
    assert progress.endswith(" · 2 written prompts scored")
    assert open(csv_file, encoding="utf-8").read().splitlines()[-1].startswith("2 examples,")
    # the CLI's sweep.png left panel: every prompt at the context it takes, the base model a line; hidden at the
    # start, left as it is while the cells train, drawn once written rows exist
    drawn = [u[4] for u in updates if u[4] != gr.skip()]
    shown = [d.constructor_args["visible"] for d in drawn]
    assert shown[0] is False and shown[1:] == [True] * (len(drawn) - 1) and len(drawn) >= 2  # updates may merge
    assert drawn[-1] is updates[-1][4] and len(drawn) < len(updates)
    (ax,) = drawn[-1].constructor_args["value"].axes
    cells = events[-1].results
    assert [tuple(xy) for c in ax.collections for xy in c.get_offsets()] == [
        (x, y) for _, x, y, _ in context_points(cells, rows)]
    assert list(ax.get_lines()[0].get_ydata()) == [cells[0].held_out_ppl_base] * 2


def test_the_tabs_sweep_without_written_prompts_passes_none_and_keeps_the_context_chart_hidden(ctx, monkeypatch):
    from types import SimpleNamespace

    from ui.tabs.sweep import start_sweep

    calls = recording_sweeps(monkeypatch)
    updates = list(start_sweep(ctx, "2x1", 0, 0.1, 4, 0, Session(), SimpleNamespace(session_hash="sweep-none")))
    assert [shots for shots, _ in calls] == [()] and list(updates[-1][2]["cell"]) == ["2×1"]
    assert updates[0][4].constructor_args == {"value": None, "visible": False}  # a last sweep's picture goes
    assert all(u[4] == gr.skip() for u in updates[1:])  # and no figure is drawn at each step
    assert updates[-1][1].startswith("done: 1 of 1 cell in ") and "written" not in updates[-1][1]


def test_the_sweep_estimate_counts_the_written_prompts_scoring_and_their_rouge_l(ctx, monkeypatch):
    from tuning.formatting import duration
    from tuning.plan import SCORING_COST
    from tuning.rows import split_rows
    import ui.tabs.sweep as tab

    monkeypatch.setattr(tab, "last_speed", lambda session: 2.0)  # slow: every token's second shows in the line
    monkeypatch.setattr(tab, "decode_pace", lambda rows: 0.1)
    base, rows = ctx.base(), ctx.rows()
    held = split_rows(rows, TuneConfig(model=ctx.model, dataset=ctx.dataset))[1]
    lengths = [len(base.encode(r.prompt)) + 1 for r in held]
    prompts = [written.examples(base, rows, held, k, 0) for k in (1, 4)]
    plan = tab.sweep_plan(ctx, "2x1", 0.1, 4, 0)
    cells = tab.sweep_training_seconds(base, plan, [], 2.0)
    alone = tab.sweep_estimate(ctx, "2x1", 0.1, 4, 0, Session(), 1)
    both = tab.sweep_estimate(ctx, "2x1", 0.1, 4, 0, Session(), 1, ["4 examples", "1 example"])
    assert alone.startswith(f"1 cell (2×1): 3 steps in all; about {duration(cells)} of training at 2 tokens/s")
    assert alone.endswith(f"in each cell, up to about {duration(2 * 64 * 0.1)} more at this server's last "
                          f"generation pace.")
    scoring = SCORING_COST * sum(p.tokens * len(held) + sum(lengths) for p in prompts) / 2.0
    assert both == (f"1 cell (2×1): 3 steps in all, then 2 written prompts ({prompts[0].describe()}, "
                    f"{prompts[1].describe()}) scored on the held-out acts; about {duration(cells + scoring)} of "
                    f"training and written-prompt scoring at 2 tokens/s (your last run's speed), then ROUGE-L "
                    f"generation for 1 held-out act in each cell and written prompt, up to about "
                    f"{duration(4 * 64 * 0.1)} more at this server's last generation pace.")


@pytest.mark.parametrize("shots", [["3 examples"], "2 examples", [2]])
def test_the_sweep_refuses_other_written_prompts_in_one_sentence(ctx, shots):
    from types import SimpleNamespace

    from ui.checks import CheckedCheckboxGroup
    from ui.tabs.sweep import SHOT_LABELS, start_sweep, sweep_estimate

    with pytest.raises(gr.Error, match=r"Written prompts must be some of 1 example, 2 examples, 4 examples, got "):
        next(start_sweep(ctx, "2x1", 0, 0.1, 4, 0, Session(), SimpleNamespace(session_hash="bad"), shots=shots))
    assert sweep_estimate(ctx, "2x1", 0.1, 4, 0, Session(), 0, shots).startswith("⚠️ Written prompts must be some of")
    boxes = CheckedCheckboxGroup(list(SHOT_LABELS), label="Written prompts")
    with pytest.raises(gr.Error, match=r"Written prompts must be some of 1 example, 2 examples, 4 examples, got "):
        boxes.preprocess(shots)
    assert boxes.preprocess(None) == [] and boxes.preprocess(["4 examples"]) == ["4 examples"]


def test_the_context_picture_is_built_once_per_written_row_not_at_every_render(ctx, monkeypatch):
    import tuning.sweep
    from tuning.progress import SweepView
    from tuning.sweep import CellResult, WrittenResult
    from ui.tabs.sweep import sweep_render

    built, real = [], tuning.sweep.context_figure
    monkeypatch.setattr(tuning.sweep, "context_figure", lambda cells, rows: built.append(len(rows)) or real(cells, rows))
    view = SweepView(cells=1, labels=["2×1"], shots=(1, 2))
    render = sweep_render(ctx, view, "pictures")  # `follow` calls it at every wake-up, once a second at least
    view.add(CellResult("2×1", 2, 1, 3.0, 2.0, None, None, 40.0, 4, 4, False, {}, None))
    for k in (1, 2):
        view.add(WrittenResult(f"{k} example{'s' * (k > 1)}", k, 20 * k, ["Poet"] * k, 3.0, 2.5, None, None))
        pictures = [render(view)[4] for _ in range(3)]
        assert pictures[0] is pictures[1] is pictures[2] and pictures[0].constructor_args["visible"]
    assert built == [1, 2]
