"""The documented API, also served as MCP tools by `python app.py --mcp` (or GRADIO_MCP_SERVER=true): seven functions, no UI plumbing."""

from __future__ import annotations

import httpx
import pytest

from app_fixtures import ACTS, Client, free_port, write_assets

TOOLS = {"list_acts", "list_saved_adapters", "compare_texts", "train_adapter", "training_status", "stop_training_job",
         "evaluate_adapter"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, slow_setup):
    from ui.layout import build_app

    folder = tmp_path_factory.mktemp("api")
    model, dataset = write_assets(folder)
    demo = build_app(model=model, dataset=dataset, adapters_dir=folder / "adapters")
    demo.launch(prevent_thread_lock=True, server_name="127.0.0.1", server_port=free_port(), quiet=True,
                mcp_server=True)
    yield demo.local_url
    demo.close()


def test_the_mcp_schema_lists_the_seven_tools_with_their_docs(server):
    tools = {t["name"]: t for t in httpx.get(server + "gradio_api/mcp/schema", timeout=30).json()}
    assert set(tools) == TOOLS  # the tabs' events (charts, dropdowns) stay out
    train = tools["train_adapter"]
    assert train["description"].startswith("Start prompt-tuning the base model; returns at once with a job id")
    assert train["inputSchema"]["properties"]["num_virtual_tokens"]["description"] == "the soft prompt's length, 1-100"
    assert tools["training_status"]["inputSchema"]["properties"]["job"]["description"] == "the id train_adapter returned"


def test_the_documented_api_is_the_same_seven(server):
    endpoints = set(Client(server, verbose=False).view_api(return_format="dict", print_info=False)["named_endpoints"])
    assert endpoints == {"/" + t for t in TOOLS}


def test_train_then_list_compare_and_evaluate_through_the_api(server):
    client = Client(server, verbose=False)
    acts = client.predict("", api_name="/list_acts")
    assert len(acts) == 12 and {"act": "Rapper", "words": len(ACTS["Rapper"].split())} in acts
    started = client.predict("", 3, 1, 0.1, "api-run", api_name="/train_adapter")
    assert started["status"] in ("waiting", "training") and started["steps"] == 3 and started["job"]
    done = client.predict(started["job"], 30, api_name="/training_status")
    while done["status"] in ("waiting", "training"):  # each call waits up to 30 s for the end
        done = client.predict(started["job"], 30, api_name="/training_status")
    assert done["status"] == "done" and done["adapter"] == "api-run" and done["step"] == done["steps"] == 3
    assert done["held_out_perplexity"] > 1 and done["base_held_out_perplexity"] > 1
    assert [a["name"] for a in client.predict(api_name="/list_saved_adapters")] == ["api-run"]
    texts = client.predict("I want you to act as a poet.", "api-run", "", 6, api_name="/compare_texts")
    assert set(texts) == {"base", "api-run"} and texts["base"] != texts["api-run"]
    both = client.predict("I want you to act as a poet.", "api-run", "", 6, 2, api_name="/compare_texts")
    assert set(both) == {"base", "api-run", "written", "written_prompt"} and both["written"] != both["base"]
    assert {k: both[k] for k in texts} == texts  # one more row in the batch: the others' texts are theirs alone
    assert both["written_prompt"]["label"] == "2 examples" and len(both["written_prompt"]["examples"]) == 2
    scores = client.predict("api-run", 1, api_name="/evaluate_adapter")
    assert scores["held_out_acts"] == 1 and scores["perplexity"]["tuned"] == pytest.approx(done["held_out_perplexity"])
    assert len(scores["acts_scored"]) == 1 and 0 <= scores["rouge_l"]["tuned"] <= 1
    with_written = client.predict("api-run", 1, 1, api_name="/evaluate_adapter")
    assert set(with_written["perplexity"]) == set(with_written["rouge_l"]) == {"base", "written", "tuned"}
    assert with_written["perplexity"]["tuned"] == pytest.approx(scores["perplexity"]["tuned"])  # the same tokens
    assert with_written["written_prompt"]["label"] == "1 example"


@pytest.mark.parametrize("endpoint, args, message", [
    ("/train_adapter", ("", 3, 1, 0.1, "reference-mine"), "kept for the reference adapters"),
    ("/compare_texts", ("hi", "x", "x", 6), "is named twice"),
    ("/compare_texts", ("hi", "base", "", 6), "rename the adapter called 'base'"),
    ("/compare_texts", ("hi", "x", "", 1024), "max_new_tokens must be a whole number from 1 to 512"),
    ("/compare_texts", ("hi", "x", "", 6, 3), "shots must be one of 0, 1, 2, 4 (0: no written prompt), got 3"),
    ("/compare_texts", ("hi", "written", "", 6, 2), "the written prompt's text 'written'; rename the adapter"),
    ("/evaluate_adapter", ("x", 1, 8), "shots must be one of 0, 1, 2, 4"),
    ("/evaluate_adapter", ("x", 2.5), "rouge_acts must be a whole number from 0 to 20, got 2.5"),
    ("/training_status", ("no-such-job", 0), "no training 'no-such-job' on this server"),
    ("/training_status", ("x", 31), "wait_seconds must be from 0 to 30"),
    ("/stop_training_job", ("no-such-job",), "no training 'no-such-job' on this server"),
])
def test_bad_api_arguments_are_refused_in_one_sentence_before_any_work(server, endpoint, args, message, monkeypatch):
    from gradio_client.exceptions import AppError

    # Every way to work is made to fail loudly: loading the model, each GPU call, a training.
    work = []

    def no_work(name):
        def refused(*args, **kwargs):
            work.append(name)
            raise AssertionError(f"{name} ran before the arguments were checked")
        return refused

    for where in ("ui.session.load_base", "ui.api.training_job", "ui.gpu_calls.TRAIN_ON_GPU",
                  "ui.gpu_calls.SWEEP_ON_GPU", "ui.gpu_calls.GENERATE_ON_GPU", "ui.gpu_calls.EVALUATE_ON_GPU"):
        monkeypatch.setattr(where, no_work(where.rsplit(".", 1)[1]))
    with pytest.raises(AppError) as error:
        Client(server, verbose=False).predict(*args, api_name=endpoint)
    assert work == []
    assert message in str(error.value) and "Traceback" not in str(error.value)

