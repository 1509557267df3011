"""adapters.py: soft prompts saved as PEFT prompt-tuning folders, loaded back safely."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import GPT2Config, GPT2LMHeadModel

from tuning import adapters
from tuning.adapters import AdapterError, META_FILE, delete, list_adapters, load, load_folder, sanitize_name, save
from tuning.config import TuneConfig
from tuning.model import SoftPrompt

# Each hostile name, and where it would lead from <tmp>/adapters if it were used as a path
# ("{tmp}" is the test's folder): the test plants a real adapter there, so a broken guard
# would load or delete it instead of failing for want of a folder.
HOSTILE_NAMES = {
    "../outside": "outside",
    "{tmp}/outside": "outside",
    "/etc/passwd": None,  # outside the test's folder: nothing planted
    "a/../../outside": "outside",
    "https://x": "adapters/https:/x",
    "user/repo": "adapters/user/repo",
    "..": ".",  # the test's folder itself
    ".": "adapters",  # the adapters folder itself
    "": "adapters",
    ".hidden": "adapters/.hidden",
    "a b": "adapters/a b",
}


def make_soft(v: int = 5, hidden: int = 64, base_model: str = "tiny-gpt2", **meta) -> SoftPrompt:
    meta = {"dataset": "x.csv", "history": {"train_loss": [3.0, 2.5]}, **meta}
    return SoftPrompt(torch.randn(v, hidden), base_model, TuneConfig(num_virtual_tokens=v, model=base_model), meta)


def tiny_gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=2, vocab_size=100, n_positions=128))


def edit_json(path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_round_trip_keeps_tensor_config_and_meta(tmp_path):
    soft = make_soft()
    save(soft, "rapper", tmp_path)
    loaded = load("rapper", tmp_path)
    assert torch.equal(loaded.embeddings, soft.embeddings)
    assert loaded.embeddings.dtype == torch.float32
    assert loaded.base_model == "tiny-gpt2"
    assert loaded.config == soft.config
    assert {k: v for k, v in loaded.meta.items() if k != "created"} == soft.meta


def test_save_sets_created_once_and_keeps_it_on_resave(tmp_path):
    save(make_soft(), "a", tmp_path)
    first = load("a", tmp_path)
    assert first.meta["created"].endswith("+00:00")
    first.embeddings += 1
    save(first, "a", tmp_path)
    assert load("a", tmp_path).meta["created"] == first.meta["created"]


def test_save_does_not_change_the_soft_prompt_meta(tmp_path):
    soft = make_soft()
    save(soft, "a", tmp_path)
    assert "created" not in soft.meta


def test_save_returns_the_folder_under_the_sanitized_name(tmp_path):
    assert save(make_soft(), "My prompt: v2!", tmp_path) == tmp_path / "My-prompt-v2"


def test_tuples_in_meta_are_saved_as_lists(tmp_path):
    save(make_soft(acts=("Rapper", "Poet")), "a", tmp_path)
    assert load("a", tmp_path).meta["acts"] == ["Rapper", "Poet"]


def test_nan_in_meta_is_refused_and_writes_nothing(tmp_path):
    with pytest.raises(AdapterError, match="NaN"):
        save(make_soft(metrics={"loss": math.nan}), "a", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_nan_prompt_is_not_saved(tmp_path):
    soft = make_soft()
    soft.embeddings[0, 0] = math.nan
    with pytest.raises(AdapterError, match="NaN"):
        save(soft, "a", tmp_path)


def test_peft_file_says_random_init_and_meta_keeps_the_real_one(tmp_path):
    soft = make_soft()
    soft.config = TuneConfig(num_virtual_tokens=5, model="tiny-gpt2", init="text", init_text="act as a poet")
    folder = save(soft, "a", tmp_path)
    assert json.loads((folder / "adapter_config.json").read_text())["prompt_tuning_init"] == "RANDOM"
    assert load("a", tmp_path).config.init == "text"


@pytest.fixture
def offline(monkeypatch):
    """PEFT asks the Hub whether the base model's config.json exists unless told it is offline."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_saved_folder_loads_in_peft_with_the_same_prompt(tmp_path, offline):
    from peft import PeftModel

    soft = make_soft()
    folder = save(soft, "a", tmp_path)
    peft_model = PeftModel.from_pretrained(tiny_gpt2(), str(folder))
    assert torch.equal(peft_model.get_prompt_embedding_to_save("default"), soft.embeddings)
    assert set(load_file(folder / "adapter_model.safetensors")) == {"prompt_embeddings"}


@pytest.mark.filterwarnings("ignore:Could not find a config file")  # PEFT, offline, on a model with no Hub id
def test_folder_written_by_peft_loads_with_default_config(tmp_path, offline):
    from peft import PromptTuningConfig, get_peft_model

    model = tiny_gpt2()
    model.name_or_path = "tiny-gpt2"  # PEFT writes this as base_model_name_or_path
    peft_model = get_peft_model(model, PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=7))
    peft_model.save_pretrained(str(tmp_path / "from-peft"))
    soft = load("from-peft", tmp_path)
    assert torch.equal(soft.embeddings, peft_model.get_prompt_embedding_to_save("default"))
    assert soft.config.num_virtual_tokens == 7 and soft.config.model == "tiny-gpt2"
    assert soft.base_model == "tiny-gpt2" and soft.meta == {}


def test_list_gives_fields_newest_first(tmp_path):
    save(make_soft(created="2025-01-01T00:00:00+00:00", metrics={"held_out_loss": 2.1}), "old", tmp_path)
    save(make_soft(v=3, created="2025-06-01T00:00:00+00:00"), "new", tmp_path)
    listed = list_adapters(tmp_path)
    assert [a["name"] for a in listed] == ["new", "old"]
    old = listed[1]
    assert old["base_model"] == "tiny-gpt2"
    assert old["num_virtual_tokens"] == 5 and listed[0]["num_virtual_tokens"] == 3
    assert old["created"] == "2025-01-01T00:00:00+00:00"
    assert old["config"]["num_virtual_tokens"] == 5
    assert old["metrics"] == {"held_out_loss": 2.1}
    assert old["size_bytes"] == sum(f.stat().st_size for f in (tmp_path / "old").iterdir())


def test_list_skips_broken_and_temp_folders(tmp_path):
    save(make_soft(), "good", tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "adapter_config.json").write_text("{not json")
    save(make_soft(), "no-weights", tmp_path)
    (tmp_path / "no-weights" / "adapter_model.safetensors").unlink()
    (tmp_path / ".tmp-abc").mkdir()
    (tmp_path / "stray-file.txt").write_text("x")
    assert [a["name"] for a in list_adapters(tmp_path)] == ["good"]


@pytest.mark.parametrize("meta_text", [
    '"metrics": [1]', '"metrics": "xy"', '"metrics": 3',  # an upload's meta may hold anything JSON allows
])
def test_list_survives_an_adapter_whose_metrics_are_not_an_object(tmp_path, meta_text):
    save(make_soft(), "good", tmp_path)
    save(make_soft(), "odd", tmp_path)
    path = tmp_path / "odd" / META_FILE
    path.write_text(path.read_text().replace('"dataset": "x.csv"', meta_text + ', "dataset": "x.csv"'))
    listed = {a["name"]: a for a in list_adapters(tmp_path)}
    assert listed.keys() == {"good", "odd"} and listed["odd"]["metrics"] == {}


def test_list_skips_an_adapter_whose_metadata_is_nested_too_deep_to_read(tmp_path):
    save(make_soft(), "good", tmp_path)
    save(make_soft(), "deep", tmp_path)
    (tmp_path / "deep" / META_FILE).write_text("[" * 200_000 + "]" * 200_000)
    assert [a["name"] for a in list_adapters(tmp_path)] == ["good"]
    with pytest.raises(AdapterError, match="not valid JSON"):
        load("deep", tmp_path)


def test_list_of_missing_root_is_empty(tmp_path):
    assert list_adapters(tmp_path / "nope") == []


def test_delete_removes_the_folder(tmp_path):
    save(make_soft(), "a", tmp_path)
    delete("a", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_delete_of_missing_adapter_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="no adapter named 'ghost'"):
        delete("ghost", tmp_path)


def test_load_of_missing_adapter_is_refused(tmp_path):
    with pytest.raises(AdapterError, match="no adapter named 'ghost'"):
        load("ghost", tmp_path)


def test_save_overwrites_by_default(tmp_path):
    save(make_soft(v=5), "a", tmp_path)
    second = make_soft(v=3)
    save(second, "a", tmp_path)
    assert torch.equal(load("a", tmp_path).embeddings, second.embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_save_without_overwrite_refuses_an_existing_name(tmp_path):
    save(make_soft(), "a", tmp_path)
    with pytest.raises(AdapterError, match="already exists"):
        save(make_soft(), "a", tmp_path, overwrite=False)


def test_failed_write_keeps_the_previous_adapter_and_leaves_no_folder(tmp_path, monkeypatch):
    first = make_soft()
    save(first, "a", tmp_path)

    def broken_save_file(tensors, path):
        with open(path, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(adapters, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        save(make_soft(), "a", tmp_path)
    assert torch.equal(load("a", tmp_path).embeddings, first.embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_failed_swap_restores_the_previous_adapter(tmp_path, monkeypatch):
    first = make_soft()
    save(first, "a", tmp_path)
    real_replace = os.replace
    calls = []

    def replace_failing_second_time(src, dst):
        calls.append(dst)
        if len(calls) == 2:  # the old one is already moved aside; putting the new one in place fails
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(adapters.os, "replace", replace_failing_second_time)
    with pytest.raises(OSError, match="rename failed"):
        save(make_soft(), "a", tmp_path)
    monkeypatch.undo()
    assert torch.equal(load("a", tmp_path).embeddings, first.embeddings)
    assert [p.name for p in tmp_path.iterdir()] == ["a"]


def test_free_name_of_a_name_at_the_length_limit_is_free_and_saves(tmp_path):
    long = "a" * adapters.MAX_NAME
    save(make_soft(), long, tmp_path)
    free = adapters.free_name(long, {long})
    assert len(free) <= adapters.MAX_NAME and free.endswith("-2") and sanitize_name(free) == free
    save(make_soft(), free, tmp_path, overwrite=False)  # the old bug: cut back to `long`, "already exists"
    taken = {a["name"] for a in list_adapters(tmp_path)}
    assert taken == {long, free}
    assert adapters.free_name(long, taken).endswith("-3")


def test_failed_move_aside_does_not_hide_the_error(tmp_path, monkeypatch):
    save(make_soft(), "a", tmp_path)
    real_replace = os.replace

    def first_replace_fails(src, dst):  # e.g. a delete took the old folder away a moment ago
        if str(dst).rsplit("/", 1)[-1].startswith(".old-"):
            shutil.rmtree(src)  # the delete won the race
            raise FileNotFoundError("gone")
        real_replace(src, dst)

    monkeypatch.setattr(adapters.os, "replace", first_replace_fails)
    with pytest.raises(FileNotFoundError, match="gone"):  # not a second error from a rollback of nothing
        save(make_soft(), "a", tmp_path)
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []  # nothing half-made left behind


@pytest.mark.parametrize("raw, clean", [
    ("rapper", "rapper"),
    ("My prompt: v2!", "My-prompt-v2"),
    ("  spaced  ", "spaced"),
    ("../etc/passwd", "etcpasswd"),
    ("..hidden", "hidden"),
    ("-flag", "flag"),
    ("v1.2_final", "v1.2_final"),
    ("x" * 100, "x" * 64),
])
def test_sanitize_name(raw, clean):
    assert sanitize_name(raw) == clean


@pytest.mark.parametrize("raw", ["", "   ", "///", "..", "!!!"])
def test_sanitize_name_refuses_names_with_nothing_left(raw):
    with pytest.raises(AdapterError, match="no usable characters"):
        sanitize_name(raw)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
@pytest.mark.parametrize("action", [load, delete])
def test_hostile_names_are_refused_and_what_they_point_at_survives(tmp_path, action, name):
    root = tmp_path / "adapters"
    victim = make_soft()
    save(victim, "victim", root)
    target = HOSTILE_NAMES[name]
    planted = tmp_path / target if target else None
    if planted is not None and planted not in (tmp_path, root):  # an adapter, under a name save() would clean
        planted.parent.mkdir(parents=True, exist_ok=True)
        save(make_soft(v=3), "planted", tmp_path / "stash").rename(planted)
    if planted is not None:
        (planted / "sentinel.txt").write_text(f"planted for {name!r}")
    with pytest.raises(AdapterError, match="not a valid adapter name"):
        action(name.format(tmp=tmp_path), root)
    assert torch.equal(load("victim", root).embeddings, victim.embeddings)
    if planted is not None:
        assert (planted / "sentinel.txt").read_text() == f"planted for {name!r}"
        if planted not in (tmp_path, root):
            assert load_folder(planted).num_virtual_tokens == 3


@pytest.mark.parametrize("action", [load, delete])
def test_symlink_leading_outside_root_is_refused(tmp_path, action):
    outside = save(make_soft(), "outside", tmp_path / "elsewhere")
    root = tmp_path / "adapters"
    root.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(AdapterError, match="outside the adapters folder"):
        action("link", root)
    assert outside.is_dir()
    assert [a["name"] for a in list_adapters(root)] == []


def _wrong_peft_type(folder):
    edit_json(folder / "adapter_config.json", peft_type="LORA")


def _wrong_task_type(folder):
    edit_json(folder / "adapter_config.json", task_type="SEQ_2_SEQ_LM")


def _shape_mismatch(folder):
    edit_json(folder / "adapter_config.json", num_virtual_tokens=6)


def _too_many_tokens(folder):
    edit_json(folder / "adapter_config.json", num_virtual_tokens=1000)


def _nan_tensor(folder):
    save_file({"prompt_embeddings": torch.full((5, 64), math.nan)}, str(folder / "adapter_model.safetensors"))


def _int_tensor(folder):
    save_file({"prompt_embeddings": torch.zeros(5, 64, dtype=torch.int32)}, str(folder / "adapter_model.safetensors"))


def _extra_key(folder):
    tensors = {"prompt_embeddings": torch.zeros(5, 64), "evil": torch.zeros(1)}
    save_file(tensors, str(folder / "adapter_model.safetensors"))


def _bin_only(folder):
    (folder / "adapter_model.safetensors").unlink()
    (folder / "adapter_model.bin").write_bytes(b"pickle that must never be loaded")


def _config_not_json(folder):
    (folder / "adapter_config.json").write_text("{oops")


def _weights_not_safetensors(folder):
    (folder / "adapter_model.safetensors").write_bytes(b"garbage")


@pytest.mark.parametrize("tamper, message", [
    (_wrong_peft_type, "LORA adapter"),
    (_wrong_task_type, "task_type is SEQ_2_SEQ_LM"),
    (_shape_mismatch, r"tensor is \[5, 64\] but adapter_config.json says \[6, 64\]"),
    (_too_many_tokens, "num_virtual_tokens must be"),
    (_nan_tensor, "NaN"),
    (_int_tensor, "floating point"),
    (_extra_key, "exactly the key"),
    (_bin_only, "only adapter_model.bin"),
    (_config_not_json, "not valid JSON"),
    (_weights_not_safetensors, "not a readable safetensors"),
])
def test_invalid_folders_are_refused(tmp_path, tamper, message):
    folder = save(make_soft(), "a", tmp_path)
    tamper(folder)
    with pytest.raises(AdapterError, match=message):
        load("a", tmp_path)


def test_plain_peft_folder_without_meta_loads(tmp_path):
    folder = save(make_soft(), "a", tmp_path)
    (folder / META_FILE).unlink()
    soft = load_folder(folder)
    assert soft.meta == {} and soft.config.num_virtual_tokens == 5


def test_hidden_size_mismatch_with_base_is_refused(tmp_path, base):
    save(make_soft(hidden=32), "a", tmp_path)
    with pytest.raises(AdapterError, match="hidden size is 32, the loaded model's is 64"):
        load("a", tmp_path, base=base)


def test_other_base_model_is_refused(tmp_path, base):
    save(make_soft(base_model="openai-community/gpt2"), "a", tmp_path)
    with pytest.raises(AdapterError, match="trained on openai-community/gpt2, the loaded model is tiny-gpt2"):
        load("a", tmp_path, base=base)


def test_an_adapter_saved_under_a_models_older_hub_id_loads_on_the_new_one(tmp_path, base):
    import dataclasses

    gpt2 = dataclasses.replace(base, model_id="openai-community/gpt2")  # the default model, by its current id
    save(make_soft(base_model="gpt2"), "a", tmp_path)  # what PEFT writes after from_pretrained("gpt2")
    assert load("a", tmp_path, base=gpt2).base_model == "gpt2"
    save(make_soft(base_model="gpt2-medium"), "b", tmp_path)
    with pytest.raises(AdapterError, match="trained on gpt2-medium"):
        load("b", tmp_path, base=gpt2)


def test_an_adapter_of_the_hub_model_loads_on_its_local_copy(tmp_path, base):
    import dataclasses

    save(make_soft(base_model="openai-community/gpt2"), "pulled", tmp_path)  # pushed from anywhere, pulled here
    local = dataclasses.replace(base, model_id="/models/gpt2")
    with pytest.raises(AdapterError, match="trained on openai-community/gpt2, the loaded model is /models/gpt2"):
        load("pulled", tmp_path, base=local)
    named = dataclasses.replace(base, model_id="/models/gpt2", hub_id="openai-community/gpt2")  # app.py --hub-model
    assert load("pulled", tmp_path, base=named).base_model == "openai-community/gpt2"


def test_matching_base_loads(tmp_path, base):
    save(make_soft(), "a", tmp_path)
    assert load("a", tmp_path, base=base).num_virtual_tokens == 5


def test_leftover_folders_of_a_crashed_save_or_delete_are_removed_once_an_hour_old(tmp_path):
    root = tmp_path / "adapters"
    save(make_soft(), "kept", root)
    stale = [root / ".tmp-crashed", root / ".old-0123456789abcdef"]
    fresh = root / ".tmp-saving-now"  # another process's save in progress
    for folder in stale + [fresh]:
        folder.mkdir()
        (folder / "adapter_model.safetensors").write_bytes(b"x" * 10)
    hour_ago = os.path.getmtime(root) - 3700
    for folder in stale:
        os.utime(folder, (hour_ago, hour_ago))
    (root / ".hidden-by-someone").mkdir()  # not ours: untouched
    os.utime(root / ".hidden-by-someone", (hour_ago, hour_ago))

    assert adapters.remove_leftovers(root) == 2
    assert sorted(p.name for p in root.iterdir()) == [".hidden-by-someone", ".tmp-saving-now", "kept"]
    assert [a["name"] for a in list_adapters(root)] == ["kept"]
    assert adapters.remove_leftovers(tmp_path / "missing") == 0


def test_an_adapter_deleted_while_the_list_is_read_is_left_out_not_an_error(tmp_path, monkeypatch):
    """Found by the soak: one visitor's delete between the load and the file sizes failed another's listing."""
    from tuning import adapters

    soft = make_soft()
    adapters.save(soft, "going", tmp_path)
    adapters.save(soft, "staying", tmp_path)
    real = adapters.load_folder

    def load_then_lose(folder):
        loaded = real(folder)
        if folder.name == "going":
            adapters.delete("going", tmp_path)  # removed right after it was read
        return loaded

    monkeypatch.setattr(adapters, "load_folder", load_then_lose)
    assert [a["name"] for a in adapters.list_adapters(tmp_path)] == ["staying"]
