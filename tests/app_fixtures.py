"""A served app on a tiny GPT-2 saved to disk and a 12-act CSV, for the client and browser tests."""

from __future__ import annotations

import csv
import os
import socket
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest

from conftest import make_base, make_tokenizer

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
    import app

    model, dataset = write_assets(folder)
    demo = app.build_app(model=model, dataset=dataset, adapters_dir=folder / "adapters", **kwargs)
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True)
    return demo, demo.local_url


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    demo, url = serve(tmp_path_factory.mktemp("app"))
    yield url
    demo.close()
