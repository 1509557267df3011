"""End to end in a real browser: pick an act, train, watch the chart, compare base and tuned.

Uses the system Chromium (/usr/bin/chromium) through Python Playwright; never downloads a browser.
Skipped without them, failed under CI (conftest.need).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from app_fixtures import log_steps, serve, steps_of
from conftest import need

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).parent / "artifacts"  # its .gitignore keeps the screenshots out of git
GRACE = 1.0  # seconds a closed tab's run goes on (a reload re-attaches meanwhile); the app's default is 10

try:
    import playwright.sync_api as playwright
except ImportError:
    playwright = None

pytestmark = pytest.mark.timeout(600)  # a browser start and a few trainings, on 2 shared cores


@pytest.fixture
def page(tmp_path, slow_setup):
    need(playwright is not None, "needs Python Playwright (pip install -r requirements-dev.txt)")
    need(CHROMIUM.exists(), f"needs {CHROMIUM} (Debian: apt-get install chromium)")
    demo, url = serve(tmp_path, reattach_grace=GRACE)
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
        page.set_default_timeout(30_000)
        page.goto(url)
        yield page
        browser.close()
    demo.close()


def test_pick_train_watch_compare(page):
    expect = playwright.expect
    # Dataset: pick the rapper; its prompt and the Compare input follow.
    page.get_by_text("Rapper", exact=True).first.click()
    expect(page.get_by_label("Whole prompt")).to_have_value(re.compile("^I want you to act as a rapper"))

    # Train: the small preset, then watch the progress line reach the end and the chart draw.
    page.get_by_role("tab", name="Train").click()
    expect(page.get_by_text("Current act: Rapper")).to_be_visible()
    # a new page keeps its empty state (the re-attach on load, with nothing to follow, once blanked it)
    expect(page.locator("#progress")).to_contain_text("not started: set the prompt's size and press Train")
    page.get_by_text("5 tokens × 5 epochs").click()
    # the preset fills the sliders through a server round trip: wait for it before training
    expect(page.get_by_label("number input for Epochs")).to_have_value("5")
    page.get_by_role("button", name="Train", exact=True).click()
    expect(page.locator("#progress")).to_contain_text("step 15 / 15 · done", timeout=60_000)
    lines = page.locator("#loss-plot svg .mark-line path")  # one path per series; a drawn one has segments
    expect(lines).to_have_count(3)
    drawn = [d for d in lines.evaluate_all("ps => ps.map(p => p.getAttribute('d') || '')") if "L" in d]
    assert len(drawn) == 3  # train, held-out (5 epochs), base held-out
    expect(page.get_by_label("Log")).to_have_value(re.compile("done: 15 steps"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "browser-train.png"), full_page=True)

    # Compare: the session's run is offered; both sides stream text.
    page.get_by_role("tab", name="Compare").click()
    expect(page.locator("#compare-input textarea")).to_have_value(re.compile(r"^I want you to act as a rapper\.$", re.I))
    expect(page.locator("#compare-adapter input")).to_have_value(re.compile("^#1 all acts 5×5"))  # the run just trained
    page.get_by_role("button", name="Generate").click()
    for box in ("#base-output textarea", "#tuned-output textarea"):
        expect(page.locator(box)).not_to_have_value("", timeout=30_000)
    page.wait_for_timeout(1000)  # let the stream finish before the picture
    expect(page.locator("#tuned-output-b")).to_be_hidden()  # no second prompt: no third column (nor its spinner)
    page.screenshot(path=str(ARTIFACTS / "browser.png"), full_page=True)
    page.locator("#compare-adapter-b input").click()
    page.get_by_role("option", name=re.compile("^#1 all acts 5×5")).click()
    expect(page.locator("#tuned-output-b")).to_be_visible()
    expect(page.locator("#tuned-output-b")).to_contain_text("Tuned: #1 all acts 5×5")

    # Evaluate: perplexity first, then ROUGE-L act by act; both charts end with a bar per model.
    page.get_by_role("tab", name="Evaluate").click()
    expect(page.locator("#eval-adapter input")).to_have_value(re.compile("^#1 all acts 5×5"))
    page.get_by_role("button", name="Evaluate").click()
    expect(page.locator("#eval-summary")).to_contain_text("ROUGE-L of greedy continuations", timeout=60_000)
    # a chart whose first update had no rows kept a broken scale: one '0' tick, no legend, bars of the full height
    expect(page.locator("#rouge-plot svg .mark-rect path")).to_have_count(2)
    texts = page.locator("#rouge-plot svg text").evaluate_all("ts => ts.map(t => t.textContent)")
    assert {"0.0", "1.0"} <= set(texts), texts  # y_lim [0, 1]
    assert {"base", "tuned"} <= set(texts), texts  # the legend
    page.screenshot(path=str(ARTIFACTS / "browser-evaluate.png"), full_page=True)


def test_closing_the_tab_stops_its_training(page, monkeypatch):
    """A closed tab must not hold the one training slot: its run stops after the grace, the next user's starts."""
    from tuning.jobs import Jobs

    steps = log_steps(monkeypatch, seconds=0.2)
    jobs = []
    real_start = Jobs.start
    monkeypatch.setattr(Jobs, "start", lambda self, job: jobs.append(job) or real_start(self, job))
    page.get_by_role("tab", name="Train").click()
    for name, value in (("Virtual tokens", "100"), ("Epochs", "50"), ("Batch size", "1")):  # 550 slow steps
        page.get_by_label(f"number input for {name}").fill(value)
        page.get_by_label(f"number input for {name}").press("Enter")
    page.get_by_role("button", name="Train", exact=True).click()
    playwright.expect(page.locator("#progress")).to_contain_text(re.compile(r"step [1-9][\d,]* / 550"))
    print("first tab:", page.locator("#progress").inner_text())
    run = steps[0]
    url = page.url
    # another visitor: a new context is another browser (a new tab of this one would re-attach to the run)
    other = page.context.browser.new_context(viewport={"width": 1280, "height": 1000}).new_page()
    (training,) = jobs  # the app's job that runs the first tab's training, in this process
    closed = time.monotonic()
    page.close()
    assert training.join(timeout=GRACE + 30), "the closed tab's run still trains 30 s after the grace"
    assert time.monotonic() - closed > GRACE * 0.9  # it ran on for the grace (a reload could re-attach)
    at_stop = steps_of(steps, run)
    started = time.monotonic()
    other.goto(url)
    other.get_by_role("tab", name="Train").click()
    other.get_by_text("5 tokens × 5 epochs").click()
    playwright.expect(other.get_by_label("number input for Epochs")).to_have_value("5")
    other.get_by_role("button", name="Train", exact=True).click()
    playwright.expect(other.locator("#progress")).to_contain_text("step 15 / 15 · done", timeout=30_000)
    print("second visitor done after", round(time.monotonic() - started, 1), "s")
    assert steps_of(steps, run) == at_stop  # stopped for good, not paused while the other trained


def test_a_search_typed_while_the_page_loads_keeps_its_rows(page, monkeypatch):
    """The first load may download the dataset; a search typed meanwhile was overwritten by the whole table."""
    from tuning.data import source_note

    real = source_note
    monkeypatch.setattr("ui.tabs.dataset.source_note", lambda *a: time.sleep(2) or real(*a))  # a slow first load
    page.reload()
    page.get_by_label("Search acts").fill("terminal")
    visible = lambda name: page.get_by_text(name, exact=True).locator("visible=true")  # noqa: E731
    playwright.expect(visible("Linux Terminal")).to_have_count(1)
    page.wait_for_timeout(4000)  # the slow load has answered by now
    playwright.expect(visible("Linux Terminal")).to_have_count(1)
    playwright.expect(visible("Rapper")).to_have_count(0)
