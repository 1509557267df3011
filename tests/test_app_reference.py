"""The app trains the reference adapters by itself, lets visitors go first, and opens Compare on them."""

from __future__ import annotations

import time

import pytest
from gradio_client.exceptions import AppError

from app_fixtures import Client, serve
from tuning import reference

TRAIN = [5, 2, 0.1, 4, "random", "all training acts", [], 0, "a new prompt"]


def losses(plot) -> list[float]:
    plot = plot.get("value", plot)
    return [row[1] for row in plot["data"] if row[2] == "train" and row[1] is not None]


@pytest.mark.slow  # serves the app
@pytest.mark.timeout(240)
def test_references_train_in_the_background_while_a_visitor_trains_first(tmp_path):
    demo, url = serve(tmp_path, reference_adapters=True)
    ctx_model, ctx_dataset = str(tmp_path / "tiny-gpt2"), str(tmp_path / "acts.csv")
    client = Client(url, verbose=False)
    assert reference.missing(tmp_path / "adapters", ctx_model, ctx_dataset) == list(reference.GRID)
    during, *_ = client.predict(*TRAIN, api_name="/train")  # started while the references train
    deadline = time.monotonic() + 120
    while reference.missing(tmp_path / "adapters", ctx_model, ctx_dataset) and time.monotonic() < deadline:
        time.sleep(1)
    try:
        assert not reference.missing(tmp_path / "adapters", ctx_model, ctx_dataset), "no references after 2 minutes"
        idle, *_ = client.predict(*TRAIN, api_name="/train")  # the server is idle now
        assert losses(during) == pytest.approx(losses(idle), abs=1e-6)  # the visitor lost nothing to sharing
        names = [reference.name(ctx_model, ctx_dataset, *cell) for cell in reference.GRID]
        a, b = Client(url, verbose=False).predict(None, None, api_name="/compare_choices")
        assert [a["value"], b["value"]] == names  # Compare opens on the seed's two runs for a new visitor
        a, b = client.predict(None, None, api_name="/compare_choices")
        assert a["value"].startswith("#2 ") and b["value"] == names[1]  # and on a visitor's own run beside 20x10
        with pytest.raises(AppError, match="cannot be deleted here"):
            client.predict(names[0], api_name="/delete_adapter")
        with pytest.raises(AppError, match="kept for the reference adapters"):
            client.predict(names[0], None, api_name="/save_adapter")
    finally:
        demo.close()
