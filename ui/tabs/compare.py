"""The Compare tab: base and one or two tuned prompts continue the same input, side by side, streamed.

While the reference adapters train, a timer shows their progress and offers each as it is saved.
"""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr

from tuning import reference
from tuning.data import DataError
from tuning.formatting import plural
from tuning.generate import Decoding, fit_input
from tuning.model import SoftPrompt
from ui import gpu_calls
from ui.charts import act_line, shown_text
from ui.checks import CheckedRadio, MAX_INPUT_CHARS, CheckedNumber, CheckedSlider, CheckedText, checked_name, user_errors, whole
from ui.session import (HIDDEN, REFERENCE_OWNER, Context, Session, bind, dataset_rows, model_problem, newest_run,
                        pick_soft, prompt_names, reference_status)


NO_PROMPT = "(none)"  # Compare's second prompt, off
MAX_NEW_TOKENS = 512  # a Compare continuation, on the page and through the API
SAMPLING_ONLY = "when sampling"
EMPTY_COLUMN = "Pick a tuned prompt above to fill this column."


def generate(ctx: Context, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session,
             adapter_b=NO_PROMPT, no_repeat=Decoding.no_repeat_ngram_size):
    """Base, prompt A and (unless NO_PROMPT) prompt B continue `text` in one batch, same decoding and seed.

    A model that cannot be loaded is said in the columns (and under the header), not as red "Error" badges.
    """
    try:
        yield from _generate(ctx, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session,
                             adapter_b, no_repeat)
    except gr.Error:
        if (problem := model_problem(ctx)) is None:
            raise
        yield problem, "", ""


def _generate(ctx: Context, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session,
              adapter_b, no_repeat):
    prompts = [pick_soft(ctx, adapter, session)]
    if checked_name(adapter_b, "the second prompt") not in (None, NO_PROMPT):
        prompts.append(pick_soft(ctx, adapter_b, session))
    with user_errors():
        decoding = Decoding(
            max_new_tokens=whole(max_new), do_sample=mode == "sample", temperature=temperature,
            top_p=top_p, top_k=whole(top_k), repetition_penalty=penalty, seed=whole(seed),
            no_repeat_ngram_size=whole(no_repeat),
        )
        if cut := input_cut(ctx.base(), prompts, text, decoding.max_new_tokens):
            gr.Info(f"The input is longer than the model's context leaves room for with {decoding.max_new_tokens} new "
                    f"tokens: its first {plural(cut, 'token')} {'was' if cut == 1 else 'were'} left out.")
        texts = ("",) * (1 + len(prompts))
        for texts in gpu_calls.GENERATE_ON_GPU(ctx.base(), prompts, text, decoding):
            yield (*texts, "") if len(texts) == 2 else texts
    # the end: a column still empty is a model that ended at once, not one still thinking (or broken)
    if not all(t.strip() for t in texts):
        final = tuple(shown_text(t) for t in texts)
        yield (*final, "") if len(final) == 2 else final


def input_cut(base, prompts: list[SoftPrompt], text, max_new_tokens: int) -> int:
    """How many tokens generation will cut from the front of `text` to fit the context (0: none)."""
    if not isinstance(text, str) or not text.strip():
        return 0  # generation says what is wrong with it
    num_virtual = max((p.num_virtual_tokens for p in prompts if isinstance(p, SoftPrompt)), default=0)
    return fit_input(base, base.encode(text), num_virtual, max_new_tokens)[1]


def compare_choices(ctx: Context, session: Session, a: str | None = None, b: str | None = None, runs_seen: int = 0,
                    arrived: bool = False):
    """Both prompt dropdowns, and the session's run count for the next call.

    A visitor's picks stay, except that a run finished since the page last offered its prompts
    takes the first dropdown: train, then Compare shows your run beside base and the second
    dropdown's prompt (the reference 20×10 when that was empty). With nothing picked the reference
    adapters (the seed's finding) open; `arrived` (a reference was just saved) opens the second
    beside the first. A second dropdown the visitor emptied stays empty otherwise.
    """
    names = prompt_names(session, ctx.prompts())
    refs = [name for name in (reference.name(ctx.model, ctx.dataset, *cell) for cell in reference.GRID) if name in names]
    fresh = newest_run(session, runs_seen)
    opening = a not in names  # nothing picked yet (a new page)
    a = fresh or (a if a in names else refs[0] if refs else names[0] if names else None)
    b = b if b in names else NO_PROMPT
    if refs and b == NO_PROMPT and (fresh or ((opening or arrived) and len(refs) == 2 and a == refs[0])):
        b = refs[-1]  # your run beside the seed's longer one; or both references side by side
    return gr.Dropdown(choices=names, value=a), gr.Dropdown(choices=[NO_PROMPT] + names, value=b), session.run_count


def column_label(name: str | None) -> gr.Textbox:
    """A column named after its newly picked prompt, emptied: the text below was another prompt's.

    With no prompt picked (none saved or trained yet), the empty box says how to fill it.
    """
    if name in (None, NO_PROMPT):
        return gr.Textbox(label="Tuned", value="", placeholder=EMPTY_COLUMN)
    return gr.Textbox(label=f"Tuned: {name}", value="", placeholder="")


def third_column(name: str | None) -> gr.Textbox:
    """The second prompt's column: named and shown when one is picked, hidden when not.

    Hidden, because an unpicked column would wait under the progress spinner with the other two,
    as if a third answer were coming.
    """
    if name in (None, NO_PROMPT):
        return gr.Textbox(label="Tuned", value="", visible=False)
    return gr.Textbox(label=f"Tuned: {name}", value="", placeholder="", visible=True)


def reference_tick(ctx: Context, seen: int, session: Session, a: str | None, b: str | None, runs_seen: int = 0):
    """Every 2 s while the references train: the progress line, and the prompt dropdowns only when one was just saved.

    Offering the adapters lists them, which reads every one (its tensors included): not every
    2 seconds for every open page. When the training has ended, the timer stops and Compare
    opens on the references.
    """
    line, saved = reference_status(ctx)
    if saved is not None and saved == seen:
        return line, gr.Timer(active=True), seen, gr.skip(), gr.skip(), gr.skip()
    return (line, gr.Timer(active=saved is not None), saved or 0,
            *compare_choices(ctx, session, a, b, runs_seen, arrived=True))


DEFAULT_INPUT = "I want you to act as a rapper."  # the seed notebook's own example
LEARNED = ("A tuned prompt learned to continue the way this dataset's prompts go: give it the opening of a "
           "prompt, like the examples below, rather than a question or a command.")


def example_inputs(ctx: Context):
    """Compare's examples for this dataset: openings of acts the reference adapters held out."""
    try:
        rows = dataset_rows(ctx.dataset)
    except DataError:  # the Dataset tab says why; the examples stay as they are
        return gr.skip()
    return gr.Dataset(samples=[[text] for text in reference.example_openings(rows, ctx.model, ctx.dataset)])


class CompareTab(NamedTuple):
    act: gr.Markdown
    text: gr.Textbox
    adapters: list  # [prompt A, prompt B]
    runs_seen: gr.State  # the session's run count when the dropdowns were last offered
    examples: gr.Dataset  # filled on page load with openings of held-out acts (`example_inputs`)


def decoding_controls() -> list:
    with gr.Accordion("Decoding (the same for every column)", open=False):
        with gr.Row():
            max_new = CheckedSlider(1, MAX_NEW_TOKENS, value=64, step=1, label="Max new tokens")
            mode = CheckedRadio(["greedy", "sample"], value="greedy", label="Decoding")
            seed = CheckedNumber(0, precision=0, label="Seed", minimum=0, maximum=2**32 - 1, info=SAMPLING_ONLY,
                          interactive=False)
        with gr.Row():
            temperature = CheckedSlider(0.05, 2.0, value=0.8, step=0.05, label="Temperature", info=SAMPLING_ONLY,
                                 interactive=False)
            top_p = CheckedSlider(0.05, 1.0, value=0.95, step=0.05, label="Top-p", info=SAMPLING_ONLY, interactive=False)
            top_k = CheckedSlider(0, 200, value=50, step=1, label="Top-k (0: off)", info=SAMPLING_ONLY, interactive=False)
            penalty = CheckedSlider(1.0, 2.0, value=1.0, step=0.05, label="Repetition penalty")
            no_repeat = CheckedSlider(0, 10, value=Decoding.no_repeat_ngram_size, step=1, label="No repeated n-grams (0: off)",
                               info="no n tokens in a row twice in a column: small models loop without it")
    sampling = [temperature, top_p, top_k, seed]
    mode.change(sampling_controls, mode, sampling, api_name=False)  # greedy ignores them: they say so by being off
    return [max_new, mode, temperature, top_p, top_k, penalty, seed, no_repeat]


def sampling_controls(mode: str) -> tuple:
    """Temperature, top-p, top-k and seed: adjustable only when sampling (greedy decoding ignores them)."""
    return tuple(gr.update(interactive=mode == "sample") for _ in range(4))


def compare_tab(ctx: Context, session: gr.State) -> CompareTab:
    with gr.Tab("Compare") as tab:
        act = gr.Markdown(act_line(None))
        status = gr.Markdown(elem_id="reference-status")
        with gr.Row():
            text = CheckedText(DEFAULT_INPUT, label="Input", max_length=MAX_INPUT_CHARS, lines=2, scale=2,
                        elem_id="compare-input")
            a = gr.Dropdown([], label="Tuned prompt", scale=1, allow_custom_value=True, elem_id="compare-adapter",
                            info="a run of this session or a saved adapter")
            b = gr.Dropdown([NO_PROMPT], value=NO_PROMPT, label="Second tuned prompt", scale=1, allow_custom_value=True,
                            elem_id="compare-adapter-b", info="optional: three columns")
        decoding = decoding_controls()
        go = gr.Button("Generate", variant="primary")
        with gr.Row():
            base_out = gr.Textbox(label="Base", lines=10, elem_id="base-output")
            a_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output", placeholder=EMPTY_COLUMN)
            b_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output-b", visible=False)  # third_column shows it
        gr.Markdown(LEARNED, elem_id="compare-learned")
        examples = gr.Examples([[DEFAULT_INPUT]], inputs=text, label="Openings of prompts no reference adapter trained on")
        timer = gr.Timer(2.0, active=ctx.jobs.running(REFERENCE_OWNER) is not None)
        seen = gr.State(0)  # references saved when this page last offered its prompts
        runs_seen = gr.State(0)  # runs this session had finished then
        timer.tick(bind(reference_tick, ctx), [seen, session, a, b, runs_seen], [status, timer, seen, a, b, runs_seen],
                   api_name=False, show_progress="hidden")
        tab.select(bind(compare_choices, ctx), [session, a, b, runs_seen], [a, b, runs_seen], api_name="compare_choices",
                   **HIDDEN).then(
            lambda: reference_status(ctx)[0], None, status, api_name=False)
        generating = go.click(bind(generate, ctx), [text, a, *decoding[:-1], session, b, decoding[-1]],
                              [base_out, a_out, b_out], api_name="generate", **HIDDEN,
                              concurrency_limit=4, concurrency_id="generate")
        # another prompt in a column stops the generation streaming into it: its text would go on under the new name
        a.change(column_label, a, a_out, api_name=False, cancels=[generating])
        b.change(third_column, b, b_out, api_name=False, cancels=[generating])
    return CompareTab(act, text, [a, b], runs_seen, examples.dataset)
