"""A served app on a tiny GPT-2 saved to disk and a 12-act CSV, for the client and browser tests.

Also what every test of a served app needs to wait without hanging: a Client whose `predict`
gives up after WAIT_S seconds (gradio_client's waits forever), a bounded wait for a streaming
job's first updates, and a log of the training steps the app runs, by run.
"""

from __future__ import annotations

import csv
import os
import socket
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio_client
import pytest
import torch

import tuning.train
from conftest import make_base, make_tokenizer

WAIT_S = 120  # the longest one call to a served app may take in a test; the slowest takes a few seconds

ACTS = {
    "Rapper": "I want you to act as a rapper. You will come up with powerful and meaningful lyrics and beats.",
    "Linux Terminal": "I want you to act as a linux terminal. I will type commands and you will reply with output.",
    "Travel Guide": "I want you to act as a travel guide. I will write you my location and you will suggest places.",
    "Poet": "I want you to act as a poet. You will create poems that evoke emotions and stir the soul.",
    "Storyteller": "I want you to act as a storyteller. You will come up with entertaining stories for the audience.",
    "Chef": "I want you to act as a chef. You will suggest recipes with the ingredients I have at home.",
    "Math Teacher": "I want you to act as a math teacher. I will give you equations and you will explain them.",
    "Motivational Coach": "I want you to act as a motivational coach. You will help me reach my goals every day.",
    "Comedian": "I want you to act as a comedian. You will tell funny stories about current events.",
    "Historian": "I want you to act as a historian. You will research and analyze events of the past.",
    "Debater": "I want you to act as a debater. You will argue both sides of a topic with evidence.",
    "Doctor": "I want you to act as a doctor. You will suggest treatments for the symptoms I describe.",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_assets(folder: Path) -> tuple[str, str]:
    """(model folder, dataset csv) under `folder`: a tiny random GPT-2 and the acts above."""
    tokenizer = make_tokenizer()
    base = make_base(tokenizer)
    model_dir = folder / "tiny-gpt2"
    base.model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    dataset = folder / "acts.csv"
    with open(dataset, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "prompt"])
        writer.writerows(ACTS.items())
    return str(model_dir), str(dataset)


def serve(folder: Path, **kwargs):
    """Launch build_app (which configures its own queue) on a free port; returns (demo, url)."""
    from ui.layout import build_app

    model, dataset = write_assets(folder)
    demo = build_app(model=model, dataset=dataset, adapters_dir=folder / "adapters", **kwargs)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    return demo, demo.local_url


@pytest.fixture(scope="module")
def served(tmp_path_factory, slow_setup):
    demo, url = serve(tmp_path_factory.mktemp("app"))
    yield url
    demo.close()


class Client(gradio_client.Client):
    """gradio_client's Client, but `predict` fails after `timeout` seconds instead of waiting forever."""

    def predict(self, *args, api_name: str | None = None, timeout: float = WAIT_S, **kwargs):
        job = self.submit(*args, api_name=api_name, **kwargs)
        try:
            return job.result(timeout=timeout)
        except TimeoutError:  # concurrent.futures' TimeoutError since Python 3.11
            job.cancel()
            raise TimeoutError(f"{api_name} gave no answer within {timeout} s") from None


def wait_for_updates(job, n: int, timeout: float = WAIT_S) -> None:
    """Block until a streaming `job` has sent `n` updates; fail the test if it ends or stalls first.

    Iterating the job instead would wait forever for an update that never comes.
    """
    deadline = time.monotonic() + timeout
    while len(job.outputs()) < n:
        if job.done():
            pytest.fail(f"the job ended after {len(job.outputs())} of the {n} updates waited for: {job.exception()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the job sent {len(job.outputs())} of {n} updates in {timeout} s")
        time.sleep(0.01)


def log_steps(monkeypatch, seconds: float = 0.2) -> list[torch.nn.Parameter]:
    """Slow every training step of the app in this process to at least `seconds`, and log it.

    Returns the log: the prompt Parameter each step trained, in order. A run trains one
    Parameter throughout, so `steps_of(log, log[0])` counts the first run's steps whatever else
    trains at the same time.
    """
    log: list[torch.nn.Parameter] = []
    real = tuning.train.token_losses

    def logged(base, prompt, rows):
        log.append(prompt)
        time.sleep(seconds)  # so a run that was not stopped goes on long enough to be seen
        return real(base, prompt, rows)

    monkeypatch.setattr(tuning.train, "token_losses", logged)
    return log


def steps_of(log: list, prompt: torch.nn.Parameter) -> int:
    """How many steps in `log` trained `prompt` (by identity: tensors compare element-wise)."""
    return sum(p is prompt for p in log)
