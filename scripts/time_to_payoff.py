"""How long a visitor waits for the payoff: the page opened right after the app starts, to three answers.

Starts `python app.py` on a model, a dataset and an adapters folder that holds the reference
adapters (as a Space with committed references has them), opens the page in Debian's chromium
as soon as it is served, goes to Compare (which opens on a reference adapter), picks the other
reference as the second prompt and presses Generate on the default input. The answer counts
as arrived when all three columns have text that has stopped changing. The model's load is
included: the app loads it in the background from its start.

    python scripts/time_to_payoff.py --model SmolLM2-135M-Instruct.Q4_1.gguf --dataset prompts.csv \\
        --adapters-dir adapters          # after `python -m tuning reference` with the same model and dataset

Prints the CPU, then the seconds from process start to the page, from the page to the answer,
and in all; `--json PATH` also writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # served.py beside this file, however it is loaded
from served import free_port, wait_for_page  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]
COLUMNS = ("#base-output textarea", "#tuned-output textarea", "#tuned-output-b textarea")


def cpu() -> str:
    sys.path.insert(0, str(REPO))
    from tuning.hardware import cpu_kind, cpu_model

    return f"{cpu_model()} ({cpu_kind()}), {os.cpu_count()} cores"


def settled(page, timeout_s: float, quiet_s: float = 1.5) -> list[str]:
    """The three columns once all have text and none has changed for `quiet_s` seconds."""
    deadline, last, since = time.monotonic() + timeout_s, None, time.monotonic()
    while time.monotonic() < deadline:
        texts = [page.locator(c).input_value() for c in COLUMNS]
        if texts != last:
            last, since = texts, time.monotonic()
        elif all(t.strip() for t in texts) and time.monotonic() - since >= quiet_s:
            return texts
        time.sleep(0.1)
    raise TimeoutError(f"no three settled answers after {timeout_s:.0f} s: {last}")


def measure(args: argparse.Namespace) -> dict:
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    t0 = time.monotonic()
    process = subprocess.Popen([sys.executable, str(REPO / "app.py"), "--model", args.model, "--dataset", args.dataset,
                                "--adapters-dir", args.adapters_dir, "--port", str(port)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, process, args.timeout - (time.monotonic() - t0), poll_s=0.1)
        expect.set_options(timeout=args.timeout * 1000)
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(url)
            page_at = time.monotonic()
            page.get_by_role("tab", name="Compare", exact=True).click()
            first = page.locator("#compare-adapter input")
            expect(first).to_have_value(re.compile(r"^reference-"))
            other = "reference-20x10-" if first.input_value().startswith("reference-5x5-") else "reference-5x5-"
            page.locator("#compare-adapter-b input").click()
            page.get_by_role("option", name=re.compile("^" + other)).click()
            page.get_by_role("button", name="Generate").click()
            texts = settled(page, args.timeout)
            done_at = time.monotonic()
            browser.close()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    return {"cpu": cpu(), "model": args.model, "seconds_to_page": round(page_at - t0, 1),
            "page_to_answer": round(done_at - page_at, 1), "total": round(done_at - t0, 1),
            "answers": [t[:160] for t in texts]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--adapters-dir", required=True, help="a folder holding the reference adapters of this model")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for each step")
    parser.add_argument("--json", dest="json_out")
    args = parser.parse_args(argv)
    result = measure(args)
    print(f"CPU: {result['cpu']}")
    print(f"page after {result['seconds_to_page']} s; three answers {result['page_to_answer']} s after the page "
          f"opened; {result['total']} s in all")
    for label, text in zip(("base", "first prompt", "second prompt"), result["answers"]):
        print(f"  {label}: {text}")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
