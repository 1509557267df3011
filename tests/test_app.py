"""The Gradio app, called the way a client calls it: every event by its api_name, on a tiny local model."""

from __future__ import annotations

import os
import stat
import zipfile

import pytest
from gradio_client import handle_file
from gradio_client.exceptions import AppError

from app_fixtures import Client, serve, served  # noqa: F401  (Client: predict waits at most 120 s)
from tuning.adapters import AdapterError
from tuning.formatting import duration
from ui.charts import NEAREST_K, acts_frame, adapters_frame, cell_colours, colours, nearest_frame, rouge_frame
from ui.layout import build_app
from ui.session import MAX_HISTORY, SESSION_RUN
from ui.tabs.adapters import default_save_name
from ui.tabs.compare import EMPTY_COLUMN, NO_PROMPT, NO_WRITTEN, column_label, sampling_controls, third_column
from ui.tabs.sweep import MAX_CELLS
from ui.zips import MAX_UPLOAD_FILES, unzip_safely

TRAIN = dict(tokens=5, epochs=2, lr=0.1, batch=4, init="random", data="all training acts", acts=[], seed=0,
             resume="a new prompt")  # the tabs' events are undocumented: a client sends every input
GREEDY = dict(max_new=16, mode="greedy", temperature=0.8, top_p=0.95, top_k=50, penalty=1.0, seed=0)


def train_args(**kw):
    return list({**TRAIN, **kw}.values())


def generate(client, text="I want you to act as a rapper.", adapter=SESSION_RUN, **kw):
    """(base, tuned) of a two-column compare (the third and the written columns stay empty)."""
    base, tuned, third, written, cost, shown = client.predict(text, adapter, *{**GREEDY, **kw}.values(), NO_PROMPT, 3,
                                                              NO_WRITTEN, "", api_name="/generate")
    assert third == written == shown == "" and cost.startswith("One batch of 2 columns: ")
    return base, tuned


def points(plot: dict, series: str) -> list:
    plot = plot.get("value", plot)  # an update that also sets the step axis carries the data under "value"
    return [row for row in plot["data"] if row[2] == series and row[1] is not None]


@pytest.fixture
def client(served):  # noqa: F811
    return Client(served, verbose=False)  # one client = one browser session, with its own gr.State


@pytest.fixture
def trained(client):
    client.predict(*train_args(), api_name="/train")
    return client


# --- plain helpers ---------------------------------------------------------------------


def test_building_the_app_loads_neither_model_nor_dataset():
    build_app(model="/no/such/model", dataset="/no/such/acts.csv")  # would raise if it loaded either


def test_evaluates_empty_tables_show_the_headers_a_result_will_have():
    assert list(nearest_frame([])) == ["virtual token"] + [f"nearest {j}" for j in range(1, NEAREST_K + 1)]
    assert list(nearest_frame([[("a", 0.5)], [("b", 0.25)]])) == ["virtual token", "nearest 1"]
    assert list(rouge_frame([])) == ["act", "base text", "tuned text", "base ROUGE-L", "tuned ROUGE-L"]


def test_picking_another_prompt_names_its_column_and_empties_it():
    update = column_label("poet-5x5").constructor_args
    assert update == {"label": "Tuned: poet-5x5", "value": "", "placeholder": ""}  # not above another prompt's text
    empty = column_label(NO_PROMPT).constructor_args
    assert empty["label"] == "Tuned" and empty["placeholder"] == EMPTY_COLUMN  # says how to fill it


def test_the_third_column_shows_only_while_a_second_prompt_is_picked():
    # unpicked but shown, it sat empty under a spinner through every generation of the other two
    assert third_column(NO_PROMPT).constructor_args["visible"] is False
    shown = third_column("reference-20x10").constructor_args
    assert shown == {"label": "Tuned: reference-20x10", "value": "", "placeholder": "", "visible": True}


@pytest.mark.parametrize("seconds, text", [(0, "0s"), (45, "45s"), (130, "2m 10s"), (3720, "1h 2m")])
def test_duration_reads_like_a_clock(seconds, text):
    assert duration(seconds) == text


def test_search_matches_act_or_prompt_ignoring_case():
    from tuning.data import Row

    rows = [Row("Rapper", "Write lyrics. " * 20, "rapper"), Row("Poet", "I write poems", "poet")]
    frame = acts_frame(rows, "LYRICS")
    assert frame["act"].tolist() == ["Rapper"]
    assert frame["prompt"][0].endswith("…") and len(frame["prompt"][0]) == 81 and frame["words"][0] == 40
    assert len(acts_frame(rows, "")) == 2


def hostile_zip(path, member="../evil", link=False):
    with zipfile.ZipFile(path, "w") as z:
        info = zipfile.ZipInfo(member)
        if link:
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
        z.writestr(info, "x")
    return path


@pytest.mark.parametrize("member, link, message", [
    ("../evil", False, "unsafe path"),
    ("/etc/evil", False, "unsafe path"),
    ("a/../../evil", False, "unsafe path"),
    ("C:/evil", False, "unsafe path"),
    ("adapter/link", True, "symbolic link"),
])
def test_unzip_refuses_paths_that_escape(tmp_path, member, link, message):
    with pytest.raises(AdapterError, match=message):
        unzip_safely(str(hostile_zip(tmp_path / "bad.zip", member, link)), tmp_path / "out")
    assert not (tmp_path / "evil").exists()


def test_unzip_refuses_zip_bombs_and_crowds(tmp_path, monkeypatch):
    path = tmp_path / "big.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("adapter_config.json", "0" * 1000)
    monkeypatch.setattr("ui.zips.MAX_UPLOAD_BYTES", 999)  # read where the zip is unpacked
    with pytest.raises(AdapterError, match="unpacks to more than"):
        unzip_safely(str(path), tmp_path / "out")
    with zipfile.ZipFile(path, "w") as z:
        for i in range(MAX_UPLOAD_FILES + 1):
            z.writestr(f"f{i}", "")
    with pytest.raises(AdapterError, match="holds 17 files"):
        unzip_safely(str(path), tmp_path / "out")


# --- the served app --------------------------------------------------------------------


def test_page_load_lists_the_acts(client):
    table, chosen, status, _ = client.predict(api_name="/load_page")
    assert len(table["data"]) == 12 and status == ""
    assert "Rapper" in [c[0] for c in chosen["choices"]]


def test_search_filters_the_table(client):
    assert [r[0] for r in client.predict("TERMINAL", api_name="/search_acts")["data"]] == ["Linux Terminal"]


def test_selecting_an_act_prefills_compare(client):
    prompt, train_line, compare_line, text = client.predict("rapper", api_name="/select_act")
    assert prompt.startswith("I want you to act as a rapper.")
    assert "Rapper" in train_line and train_line == compare_line
    assert text == "I want you to act as a Rapper."  # evaluate.act_instruction: the act as the dataset names it


def test_presets_set_both_sliders(client):
    assert client.predict("5 tokens × 5 epochs", api_name="/set_preset") == (5, 5)


def test_training_streams_the_chart_and_finishes(client):
    updates = list(client.submit(*train_args(), api_name="/train"))
    assert len(updates) >= 5  # start, steps, epoch ends, done
    plot, progress, log = updates[-1]
    series = {row[2] for row in plot["value"]["data"] if row[1] is not None}  # each series also has one empty row
    assert plot["x_lim"] == [0, 20]  # the step axis spans the planned run, at least 20 steps
    assert series == {"train", "held-out", "base held-out"}
    assert progress == "step 6 / 6 · done"  # 11 training acts in batches of 4, two epochs
    assert "epoch 2:" in log and "done: 6 steps" in log
    steps = [len(points(u[0], "train")) for u in updates]
    assert steps == sorted(steps) and steps[-1] == 6  # the chart grows with every step


def test_training_on_the_current_act_only(client):
    client.predict("Poet", api_name="/select_act")
    *_, log = client.predict(*train_args(data="only the current act", init="text: the current act's prompt"),
                             api_name="/train")
    assert "training on 1 act," in log


def test_stop_keeps_the_partial_run_for_compare(client):
    job = client.submit(*train_args(epochs=50, batch=1), api_name="/train")
    for n, _ in enumerate(job, start=1):
        if n == 3:  # Start and two steps
            assert client.predict(api_name="/stop").startswith("stopping after this step…")
            break
    plot, progress, log = job.result(timeout=30)
    assert "stopped at step" in progress and "the prompt so far is kept" in progress
    assert "the prompt as it was after step" in log
    assert 2 <= len(points(plot, "train")) < 550
    base_text, tuned_text = generate(client)
    assert base_text and tuned_text


def test_stop_with_nothing_running_says_so(client):
    assert client.predict(api_name="/stop") == "nothing is training in this session"


def test_compare_after_training_differs_from_base(trained):
    base_text, tuned_text = generate(trained)
    assert base_text and tuned_text and base_text != tuned_text
    assert generate(trained, mode="sample", seed=1) == generate(trained, mode="sample", seed=1)


def test_compare_three_columns_in_one_batch_each_as_it_would_be_alone(trained):
    table, picked, message = trained.predict("three-a", SESSION_RUN, api_name="/save_adapter")
    args = dict(max_new=8, mode="sample", temperature=0.8, top_p=0.95, top_k=50, penalty=1.0, seed=3)
    base, a, b, *_ = trained.predict("I want you to act as a poet.", "three-a", *args.values(), SESSION_RUN, 3,
                                     NO_WRITTEN, "", api_name="/generate")
    assert base and a and b and a == b  # the same prompt twice: the same text, whatever its batch neighbours
    alone = trained.predict("I want you to act as a poet.", "three-a", *args.values(), NO_PROMPT, 3,
                            NO_WRITTEN, "", api_name="/generate")
    assert alone[:4] == (base, a, "", "")
    # a written prompt joins the batch as one more row: the others' texts stay what they were
    with_written = trained.predict("I want you to act as a poet.", "three-a", *args.values(), SESSION_RUN, 3,
                                   "1 example", "", api_name="/generate")
    assert with_written[:3] == (base, a, b) and with_written[3] and "Written" not in with_written[3]
    assert with_written[4].startswith("One batch of 4 columns: ") and "1 example" in with_written[5]
    trained.predict("three-a", api_name="/delete_adapter")


def test_compare_without_an_adapter_asks_for_one(client):
    with pytest.raises(AppError, match="train or pick an adapter first"):
        generate(client, adapter=None)
    with pytest.raises(AppError, match="train or pick an adapter first"):
        generate(client)  # this session's run, but nothing trained


def test_a_run_that_just_finished_opens_in_compare_and_evaluate_once(client):
    client.predict(*train_args(epochs=1), api_name="/train")
    client.predict("picked-earlier", SESSION_RUN, api_name="/save_adapter")
    try:
        a, b = client.predict(None, None, api_name="/compare_choices")
        assert a["value"].startswith("#1 ") and b["value"] == NO_PROMPT
        # from then on the visitor's picks stay, in both tabs
        a, b = client.predict("picked-earlier", "picked-earlier", api_name="/compare_choices")
        assert [a["value"], b["value"]] == ["picked-earlier", "picked-earlier"]
        assert client.predict(None, api_name="/eval_adapter_choices")["value"].startswith("#1 ")
        assert client.predict("picked-earlier", api_name="/eval_adapter_choices")["value"] == "picked-earlier"

        client.predict(*train_args(epochs=1), api_name="/train")  # a second run: it takes the first dropdown
        a, b = client.predict("picked-earlier", "picked-earlier", api_name="/compare_choices")
        assert a["value"].startswith("#2 ") and b["value"] == "picked-earlier"
        assert client.predict("picked-earlier", api_name="/eval_adapter_choices")["value"].startswith("#2 ")
        a, b = client.predict("picked-earlier", "picked-earlier", api_name="/compare_choices")  # once, not for ever
        assert [a["value"], b["value"]] == ["picked-earlier", "picked-earlier"]
    finally:
        client.predict("picked-earlier", api_name="/delete_adapter")


def test_a_run_saved_without_a_name_is_named_after_its_act_and_size(trained):
    *_, message = trained.predict("", SESSION_RUN, api_name="/save_adapter")
    assert message.endswith(" as **all-acts-5x2**")  # "#1 all acts 5×2 · HH:MM"
    trained.predict("all-acts-5x2", api_name="/delete_adapter")
    assert default_save_name("#3 Rapper 20×10 · 14:05") == "Rapper-20x10"
    assert default_save_name(None) == default_save_name("an-adapter") == ""
    continued = "#2 reference-20x10-gpt2-0a1b2c continued 20×12 · 14:05"  # the prefix is kept for the server's own
    assert default_save_name(continued) == "20x10-gpt2-0a1b2c-continued-20x12"


def test_save_list_download_upload_delete(trained, tmp_path):
    table, picked, message = trained.predict("my rapper!", SESSION_RUN, api_name="/save_adapter")
    assert message.startswith("saved #1 ") and message.endswith(" as **my-rapper**") and picked["value"] == "my-rapper"
    compare, _ = trained.predict(SESSION_RUN, None, api_name="/compare_choices")  # every run by name, then adapters
    assert [c[0] for c in compare["choices"]][1:] == ["my-rapper"] and compare["choices"][0][0].startswith("#1 ")
    _, _, message = trained.predict("my rapper!", SESSION_RUN, api_name="/save_adapter")
    assert message.endswith(" as **my-rapper-2** (**my-rapper** was taken)")  # nothing is overwritten
    trained.predict("my-rapper-2", api_name="/delete_adapter")
    assert table["data"][0][:3] == ["my-rapper", 5, 2]
    assert trained.predict("my-rapper", api_name="/adapter_details")["num_virtual_tokens"] == 5

    zipped = trained.predict("my-rapper", api_name="/download_adapter")
    with zipfile.ZipFile(zipped) as z:
        names = set(z.namelist())
    assert {"my-rapper/adapter_config.json", "my-rapper/adapter_model.safetensors"} <= names

    *_, message = trained.predict(handle_file(zipped), "copy", api_name="/upload_adapter")
    assert message == "uploaded as **copy**"
    assert generate(trained, adapter="copy") == generate(trained, adapter="my-rapper")

    _, _, message, download, details = trained.predict("copy", api_name="/delete_adapter")
    table, *_ = trained.predict(None, api_name="/list_adapters")
    assert message == "deleted **copy**" and "copy" not in [r[0] for r in table["data"]]
    assert download is None and not details  # nothing offers the deleted adapter any more
    trained.predict("my-rapper", api_name="/delete_adapter")


def test_yes_deletes_the_adapter_the_question_named_not_the_one_picked_since(trained):
    for name in ("keep-me", "asked-about"):
        trained.predict(name, SESSION_RUN, api_name="/save_adapter")
    question = trained.predict("asked-about", api_name="/ask_delete")  # the row and the state are not outputs a client sees
    assert question.startswith("Delete **asked-about** for every visitor")
    with pytest.raises(AppError, match="the question was about 'asked-about', but 'keep-me' is picked now"):
        trained.predict("keep-me", api_name="/delete_adapter")  # a row clicked after "Delete…"
    table, *_ = trained.predict(None, api_name="/list_adapters")
    assert {"keep-me", "asked-about"} <= {r[0] for r in table["data"]}
    _, _, message, *_ = trained.predict("asked-about", api_name="/delete_adapter")
    assert message == "deleted **asked-about**"
    trained.predict("keep-me", api_name="/delete_adapter")  # asked about nothing now: a client names it outright


def test_the_adapters_table_shows_held_out_perplexity_and_its_share_of_the_base_models():
    listing = [{"name": n, "num_virtual_tokens": 20, "config": {"epochs": 10}, "metrics": m,
                "created": "2026-12-04T16:49:00+00:00", "base_model": "org/model"}
               for n, m in [("tuned", {"held_out_loss": 2.9, "base_held_out_loss": 3.5}),
                            ("no-base", {"held_out_loss": 2.9}), ("upload", {"held_out_loss": "junk"}), ("none", {})]]
    frame = adapters_frame(listing)
    assert list(frame.columns) == ["name", "tokens", "epochs", "held-out ppl", "× base", "created", "base model"]
    assert frame.values.tolist()[0] == ["tuned", 20, 10, "18.17", "0.55×", "2026-12-04 16:49", "org/model"]  # e^2.9, e^-0.6
    assert [r[3:5] for r in frame.values.tolist()[1:]] == [["18.17", "–"], ["–", "–"], ["–", "–"]]


def test_upload_refuses_a_hostile_zip(client, tmp_path):
    with pytest.raises(AppError, match="unsafe path: ../evil"):
        client.predict(handle_file(str(hostile_zip(tmp_path / "evil.zip"))), "evil", api_name="/upload_adapter")
    table, *_ = client.predict(None, api_name="/list_adapters")
    assert "evil" not in [r[0] for r in table["data"]]


def test_adapter_names_cannot_leave_the_folder(client):
    with pytest.raises(AppError, match="no adapter named"):
        client.predict("../app.py", api_name="/download_adapter")
    with pytest.raises(AppError, match="not a valid adapter name"):
        client.predict("../app.py", api_name="/delete_adapter")


@pytest.mark.parametrize("settings, message", [
    (dict(tokens=0), "less than minimum value 1"),  # the slider's own check
    (dict(lr=20), "Learning rate must be from"),  # TuneConfig's, named by the label
    (dict(data="selected acts"), "choose at least one act"),
    (dict(data="selected acts", acts=["Nobody"]), "not in the list of choices"),
    (dict(init="text: the current act's prompt"), "pick an act in the Dataset tab first: the prompt starts from"),
])
def test_bad_settings_give_one_sentence_and_the_app_keeps_serving(client, settings, message):
    with pytest.raises(AppError, match=message):
        client.predict(*train_args(**settings), api_name="/train")
    assert client.predict("poet", api_name="/search_acts")["data"][0][0] == "Poet"


def test_the_page_renders_when_the_dataset_cannot_be_loaded(tmp_path):
    demo = build_app(model="/no/such/model", dataset=str(tmp_path / "missing.csv"), adapters_dir=tmp_path)
    demo.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        table, _, status, _ = client.predict(api_name="/load_page")
        assert table["data"] == [] and "no dataset file at" in status
        with pytest.raises(AppError, match="no dataset file at"):
            client.predict("Rapper", api_name="/select_act")
    finally:
        demo.close()


def test_the_app_clears_what_an_interrupted_save_left_in_the_adapters_folder_when_it_starts(tmp_path):
    leftover = tmp_path / ".old-0123456789abcdef"
    leftover.mkdir()
    (leftover / "adapter_model.safetensors").write_bytes(b"x")
    os.utime(leftover, (1e9, 1e9))  # 2001: long untouched
    build_app(model="/no/such/model", dataset="/no/such/acts.csv", adapters_dir=tmp_path)
    assert not leftover.exists()


def test_refused_inputs_log_one_line_and_no_traceback(served, capfd, caplog):  # noqa: F811
    import logging

    from test_hardening import raw_call

    caplog.set_level(logging.INFO, logger="tuning.app")
    calls = [("train", [*train_args(lr=20)]), ("train", [*train_args(tokens="x")]),
             ("generate", ["hi", "../app.py", *GREEDY.values(), NO_PROMPT, 3, NO_WRITTEN, ""]),
             ("delete_adapter", ["../../etc/passwd"]), ("select_act", ["no such act"]),
             ("train_adapter", ["", 0, 1, 0.1, ""]), ("train", [*train_args(init="pickle")]),
             ("generate", ["hi", SESSION_RUN, *{**GREEDY, "mode": "beam"}.values(), NO_PROMPT, 3, NO_WRITTEN, ""]),
             ("generate", ["hi", SESSION_RUN, *GREEDY.values(), NO_PROMPT, 3, "3 examples", ""])]
    for api_name, data in calls:
        caplog.clear()
        event, message = raw_call(served, api_name, data)
        assert event == "error" and message, (api_name, event, message)
        logged = [r.getMessage() for r in caplog.records if r.name == "tuning.app"]
        assert logged == [f"refused: {message}"], api_name  # the sentence the visitor got, once
    err = capfd.readouterr().err
    assert "Traceback" not in err


def test_evaluate_and_the_run_history_give_the_same_perplexities(trained):
    ppl, *_ = trained.predict(SESSION_RUN, 0, 8, NO_WRITTEN, api_name="/evaluate")
    runs, _ = trained.predict(api_name="/history")
    last = runs["data"][-1]
    columns = runs["headers"]
    history = {"tuned": last[columns.index("held-out ppl")], "base": last[columns.index("base held-out ppl")]}
    evaluated = {model: f"{value:.2f}" for _, model, value in ppl["data"]}
    assert evaluated == history  # one definition: scored as training scores it


def test_every_sweep_cell_and_every_kept_run_has_its_own_colours():
    labels = [f"{n}×1" for n in range(1, MAX_CELLS + 1)]
    palette = cell_colours(labels)
    assert len(palette) == 2 * MAX_CELLS + 1 and len(set(palette.values())) == len(palette)  # 12 cells: 25 colours
    runs = [f"#{n} run" for n in range(1, MAX_HISTORY + 1)]
    assert len(set(colours(runs).values())) == MAX_HISTORY


def test_sampling_settings_are_adjustable_only_when_sampling():
    assert [u["interactive"] for u in sampling_controls("greedy")] == [False] * 4
    assert [u["interactive"] for u in sampling_controls("sample")] == [True] * 4
    demo = build_app(model="/no/such/model", dataset="/no/such/acts.csv")
    assert [len(f.outputs) for f in demo.fns.values() if f.name == "sampling_controls"] == [4]


@pytest.mark.timeout(120)
def test_generation_serves_four_users_at_once_compare_and_evaluate_sharing_them():
    # README: generation serves four users at once (a fifth waits in Gradio's queue); Compare and Evaluate
    # share the four, since an evaluation generates too (tests/test_turns.py: the engine lets them overlap)
    demo = build_app(model="/no/such/model", dataset="/no/such/acts.csv")
    limits = {f.api_name: (f.concurrency_limit, f.concurrency_id) for f in demo.fns.values()
              if f.api_name in ("generate", "evaluate")}
    assert limits == {"generate": (4, "generate"), "evaluate": (4, "generate")}
