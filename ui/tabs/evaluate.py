"""The Evaluate tab: held-out perplexity and ROUGE-L, base vs tuned, per-token gains, the prompt's nearest tokens.

A written prompt (k examples of training acts) can be scored beside them, on the same held-out tokens.
"""

from __future__ import annotations

import math
import threading
from typing import Iterator, NamedTuple

import gradio as gr
import pandas as pd

from tuning import evaluate, report, written
from tuning.formatting import plural
from tuning.generate import Decoding
from tuning.model import SoftPrompt
from tuning.rows import held_out_for
from ui import gpu_calls
from ui.charts import GAIN_SCALE, NEAREST_K, bars, gain_scores, gains_summary, nearest_frame, rouge_frame
from ui.checks import CheckedNumber, CheckedRadio, CheckedSlider, refuse, user_errors, whole
from ui.session import HIDDEN, SESSION_RUN, Context, Session, bind, model_problem, newest_run, pick_soft, run_choices
from ui.tabs.compare import NO_WRITTEN, SHOT_CHOICES


def held_out_scores(ctx: Context, soft: SoftPrompt, n_acts: int, max_new: int, progress,
                    shots: int = 0) -> Iterator[tuple]:
    """(perplexity metrics, held-out rows, ROUGE-L rows so far, the written prompt) of `soft` on the acts it never trained on.

    Yielded once perplexity is scored and again after each act's continuations, so a page shows the
    numbers as they come and a stopped evaluation (another prompt picked) ends at the next act.
    Perplexity is scored exactly as training scores it (its batch size), so it matches the run history.
    With `shots` examples (written.for_adapters: the adapter's seed, never a held-out act), "written"
    is scored too, on the same tokens; the written prompt is None without.
    """
    with user_errors():
        base, held = ctx.base(), held_out_for(soft, ctx.rows(), ctx.dataset)
        if not held:
            raise refuse("there are no held-out acts to evaluate on (this adapter was trained on every act)")
        shown = written.for_adapters(base, [soft], ctx.rows(), ctx.dataset, shots) if shots else None
        progress(0, desc="held-out perplexity")
        picked, scored, metrics = held[:n_acts], [], None
        extra = {"written": shown} if shown is not None else {}  # the GPU call's arguments as before without one
        runs = gpu_calls.EVALUATE_ON_GPU(base, soft, held, picked, Decoding(max_new_tokens=max_new), **extra)
        try:
            for kind, result in runs:
                if kind == "perplexity":
                    metrics = result
                else:
                    scored.append(result)
                    progress((len(scored), len(picked)), desc="ROUGE-L: generating", unit="acts")
                assert metrics is not None, "gpu.evaluate_run yields perplexity first"
                yield metrics, held, list(scored), shown
        except GeneratorExit:
            # Stopped (another prompt picked): Gradio closes this generator on its event loop. On
            # ZeroGPU closing the GPU call waits for the worker's next item, a whole act's two
            # continuations, and would hold up every page meanwhile: close it in a thread.
            threading.Thread(target=runs.close, daemon=True, name="evaluate-close").start()
            raise


def sides(scores: dict) -> tuple[str, ...]:
    """The models scored, in the order the page shows them: base, written (when scored), tuned."""
    return ("base", "written", "tuned") if "written" in scores else ("base", "tuned")


def mean_rouge(scored: list[dict], with_written: bool = False) -> dict[str, float | None]:
    """Each model's mean ROUGE-L over the acts scored so far (None before the first)."""
    return {side: sum(r[f"{side}_rouge"] for r in scored) / len(scored) if scored else None
            for side in sides({"written": 1} if with_written else {})}


def evaluate_run(ctx: Context, adapter, n_acts, max_new, session: Session, written_choice=NO_WRITTEN,
                 progress=gr.Progress()):
    """Held-out perplexity and ROUGE-L, base (and written) vs tuned: bars, a summary and a table per act, as they come.

    A model that cannot be loaded is said in the summary, not as red "Error" badges.
    """
    try:
        yield from _evaluate_run(ctx, adapter, n_acts, max_new, session, written_choice, progress)
    except gr.Error:
        if (problem := model_problem(ctx)) is None:
            raise
        yield None, None, f"⚠️ {problem}", rouge_frame([])


def _evaluate_run(ctx: Context, adapter, n_acts, max_new, session: Session, written_choice, progress):
    soft = pick_soft(ctx, adapter, session)
    n_acts, max_new = whole(n_acts), whole(max_new)
    shots = SHOT_CHOICES.get(written_choice or NO_WRITTEN) if isinstance(written_choice, (str, type(None))) else None
    if shots is None:  # the page's radio refuses it first; a direct call lands here
        raise refuse(f"the written prompt must be one of {', '.join(SHOT_CHOICES)}, got {str(written_choice)[:80]!r}")
    shown = session.runs[-1].name if adapter == SESSION_RUN and session.runs else adapter
    for metrics, held, scored, prompt in held_out_scores(ctx, soft, n_acts, max_new, progress, shots):
        names = sides(metrics)
        ppl, mean = {side: metrics[side].perplexity for side in names}, mean_rouge(scored, prompt is not None)
        label = {"written": f"written ({prompt.describe()})"} if prompt is not None else {}
        wanted = min(n_acts, len(held))
        short = f" (only {len(held)} held-out acts)" if n_acts > len(held) else ""
        if not wanted:
            rouge = "ROUGE-L: skipped (0 acts)."
        elif len(scored) < wanted:
            rouge = f"**ROUGE-L**: generating, {len(scored)} of {plural(wanted, 'act')} done{short}…" + (
                f" So far {scores_text(mean, '.3f')}." if scored else "")
        else:
            rouge = (f"**ROUGE-L** of greedy continuations (no repeated 3-grams) against the real prompt, "
                     f"{plural(len(scored), 'act')}{short}: {scores_text(mean, '.3f')}.")
        summary = (f"**{report.md_inline(shown)}**  \n**Held-out perplexity** over {plural(len(held), 'act')} "
                   f"({plural(metrics['base'].tokens, 'token')}): {scores_text(ppl, '.2f', label)}.  \n" + rouge)
        # no bars yet: None, as on a new page (a chart first sent no rows keeps a y axis that later bars never fill)
        rouge_bars = bars(mean, "ROUGE-L", ".3f") if scored else None
        yield bars(ppl, "perplexity", ".2f"), rouge_bars, summary, rouge_frame(scored)


def scores_text(values: dict[str, float], spec: str, labels: dict[str, str] | None = None) -> str:
    """'base 34.52, written (2 examples · 164 tokens) 30.10, tuned 18.40': each model's score, named."""
    return ", ".join(f"{(labels or {}).get(side, side)} {value:{spec}}" for side, value in values.items())


MODEL_COLOURS = {"base": "#9ca3af", "written": "#16a34a", "tuned": "#2563eb"}
TABLE_WIDTHS = {False: ["14%", "35%", "35%", "8%", "8%"], True: ["10%", "25%", "25%", "25%", "5%", "5%", "5%"]}


def written_choice_changed(choice) -> tuple:
    """Another written prompt: the numbers shown were not of it; the table gets (or loses) its written columns."""
    chosen = choice not in (None, NO_WRITTEN)
    return None, None, "", gr.Dataframe(rouge_frame([], chosen), column_widths=TABLE_WIDTHS[chosen])


def no_evaluation() -> tuple:
    """Evaluate's outputs, empty: what the tab shows for a prompt not evaluated yet."""
    return None, None, "", rouge_frame([]), None, "", nearest_frame([])  # None: a chart as on a new page


def token_view(ctx: Context, adapter, session: Session):
    soft = pick_soft(ctx, adapter, session)
    note = ""
    with user_errors():
        act = session.act
        if act is None:
            act = (held_out_for(soft, ctx.rows(), ctx.dataset) or list(ctx.rows()))[0]
            note = "No act picked in the Dataset tab; showing a held-out act. "
        try:
            gains = evaluate.token_gains(ctx.base(), soft, act.prompt)
        except ValueError as e:  # a one-token prompt
            raise refuse(str(e)) from None
    return gain_scores(gains), gains_summary(act.act, gains, note)


def nearest_view(ctx: Context, adapter, session: Session) -> pd.DataFrame:
    soft = pick_soft(ctx, adapter, session)
    with user_errors():
        return nearest_frame(evaluate.nearest_tokens(ctx.base(), soft, k=NEAREST_K))


GAINS_HELP = (
    "### Per token: the current act's real prompt\nEach token is coloured by how much more likely the tuned model "
    f"makes it than the base model, in nats (the legend's −1…+1): **red: more likely**, **purple: less likely**, "
    f"full colour at ±{GAIN_SCALE:g} nat (about {math.exp(GAIN_SCALE):.1f}× the probability). The first token is "
    "not scored: the base model has nothing to predict it from."
)


def refresh_choices(ctx: Context, session: Session, current: str | None = None, runs_seen: int = 0):
    """Evaluate's prompt dropdown (a run just finished is picked) and the session's run count."""
    return run_choices(session, ctx.prompts(), newest_run(session, runs_seen) or current), session.run_count


class EvaluateTab(NamedTuple):
    adapter: gr.Dropdown  # the prompt evaluated: a run just finished is offered here
    runs_seen: gr.State  # the session's run count when the dropdown was last offered


def evaluate_tab(ctx: Context, session: gr.State) -> EvaluateTab:
    with gr.Tab("Evaluate") as tab:
        gr.Markdown("The difference in numbers, on acts the prompt never trained on: held-out perplexity (lower is "
                    "better; scored as training scores it, so it matches the run history) and ROUGE-L of greedy (no repeated 3-grams) "
                    "continuations of *I want you to act as a &lt;act&gt;.* against the dataset's real prompt (higher is better).")
        with gr.Row():
            adapter = gr.Dropdown([], label="Tuned prompt", allow_custom_value=True, elem_id="eval-adapter")
            rouge_acts = CheckedNumber(5, precision=0, minimum=0, maximum=20, label="Held-out acts for ROUGE-L (0: skip)")
            max_new = CheckedSlider(1, 256, value=64, step=1, label="Max new tokens per continuation")
            written_choice = CheckedRadio(list(SHOT_CHOICES), value=NO_WRITTEN, label="Written prompt",
                                          elem_id="eval-written",
                                          info="also score the base model with examples of training acts in front")
        go = gr.Button("Evaluate", variant="primary")
        with gr.Row():
            ppl_plot = gr.BarPlot(x="label", y="perplexity", color="model", title="Held-out perplexity", x_title=" ",
                                  color_map=MODEL_COLOURS, y_lim=[0, None], height=260)
            rouge_plot = gr.BarPlot(x="label", y="ROUGE-L", color="model", title="ROUGE-L (mean over acts)", x_title=" ",
                                    color_map=MODEL_COLOURS, y_lim=[0, 1], height=260,
                                    elem_id="rouge-plot")
        summary = gr.Markdown(elem_id="eval-summary")
        rouge_table = gr.Dataframe(rouge_frame([]), label="Per held-out act", interactive=False, wrap=True, max_height=360,
                                   column_widths=TABLE_WIDTHS[False])
        gr.Markdown(GAINS_HELP)
        gains = gr.HighlightedText(label="Tuned vs base, per token (nats)", show_legend=True, elem_id="token-gains")
        gains_text = gr.Markdown()
        gr.Markdown("### What the prompt learned\nEach virtual token's nearest vocabulary tokens by cosine similarity to "
                    "the model's input embeddings. Trained prompts usually sit far from every real token (0.1–0.3 is "
                    "common): read it as a hint, not a translation.")
        nearest_table = gr.Dataframe(nearest_frame([]), label="Nearest tokens", interactive=False, max_height=360)
        runs_seen = gr.State(0)  # the session's run count when the dropdown was last offered
        tab.select(bind(refresh_choices, ctx), [session, adapter, runs_seen], [adapter, runs_seen],
                   api_name="eval_adapter_choices", **HIDDEN)
        scored = go.click(bind(evaluate_run, ctx), [adapter, rouge_acts, max_new, session, written_choice],
                          [ppl_plot, rouge_plot, summary, rouge_table], api_name="evaluate", **HIDDEN,
                          concurrency_limit=4, concurrency_id="generate")
        per_token = scored.success(bind(token_view, ctx), [adapter, session], [gains, gains_text], api_name="token_gains",
                                   **HIDDEN)
        nearest = per_token.success(bind(nearest_view, ctx), [adapter, session], nearest_table, api_name="nearest_tokens",
                                    **HIDDEN)
        # another prompt picked: the numbers shown were not its, and an evaluation still running is of the old one
        adapter.change(no_evaluation, None, [ppl_plot, rouge_plot, summary, rouge_table, gains, gains_text, nearest_table],
                       api_name=False, cancels=[scored, per_token, nearest])
        written_choice.change(written_choice_changed, written_choice, [ppl_plot, rouge_plot, summary, rouge_table],
                              api_name=False, cancels=[scored])
    return EvaluateTab(adapter, runs_seen)
