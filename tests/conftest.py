"""Shared fixtures: tiny GPT-2 models built in the test, the real GPT-2 tokenizer when ../shared has it.

Tiny models use `initializer_range=0.2`: with GPT-2's default 0.02 a random model repeats
one token forever, and a generation test would pass even on a broken cache path.

`need()` is the one way a test skips for something the machine lacks (a browser, Open MPI,
../shared data, real weights): a skip locally, a failure under CI, which must provide them all.

The fast tier, `pytest -m "not slow"`, leaves out every test marked `slow`: a test marks itself,
or uses a fixture that requests `slow_setup` (a served app, a browser, other processes, real
weights), which marks it here (`pytest_collection_modifyitems`).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tuning.model import Base, from_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
# A GGUF loaded in a test is unpacked into a folder of this run, not the developer's ~/.cache.
os.environ.setdefault("TUNING_CACHE_DIR", tempfile.mkdtemp(prefix="tuning-test-cache-"))
TOKENIZER_DIR = SHARED / "gpt2-tokenizer"
SNAPSHOT_OLD = SHARED / "awesome-chatgpt-prompts" / "prompts-2025-01.csv"
SNAPSHOT_NEW = SHARED / "awesome-chatgpt-prompts" / "prompts-2025-11.csv"

CORPUS = [
    "I want you to act as a rapper. You will come up with powerful and meaningful lyrics.",
    "I want you to act as a linux terminal. I will type commands and you will reply.",
    "I want you to act as a travel guide. I will write you my location and you will suggest places.",
    "I want you to act as a poet. You will create poems that evoke emotions.",
    "I want you to act as a storyteller. You will come up with entertaining stories.",
]


def need(present: bool, what: str) -> None:
    """Skip the calling test unless `present`; under CI (`CI=true`) fail it instead.

    CI installs the browser, Open MPI and the real weights and has ../shared, so a skip there
    means its setup broke and the tests meant to catch a bug there ran nothing.

    >>> need(shutil.which("mpirun") is not None, "needs Open MPI's mpirun")   # doctest: +SKIP
    """
    if present:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI=true, where a missing dependency is a failure, not a skip", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="session")
def slow_setup():
    """Requested by every fixture that serves the app, starts a browser or other processes, or loads
    real weights: each test using one, directly or through another fixture, is marked `slow`."""


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "slow_setup" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


def make_tokenizer():
    """The real GPT-2 tokenizer when ../shared has it, else a small byte-level BPE trained here."""
    if TOKENIZER_DIR.is_dir():
        from transformers import GPT2TokenizerFast

        return GPT2TokenizerFast.from_pretrained(str(TOKENIZER_DIR))
    return small_tokenizer()


def small_tokenizer():
    """A byte-level BPE of 600 tokens trained here on CORPUS: GPT-2's kind, quick to build from a file."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<|endoftext|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


@pytest.fixture(scope="session")
def tokenizer():
    return make_tokenizer()


def make_base(tokenizer, seed: int = 0, n_positions: int = 256, precision: str = "fp32", **overrides) -> Base:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=n_positions, n_embd=64, n_layer=2, n_head=4,
        initializer_range=0.2, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        **overrides,
    )
    return from_model(GPT2LMHeadModel(config), tokenizer, "tiny-gpt2", precision)


def make_llama(tokenizer, precision: str = "fp32") -> Base:
    """A tiny random Llama: rotary positions instead of GPT-2's learned ones, and grouped keys/values."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(3)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.2,
        eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False,
    )
    return from_model(LlamaForCausalLM(config), tokenizer, "tiny-llama", precision)


@pytest.fixture(scope="session")
def base(tokenizer) -> Base:
    """A tiny random GPT-2 in float32, shared read-only like the app's base model."""
    return make_base(tokenizer)


ACTS = {
    "Rapper": "I want you to act as a rapper. You will come up with powerful and meaningful lyrics, beats and rhythm.",
    "Poet": "I want you to act as a poet. You will create poems that evoke emotions and have the power to stir people's soul.",
    "Travel Guide": "I want you to act as a travel guide. I will write you my location and you will suggest a place to visit.",
    "Storyteller": "I want you to act as a storyteller. You will come up with entertaining stories that are engaging.",
    "Linux Terminal": "I want you to act as a linux terminal. I will type commands and you will reply with what the terminal should show.",
    "Motivational Coach": "I want you to act as a motivational coach. I will provide you with some information about someone's goals.",
    "Composer": "I want you to act as a composer. I will provide the lyrics to a song and you will create music for it.",
    "Debater": "I want you to act as a debater. I will provide you with some topics related to current events.",
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tokenizer):
    """A tiny GPT-2 saved as a local model folder, loadable by path like a real one."""
    folder = tmp_path_factory.mktemp("tiny-gpt2")
    own = make_base(tokenizer, seed=11)
    own.model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory):
    """A small dataset in the classic two-column schema."""
    import csv

    path = tmp_path_factory.mktemp("data") / "prompts.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["act", "prompt"])
        writer.writerows(ACTS.items())
    return path
