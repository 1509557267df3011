"""Shared fixtures: tiny GPT-2 models built in the test, the real GPT-2 tokenizer when ../shared has it.

Tiny models use `initializer_range=0.2`: with GPT-2's default 0.02 a random model repeats
one token forever, and a generation test would pass even on a broken cache path.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from tuning.model import Base, from_model

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
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


def make_tokenizer():
    """The real GPT-2 tokenizer when ../shared has it, else a small byte-level BPE trained here."""
    if TOKENIZER_DIR.is_dir():
        from transformers import GPT2TokenizerFast

        return GPT2TokenizerFast.from_pretrained(str(TOKENIZER_DIR))
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


@pytest.fixture(scope="session")
def base(tokenizer) -> Base:
    """A tiny random GPT-2 in float32, shared read-only like the app's base model."""
    return make_base(tokenizer)
