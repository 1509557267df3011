"""Evaluate, per-token gains, nearest tokens, sweep and run history, called by api_name on the tiny model.

The fixture's 12 acts split into 11 training acts and 1 held-out act (seed 0), so a run of
batch 4 takes 3 steps per epoch.
"""

from __future__ import annotations

import csv
import json
import math
import threading
import time
import types
from pathlib import Path

import pytest
from gradio_client.exceptions import AppError

from app_fixtures import ACTS, Client, serve
from conftest import make_tokenizer, need
from tuning import adapters
from tuning.config import TuneConfig
from tuning.model import SoftPrompt
from ui.charts import gain_scores
from ui.layout import build_app
from ui.session import MAX_HISTORY, SESSION_RUN, Session
from ui.tabs.evaluate import held_out_scores, no_evaluation
from ui.tabs.sweep import sweep_plan

TRAIN = dict(tokens=5, epochs=2, lr=0.1, batch=4, init="random", data="all training acts", acts=[], seed=0,
             resume="a new prompt")  # the tabs' events are undocumented: a client sends every input


def train_args(**kw):
    return list({**TRAIN, **kw}.values())


def sweep_args(grid="2x1, 3x1", rouge=0, lr=0.1, batch=4, seed=0, shots=()):
    return [grid, rouge, lr, batch, seed, list(shots)]


def table(value: dict) -> list[dict]:
    """A Dataframe's value as a client sees it -> one dict per row."""
    return [dict(zip(value["headers"], row)) for row in value["data"]]


def series(plot: dict) -> dict[str, list]:
    """A plot's value -> {series: [(step, loss), ...]}, leaving out each series' empty placeholder row."""
    plot = plot.get("value", plot)  # an update that also sets the colour map carries the value inside
    out: dict[str, list] = {}
    for step, loss, name in plot["data"]:
        out.setdefault(name, [])
        if loss is not None:
            out[name].append((step, loss))
    return out


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow_setup):
    folder = tmp_path_factory.mktemp("metrics")
    demo, url = serve(folder)
    yield url, folder
    demo.close()


@pytest.fixture
def client(server):
    c = Client(server[0], verbose=False)  # one client = one browser session
    yield c
    c.close()


@pytest.fixture
def trained(client):
    client.predict(*train_args(), api_name="/train")
    return client


# --- plain helpers ---------------------------------------------------------------------


def test_gain_scores_keep_the_sign_and_saturate_at_the_scale():
    assert gain_scores([(" rapper", 3.1), (".", -0.5), (" a", 0.0)]) == [(" rapper", 1.0), (".", -0.5), (" a", 0.0)]


def test_history_keeps_the_last_runs_with_unique_labels():
    session = Session()
    history = {"step": [1, 2], "train_loss": [3.0, 2.0], "epoch": [1], "held_out_loss": [2.5], "epoch_train_loss": [2.5]}
    soft = SoftPrompt(embeddings=None, base_model="m", config=TuneConfig(num_virtual_tokens=5, epochs=1),
                      meta={"history": history, "metrics": {"held_out_loss": 2.5, "base_held_out_loss": 3.0}})
    for _ in range(MAX_HISTORY + 2):
        session.remember(soft, "Poet", steps_per_epoch=2)
    assert len(session.runs) == MAX_HISTORY
    assert session.runs[0].name.startswith("#3 Poet 5×1 · ")  # the time of day follows: names stay unique
    assert session.runs[-1].name.startswith(f"#{MAX_HISTORY + 2} Poet 5×1 · ")
    assert session.run(SESSION_RUN) is session.runs[-1] and session.run(session.runs[0].name) is session.runs[0]


# --- Evaluate --------------------------------------------------------------------------


def test_evaluate_compares_held_out_perplexity_and_rouge(trained):
    ppl, rouge, summary, rows = trained.predict(SESSION_RUN, 5, 8, "none", api_name="/evaluate")
    bars = {model: value for _, model, value in ppl["data"]}
    assert set(bars) == {"base", "tuned"} and all(math.isfinite(v) and v > 1 for v in bars.values())
    assert bars["base"] != bars["tuned"]
    acts = table(rows)
    assert len(acts) == 1 and "only 1 held-out acts" in summary  # the fixture holds one act out
    assert all(0 <= r[k] <= 1 for r in acts for k in ("base ROUGE-L", "tuned ROUGE-L"))
    assert [m for _, m, _ in rouge["data"]] == ["base", "tuned"]


@pytest.fixture
def three_held(trained, server):
    """The session's run saved as 'three-held', recording Poet, Chef and Doctor as its held-out acts."""
    trained.predict("three-held", SESSION_RUN, api_name="/save_adapter")
    meta_path = Path(server[1]) / "adapters" / "three-held" / adapters.META_FILE
    record = json.loads(meta_path.read_text())
    record["meta"]["held_out_acts"] = ["Poet", "Chef", "Doctor"]
    record["meta"]["acts"] = [a for a in record["meta"]["acts"] if a not in ("Poet", "Chef", "Doctor")]  # consistent
    meta_path.write_text(json.dumps(record))
    yield "three-held"
    trained.predict("three-held", api_name="/delete_adapter")


def test_evaluate_uses_the_held_out_acts_the_adapter_recorded(trained, three_held):
    job = trained.submit(three_held, 3, 8, "none", api_name="/evaluate")
    _, _, summary, rows = job.result(timeout=60)
    assert [r["act"] for r in table(rows)] == ["Poet", "Chef", "Doctor"]
    # shown as they come: perplexity first, then one act at a time (another pick stops it between two acts)
    steps = [(s, len(table(r))) for _, _, s, r in job.outputs()]
    assert [n for _, n in steps] == [0, 1, 2, 3] and "generating, 0 of 3 acts done…" in steps[0][0]
    assert "generating, 2 of 3 acts done… So far base" in steps[2][0] and "Held-out perplexity" in steps[0][0]
    assert "over 3 acts" in summary and summary.startswith("**three-held**")  # which prompt the numbers are of
    assert all(0 <= r["tuned ROUGE-L"] <= 1 for r in table(rows))


@pytest.mark.timeout(60)
def test_a_cancelled_evaluation_stops_generating_at_the_next_act(trained, three_held, monkeypatch):
    from tuning import evaluate

    real, started = evaluate.iter_rouge, []

    def slow(*args, **kwargs):
        for result in real(*args, **kwargs):
            started.append(result["act"])
            time.sleep(1.5)
            yield result

    monkeypatch.setattr(evaluate, "iter_rouge", slow)
    job = trained.submit(three_held, 3, 8, "none", api_name="/evaluate")
    deadline = time.monotonic() + 30
    while not started and time.monotonic() < deadline:
        time.sleep(0.05)
    job.cancel()  # what picking another prompt does (its .change cancels the evaluation)
    time.sleep(5.0)  # the whole evaluation would have started all three acts by now
    assert started == ["Poet"]


@pytest.mark.timeout(30)
def test_a_stopped_evaluation_does_not_wait_for_the_gpu_call_to_close(monkeypatch):
    # On ZeroGPU, closing the GPU call's generator waits for the worker's next item (a whole act);
    # Gradio closes ours on its event loop, so the close must not wait there.
    closed = threading.Event()

    class SlowToClose:
        def __iter__(self):
            return self

        def __next__(self):
            return "perplexity", {"base": None, "tuned": None}

        def close(self):
            time.sleep(2.0)
            closed.set()

    monkeypatch.setattr("ui.gpu_calls.EVALUATE_ON_GPU", lambda *args: SlowToClose())
    monkeypatch.setattr("ui.tabs.evaluate.held_out_for", lambda soft, rows, dataset: ["an act"])
    ctx = types.SimpleNamespace(base=lambda: None, rows=lambda: (), dataset="acts.csv")
    scores = held_out_scores(ctx, None, 1, 8, lambda *args, **kwargs: None)
    assert next(scores)[1] == ["an act"]
    started = time.perf_counter()
    scores.close()
    assert time.perf_counter() - started < 1.0 and not closed.is_set()
    assert closed.wait(10)  # and the GPU call is closed all the same


def test_picking_another_prompt_in_evaluate_empties_every_result():
    demo = build_app(model="/no/such/model", dataset="/no/such/acts.csv")
    clear = [f for f in demo.fns.values() if f.name == "no_evaluation"]
    assert len(clear) == 1 and len(clear[0].outputs) == 7  # the bars, summary, table, gains, nearest tokens
    ppl, rouge, summary, rows, gains, gains_text, nearest = no_evaluation()
    assert ppl is rouge is gains is None and summary == gains_text == "" and rows.empty and nearest.empty


def test_evaluate_with_no_rouge_acts_scores_perplexity_only(trained):
    ppl, rouge, summary, rows = trained.predict(SESSION_RUN, 0, 8, "none", api_name="/evaluate")
    assert len(ppl["data"]) == 2 and rouge is None and "skipped" in summary  # an empty chart, as on a new page


def test_evaluate_without_a_run_asks_for_one(client):
    with pytest.raises(AppError, match="train or pick an adapter first"):
        client.predict(SESSION_RUN, 1, 8, "none", api_name="/evaluate")


def test_token_gains_score_every_token_of_the_prompt_but_the_first(trained):
    trained.predict("Rapper", api_name="/select_act")
    pairs, summary = trained.predict(SESSION_RUN, api_name="/token_gains")
    n_tokens = len(make_tokenizer()(ACTS["Rapper"], add_special_tokens=False)["input_ids"])
    assert len(pairs) == n_tokens - 1
    tokens = [p["token"] for p in pairs]
    scores = [p["class_or_confidence"] for p in pairs]
    assert ACTS["Rapper"].endswith("".join(tokens))  # the text, less its first token
    assert all(-1 <= s <= 1 for s in scores) and any(s != 0 for s in scores)
    assert "**Rapper**" in summary and "nats" in summary


def test_nearest_tokens_have_a_row_per_virtual_token(trained):
    rows = table(trained.predict(SESSION_RUN, api_name="/nearest_tokens"))
    assert [r["virtual token"] for r in rows] == list(range(TRAIN["tokens"]))
    similarity = float(rows[0]["nearest 1"].rsplit(" ", 1)[1])
    assert -1 <= similarity <= 1 and len(rows[0]) == 6


# --- Sweep and history -----------------------------------------------------------------


def test_sweep_streams_every_cell_and_ends_with_a_table_and_a_csv(client):
    updates = list(client.submit(*sweep_args(), api_name="/sweep"))
    assert len(updates) >= 8  # start, 3 + 3 steps, epoch ends, results
    first_cell_done = next(i for i, u in enumerate(updates) if len(series(u[0])["3×1 train"]) > 0)
    assert len(series(updates[first_cell_done - 1][0])["2×1 train"]) == 3  # cell one's curve was drawn first
    plot, progress, results, csv_path, context = updates[-1]
    curves = series(plot)
    assert len(curves["2×1 train"]) == len(curves["3×1 train"]) == 3
    # one epoch, one held-out loss: drawn flat from step 0 (a lone point would be invisible)
    assert [x for x, _ in curves["2×1 held-out"]] == [0, 3] and len(curves["base held-out"]) == 2
    assert progress.startswith("done: 2 of 2 cells")
    rows = table(results)
    assert [(r["cell"], r["tokens"], r["epochs"]) for r in rows] == [("2×1", 2, 1), ("3×1", 3, 1)]
    assert all(float(r["held-out ppl tuned"]) > 1 for r in rows)
    with open(csv_path, newline="") as f:
        written = list(csv.DictReader(f))
    assert [r["label"] for r in written] == ["2×1", "3×1"] and all(float(r["seconds"]) > 0 for r in written)


def test_history_grows_with_each_run_and_exports_them_all(client):
    client.predict(*train_args(), api_name="/train")
    runs, _ = client.predict(api_name="/history")
    assert [r["run"].split(" · ")[0] for r in table(runs)] == ["#1 all acts 5×2"]
    client.predict(*sweep_args(grid="4x1"), api_name="/sweep")
    runs, plot = client.predict(api_name="/history")
    labels = [r["run"] for r in table(runs)]
    assert [name.split(" · ")[0] for name in labels] == ["#1 all acts 5×2", "#2 sweep 4×1"]
    curves = series(plot)
    assert len(curves[labels[0]]) == 6 and len(curves[labels[1]]) == 3
    with open(client.predict(api_name="/export_history"), newline="") as f:
        written = list(csv.DictReader(f))
    assert {r["run"] for r in written} == set(labels)
    held = [r for r in written if r["held_out_loss"]]
    assert [(r["run"], r["step"], r["epoch"]) for r in held] == [(labels[0], "3", "1"), (labels[0], "6", "2"),
                                                                   (labels[1], "3", "1")]


def test_export_without_runs_says_so(client):
    with pytest.raises(AppError, match="no runs yet"):
        client.predict(api_name="/export_history")


@pytest.mark.parametrize("grid, message", [
    ("5x5, twenty", "grid cell 'twenty' is not TOKENSxEPOCHS"),
    ("", "the grid is empty"),
    ("0x1", "grid cell 0×1: Virtual tokens must be from 1 to 100"),
    ("5x51", "grid cell 5×51: Epochs must be from 1 to 50"),
    ("5x4", "grid cell 5×4 asks for 4 epochs; this server allows at most 3"),
    ("5x3, 5x3", "this sweep needs 18 steps; this server allows 10"),
    (";" * 300, "at most 200"),
])
def test_a_bad_grid_gets_one_sentence(capped_server, grid, message):
    client = Client(capped_server, verbose=False)
    with pytest.raises(AppError, match=message):
        client.predict(*sweep_args(grid=grid), api_name="/sweep")
    client.close()


@pytest.fixture(scope="module")
def capped_server(tmp_path_factory, slow_setup):
    demo, url = serve(tmp_path_factory.mktemp("capped"), max_epochs=3, max_steps=10)
    yield url
    demo.close()


# --- in a browser: the charts draw series that appear after the first update ---------


def test_sweep_and_history_charts_draw_every_series_in_a_browser(server):
    """Gradio 6's LinePlot keeps its first legend unless the colour map changes after the data (charts.colours)."""
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    need(sync_api is not None and chromium.exists(), "needs Playwright and /usr/bin/chromium")

    def drawn(page, chart: str) -> int:  # one path per series; a drawn one has segments
        paths = page.locator(f"{chart} svg .mark-line path").evaluate_all("ps => ps.map(p => p.getAttribute('d') || '')")
        return sum("L" in d for d in paths)

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.set_default_timeout(30_000)
        page.goto(server[0])
        page.get_by_role("tab", name="Sweep & history").click()
        page.get_by_label("Grid (tokens x epochs, comma-separated)").fill("2x2, 3x2")
        for runs in (2, 4):
            page.get_by_role("button", name="Run sweep").click()
            sync_api.expect(page.locator("#sweep-progress")).to_contain_text("done: 2 of 2 cells", timeout=60_000)
            sync_api.expect(page.locator("#history-plot").get_by_text(f"#{runs} sweep 3×2")).to_be_visible(
                timeout=30_000)  # the legend names every run
            page.wait_for_timeout(500)  # let the last data update land
            assert drawn(page, "#sweep-plot") == 5  # base held-out, and train and held-out per cell
            assert drawn(page, "#history-plot") == runs
        browser.close()


def test_a_field_changed_while_the_sweep_estimate_is_being_worked_out_still_counts(server, monkeypatch):
    chromium = Path("/usr/bin/chromium")
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    need(sync_api is not None and chromium.exists(), "needs Playwright and /usr/bin/chromium")
    plan = sweep_plan

    def slow_plan(*args):  # a large dataset's token count: the next field changes before the estimate is back
        time.sleep(1.0)
        return plan(*args)

    monkeypatch.setattr("ui.tabs.sweep.sweep_plan", slow_plan)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.goto(server[0])
        page.get_by_role("tab", name="Sweep & history").click()
        page.get_by_label("Grid (tokens x epochs, comma-separated)").fill("2x2")
        page.get_by_label("Held-out acts for ROUGE-L (0: skip)").last.fill("1")
        estimate = page.locator("#sweep-estimate")
        sync_api.expect(estimate).to_contain_text("1 cell (2×2)", timeout=20_000)
        sync_api.expect(estimate).to_contain_text("then ROUGE-L generation for 1 held-out act", timeout=20_000)
        browser.close()


def _wiring():
    demo = build_app(model="/no/such/model", dataset="/no/such/acts.csv")
    return demo, {d["id"]: d for d in demo.config["dependencies"]}


def test_another_prompt_in_a_compare_column_stops_the_generation_streaming_into_it():
    demo, deps = _wiring()
    (generating,) = [i for i, f in demo.fns.items() if f.name == "generate"]
    relabels = [deps[i]["targets"] for i, f in demo.fns.items()
                if f.name in ("column_label", "third_column", "written_column")]
    cancels = [d["targets"] for d in deps.values() if d["cancels"] == [generating]]
    assert len(relabels) == 3 and sorted(cancels) == sorted(relabels)  # both dropdowns' and the written choice's changes


def test_a_reattached_training_offers_its_run_to_continue_when_it_ends():
    demo, deps = _wiring()
    (reattached,) = [i for i, f in demo.fns.items() if f.name == "reattach"]
    assert any(f.name == "resume_choices" and deps[i]["trigger_after"] == reattached for i, f in demo.fns.items())


def test_visiting_the_adapters_tab_keeps_the_picked_adapter():
    demo, deps = _wiring()
    (listing,) = [f for f in demo.fns.values() if f.name == "listing_update" and f.api_name == "list_adapters"]
    assert listing.inputs == [listing.outputs[1]]  # the picked dropdown goes in and comes back (kept if still listed)
