"""A reload loses nothing: the app's callbacks called directly (no server), as two tabs of one browser would."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import gradio as gr
import pandas as pd
import pytest
import torch

from app_fixtures import write_assets
import tuning.generate
from tuning.config import TuneConfig
from tuning.jobs import Job, Jobs
from tuning.model import SoftPrompt
from tuning.formatting import duration
from ui.api import stop_training_job, train_adapter, training_status
from ui.charts import NOTHING_GENERATED, rouge_frame
from ui.follow import stop_run
from ui.layout import build_app, on_close
from ui import gpu_calls
from ui.session import REFERENCE_OWNER, Context, Session, attach, pick_soft
from ui.tabs.compare import NO_PROMPT, compare_choices, generate, input_cut, reference_tick
from ui.tabs.dataset import restore_act, select_act
from ui.tabs.sweep import reattach_sweep, start_sweep, stop_sweep, sweep_estimate
from ui.tabs.train import reattach, resume_choices, start_training, stop_training
from ui.training import train_config

TRAIN = dict(tokens=5, epochs=50, lr=0.1, batch=1, init="random", data="all training acts", chosen=[], seed=0)


@pytest.fixture
def ctx(tmp_path):
    model, dataset = write_assets(tmp_path)
    return Context(model, dataset, tmp_path / "adapters", jobs=Jobs(grace=5.0))


def tab(name: str):
    return SimpleNamespace(session_hash=name)


def frame(chart) -> pd.DataFrame:
    return chart.constructor_args["value"]  # a LinePlot update: the data and the step axis


def train_steps(update) -> int:
    return int((frame(update[0])["series"] == "train").sum() - 1)  # one empty row per series


def test_a_reloaded_page_re_attaches_to_the_running_training_and_can_stop_it(ctx):
    session, browser = attach(ctx, None, Session())
    first = start_training(ctx, *TRAIN.values(), session, tab("tab-1"))
    for update in first:
        if train_steps(update) >= 3:
            break
    on_close(ctx, tab("tab-1"))  # the page reloads: the old tab goes …
    first.close()
    again, same = attach(ctx, browser, Session())  # … and the new one brings the browser's id
    assert again is session and same == browser
    follower = reattach(ctx, again, tab("tab-2"))
    chart, progress, log = next(follower)
    assert train_steps((chart, progress, log)) >= 3  # the chart so far, replayed
    assert progress.startswith("step ") and "training on 11 acts" in log
    assert stop_run(ctx, again, tab("tab-2")).startswith("stopping after this step…")
    *_, (chart, progress, log) = follower
    assert progress.startswith("stopped at step") and "is kept" in log
    assert len(again.runs) == 1 and again.runs[0].soft.meta["stopped"]


def test_a_reloaded_page_shows_the_act_it_will_train_on(ctx):
    session, browser = attach(ctx, None, Session())
    assert all(update == gr.update() for update in restore_act(session))  # nothing picked: nothing to show
    act = ctx.rows()[0]
    select_act(ctx, act.act, session)
    again, _ = attach(ctx, browser, Session())  # the reload
    name, prompt, train_line, compare_line, text, tab_act = restore_act(again)
    assert name == act.act and prompt == act.prompt and text.startswith("I want you to act as")
    assert train_line == compare_line == f"**Current act:** {act.act}" and tab_act == act.act


def test_re_attached_tabs_are_not_held_to_the_default_concurrency_limit(ctx):
    demo = build_app(model=ctx.model, dataset=ctx.dataset, adapters_dir=ctx.root)
    assert [f.concurrency_limit for f in demo.fns.values() if f.name == "reattach"] == [None]


def test_a_closed_tab_with_no_reload_stops_its_training_after_the_grace(ctx):
    ctx = Context(ctx.model, ctx.dataset, ctx.root, jobs=Jobs(grace=0.5))
    session, _ = attach(ctx, None, Session())
    first = start_training(ctx, *TRAIN.values(), session, tab("tab-1"))
    next(first)
    job = ctx.jobs.running(session.owner)
    on_close(ctx, tab("tab-1"))
    first.close()
    closed_at = time.monotonic()
    assert job.join(timeout=30), "the abandoned run never stopped"
    assert job.stop.is_set() and time.monotonic() - closed_at < 0.5 + 5  # the grace, then a step or two
    assert session.runs[-1].soft.meta["steps"] < 550  # far from its planned end
    assert session.runs and session.runs[-1].soft.meta["stopped"]


def test_a_second_training_from_the_same_browser_is_refused_while_one_runs(ctx):
    session, _ = attach(ctx, None, Session())
    first = start_training(ctx, *TRAIN.values(), session, tab("tab-1"))
    next(update for update in first if train_steps(update) >= 1)
    with pytest.raises(gr.Error, match="this browser is already running a training"):
        next(start_training(ctx, *TRAIN.values(), session, tab("tab-2")))
    stop_run(ctx, session, tab("tab-1"))
    list(first)


def test_resuming_a_run_continues_its_steps_and_its_chart(ctx):
    session, _ = attach(ctx, None, Session())
    *_, (chart, progress, log) = start_training(ctx, **{**TRAIN, "epochs": 2, "batch": 4}, session=session,
                                                    request=tab("t"))
    assert progress == "step 6 / 6 · done"
    first = session.runs[-1]
    *_, (chart, progress, log) = start_training(ctx, **{**TRAIN, "epochs": 1, "batch": 4}, session=session,
                                                    request=tab("t"), resume=first.name)
    assert progress == "step 9 / 9 · done"
    assert "continuing a prompt trained for 6 steps (2 epochs)" in log
    data = frame(chart)
    steps = data[data["series"] == "train"]["step"].dropna().tolist()
    assert chart.constructor_args["x_lim"] == [0, 20]
    assert steps[1:] == list(range(1, 10))  # the old curve, then the new steps after it
    resumed = session.runs[-1]
    assert resumed.soft.config.epochs == 3 and resumed.name.startswith("#2 all acts continued 5×3 · ")  # not "#2 #1 …"
    assert resumed.soft.meta["history"]["step"] == list(range(1, 10))


def test_resuming_past_the_epoch_cap_is_refused_by_label(ctx):
    session, _ = attach(ctx, None, Session())
    list(start_training(ctx, **{**TRAIN, "epochs": 2, "batch": 4}, session=session, request=tab("t")))
    with pytest.raises(gr.Error, match="[Ee]pochs"):
        next(start_training(ctx, **{**TRAIN, "epochs": 49, "batch": 4}, session=session, request=tab("t"),
                                resume=session.runs[-1].name))


def test_the_sweep_estimate_gives_a_time_once_a_run_has_measured_the_speed(ctx, monkeypatch):
    session, _ = attach(ctx, None, Session())
    before = sweep_estimate(ctx, "5x5, 20x10", 0.03, 4, 0, session)
    assert before == ("2 cells (5×5, 20×10): 45 steps in all; train once (any run) and this will say about how "
                      "long the training takes.")
    list(start_training(ctx, **{**TRAIN, "epochs": 1, "batch": 4}, session=session, request=tab("t")))
    speed = session.runs[-1].soft.meta["tokens_per_s"]
    after = sweep_estimate(ctx, "5x5, 20x10", 0.03, 4, 0, session)
    assert after.startswith("2 cells (5×5, 20×10): 45 steps in all; about ")
    assert after.endswith(f" of training at {speed:,.0f} tokens/s (your last run's speed).")
    monkeypatch.setattr(tuning.generate, "_pace", {})
    with_rouge = sweep_estimate(ctx, "5x5, 20x10", 0.03, 4, 0, session, 5)  # the fixture holds 1 act out
    assert with_rouge.endswith("(your last run's speed), then ROUGE-L generation for 1 held-out act in each cell, "
                               "not counted until a generation has been timed (Generate in Compare once).")
    # once a one-row generation was timed: 1 act, decoded for the base model and each of the 2 cells, 64 tokens each
    tuning.generate.generate(ctx.base(), None, "I want you to act as a poet.", tuning.generate.Decoding(max_new_tokens=24))
    pace = tuning.generate.decode_pace(1)
    assert pace is not None and 0 < pace < 5
    with_rouge = sweep_estimate(ctx, "5x5, 20x10", 0.03, 4, 0, session, 5)
    assert with_rouge.endswith(f"(your last run's speed), then ROUGE-L generation for 1 held-out act in each cell, "
                               f"up to about {duration(3 * 64 * pace)} more at this server's last generation pace.")


def test_the_reference_timer_offers_the_prompts_only_when_a_reference_was_just_saved(ctx, monkeypatch):
    import threading

    from tuning.progress import ReferenceView

    listings = []
    real = Context.adapters
    monkeypatch.setattr(Context, "adapters", lambda self: listings.append(1) or real(self))
    release = threading.Event()
    view = ReferenceView()
    job = ctx.jobs.start(Job(REFERENCE_OWNER, "references", lambda stop: iter(lambda: release.wait(5), True),
                                 view=view))
    session = Session()
    line, timer, seen, a, b, runs_seen = reference_tick(ctx, 0, session, None, None)
    assert line == "Training the reference adapters: loading the model…" and seen == 0
    assert a == b == runs_seen == gr.skip() and listings == []  # nothing new: the adapters are not listed
    with pytest.raises(gr.Error) as refused:
        pick_soft(ctx, None, session)  # a first visitor's Generate on a new Space says what is coming
    assert refused.value.message == ("train or pick an adapter first; or wait for the reference adapters "
                                     "(loading the model…)")
    view.saved.append("reference-5x5-tiny-gpt2-000000")
    *_, seen, a, b, runs_seen = reference_tick(ctx, 0, session, None, None)
    assert seen == 1 and listings == [1] and a.constructor_args["choices"] == [] and runs_seen == 0
    release.set()
    assert job.join(timeout=10)
    line, timer, seen, a, b, _ = reference_tick(ctx, 1, session, None, None)
    assert line == "" and timer.constructor_args["active"] is False and listings == [1, 1]  # once more, at the end
    with pytest.raises(gr.Error) as refused:
        pick_soft(ctx, None, session)
    assert refused.value.message == "train or pick an adapter first"


def test_prompt_pickers_offer_only_adapters_this_model_can_use(ctx):
    import dataclasses

    from tuning import adapters

    session, _ = attach(ctx, None, Session())
    *_, _ = start_training(ctx, *{**TRAIN, "epochs": 1}.values(), session, tab("tab-1"))
    soft = session.runs[-1].soft
    adapters.save(soft, "mine", ctx.root)
    adapters.save(dataclasses.replace(soft, base_model="someone/other-model"), "theirs", ctx.root)
    a, b, _ = compare_choices(ctx, session)
    offered = a.constructor_args["choices"]
    assert "mine" in offered and "theirs" not in offered
    assert "theirs" not in b.constructor_args["choices"] + resume_choices(ctx, session).constructor_args["choices"]
    assert "theirs" in [a["name"] for a in ctx.adapters()]  # still listed in the Adapters tab: it can be downloaded
    copy = dataclasses.replace(ctx, hub_model="someone/other-model")  # ctx.model is a local copy of that Hub model
    assert "theirs" in compare_choices(copy, session)[0].constructor_args["choices"]
    assert adapters.load("theirs", ctx.root, copy.base()).base_model == "someone/other-model"


def test_a_reloaded_page_re_attaches_to_the_running_sweep(ctx):
    session, browser = attach(ctx, None, Session())
    first = start_sweep(ctx, "2x1, 3x40", 0, 0.1, 1, 0, session, tab("tab-1"))
    for _, progress, *_ in first:
        if "cell 3×40" in progress:  # the first cell is done
            break
    on_close(ctx, tab("tab-1"))
    first.close()
    again, _ = attach(ctx, browser, Session())
    assert list(reattach(ctx, again, tab("tab-2"))) == [(gr.skip(),) * 3]  # the Train tab: nothing to follow
    follower = reattach_sweep(ctx, again, tab("tab-2"))
    chart, progress, results, csv_file, context = next(follower)
    assert "cell 3×40" in progress and len(results) == 1 and csv_file  # the finished cell, and its file
    assert stop_run(ctx, again, tab("tab-2")).startswith("stopping after this step")
    *_, (chart, progress, results, csv_file, context) = follower
    assert progress.startswith("stopped: 1 of 2 cells finished, 3×40 cut at step")
    assert len(results) == 2 and open(csv_file).read().count("\n") == 3  # header, the done cell, the cut one


def a_prompt(ctx, tokens: int = 5) -> SoftPrompt:
    return SoftPrompt(torch.zeros(tokens, ctx.base().hidden_size), ctx.model, TuneConfig(num_virtual_tokens=tokens))


def test_a_column_the_model_ended_at_once_says_so_when_generation_ends(ctx, monkeypatch):
    def fake_generation(base, prompts, text, decoding):
        yield "", ""
        yield "Once upon", ""  # the tuned prompt's first token was end-of-text

    soft = a_prompt(ctx)
    monkeypatch.setattr("ui.tabs.compare.pick_soft", lambda ctx, name, session: soft)
    monkeypatch.setattr("ui.gpu_calls.GENERATE_ON_GPU", fake_generation)
    updates = list(generate(ctx, "Tell me", "a", 8, "greedy", 0.8, 0.95, 50, 1.0, 0, Session()))
    assert updates[-2] == ("Once upon", "", "", "", "", "")  # while streaming an empty column is only "not yet"
    assert updates[-1][:4] == ("Once upon", NOTHING_GENERATED, "", "")
    assert updates[-1][4].startswith("One batch of 2 columns: ") and updates[-1][5] == ""
    frame = rouge_frame([{"act": "Poet", "base_text": "x", "tuned_text": " ", "base_rouge": 0.1, "tuned_rouge": 0.0}])
    assert frame["tuned text"][0] == NOTHING_GENERATED


def test_an_input_longer_than_the_context_is_cut_and_the_visitor_told(ctx, monkeypatch):
    told, soft = [], a_prompt(ctx)
    monkeypatch.setattr("ui.tabs.compare.pick_soft", lambda ctx, name, session: soft)
    monkeypatch.setattr("ui.gpu_calls.GENERATE_ON_GPU", lambda base, prompts, text, decoding: iter([("a", "b")]))
    monkeypatch.setattr(gr, "Info", told.append)
    list(generate(ctx, "Tell me a story. " * 5, "a", 8, "greedy", 0.8, 0.95, 50, 1.0, 0, Session()))
    assert told == []
    list(generate(ctx, "Tell me a story. " * 200, "a", 8, "greedy", 0.8, 0.95, 50, 1.0, 0, Session()))
    base = ctx.base()
    cut = len(base.encode("Tell me a story. " * 200)) - (base.max_positions - 5 - 8)  # 5 virtual + input + 8 new fill it
    assert cut > 0 and input_cut(base, [soft], "Tell me a story. " * 200, 8) == cut
    assert len(told) == 1 and told[0].endswith(f"its first {cut:,} tokens were left out.")


def test_a_client_cannot_name_itself_the_reference_training_and_stop_it(ctx):
    from tuning.jobs import Job

    def forever(stop):
        while not stop.is_set():
            time.sleep(0.01)
            yield 1

    references = ctx.jobs.start(Job(REFERENCE_OWNER, "the reference adapters", forever, background=True))
    spoofed = tab(REFERENCE_OWNER)  # a client picks its own session hash
    assert stop_run(ctx, Session(), spoofed) == "nothing is training in this session"
    assert not references.stop.is_set()
    references.stop.set()
    assert references.join(timeout=10)


def test_continuing_a_plain_peft_adapter_trains_here_and_records_this_servers_dataset(ctx):
    from tuning import adapters

    session, _ = attach(ctx, None, Session())
    list(start_training(ctx, **{**TRAIN, "epochs": 1, "batch": 4}, session=session, request=tab("t")))
    folder = adapters.save(session.runs[-1].soft, "plain", ctx.root)
    (folder / adapters.META_FILE).unlink()  # what PEFT alone writes: no history, no dataset of ours
    assert adapters.load("plain", ctx.root).config.dataset != ctx.dataset
    *_, (chart, progress, log) = start_training(ctx, **{**TRAIN, "epochs": 1, "batch": 4}, session=session,
                                                    request=tab("t"), resume="plain")
    assert progress.startswith("step ") and "done" in progress
    soft = session.runs[-1].soft
    assert soft.config.dataset == soft.meta["dataset"] == ctx.dataset and soft.config.model == ctx.model


def test_two_tabs_of_one_browser_each_train_on_the_act_they_show(ctx):
    session, _ = attach(ctx, None, Session())
    first, second = ctx.rows()[0], ctx.rows()[1]
    shown_in_tab_1 = select_act(ctx, first.act, session)[-1]
    select_act(ctx, second.act, session)  # tab 2 picks another act: the browser's last pick
    settings = (5, 1, 0.1, 4, "random", "only the current act", [], 0)
    assert train_config(ctx, session, *settings, shown_in_tab_1).acts == (first.act,)
    with pytest.raises(gr.Error, match="pick an act in the Dataset tab first"):  # a tab that shows no act yet
        train_config(ctx, session, *settings)


def test_an_api_training_stopped_before_its_first_step_says_so(ctx):
    assert ctx.jobs.slot.acquire(threading.Event())  # another run trains: the API's waits for the slot
    try:
        started = train_adapter(ctx, "", 3, 1, 0.1, "", tab("client"))
        assert started["status"] == "waiting"
        stop_training_job(ctx, started["job"])
    finally:
        ctx.jobs.slot.release()
    status = training_status(ctx, started["job"], 10)
    assert status["status"] == "stopped" and status["step"] == 0
    assert status["error"] == "the training was stopped before its first step; nothing was saved"
    assert ctx.adapters() == []


def test_an_api_training_is_saved_when_it_ends_even_if_nobody_asks(ctx):
    started = train_adapter(ctx, "", 3, 1, 0.1, "", tab("client"))
    ctx.api_trainings[started["job"]].job.join(60)
    assert [a["name"] for a in ctx.adapters()] == ["all-3x1"]  # saved in the job's thread
    status = training_status(ctx, started["job"])
    assert status["status"] == "done" and status["adapter"] == "all-3x1" and status["held_out_perplexity"] > 1


def test_a_training_that_fails_says_so_on_its_progress_line(ctx, monkeypatch):
    from tuning.events import TrainingError

    real = gpu_calls.TRAIN_ON_GPU

    def diverges(*a, **k):  # two steps, then the loss turns NaN
        for n, event in enumerate(real(*a, **k)):
            if n == 3:
                raise TrainingError("the loss became NaN at step 2; try a lower learning rate")
            yield event

    monkeypatch.setattr("ui.gpu_calls.TRAIN_ON_GPU", diverges)
    session, _ = attach(ctx, None, Session())
    updates = start_training(ctx, *TRAIN.values(), session, tab("t"))
    last = None
    with pytest.raises(gr.Error, match="the loss became NaN"):
        for last in updates:
            pass
    assert last[1] == "failed: the loss became NaN at step 2; try a lower learning rate"


def test_compare_opens_on_both_references_but_keeps_a_second_column_the_visitor_emptied(ctx):
    from tuning import adapters, reference

    session, _ = attach(ctx, None, Session())
    list(start_training(ctx, *{**TRAIN, "epochs": 1, "batch": 4}.values(), session, tab("t")))
    refs = [reference.name(ctx.model, ctx.dataset, *cell) for cell in reference.GRID]
    for name in refs:
        adapters.save(session.runs[-1].soft, name, ctx.root)
    runs_seen = session.run_count

    def shown(a, b, **kw):
        a, b, _ = compare_choices(ctx, session, a, b, runs_seen, **kw)
        return a.constructor_args["value"], b.constructor_args["value"]

    assert shown(None, NO_PROMPT) == tuple(refs)  # a new page: the seed's two runs
    assert shown(refs[0], NO_PROMPT) == (refs[0], NO_PROMPT)  # emptied by the visitor: a tab visit keeps it
    assert shown(refs[0], NO_PROMPT, arrived=True) == tuple(refs)  # the second reference was just saved


def test_each_tabs_stop_stops_its_own_kind_of_job_and_points_to_the_other(ctx):
    session, _ = attach(ctx, None, Session())
    run = start_training(ctx, *TRAIN.values(), session, tab("t"))
    next(update for update in run if train_steps(update) >= 1)
    assert stop_sweep(ctx, session, tab("t")) == (
        "A training (all acts) is running in this browser: stop it in the Train tab")
    assert not ctx.jobs.running(session.owner).stop.is_set()  # the Sweep tab's Stop left the training alone
    assert stop_training(ctx, session, tab("t")).startswith("stopping after this step…")
    *_, (chart, progress, log) = run
    assert progress.startswith("stopped at step")


def test_a_new_page_with_nothing_to_follow_keeps_its_empty_states(ctx):
    # A follower that ends without an update blanks its outputs in the browser: the Train tab lost
    # "not started: …" and its chart's axes, the Sweep tab its results table's headers.
    session, _ = attach(ctx, None, Session())
    assert list(reattach(ctx, session, tab("t"))) == [(gr.skip(),) * 3]
    assert list(reattach_sweep(ctx, session, tab("t"))) == [(gr.skip(),) * 5]
