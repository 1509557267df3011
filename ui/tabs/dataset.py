"""The Dataset tab: search the acts and pick one; the act picked is what Train and Compare use."""

from __future__ import annotations

from typing import NamedTuple

import gradio as gr
import pandas as pd

from tuning import evaluate
from tuning.data import DataError, Row, find_act, source_note
from ui.charts import act_line, acts_frame, adapters_frame
from ui.checks import MAX_FIELD_CHARS, CheckedText, user_errors
from ui.session import HIDDEN, Context, Session, bind, dataset_rows


def load_page(ctx: Context):
    try:
        rows = dataset_rows(ctx.dataset)
        table, names, status = acts_frame(rows), [r.act for r in rows], source_note(ctx.dataset) or ""
    except DataError as e:
        gr.Warning(str(e))
        table, names, status = acts_frame([]), [], f"⚠️ {e}"
    return table, gr.Dropdown(choices=names), status, adapters_frame(ctx.adapters())


def search_acts(ctx: Context, query: str) -> pd.DataFrame:
    return acts_frame(ctx.rows(), query)


def search_after_load(ctx: Context, query: str):
    """A search typed while the page loaded, applied again: the load's whole table (which may wait for the
    dataset's download) arrives after the search's rows and replaces them."""
    return search_acts(ctx, query) if query else gr.skip()


def restore_act(session: Session):
    """After a reload: the act this browser picked before, in every place that shows it (it is what Train uses)."""
    if session.act is None:
        return (gr.update(),) * 6
    return session.act.act, *shown_act(session.act)


def select_act(ctx: Context, name: str, session: Session):
    with user_errors():
        session.act = find_act(ctx.rows(), name)
    return shown_act(session.act)


def shown_act(act: Row) -> tuple:
    """(whole prompt, Train's act line, Compare's, Compare's input, the tab's act name) for a picked act."""
    line = act_line(act)
    return act.prompt, line, line, evaluate.act_instruction(act.act), act.act


class DatasetTab(NamedTuple):
    act_name: gr.Textbox
    acts_table: gr.Dataframe
    full_prompt: gr.Textbox
    search: gr.Textbox


def dataset_tab(ctx: Context) -> DatasetTab:
    with gr.Tab("Dataset"):
        search = CheckedText(label="Search acts", max_length=MAX_FIELD_CHARS, placeholder="rapper, terminal, poet…")
        acts_table = gr.Dataframe(label="Acts (click a row to pick it)", interactive=False, wrap=True,
                                  column_widths=["26%", "58%", "16%"], max_height=420)
        act_name = CheckedText(label="Act (or type a name and press Enter)", max_length=MAX_FIELD_CHARS)
        full_prompt = gr.Textbox(label="Whole prompt", lines=6, interactive=False)
        search.change(bind(search_acts, ctx), search, acts_table, api_name="search_acts", **HIDDEN)
    return DatasetTab(act_name, acts_table, full_prompt, search)
