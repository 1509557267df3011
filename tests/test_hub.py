"""Hub push and pull, offline: the exact upload at the HfApi boundary, the token kept out of sight, pulls checked like uploads."""

from __future__ import annotations

import dataclasses
import json
import logging
import secrets
import shutil
import time
from pathlib import Path

import huggingface_hub
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import save_file

from conftest import make_base
from test_report import SHORT, trained_soft
from tuning import adapters, hub
from tuning.adapters import AdapterError
from tuning.cli import main
from tuning.data import load_rows
from tuning.hub import HubError

TOKEN = "hf_" + secrets.token_hex(16)  # a fresh value no file or log could hold by chance
PUSHED = {"adapter_config.json", "adapter_model.safetensors", "tuning_meta.json", "tuning_optimizer.safetensors",
          "README.md", "loss.png", "report.html"}


class FakeHfApi:
    """Stands in for huggingface_hub.HfApi: records each call and copies the folder as it was at upload time."""

    calls: list[tuple[str, dict]] = []
    keep: Path | None = None  # where upload_folder copies what it was given

    def __init__(self, token=None, **kwargs):
        FakeHfApi.calls.append(("init", {"token": token}))

    def create_repo(self, repo_id, **kwargs):
        FakeHfApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, **kwargs):
        folder = Path(kwargs["folder_path"])
        FakeHfApi.calls.append(("upload_folder", {**kwargs, "files": sorted(p.name for p in folder.iterdir())}))
        shutil.copytree(folder, FakeHfApi.keep)


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    FakeHfApi.calls, FakeHfApi.keep = [], tmp_path / "uploaded"
    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    return FakeHfApi


@pytest.fixture(scope="module")
def soft(base, tiny_csv):
    return trained_soft(base, tiny_csv)


@pytest.fixture
def root(soft, tmp_path):
    root = tmp_path / "adapters"
    adapters.save(soft, "poet", root)
    return root


def push(root, base, tiny_csv, **kwargs):
    return hub.push("poet", "someone/poet", TOKEN, root, base=base, rows=load_rows(str(tiny_csv)),
                    decoding=SHORT, samples=1, **kwargs)


def test_push_uploads_exactly_the_adapter_its_card_chart_and_report(fake_hub, root, base, tiny_csv):
    assert push(root, base, tiny_csv, private=True) == "https://huggingface.co/someone/poet"
    (_, init), (_, create), (_, upload) = fake_hub.calls
    assert init == {"token": TOKEN}
    assert create == {"repo_id": "someone/poet", "private": True, "exist_ok": True, "repo_type": "model"}
    assert upload["repo_id"] == "someone/poet" and set(upload["files"]) == PUSHED and len(upload["files"]) == 7
    for file in ("adapter_config.json", "adapter_model.safetensors", "tuning_meta.json"):
        assert (fake_hub.keep / file).read_bytes() == (root / "poet" / file).read_bytes()


def test_pushed_card_has_the_metadata_and_points_at_the_repo(fake_hub, root, base, tiny_csv):
    push(root, base, tiny_csv)
    assert fake_hub.calls[1][1]["private"] is False
    card = ModelCard.load(fake_hub.keep / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model == "tiny-gpt2"
    assert card.data.pipeline_tag == "text-generation" and set(card.data.tags) == {"prompt-tuning", "peft"}
    assert 'PeftModel.from_pretrained(base, "someone/poet")' in card.text and "](loss.png)" in card.text
    assert 'src="data:image/png;base64,' in (fake_hub.keep / "report.html").read_text(encoding="utf-8")


def test_what_push_uploads_loads_with_peft(fake_hub, root, base, tiny_csv, tokenizer, soft):
    from peft import PeftModel

    push(root, base, tiny_csv)
    model = PeftModel.from_pretrained(make_base(tokenizer).model, str(fake_hub.keep))
    assert torch.equal(model.prompt_encoder["default"].embedding.weight.detach(), soft.embeddings)


def test_the_token_appears_in_no_log_output_or_file(fake_hub, root, base, tiny_csv, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    push(root, base, tiny_csv)
    assert fake_hub.calls[0][1]["token"] == TOKEN  # it was there to leak
    captured = capsys.readouterr()
    assert TOKEN not in caplog.text and TOKEN not in captured.out + captured.err
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) >= 2 * len(PUSHED) - 3  # the adapter folder and the uploaded copy were scanned
    assert not [p for p in files if TOKEN.encode() in p.read_bytes()]


def test_a_failed_push_says_so_in_one_sentence_without_the_token(monkeypatch, root, base, tiny_csv):
    class Refusing(FakeHfApi):
        def create_repo(self, repo_id, **kwargs):
            raise RuntimeError(f"401 Unauthorized for token {TOKEN}\nmore details")

    monkeypatch.setattr(huggingface_hub, "HfApi", Refusing)
    with pytest.raises(HubError) as error:
        push(root, base, tiny_csv)
    assert str(error.value) == "could not push to someone/poet on the Hub: 401 Unauthorized for token ***"


@pytest.mark.parametrize("token", ["", None, "  "])
def test_push_without_a_token_is_refused_before_any_hub_call(fake_hub, root, base, tiny_csv, token):
    with pytest.raises(HubError, match="needs a Hugging Face token"):
        hub.push("poet", "someone/poet", token, root, base=base, rows=[])
    assert fake_hub.calls == []


def test_push_of_an_adapter_of_a_local_model_asks_for_its_hub_id(fake_hub, soft, base, tmp_path):
    adapters.save(dataclasses.replace(soft, base_model="/models/gpt2"), "local", tmp_path)
    with pytest.raises(HubError, match="local path /models/gpt2; name its Hub id"):
        hub.push("local", "someone/local", TOKEN, tmp_path, rows=[])
    assert fake_hub.calls == []


def test_push_of_a_local_copy_names_the_hub_model_in_every_uploaded_file(fake_hub, soft, base, tiny_csv, tmp_path):
    import json

    local = "/srv/models/gpt2"
    adapters.save(dataclasses.replace(soft, base_model=local, config=dataclasses.replace(soft.config, model=local)),
                  "poet", tmp_path)
    served = dataclasses.replace(base, model_id=local)  # the server loaded its model from that folder
    hub.push("poet", "someone/poet", TOKEN, tmp_path, base=served, rows=load_rows(str(tiny_csv)), decoding=SHORT,
             samples=1, base_model="openai-community/gpt2")
    up = fake_hub.keep
    assert json.loads((up / "adapter_config.json").read_text())["base_model_name_or_path"] == "openai-community/gpt2"
    record = json.loads((up / "tuning_meta.json").read_text())
    assert record["base_model"] == record["config"]["model"] == "openai-community/gpt2"
    assert not [f.name for f in up.iterdir() if local in f.read_text(errors="ignore")]  # this machine's path stays here
    assert json.loads((tmp_path / "poet" / "adapter_config.json").read_text())["base_model_name_or_path"] == local


@pytest.mark.parametrize("repo_id", ["no spaces/allowed", "a/b/c", "../x", ""])
def test_push_refuses_a_bad_repo_id(fake_hub, root, repo_id):
    with pytest.raises(HubError, match="is not a Hub repo id"):
        hub.push("poet", repo_id, TOKEN, root, rows=[])
    assert fake_hub.calls == []


# --- pull


@pytest.fixture
def repo(fake_hub, root, base, tiny_csv, tmp_path):
    """A local folder laid out as a pushed repo: what push uploaded."""
    push(root, base, tiny_csv)
    return fake_hub.keep


def test_pull_saves_under_a_free_name_and_fetches_only_adapter_files(repo, root, soft):
    (repo / "setup.py").write_text("raise SystemExit('never run, never copied')")
    first = hub.pull(str(repo), None, root, name="poet")  # "poet" is taken: nothing is overwritten
    second = hub.pull(str(repo), None, root, name="poet")
    assert (first.name, second.name) == ("poet-2", "poet-3")
    assert {p.name for p in first.iterdir()} == set(hub.PULL_FILES)
    pulled = adapters.load("poet-2", root)
    assert torch.equal(pulled.embeddings, soft.embeddings) and pulled.meta["history"] == soft.meta["history"]
    assert torch.equal(pulled.optimizer_state["exp_avg"], soft.optimizer_state["exp_avg"])


def test_a_web_servers_pull_never_reads_a_folder_on_the_server(repo, root, monkeypatch):
    asked = []
    monkeypatch.setattr(hub, "_download", lambda repo_id, *a: asked.append(repo_id) or (_ for _ in ()).throw(
        HubError(f"no repo {repo_id}")))
    with pytest.raises(HubError, match="is not a Hub repo id"):  # a path: refused as a repo id, the folder unread
        hub.pull(str(repo), None, root, local_ok=False)
    with pytest.raises(HubError, match="no repo someone/poet"):
        hub.pull("someone/poet", None, root, local_ok=False)  # an id is asked of the Hub, even if such a folder exists
    assert asked == ["someone/poet"] and [p.name for p in root.iterdir()] == ["poet"]


def test_an_empty_repo_box_is_a_repo_problem(root):
    with pytest.raises(HubError, match="is not a Hub repo id"):
        hub.pull("", None, root)


def test_pull_names_the_adapter_after_the_repo(repo, tmp_path):
    assert hub.pull(str(repo), None, tmp_path / "elsewhere").name == repo.name


def test_pull_refuses_reference_names(repo, root):
    with pytest.raises(HubError, match="kept for the reference adapters"):
        hub.pull(str(repo), None, root, name="reference-5x5-mine")


def no_unpickling(monkeypatch):
    import pickle

    def refuse(*args, **kwargs):
        pytest.fail("something was unpickled: a pulled adapter must never be")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)


def _pickle_only(folder):
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"\x80\x04cos\nsystem\n.")  # a pickle that would run os.system


def _lora(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "peft_type": "LORA"}))


def _remote_code(folder):
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "auto_mapping": {"x": "evil.Model"}}))


def _extra_tensor(folder):
    save_file({"prompt_embeddings": torch.zeros(4, 64), "evil": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))


@pytest.mark.parametrize("spoil", [_pickle_only, _lora, _remote_code, _extra_tensor])
def test_pull_refuses_what_an_upload_refuses_with_the_same_message(spoil, repo, root, monkeypatch):
    spoil(repo)
    with pytest.raises(AdapterError) as upload_error:
        adapters.load_folder(repo)  # what the app's upload runs on an unzipped folder
    no_unpickling(monkeypatch)
    before = sorted(p.name for p in root.iterdir())
    with pytest.raises(AdapterError) as pull_error:
        hub.pull(str(repo), None, root, name="hostile")
    assert str(pull_error.value) == str(upload_error.value)
    assert sorted(p.name for p in root.iterdir()) == before


def test_pull_refuses_oversized_files_before_reading_them(repo, root, monkeypatch):
    with open(repo / "adapter_model.safetensors", "r+b") as f:
        f.truncate(hub.MAX_PULL_BYTES + 1)  # sparse: as big as it says, without writing 50 MB
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: pytest.fail("an oversized file was copied"))
    with pytest.raises(AdapterError, match="over 50 MB"):
        hub.pull(str(repo), None, root, name="huge")
    assert not (root / "huge").exists()


def test_pull_refuses_a_symlinked_adapter_file(repo, root, tmp_path):
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (repo / "tuning_meta.json").unlink()
    (repo / "tuning_meta.json").symlink_to(secret)
    with pytest.raises(AdapterError, match="symbolic link"):
        hub.pull(str(repo), None, root, name="linked")


def test_pull_from_the_hub_offline_is_one_sentence_and_fast(monkeypatch, root):
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # offline even where the Hub is reachable
    t0 = time.monotonic()
    with pytest.raises(HubError) as error:
        hub.pull("someone/poet", None, root)
    assert time.monotonic() - t0 < 5
    assert str(error.value) == "could not reach the Hugging Face Hub to pull from someone/poet (no network?)"
    assert [p.name for p in root.iterdir()] == ["poet"]


def test_pull_without_a_token_never_uses_one_found_on_the_machine(monkeypatch, root):
    seen = {}

    def fake_download(repo_id, **kwargs):
        seen.setdefault("token", kwargs["token"])
        raise OSError("stop here")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    with pytest.raises(HubError):
        hub.pull("someone/poet", None, root)
    assert seen["token"] is False  # anonymous; None would mean "use the stored login"


# --- the CLI


def test_cli_push_without_a_token_is_one_line(monkeypatch, fake_hub, root, capsys):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    assert main(["--adapters-dir", str(root), "push", "poet", "--repo", "someone/poet"]) == 1
    err = capsys.readouterr().err
    assert err == "error: pushing needs a Hugging Face token: set HF_TOKEN or run `hf auth login`\n"
    assert fake_hub.calls == []


def test_cli_push_uses_hf_token_and_never_prints_it(monkeypatch, fake_hub, soft, tiny_model_dir, tiny_csv, tmp_path,
                                                    capsys):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    root = tmp_path / "adapters"
    adapters.save(dataclasses.replace(soft, base_model=str(tiny_model_dir)), "poet", root)
    assert main(["--adapters-dir", str(root), "push", "poet", "--repo", "someone/poet", "--private",
                 "--base-model", "openai-community/gpt2", "--dataset", str(tiny_csv), "--samples", "1",
                 "--max-new-tokens", "8", "--precision", "fp32"]) == 0
    captured = capsys.readouterr()
    assert captured.out == "pushed 'poet' to https://huggingface.co/someone/poet\n"
    assert TOKEN not in captured.out + captured.err and fake_hub.calls[0][1]["token"] == TOKEN
    assert fake_hub.calls[1][1]["private"] is True
    assert ModelCard.load(fake_hub.keep / "README.md").data.base_model == "openai-community/gpt2"


def test_cli_pull_from_a_local_folder(repo, root, capsys):
    assert main(["--adapters-dir", str(root), "pull", str(repo), "--name", "from-hub"]) == 0
    assert capsys.readouterr().out == f"saved adapter 'from-hub' to {root / 'from-hub'}\n"
    assert adapters.load("from-hub", root).num_virtual_tokens == 4


@pytest.mark.parametrize("spelled", [".", "./"])
def test_pull_of_the_current_folder_is_named_after_it(spelled, repo, tmp_path, monkeypatch):
    monkeypatch.chdir(repo)
    assert hub.pull(spelled, None, tmp_path / "elsewhere").name == repo.name
