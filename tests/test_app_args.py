"""`python app.py`'s settings: every flag, and the environment variable a Space sets instead (it passes no flags)."""

from __future__ import annotations

import pytest

import app

ENVIRONMENT = {  # flag's attribute: (variable, value in the environment, what the flag then defaults to)
    "model": ("TUNING_MODEL", "/models/gpt2", "/models/gpt2"),
    "dataset": ("TUNING_DATASET", "./acts.csv", "./acts.csv"),
    "host": ("GRADIO_SERVER_NAME", "0.0.0.0", "0.0.0.0"),
    "port": ("GRADIO_SERVER_PORT", "7861", 7861),
    "adapters_dir": ("TUNING_ADAPTERS_DIR", "/data/adapters", "/data/adapters"),
    "max_epochs": ("TUNING_MAX_EPOCHS", "20", 20),
    "max_steps": ("TUNING_MAX_STEPS", "500", 500),
    "max_adapters": ("TUNING_MAX_ADAPTERS", "10", 10),
    "max_adapter_bytes": ("TUNING_MAX_ADAPTER_BYTES", "1000000", 1_000_000),
    "max_queue": ("TUNING_MAX_QUEUE", "8", 8),
    "hub_model": ("TUNING_HUB_MODEL", "openai-community/gpt2", "openai-community/gpt2"),
    "reference_adapters": ("TUNING_REFERENCE_ADAPTERS", "0", False),
}


@pytest.fixture
def bare(monkeypatch):
    for variable, *_ in ENVIRONMENT.values():
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.delenv("GRADIO_MCP_SERVER", raising=False)
    return monkeypatch


def test_without_flags_or_environment_the_app_serves_gpt2_locally_with_the_default_caps(bare):
    args = app.parse_args([])
    assert (args.model, args.dataset, args.host, args.port) == (
        "openai-community/gpt2", "fka/awesome-chatgpt-prompts", "127.0.0.1", 7860)
    assert (args.max_epochs, args.max_steps, args.max_adapters, args.max_queue) == (50, 2000, 200, 64)
    assert args.reference_adapters and args.hub_model is None and not args.share


@pytest.mark.parametrize("name", sorted(ENVIRONMENT))
def test_each_setting_comes_from_its_environment_variable_and_a_flag_overrides_it(bare, name):
    variable, value, expected = ENVIRONMENT[name]
    bare.setenv(variable, value)
    assert getattr(app.parse_args([]), name) == expected
    if name == "reference_adapters":
        assert app.parse_args([]).reference_adapters is False
        return
    flag = "--" + name.replace("_", "-")
    other = "9" if isinstance(expected, int) else "other"
    assert str(getattr(app.parse_args([flag, other]), name)) == other


def test_mcp_is_left_to_gradio_mcp_server_unless_the_flag_says_so(bare):
    """A Space runs `python app.py` with no flags: an explicit False would keep Gradio from reading the variable."""
    assert app.parse_args([]).mcp is None
    assert app.parse_args(["--mcp"]).mcp is True
