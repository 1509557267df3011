"""TuneConfig validates itself and names the bad field."""

from __future__ import annotations

import pytest

from tuning.config import TuneConfig


def test_defaults_are_valid():
    config = TuneConfig()
    assert (config.num_virtual_tokens, config.epochs) == (20, 10)
    assert config.model == "openai-community/gpt2" and config.dataset == "fka/awesome-chatgpt-prompts"
    # the recipe docs/quality.md measured on SmolLM2
    assert config.init == "instruction"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("num_virtual_tokens", 0, "num_virtual_tokens must be from 1 to 100"),
        ("num_virtual_tokens", 101, "num_virtual_tokens must be from 1 to 100"),
        ("num_virtual_tokens", 2.5, "num_virtual_tokens must be a whole number"),
        ("num_virtual_tokens", True, "num_virtual_tokens must be a whole number"),
        ("epochs", 51, "epochs must be from 1 to 50"),
        ("batch_size", 0, "batch_size"),
        ("learning_rate", float("nan"), "learning_rate must be a finite number"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number"),
        ("learning_rate", -1.0, "learning_rate must be from"),
        ("learning_rate", "0.1", "learning_rate must be a finite number"),
        ("held_out_fraction", 0.9, "held_out_fraction"),
        ("init", "zeros", "init must be one of random, text, sample_vocab"),
        ("precision", "int8", "precision must be one of"),
        ("model", "  ", "model must be a non-empty"),
        ("init_text", "", "init_text must be non-empty"),
        ("seed", -1, "seed must be from 0"),
        ("warmup_fraction", -0.1, "warmup_fraction must be from 0 to 0.5"),
        ("warmup_fraction", 0.6, "warmup_fraction must be from 0 to 0.5"),
        ("warmup_fraction", float("nan"), "warmup_fraction must be a finite number"),
        ("weight_decay", -0.01, "weight_decay must be from 0 to 1"),
        ("weight_decay", 2.0, "weight_decay must be from 0 to 1"),
        ("weight_decay", "0.1", "weight_decay must be a finite number"),
    ],
)
def test_bad_values_name_the_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        TuneConfig(**{field: value})


def test_round_trips_through_a_dict():
    config = TuneConfig(acts=("Rapper", "Poet"), num_virtual_tokens=5)
    assert TuneConfig.from_dict(config.to_dict()) == config
    assert config.to_dict()["acts"] == ["Rapper", "Poet"]


def test_unknown_keys_in_a_saved_dict_are_ignored():
    assert TuneConfig.from_dict({"epochs": 3, "from_the_future": 1}).epochs == 3


@pytest.mark.parametrize("acts", ["Poet", [1], [""], ["Poet", None], 5])
def test_acts_must_be_a_list_of_names(acts):
    with pytest.raises(ValueError, match="acts must be"):
        TuneConfig(acts=acts)


def test_acts_given_as_a_list_become_a_tuple():
    assert TuneConfig(acts=["Poet", "Rapper"]).acts == ("Poet", "Rapper")
    assert TuneConfig(acts=None).acts == ()
