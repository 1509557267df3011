"""The base model and the one place a soft prompt meets it: positions, padding, loss masking, loading."""

from __future__ import annotations

import pytest
import torch

from tuning.model import ModelError, context_length, load_base, prompt_inputs, resolve_precision, token_losses


def test_left_padded_rows_keep_their_own_positions(base):
    soft = torch.randn(2, base.hidden_size)
    embeds, mask, positions = prompt_inputs(base, [soft, None], [[5, 6, 7], [5, 6, 7]], pad_left=True)
    assert embeds.shape == (2, 5, base.hidden_size)
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 1, 1, 1]]
    assert positions[1, 2:].tolist() == [0, 1, 2]
    assert positions[0].tolist() == [0, 1, 2, 3, 4]


def test_prompt_comes_first_then_the_token_embeddings(base):
    soft = torch.randn(3, base.hidden_size)
    embeds, _, _ = prompt_inputs(base, soft, [[10, 11]])
    table = base.model.get_input_embeddings().weight
    assert torch.equal(embeds[0, :3], soft)
    assert torch.equal(embeds[0, 3:], table[[10, 11]])


def test_batched_loss_equals_the_sum_of_single_row_losses(base):
    # Padding positions never enter the loss, and right padding leaves positions untouched.
    soft = torch.randn(4, base.hidden_size) * 0.3
    rows = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    with torch.no_grad():
        batched, n = token_losses(base, soft, rows)
        singles = [token_losses(base, soft, [r]) for r in rows]
    assert n == sum(len(r) for r in rows) == sum(c for _, c in singles)
    assert batched.item() == pytest.approx(sum(s.item() for s, _ in singles), rel=1e-5)


def test_first_token_is_scored_only_when_asked(base):
    soft = torch.randn(4, base.hidden_size)
    with torch.no_grad():
        _, with_first = token_losses(base, soft, [[5, 6, 7]])
        _, without_first = token_losses(base, soft, [[5, 6, 7]], score_first=False)
        _, base_count = token_losses(base, None, [[5, 6, 7]])
    assert (with_first, without_first, base_count) == (3, 2, 2)


def test_loss_matches_the_models_own_loss(base):
    # Without a prompt our loss is the model's standard causal LM loss.
    ids = [5, 6, 7, 8, 9]
    with torch.no_grad():
        ours, n = token_losses(base, None, [ids])
        theirs = base.model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss
    assert (ours / n).item() == pytest.approx(theirs.item(), rel=1e-5)


def test_context_length_is_read_from_the_config(base):
    assert context_length(base.model.config) == base.max_positions == 256


@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_explicit_precision_is_kept(precision):
    assert resolve_precision(precision, torch.device("cpu")) == precision


def test_unknown_precision_is_refused():
    with pytest.raises(ModelError, match="precision must be one of"):
        resolve_precision("int4", torch.device("cpu"))


def test_base_model_is_frozen(base):
    assert not any(p.requires_grad for p in base.model.parameters())
    assert not base.model.training


def test_gpt2_gets_eos_as_pad(base):
    assert base.tokenizer.pad_token_id == base.eos_id


def test_load_base_from_a_local_folder_once(tmp_path, tokenizer):
    from conftest import make_base

    own = make_base(tokenizer, seed=5)
    own.model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    first = load_base(str(tmp_path), "fp32")
    assert first is load_base(str(tmp_path), "fp32")  # cached: one copy per process
    assert first.model_id == str(tmp_path)
    assert torch.equal(first.model.transformer.wte.weight, own.model.transformer.wte.weight)


def test_missing_model_folder_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no model folder at"):
        load_base(str(tmp_path / "nothing-here"), "fp32")


def test_folder_without_a_model_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="could not load the model"):
        load_base(str(tmp_path), "fp32")


def test_missing_gguf_file_is_one_clear_error(tmp_path):
    with pytest.raises(ModelError, match="no GGUF file"):
        load_base(str(tmp_path / "model.gguf"), "fp32")


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_loss_and_gradient_equal_the_plain_cross_entropy(tokenizer, precision, monkeypatch):
    # Chunks smaller than the batch, so several chunks and a ragged last one are exercised.
    from conftest import make_base
    from tuning import model as model_module

    monkeypatch.setattr(model_module._ChunkedCrossEntropy, "CHUNK", 7)
    own = make_base(tokenizer, seed=2, precision=precision)
    rows = [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17, 18, 19, 20]]
    results = []
    for chunked in (True, False):
        soft = torch.nn.Parameter(torch.randn(3, own.hidden_size, generator=torch.Generator().manual_seed(0)))
        if chunked:
            loss, n = token_losses(own, soft, rows)
        else:
            embeds, mask, positions = prompt_inputs(own, soft, rows)
            logits = own.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits.float()
            picks = [(i, 3 + j - 1, t) for i, r in enumerate(rows) for j, t in enumerate(r)]
            loss = torch.nn.functional.cross_entropy(
                torch.stack([logits[i, p] for i, p, _ in picks]), torch.tensor([t for *_, t in picks]), reduction="sum")
        loss.backward()
        results.append((loss.item(), soft.grad.clone()))
    (a, grad_a), (b, grad_b) = results
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert a == pytest.approx(b, rel=tol)
    assert torch.allclose(grad_a, grad_b, rtol=tol, atol=tol * grad_b.abs().max().item())
