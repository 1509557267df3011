"""The Compare tab: base and one or two tuned prompts continue the same input, side by side, streamed.

A written prompt (examples of training acts, or the visitor's own text) can take a column between
base and the tuned ones: the baseline a soft prompt has to beat, decoded in the same batch.
While the reference adapters train, a timer shows their progress and offers each as it is saved.
"""

from __future__ import annotations

import time
from typing import NamedTuple, Sequence

import gradio as gr

from tuning import reference, written
from tuning.data import DataError
from tuning.formatting import plural
from tuning.generate import Decoding, contexts, fit_input, prompt_length
from tuning.model import SoftPrompt
from tuning.report import md_inline
from tuning.written import Written
from ui import gpu_calls
from ui.charts import act_line, shown_text
from ui.checks import (CheckedRadio, MAX_INPUT_CHARS, CheckedNumber, CheckedSlider, CheckedText, checked_name, checked_text,
                       refuse, user_errors, whole)
from ui.session import (HIDDEN, REFERENCE_OWNER, Context, Session, bind, dataset_rows, model_problem, newest_run,
                        pick_soft, prompt_names, reference_status)


NO_PROMPT = "(none)"  # Compare's second prompt, off
MAX_NEW_TOKENS = 512  # a Compare continuation, on the page and through the API
SAMPLING_ONLY = "when sampling"
EMPTY_COLUMN = "Pick a tuned prompt above to fill this column."
NO_WRITTEN = "none"
OWN_TEXT = "your own text"
SHOT_CHOICES = {NO_WRITTEN: 0} | {plural(k, "example"): k for k in written.SHOTS}  # Evaluate offers these
WRITTEN_CHOICES = [*SHOT_CHOICES, OWN_TEXT]


def generate(ctx: Context, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session,
             adapter_b=NO_PROMPT, no_repeat=Decoding.no_repeat_ngram_size, written_choice=NO_WRITTEN, own_text=""):
    """Base, the written prompt (unless none), prompt A and (unless NO_PROMPT) prompt B continue `text` in one batch,
    same decoding and seed.

    Yields (base, tuned, second tuned, written, cost line, the written prompt shown): the written
    column comes after the first three so that a client reading those keeps working. The first
    update names each column with the context it costs; the last one adds the cost line.
    A model that cannot be loaded is said in the columns (and under the header), not as red "Error" badges.
    """
    try:
        yield from _generate(ctx, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session,
                             adapter_b, no_repeat, written_choice, own_text)
    except gr.Error:
        if (problem := model_problem(ctx)) is None:
            raise
        yield problem, "", "", "", "", ""


def _generate(ctx: Context, text, adapter, max_new, mode, temperature, top_p, top_k, penalty, seed, session: Session,
              adapter_b, no_repeat, written_choice, own_text):
    names, prompts = [adapter], [pick_soft(ctx, adapter, session)]
    if checked_name(adapter_b, "the second prompt") not in (None, NO_PROMPT):
        names.append(adapter_b)
        prompts.append(pick_soft(ctx, adapter_b, session))
    with user_errors():
        decoding = Decoding(
            max_new_tokens=whole(max_new), do_sample=mode == "sample", temperature=temperature,
            top_p=top_p, top_k=whole(top_k), repetition_penalty=penalty, seed=whole(seed),
            no_repeat_ngram_size=whole(no_repeat),
        )
        base = ctx.base()
        shown = written_prompt(ctx, base, written_choice, own_text, prompts)
        if shown is not None:  # refused with the numbers rather than cut: a cut written prompt is another prompt
            written.check_fits(base, shown, len(base.encode(text)), decoding.max_new_tokens)
        batch = ([shown] if shown is not None else []) + prompts  # the written column beside base, as on the page
        if cut := input_cut(base, batch, text, decoding.max_new_tokens):
            gr.Info(f"The input is longer than the model's context leaves room for with {decoding.max_new_tokens} new "
                    f"tokens: its first {plural(cut, 'token')} {'was' if cut == 1 else 'were'} left out.")
        sizes = contexts(base, [None, *batch], text, decoding.max_new_tokens)
        details = written_details(shown) if shown is not None else ""
        # the headers first: each column says what it costs before its text comes
        yield ("", *[gr.Textbox(label=tuned_header(n, p), value="") for n, p in zip(names, prompts)],
               *[""] * (2 - len(prompts)),
               gr.Textbox(label=written_header(shown), value="") if shown is not None else "", "", details)
        texts, steps, started = ("",) * (1 + len(batch)), 0, time.perf_counter()
        for texts in gpu_calls.GENERATE_ON_GPU(base, batch, text, decoding):
            steps += 1
            yield *columns(texts, shown is not None), "", details
        seconds = time.perf_counter() - started
    # the end: a column still empty is a model that ended at once, not one still thinking (or broken)
    final = columns(tuple(shown_text(t) for t in texts), shown is not None)
    kinds = ["base"] + (["written"] if shown is not None else []) + ["tuned", "second tuned"][:len(prompts)]
    yield *final, cost_line(kinds, sizes, seconds, steps), details


def columns(texts: Sequence[str], with_written: bool) -> tuple[str, str, str, str]:
    """A batch's texts (base, [written], tuned, [second tuned]) in the tab's output order: base, tuned, second, written.

    >>> columns(("b", "w", "t"), True), columns(("b", "t", "t2"), False)
    (('b', 't', '', 'w'), ('b', 't', 't2', ''))
    """
    base, *rest = texts
    shown = rest.pop(0) if with_written else ""
    tuned = (rest + ["", ""])[:2]
    return base, *tuned, shown


def input_cut(base, prompts: Sequence[SoftPrompt | Written], text, max_new_tokens: int) -> int:
    """How many tokens generation will cut from the front of `text` to fit the context (0: none)."""
    if not isinstance(text, str) or not text.strip():
        return 0  # generation says what is wrong with it
    num_virtual = max((prompt_length(p) for p in prompts), default=0)
    return fit_input(base, base.encode(text), num_virtual, max_new_tokens)[1]


def written_prompt(ctx: Context, base, choice, own_text, softs: Sequence[SoftPrompt]) -> Written | None:
    """The written prompt a choice names: examples beside `softs` (written.for_adapters), the visitor's text, or None.

    Examples come with the first tuned prompt's seed and never from an act either one held out.
    """
    if choice == OWN_TEXT:
        return written.from_text(base, checked_text(own_text, "your written prompt", MAX_INPUT_CHARS))
    k = SHOT_CHOICES.get(choice or NO_WRITTEN) if isinstance(choice, (str, type(None))) else None
    if k is None:  # the page's radio refuses it first; a direct call lands here
        raise refuse(f"the written prompt must be one of {', '.join(WRITTEN_CHOICES)}, got {str(choice)[:80]!r}")
    return written.for_adapters(base, softs, ctx.rows(), ctx.dataset, k) if k else None


def tuned_header(name: str, soft: SoftPrompt) -> str:
    """'Tuned: poet-20x10 · 20 virtual tokens': the column's prompt and the context it takes."""
    return f"Tuned: {name} · {plural(soft.num_virtual_tokens, 'virtual token')}"


def written_header(shown: Written) -> str:
    """'Written: 2 examples · 164 tokens'."""
    return f"Written: {shown.describe()}"


def written_details(shown: Written) -> str:
    """What the Written column had in front of the input: the examples' acts and prompts, or the visitor's text."""
    if shown.text is not None:
        return f"**Your text** ({shown.describe()}), with a new line after it, in front of the input:\n\n> {md_inline(shown.text)}"
    lines = [f"**{plural(len(shown.examples), 'example')}** ({plural(shown.tokens, 'token')}): whole prompts of training "
             "acts, drawn with the first tuned prompt's seed from acts no compared prompt held out, each ended with "
             "end-of-text, in front of the input:", ""]
    lines += [f"{i}. **{md_inline(row.act.rstrip(':'))}**: {md_inline(row.prompt)}" for i, row in enumerate(shown.examples, 1)]
    return "\n".join(lines)


def cost_line(kinds: Sequence[str], sizes: Sequence[tuple[int, int]], seconds: float, steps: int) -> str:
    """The batch's decode time and each column's context (`generate.contexts`), in one line.

    >>> cost_line(["base", "written", "tuned"], [(0, 9), (164, 9), (20, 9)], 3.14, 64)
    'One batch of 3 columns: 3.1 s for 64 new tokens · context: base 9 tokens · written 173 (164 + 9) · tuned 29 (20 virtual + 9)'
    """
    parts = []
    for kind, (prompt, given) in zip(kinds, sizes):
        if kind == "base":
            parts.append(f"{kind} {plural(given, 'token')}")
        else:
            virtual = "" if kind == "written" else " virtual"
            parts.append(f"{kind} {prompt + given:,} ({prompt:,}{virtual} + {given:,})")
    return (f"One batch of {len(kinds)} columns: {seconds:.1f} s for {plural(steps, 'new token')} · context: "
            + " · ".join(parts))


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


def written_column(choice) -> tuple:
    """The written column, its own-text box and the accordion that shows it: there only while a written prompt is chosen.

    Emptied, like a column whose prompt changed: the text below was another written prompt's.
    """
    chosen = choice not in (None, NO_WRITTEN)
    return (gr.Textbox(visible=choice == OWN_TEXT), gr.Textbox(label="Written", value="", visible=chosen),
            gr.Accordion(visible=chosen), "", "")


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
        with gr.Row():
            written_choice = CheckedRadio(WRITTEN_CHOICES, value=NO_WRITTEN, label="Written prompt", scale=1,
                                          elem_id="compare-written",
                                          info="the base model with examples of training acts (or your text) in front: "
                                               "what a tuned prompt has to beat")
            own_text = CheckedText("", label="Your written prompt", max_length=MAX_INPUT_CHARS, lines=2, scale=2,
                                   visible=False, elem_id="compare-own-text",
                                   placeholder="e.g. Answer as a rapper would, in rhymes.")
        decoding = decoding_controls()
        go = gr.Button("Generate", variant="primary")
        with gr.Row():
            base_out = gr.Textbox(label="Base", lines=10, elem_id="base-output")
            written_out = gr.Textbox(label="Written", lines=10, elem_id="written-output", visible=False)  # written_column
            a_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output", placeholder=EMPTY_COLUMN)
            b_out = gr.Textbox(label="Tuned", lines=10, elem_id="tuned-output-b", visible=False)  # third_column shows it
        cost = gr.Markdown(elem_id="compare-cost")
        with gr.Accordion("The written prompt", open=False, visible=False) as written_box:
            written_shown = gr.Markdown(elem_id="compare-written-prompt")
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
        generating = go.click(bind(generate, ctx),
                              [text, a, *decoding[:-1], session, b, decoding[-1], written_choice, own_text],
                              [base_out, a_out, b_out, written_out, cost, written_shown], api_name="generate", **HIDDEN,
                              concurrency_limit=4, concurrency_id="generate")
        # another prompt in a column stops the generation streaming into it: its text would go on under the new name
        a.change(column_label, a, a_out, api_name=False, cancels=[generating])
        b.change(third_column, b, b_out, api_name=False, cancels=[generating])
        written_choice.change(written_column, written_choice, [own_text, written_out, written_box, written_shown, cost],
                              api_name=False, cancels=[generating])
    return CompareTab(act, text, [a, b], runs_seen, examples.dataset)
