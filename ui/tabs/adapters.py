"""The Adapters tab: keep a run, download, upload, delete, report, and push to or load from the Hub."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import NamedTuple

import gradio as gr

from tuning import adapters, hub, reference, report
from tuning.adapters import AdapterError
from tuning.model import SoftPrompt
from ui.charts import adapters_frame, first_cell
from ui.checks import MAX_FIELD_CHARS, CheckedText, checked_name, checked_text, disk_errors, refuse, user_errors
from ui.session import HIDDEN, SESSION_RUN, Context, Session, bind, pick_soft
from ui.zips import MAX_UPLOAD_BYTES, unzip_safely, zip_adapter


def own_name(name: str) -> str:
    """A visitor's adapter name, sanitized; the reference adapters' prefix is the server's own."""
    name = adapters.sanitize_name(name)
    if reference.is_reference(name):
        raise AdapterError(f"names starting with {reference.PREFIX!r} are kept for the reference adapters; "
                           "choose another name")
    return name


def listing_update(ctx: Context, name: str | None = None, message: str = "", listing: list[dict] | None = None):
    """(table, picked adapter, message) after a change: the one listing of this click."""
    listing = ctx.adapters() if listing is None else listing
    names = [a["name"] for a in listing]
    return adapters_frame(listing), gr.Dropdown(choices=names, value=name if name in names else None), message


def run_names(session: Session, current: str | None = None) -> gr.Dropdown:
    """This session's runs, newest first (the newest picked unless `current` is still there)."""
    names = [r.name for r in reversed(session.runs)]
    return gr.Dropdown(choices=names, value=current if current in names else (names[0] if names else None))


def default_save_name(run_name: str | None) -> str:
    """What a run is saved as when no name is given: "#3 Rapper 20×10 · 14:05" -> "Rapper-20x10"."""
    if not run_name or not run_name.startswith("#"):
        return ""
    what = run_name.split(" ", 1)[-1].rsplit(" · ", 1)[0]  # "<what> <tokens>×<epochs>"
    name = adapters.sanitize_name(what.replace("×", "x"))
    return name[len(reference.PREFIX):] if reference.is_reference(name) else name  # a continued reference: yours


def save_name_hint(run_name: str | None) -> gr.Textbox:
    return gr.Textbox(placeholder=default_save_name(run_name) or "rapper-20x10")


def save_run(ctx: Context, name: str, run_name: str | None = None, session: Session | None = None):
    """Keep a run of this session (the newest unless `run_name` says) under `name`, or a name made from the run."""
    if not session.runs:
        raise refuse("train something first: this session has no run to save")
    run = session.run(checked_name(run_name, "the run") or SESSION_RUN)
    if run is None:
        raise refuse(f"this session has no run named {run_name!r}")
    wanted = name.strip() or default_save_name(run.name)
    with user_errors(), disk_errors():
        wanted = own_name(wanted.replace("×", "x"))
        final = adapters.free_name(wanted, {a["name"] for a in ctx.adapters()})
        folder = adapters.save(run.soft, final, ctx.root, overwrite=False, **ctx.caps)
    note = f" (**{wanted}** was taken)" if folder.name != wanted else ""
    return listing_update(ctx, folder.name, f"saved {run.name} as **{folder.name}**{note}")


def adapter_details(ctx: Context, name: str | None) -> dict:
    if not (name := checked_name(name)):
        return {}
    return next((a for a in ctx.adapters() if a["name"] == name), {})


def download(ctx: Context, name: str | None, request: gr.Request) -> str:
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to download")
    if name not in [a["name"] for a in ctx.adapters()]:  # only real adapter folders
        raise refuse(f"no adapter named {name!r}")
    with disk_errors("write the download"):
        return str(zip_adapter(ctx.root / name, ctx.jobs.folder(request.session_hash)))


def upload(ctx: Context, path: str | None, name: str, session: Session):
    if not path:
        raise refuse("choose a .zip of a PEFT prompt-tuning adapter")
    if os.path.getsize(path) > MAX_UPLOAD_BYTES:
        raise refuse(f"the upload is over {MAX_UPLOAD_BYTES // 2**20} MB; an adapter zip is far smaller")
    with tempfile.TemporaryDirectory(prefix="tuning-upload-") as tmp, user_errors(), disk_errors():
        wanted = own_name(name.strip() or Path(path).stem)
        soft = adapters.load_folder(unzip_safely(path, Path(tmp)), ctx.base())
        folder = adapters.save(soft, adapters.free_name(wanted, {a["name"] for a in ctx.adapters()}), ctx.root,
                               overwrite=False, **ctx.caps)
    note = f" (**{wanted}** was taken)" if folder.name != wanted else ""
    return listing_update(ctx, folder.name, f"uploaded as **{folder.name}**{note}")


def ask_delete(ctx: Context, name: str | None):
    """First click on Delete: name what would go, and show the confirming buttons."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to delete")
    if reference.is_reference(name):
        raise refuse("the reference adapters belong to this server; they cannot be deleted here")
    return gr.Row(visible=True), f"Delete **{name}** for every visitor of this server? This cannot be undone.", name


def delete(ctx: Context, name: str | None, session: Session, asked: str | None = None):
    """"Yes, delete": `asked` is the adapter "Delete…" named (None for API callers, who name it outright)."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to delete")
    if asked is not None and asked != name:
        raise refuse(f"the question was about {asked!r}, but {name!r} is picked now; press Delete… again")
    if reference.is_reference(name):
        raise refuse("the reference adapters belong to this server; they cannot be deleted here")
    with user_errors(), disk_errors("delete the adapter"):
        adapters.delete(name, ctx.root)
    return (*listing_update(ctx, None, f"deleted **{name}**"), gr.Row(visible=False), None, {}, None)


def repo_suggestion(ctx: Context, name: str | None, profile: gr.OAuthProfile | None = None) -> str:
    """`<user>/<adapter>` for a logged-in visitor, so Push needs one click."""
    return f"{profile.username}/{name}" if profile is not None and name else ""


def push_adapter(ctx: Context, name, repo_id, private: bool, oauth_token: gr.OAuthToken | None = None) -> str:
    """Push a saved adapter with the visitor's own Hub login, used for this call only (never logged or kept)."""
    if oauth_token is None:
        raise refuse("log in with Hugging Face (the button above) to push to your account; off a Space, use "
                     "python -m tuning push NAME --repo ID")
    if not (name := checked_name(name)):
        raise refuse("pick an adapter to push")
    repo_id = checked_text(repo_id, "Hub repo", MAX_FIELD_CHARS).strip()
    with user_errors():
        url = hub.push(name, repo_id, oauth_token.token, ctx.root, private=bool(private), base=ctx.base(),
                       rows=ctx.rows(), dataset=ctx.dataset, base_model=ctx.hub_model)
    return f"pushed **{name}** to [{repo_id}]({url}) with its model card and report"


def pull_adapter(ctx: Context, repo_id, name, oauth_token: gr.OAuthToken | None = None):
    """Load an adapter from a Hub repo: only its adapter files, each checked as an upload is."""
    repo_id = checked_text(repo_id, "Hub repo", MAX_FIELD_CHARS).strip()
    wanted = checked_text(name, "Name", MAX_FIELD_CHARS).strip()
    with user_errors(), disk_errors():
        folder = hub.pull(repo_id, oauth_token.token if oauth_token is not None else None, ctx.root,
                          own_name(wanted) if wanted else None, base=ctx.base(), local_ok=False, **ctx.caps)
    return listing_update(ctx, folder.name, f"loaded **{repo_id}** as **{folder.name}**")


def report_download(ctx: Context, soft: SoftPrompt, name: str, request: gr.Request) -> str:
    with user_errors():
        html, _ = report.build_report(ctx.base(), soft, ctx.rows(), ctx.dataset, name,
                                      ctx.jobs.folder(request.session_hash))
    return str(html)


def adapter_report(ctx: Context, name, session: Session, request: gr.Request) -> str:
    """The run report (one self-contained .html) of a saved adapter."""
    if not (name := checked_name(name)):
        raise refuse("pick an adapter for its report")
    return report_download(ctx, pick_soft(ctx, name, session), name, request)


def run_report(ctx: Context, run_name, session: Session, request: gr.Request) -> str:
    """The run report of a run of this session, saved or not."""
    run = session.run(checked_name(run_name, "the run") or SESSION_RUN)
    if run is None:
        raise refuse("train something first: this session has no run to report on")
    return report_download(ctx, run.soft, run.name, request)


def hub_section(ctx: Context, picked: gr.Dropdown, table: gr.Dataframe) -> None:
    on_space = gr.utils.get_space() is not None  # Gradio's own test: its OAuth routes are real only there
    gr.Markdown("Push a saved adapter to your account (its PEFT files, a model card and "
                "the run report), or load one from any repo. " + (
                    "Log in to push; loading needs no login." if on_space else
                    "Pushing needs a Hugging Face login, which only a Space offers its visitors: here, use "
                    "`python -m tuning push NAME --repo ID`. Loading needs no login."))
    if on_space:
        gr.LoginButton()
    with gr.Row():
        repo = CheckedText(label="Push to repo", placeholder="your-name/rapper-20x10", max_length=MAX_FIELD_CHARS, scale=2)
        private = gr.Checkbox(label="private", value=False)
        push_btn = gr.Button("Push to the Hub")
    push_msg = gr.Markdown()
    with gr.Row():
        source = CheckedText(label="Load from repo", placeholder="someone/their-prompt", max_length=MAX_FIELD_CHARS, scale=2)
        pull_name = CheckedText(label="Save as (default: the repo's name)", max_length=MAX_FIELD_CHARS)
        pull_btn = gr.Button("Load from the Hub")
    pull_msg = gr.Markdown()
    picked.change(bind(repo_suggestion, ctx), picked, repo, api_name=False)
    push_btn.click(bind(push_adapter, ctx), [picked, repo, private], push_msg, api_name="push_adapter", **HIDDEN)
    pull_btn.click(bind(pull_adapter, ctx), [source, pull_name], [table, picked, pull_msg], api_name="pull_adapter",
                   **HIDDEN)


def shown() -> gr.File:
    return gr.File(visible=True)


class AdaptersTab(NamedTuple):
    table: gr.Dataframe  # the saved adapters, filled when the page loads


def adapters_tab(ctx: Context, session: gr.State) -> AdaptersTab:
    with gr.Tab("Adapters") as tab:
        table = gr.Dataframe(label="Saved adapters (click a row)", interactive=False)
        with gr.Row():
            picked = gr.Dropdown([], label="Adapter", allow_custom_value=True, scale=2)
            download_btn, report_btn = gr.Button("Download .zip"), gr.Button("Report .html")
            delete_btn = gr.Button("Delete…", variant="stop")
        with gr.Row(visible=False) as confirm:
            confirm_text = gr.Markdown()
            yes, no = gr.Button("Yes, delete", variant="stop"), gr.Button("Cancel")
        asked = gr.State(None)  # the adapter the question named: "Yes" deletes that one, not whatever is picked by then
        message = gr.Markdown(elem_id="adapter-message")
        zip_out = gr.File(label="Download", interactive=False, height=90, visible=False)  # shown with a file
        with gr.Accordion("Config and metrics of the picked adapter", open=False):
            details = gr.JSON(label="Config and metrics")
        gr.Markdown("### Keep a run")
        with gr.Row():
            run = gr.Dropdown([], label="Run of this session", scale=2, allow_custom_value=True)  # save_run checks it
            save_name = CheckedText(max_length=MAX_FIELD_CHARS, label="Save as (default: from the run)", placeholder="rapper-20x10")
            save_btn, run_report_btn = gr.Button("Save"), gr.Button("Report .html")
        save_msg = gr.Markdown()
        run_report_out = gr.File(label="Run report", interactive=False, height=90, visible=False)  # shown with a file
        with gr.Accordion("Upload an adapter (.zip)", open=False):
            with gr.Row():
                upload_file = gr.File(label="Upload a PEFT prompt-tuning adapter (.zip)", file_types=[".zip"])
                upload_name = CheckedText(label="Name (default: the file name)", max_length=MAX_FIELD_CHARS)
                upload_btn = gr.Button("Upload")
            upload_msg = gr.Markdown()
        with gr.Accordion("The Hugging Face Hub: push or load an adapter", open=False):
            hub_section(ctx, picked, table)

        # the adapter picked before stays picked (its details, a typed repo id): the visit only refreshes the list
        tab.select(bind(listing_update, ctx), picked, [table, picked, message], api_name="list_adapters", **HIDDEN).then(
            run_names, [session, run], run, api_name="run_choices", **HIDDEN)
        table.select(first_cell, None, picked, api_name="pick_adapter_row", **HIDDEN)
        picked.change(bind(adapter_details, ctx), picked, details, api_name="adapter_details", **HIDDEN)
        save_btn.click(bind(save_run, ctx), [save_name, run, session], [table, picked, save_msg], api_name="save_adapter", **HIDDEN)
        run.change(save_name_hint, run, save_name, api_name=False)  # the placeholder shows the name "Save" will use
        download_btn.click(bind(download, ctx), picked, zip_out, api_name="download_adapter", **HIDDEN).success(
            shown, None, zip_out, api_name=False)  # the file box appears with a file
        report_btn.click(bind(adapter_report, ctx), [picked, session], zip_out, api_name="adapter_report", **HIDDEN).success(
            shown, None, zip_out, api_name=False)  # the file box appears with a file
        run_report_btn.click(bind(run_report, ctx), [run, session], run_report_out, api_name="run_report", **HIDDEN).success(
            shown, None, run_report_out, api_name=False)  # the file box appears with a file
        upload_btn.click(bind(upload, ctx), [upload_file, upload_name, session], [table, picked, upload_msg],
                         api_name="upload_adapter", **HIDDEN)
        delete_btn.click(bind(ask_delete, ctx), picked, [confirm, confirm_text, asked], api_name="ask_delete", **HIDDEN)
        yes.click(bind(delete, ctx), [picked, session, asked], [table, picked, message, confirm, zip_out, details, asked],
                  api_name="delete_adapter", **HIDDEN)
        no.click(lambda: (gr.Row(visible=False), None), None, [confirm, asked], api_name=False)
        picked.change(lambda: (gr.Row(visible=False), None), None, [confirm, asked], api_name=False)  # another pick: ask again
    return AdaptersTab(table)
