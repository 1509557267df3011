"""The base model and the one place a soft prompt meets it: positions, padding, loss masking, loading."""

from __future__ import annotations

import os

import pytest
import torch

from tuning.hardware import resolve_precision
from tuning.model import Base, ModelError, context_length, load_base, prompt_inputs, token_losses


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


def write_gguf(path, own) -> None:
    """`own` (a Llama with a byte-level BPE tokenizer) as llama.cpp's converter writes it: float32
    tensors under GGUF names, the query and key rows permuted, the tokenizer's vocabulary and merges."""
    import json

    import gguf
    import numpy as np

    config, tokenizer = own.model.config, own.tokenizer
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    bpe = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list([token for token, _ in sorted(bpe["vocab"].items(), key=lambda item: item[1])])
    writer.add_token_types([gguf.TokenType.NORMAL] * len(bpe["vocab"]))
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    writer.add_bos_token_id(tokenizer.eos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)

    def permute(rows, heads):  # llama.cpp's order of the rotary halves within each head
        return rows.reshape(heads, 2, rows.shape[0] // heads // 2, *rows.shape[1:]).swapaxes(1, 2).reshape(rows.shape)

    names = {"model.embed_tokens": "token_embd", "model.norm": "output_norm", "lm_head": "output",
             "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
             "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
             "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
    for key, tensor in own.model.state_dict().items():
        module = key.removesuffix(".weight")
        if module.startswith("model.layers."):
            layer, module = module.removeprefix("model.layers.").split(".", 1)
            name = f"blk.{layer}.{names[module]}.weight"
        else:
            name = f"{names[module]}.weight"
        rows = tensor.float().numpy()
        if module.endswith(("q_proj", "k_proj")):
            rows = permute(rows, config.num_attention_heads if "q_proj" in module else config.num_key_value_heads)
        writer.add_tensor(name, np.ascontiguousarray(rows))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def test_a_gguf_file_loads_as_the_model_and_tokenizer_written_into_it(tmp_path):
    # A tiny Llama written with the gguf package (the format of the real-weights model,
    # SmolLM2's Q4_1 file, here in float32 so every weight is exact): the same tokens for a
    # text and the same logits for them, so the rotary rows were un-permuted too.
    from conftest import make_llama, small_tokenizer

    own = make_llama(small_tokenizer())
    write_gguf(tmp_path / "tiny.gguf", own)
    loaded = load_base(str(tmp_path / "tiny.gguf"), "fp32")
    text = "I want you to act as a poet. You will create poems."
    ids = own.encode(text)
    assert loaded.encode(text) == ids and loaded.eos_id == own.eos_id and loaded.precision == "fp32"
    with torch.no_grad():
        expected = own.model(input_ids=torch.tensor([ids])).logits
        got = loaded.model(input_ids=torch.tensor([ids])).logits
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_a_gguf_is_unpacked_once_and_a_changed_file_again(tmp_path, monkeypatch):
    # Every start after the first loads the unpacked copy, not the slow-to-read GGUF; a changed file is read again.
    import transformers.modeling_gguf_pytorch_utils as gguf_utils
    from conftest import make_llama, small_tokenizer

    from tuning import model as model_module

    monkeypatch.setenv("TUNING_CACHE_DIR", str(tmp_path / "cache"))
    own = make_llama(small_tokenizer())
    path = tmp_path / "tiny.gguf"
    write_gguf(path, own)
    reads = []
    real = gguf_utils.load_gguf_checkpoint
    monkeypatch.setattr(gguf_utils, "load_gguf_checkpoint", lambda *a, **k: reads.append(1) or real(*a, **k))

    def fresh() -> Base:
        model_module._load_base_cached.cache_clear()  # as a new process would
        return load_base(str(path), "fp32")

    first = fresh()
    assert reads and len(list((tmp_path / "cache" / "gguf").iterdir())) == 1
    reads.clear()
    again = fresh()
    assert not reads  # the unpacked copy, not the GGUF
    text = "I want you to act as a poet."
    assert again.encode(text) == first.encode(text) and again.model_id == str(path)
    ids = torch.tensor([first.encode(text)])
    with torch.no_grad():
        torch.testing.assert_close(again.model(input_ids=ids).logits, first.model(input_ids=ids).logits)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # the file changed
    fresh()
    assert reads


def _ours_and_reference(own, rows, n_virtual: int = 3, seed: int = 0):
    """(loss, prompt gradient) from token_losses, then from a plain forward of [soft; row] in every
    row with the model's own logits and cross_entropy, for the same random prompt."""
    results = []
    for ours in (True, False):
        soft = torch.nn.Parameter(torch.randn(n_virtual, own.hidden_size, generator=torch.Generator().manual_seed(seed)))
        if ours:
            loss, _ = token_losses(own, soft, rows)
        else:
            embeds, mask, positions = prompt_inputs(own, soft, rows)
            logits = own.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits.float()
            picks = [(i, n_virtual + j - 1, t) for i, r in enumerate(rows) for j, t in enumerate(r)]
            loss = torch.nn.functional.cross_entropy(
                torch.stack([logits[i, p] for i, p, _ in picks]), torch.tensor([t for *_, t in picks]), reduction="sum")
        loss.backward()
        results.append((loss.item(), soft.grad.clone()))
    return results


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_chunked_loss_and_gradient_equal_the_plain_cross_entropy(tokenizer, precision, monkeypatch):
    # Chunks smaller than the batch, so several chunks and a ragged last one are exercised.
    from conftest import make_base
    from tuning import model as model_module

    monkeypatch.setattr(model_module._ChunkedCrossEntropy, "CHUNK", 7)
    own = make_base(tokenizer, seed=2, precision=precision)
    (a, grad_a), (b, grad_b) = _ours_and_reference(own, [[5, 6, 7, 8, 9, 10, 11, 12], [13, 14, 15], [16, 17, 18, 19, 20]])
    tol = 1e-5 if precision == "fp32" else 2e-2
    assert a == pytest.approx(b, rel=tol)
    assert torch.allclose(grad_a, grad_b, rtol=tol, atol=tol * grad_b.abs().max().item())


@pytest.mark.parametrize("family, precision", [("gpt2", "fp32"), ("llama", "fp32"), ("gpt2", "bf16"), ("llama", "bf16")])
@pytest.mark.parametrize("with_prompt, share", [(True, True), (True, False), (False, None)])
def test_padding_to_a_length_multiple_changes_no_number(tokenizer, family, precision, with_prompt, share, monkeypatch):
    # Base.length_multiple pads a batch (and the cross-entropy's last chunk) with masked positions
    # so fewer shapes reach the kernels: same loss, count and prompt gradient as without (bf16,
    # where it is switched on, up to bf16 rounding: other shapes may sum in another order).
    from conftest import make_base, make_llama
    from tuning import model as model_module
    from tuning.model import from_model

    monkeypatch.setattr(model_module._ChunkedCrossEntropy, "CHUNK", 7)
    if family == "gpt2":
        own = make_base(tokenizer, seed=4, precision=precision)
    else:
        own = from_model(make_llama(tokenizer).model, tokenizer, "tiny-llama", precision)
    own.share_prompt = share
    rows = [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]]
    shapes, results = [], []
    hook = own.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        for multiple in (1, 16):
            own.pad_to_multiple_of = multiple
            soft = torch.nn.Parameter(torch.randn(3, own.hidden_size, generator=torch.Generator().manual_seed(1)))
            loss, n = token_losses(own, soft if with_prompt else None, rows)
            grad = torch.autograd.grad(loss, soft)[0] if with_prompt else None
            results.append((loss.item(), n, grad))
    finally:
        hook.remove()
    # shared: the text rows behind the prompt's own 3 positions, computed once: 7 positions, then
    # 16; in one pass, 3 + 7 positions, then 16
    assert shapes == ([3, 7, 3, 16] if share else [10, 16] if with_prompt else [7, 16])
    (a, n_a, grad_a), (b, n_b, grad_b) = results
    assert n_a == n_b == sum(len(r) for r in rows) - (0 if with_prompt else len(rows))
    tol = 1e-5 if precision == "fp32" else 1e-2
    assert a == pytest.approx(b, rel=tol)
    if with_prompt:
        assert torch.allclose(grad_a, grad_b, rtol=10 * tol, atol=tol * grad_b.abs().max().item())


def test_padding_never_goes_past_the_context(tokenizer):
    from conftest import make_base

    own = make_base(tokenizer, n_positions=20)
    own.pad_to_multiple_of = 16
    seen = []
    hook = own.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["inputs_embeds"].shape[1]), with_kwargs=True)
    try:
        with torch.no_grad():
            token_losses(own, torch.randn(3, own.hidden_size), [list(range(5, 22))])  # 3 + 17 = 20 positions
            token_losses(own, None, [list(range(5, 10))])
    finally:
        hook.remove()
    assert seen == [3, 17, 16]  # 17 text positions stay 17 (32 would not fit behind 3); 5 become 16


@pytest.mark.parametrize("kind, precision, device, expected", [
    ("amx", "bf16", "cpu", 16), ("amx", "fp32", "cpu", 1), ("avx512_bf16", "bf16", "cpu", 1), ("other", "fp32", "cpu", 1),
    ("amx", "bf16", "cuda", 1),  # a GPU beside an AMX CPU: the model is on the GPU, nothing is padded
])
def test_length_multiple_is_chosen_for_the_machine(tokenizer, monkeypatch, kind, precision, device, expected):
    from conftest import make_base
    from tuning import model as model_module

    monkeypatch.setattr(model_module, "this_cpu_kind", lambda: kind)
    own = make_base(tokenizer, precision=precision)
    monkeypatch.setattr(type(own), "device", property(lambda self: torch.device(device)))
    assert own.length_multiple == expected
    own.pad_to_multiple_of = 8  # an explicit choice (the bench's comparison) wins
    assert own.length_multiple == 8


@pytest.mark.parametrize("bad", [0, -16, 1.5, True, "16"])
def test_a_bad_length_multiple_is_one_clear_error(base, bad):
    base.pad_to_multiple_of = bad
    try:
        with pytest.raises(ModelError, match="pad_to_multiple_of must be a whole number"):
            token_losses(base, None, [[5, 6, 7]])
    finally:
        base.pad_to_multiple_of = None


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("share", [True, False])
def test_prompt_shared_by_the_batch_gives_the_same_loss_and_gradient(tokenizer, family, share):
    # Shared (a CPU's way): token_losses computes the prompt once per batch and runs the rows
    # behind its keys and values. Not shared (a GPU's way): [soft; row] in every row, through
    # the model body and the chunked loss. The reference: the model's own logits and
    # cross_entropy over [soft; row] in every row.
    from conftest import make_base, make_llama

    own = make_base(tokenizer, seed=4) if family == "gpt2" else make_llama(tokenizer)
    own.share_prompt = share
    (a, grad_a), (b, grad_b) = _ours_and_reference(own, [[5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17]], seed=1)
    assert a == pytest.approx(b, rel=1e-5)
    assert torch.allclose(grad_a, grad_b, rtol=1e-4, atol=1e-5 * grad_b.abs().max().item())


def test_prompt_positions_are_computed_once_per_batch(base):
    # 3 rows of up to 4 tokens behind a 5-token prompt: 5 + 3 x 4 positions, not 3 x (5 + 4).
    seen = []
    hook = base.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    try:
        with torch.no_grad():
            _, n = token_losses(base, torch.randn(5, base.hidden_size), [[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    finally:
        hook.remove()
    assert n == 9
    assert seen == [(1, 5), (3, 4)]


@pytest.mark.timeout(60)
def test_not_shared_the_prompt_goes_in_front_of_every_row_in_one_pass(tokenizer):
    from conftest import make_base

    own = make_base(tokenizer)
    own.share_prompt = False
    seen = []
    own.model.base_model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(tuple(kwargs["inputs_embeds"].shape[:2])), with_kwargs=True)
    with torch.no_grad():
        _, n = token_losses(own, torch.randn(5, own.hidden_size), [[5, 6, 7, 8], [9, 10], [11, 12, 13]])
        _, n_base = token_losses(own, None, [[5, 6, 7, 8], [9, 10], [11, 12, 13]])
    assert (n, n_base) == (9, 6)  # the prompt's last position predicts each row's first token; the base cannot
    assert seen == [(3, 9), (3, 4)]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("score_first", [True, False])
def test_per_token_losses_are_the_same_shared_or_in_one_pass(tokenizer, score_first):
    # What evaluation asks for (per-token losses, the first token skipped or not), with an empty
    # row in the batch: the same numbers, in the same order, whichever way the prompt is run.
    from conftest import make_base

    own = make_base(tokenizer, seed=2)
    soft = torch.randn(4, own.hidden_size, generator=torch.Generator().manual_seed(3))
    rows = [[5, 6, 7, 8, 9], [], [10, 11], [12]]
    results = []
    for share in (True, False):
        own.share_prompt = share
        with torch.no_grad():
            results.append(token_losses(own, soft, rows, score_first=score_first, reduction="none"))
    (shared, n_shared), (one_pass, n_one) = results
    assert n_shared == n_one == (8 if score_first else 5)
    assert torch.allclose(shared, one_pass, atol=1e-5)


@pytest.mark.timeout(60)
def test_the_prompt_is_shared_on_a_cpu_and_not_on_a_gpu(tokenizer, monkeypatch):
    from conftest import make_base
    from tuning.model import Base

    own = make_base(tokenizer)
    assert own.shares_prompt  # on this CPU
    monkeypatch.setattr(Base, "device", property(lambda self: torch.device("cuda")))
    assert not own.shares_prompt
    own.share_prompt = True  # set: kept, whatever the device
    assert own.shares_prompt


def test_per_token_losses_come_row_after_row(base):
    soft = torch.randn(2, base.hidden_size)
    rows = [[5, 6, 7], [8, 9]]
    with torch.no_grad():
        each, n = token_losses(base, soft, rows, reduction="none")
        singles = [token_losses(base, soft, [r], reduction="none")[0] for r in rows]
    assert n == 5
    assert torch.allclose(each, torch.cat(singles), atol=1e-5)


def plain_and_loaded(tokenizer):
    """Two tiny GPT-2s with the same weights: as transformers builds it, and after `from_model`."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from tuning.model import from_model

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=64, n_embd=64, n_layer=2, n_head=4, initializer_range=0.2)
    plain = GPT2LMHeadModel(config).eval()
    loaded = GPT2LMHeadModel(config).eval()
    loaded.load_state_dict(plain.state_dict())
    from_model(loaded, tokenizer, "tiny", "fp32")
    return plain, loaded


def test_gpt2_gelu_is_swapped_for_the_fused_one_with_the_same_outputs(tokenizer):
    from transformers.activations import NewGELUActivation

    plain, fused = plain_and_loaded(tokenizer)
    assert any(isinstance(m, NewGELUActivation) for m in plain.modules())
    assert not any(isinstance(m, NewGELUActivation) for m in fused.modules())
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, fused(ids).logits, atol=1e-5)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("precision, device, exact", [("bf16", "cpu", True), ("fp32", "cpu", False), ("bf16", "cuda", False)])
def test_gpt2_gelu_is_the_exact_one_only_in_bf16_on_a_cpu(tokenizer, precision, device, exact):
    from transformers.activations import GELUTanh

    from conftest import make_base
    from tuning.kernels import exact_gelu

    assert exact_gelu(torch.device(device), precision) is exact
    if device == "cpu":
        acts = [m for m in make_base(tokenizer, precision=precision).model.modules() if isinstance(m, torch.nn.GELU | GELUTanh)]
        assert acts and all(type(m) is (torch.nn.GELU if exact else GELUTanh) for m in acts)
        assert all(m.approximate == "none" for m in acts if type(m) is torch.nn.GELU)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_in_bf16_the_exact_gelu_moves_the_logits_less_than_bf16_itself_does(tokenizer, seed, monkeypatch):
    # The two GELUs differ by at most 4.7e-4 anywhere; a bf16 rounding step at 1.0 is 7.8e-3. So the
    # swap moves a bf16 model's logits less than computing in bf16 instead of float32 moves them.
    from conftest import make_base
    from tuning import kernels

    x = torch.linspace(-10, 10, 200_001)
    gap = (torch.nn.functional.gelu(x, approximate="tanh") - torch.nn.functional.gelu(x)).abs().max().item()
    assert 4e-4 < gap < 5e-4
    logits = {}
    for name, precision, exact in (("fp32", "fp32", False), ("bf16 tanh", "bf16", False), ("bf16 exact", "bf16", True)):
        monkeypatch.setattr(kernels, "EXACT_GELU", exact)
        own = make_base(tokenizer, seed=seed, precision=precision)
        ids = torch.randint(0, 1000, (2, 24), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            logits[name] = own.model(input_ids=ids).logits.float()
    swap = (logits["bf16 exact"] - logits["bf16 tanh"]).abs().max()
    bf16 = (logits["bf16 tanh"] - logits["fp32"]).abs().max()
    assert 0 < swap < bf16


@pytest.mark.parametrize("kind, precision, device, fp32_wins, packs", [
    ("amx", "bf16", "cpu", False, True), ("amx", "fp32", "cpu", False, False), ("avx512_bf16", "bf16", "cpu", True, False),
    ("other", "fp32", "cpu", False, False), ("other", "fp32", "cpu", True, True), ("amx", "bf16", "cuda", True, False),
    ("other", "fp32", "cuda", True, False),
])
def test_decoding_packs_the_weights_only_where_measured_to_win(monkeypatch, kind, precision, device, fp32_wins, packs):
    from tuning import kernels

    monkeypatch.setattr(kernels, "this_cpu_kind", lambda: kind)
    monkeypatch.setattr(kernels, "fp32_packing_wins", lambda: fp32_wins)  # the probe's verdict on this CPU
    assert kernels.packs_for_decoding(torch.device(device), precision) is packs


@pytest.mark.parametrize("slowed, wins", [("plain", True), ("packed", False)])
def test_the_fp32_packing_probe_goes_by_the_two_timed_ways_and_answers_once_per_process(monkeypatch, slowed, wins):
    # Whichever way is made 20 ms slower loses the verdict, whatever this CPU measures by itself.
    import time

    from tuning import kernels

    def slower(way):
        return lambda *args: time.sleep(0.02) or way(*args)

    calls = []
    reorder = torch.ops.mkldnn._reorder_linear_weight
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda *a: calls.append(a[0].shape) or reorder(*a))
    kernels.fp32_packing_wins.cache_clear()
    try:
        with pytest.MonkeyPatch.context() as slow:
            if slowed == "plain":
                slow.setattr(torch.nn.functional, "linear", slower(torch.nn.functional.linear))
            else:
                slow.setattr(torch.ops.mkldnn, "_linear_pointwise", slower(torch.ops.mkldnn._linear_pointwise))
            assert kernels.fp32_packing_wins() is wins
        # probed again, the ways would pack a second time and may give this CPU's own verdict
        assert kernels.fp32_packing_wins() is wins and calls == [(16384, 768)]
    finally:
        kernels.fp32_packing_wins.cache_clear()


def _tiny(tokenizer, family: str, precision: str):
    from conftest import make_base, make_llama

    return make_base(tokenizer, seed=4, precision=precision) if family == "gpt2" else make_llama(tokenizer, precision)


def bf16_packs() -> bool:
    """Whether oneDNN packs bf16 weights on this CPU (AVX-512 or AVX-NE-CONVERT; not an AVX2-only one)."""
    try:
        torch.ops.mkldnn._reorder_linear_weight(torch.zeros(8, 8, dtype=torch.bfloat16), 1)
    except RuntimeError:
        return False
    return True


@pytest.mark.timeout(120)
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_packed_weights_decode_the_same_tokens_and_leave_training_and_files_alone(tokenizer, family, precision,
                                                                                  monkeypatch):
    from tuning import kernels
    from tuning.generate import Decoding, stream_compare

    if precision == "bf16" and not bf16_packs():  # the hardware's, not the setup's: a skip under CI too
        pytest.skip("oneDNN packs bf16 only on CPUs with AVX-512 or AVX-NE-CONVERT")
    monkeypatch.setattr(kernels, "PACK_FOR_DECODING", False)
    plain = _tiny(tokenizer, family, precision)
    monkeypatch.setattr(kernels, "PACK_FOR_DECODING", True)
    packed = _tiny(tokenizer, family, precision)
    linears = [m for m in packed.model.modules() if type(m).__name__.startswith("Packed")]
    assert linears and not any(type(m).__name__.startswith("Packed") for m in plain.model.modules())
    assert packed.model.get_output_embeddings() in linears  # the head too: a tenth of a GPT-2 step's weights

    torch.manual_seed(0)
    soft = torch.randn(4, plain.hidden_size) * 0.5
    decoding = Decoding(max_new_tokens=12, no_repeat_ngram_size=0)
    text = "I want you to act as a storyteller."
    expected = list(stream_compare(plain, [soft, soft[:2]], text, decoding))
    assert list(stream_compare(packed, [soft, soft[:2]], text, decoding)) == expected
    assert all(m.__dict__["_packed_weight"][1] is not None for m in linears)  # the decoding steps did use them

    # training and scoring multiply with the weights as they are: the same numbers to the last bit
    rows = [[5, 6, 7, 8, 9], [10, 11, 12]]
    results = []
    for b in (plain, packed):
        s = torch.nn.Parameter(soft.clone())
        loss, _ = token_losses(b, s, rows)
        loss.backward()
        results.append((loss.item(), s.grad))
    assert results[0][0] == results[1][0] and torch.equal(results[0][1], results[1][1])
    assert {k: v for k, v in packed.model.state_dict().items()}.keys() == plain.model.state_dict().keys()
    assert all(torch.equal(v, plain.model.state_dict()[k]) for k, v in packed.model.state_dict().items())


@pytest.mark.timeout(60)
def test_a_changed_weight_is_packed_again(tokenizer, monkeypatch):
    from tuning import kernels

    monkeypatch.setattr(kernels, "PACK_FOR_DECODING", True)
    own = _tiny(tokenizer, "gpt2", "fp32")
    layer = own.model.transformer.h[0].mlp.c_fc
    with torch.no_grad():
        layer.bias.normal_()  # GPT-2 starts with zero biases: a dropped bias would pass unseen
    x = torch.randn(2, 1, own.hidden_size)
    with torch.inference_mode():
        before = layer(x)
    assert torch.allclose(before, torch.nn.functional.linear(x, layer.weight.t(), layer.bias), atol=1e-4)
    with torch.no_grad():
        layer.weight.mul_(2)
    with torch.inference_mode():
        after = layer(x)
    expected = torch.nn.functional.linear(x, layer.weight.t(), layer.bias)
    assert torch.allclose(after, expected, atol=1e-4) and not torch.allclose(after, before, atol=1e-3)


@pytest.mark.timeout(60)
def test_the_packed_copy_is_dropped_when_the_model_moves_or_is_copied(tokenizer, monkeypatch):
    import copy

    from tuning import kernels

    monkeypatch.setattr(kernels, "PACK_FOR_DECODING", True)
    own = _tiny(tokenizer, "llama", "fp32")
    layer = own.model.model.layers[0].mlp.up_proj
    x = torch.randn(1, 1, own.hidden_size)
    with torch.inference_mode():
        layer(x)
    assert "_packed_weight" in layer.__dict__
    twin = copy.deepcopy(own.model)  # oneDNN's packed tensor cannot be copied: the copy packs its own
    assert "_packed_weight" not in twin.model.layers[0].mlp.up_proj.__dict__
    with torch.inference_mode():
        assert torch.allclose(twin.model.layers[0].mlp.up_proj(x), layer(x), atol=1e-5)
    own.model.to(torch.bfloat16)
    assert "_packed_weight" not in layer.__dict__  # stale, and held in RAM, after a move or a cast
    with torch.inference_mode():
        out = layer(x.bfloat16())
    repacked = layer.__dict__["_packed_weight"][1]  # None where this CPU cannot pack bf16: multiplied as it is
    assert out.dtype == torch.bfloat16 and (repacked.dtype == torch.bfloat16 if bf16_packs() else repacked is None)


@pytest.mark.timeout(60)
def test_a_weight_onednn_cannot_pack_is_multiplied_as_it_is(tokenizer, monkeypatch):
    from tuning import kernels

    monkeypatch.setattr(kernels, "PACK_FOR_DECODING", True)
    own = _tiny(tokenizer, "gpt2", "fp32")
    layer = own.model.transformer.h[0].mlp.c_fc

    def unsupported(*a):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support avx_ne_convert")

    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", unsupported)
    x = torch.randn(2, 1, own.hidden_size)
    with torch.inference_mode():
        out = layer(x)
    assert torch.equal(out, torch.nn.functional.linear(x, layer.weight.t(), layer.bias))


def test_gpt2_weights_are_stored_row_by_row_for_linear_with_the_same_outputs_and_files(tokenizer, tmp_path):
    from transformers import GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    plain, fast = plain_and_loaded(tokenizer)
    layers = [m for m in fast.modules() if isinstance(m, Conv1D)]
    assert layers and all(type(m) is not Conv1D for m in layers)
    for m in layers:  # [out, in] storage; the parameter is still GPT-2's [in, out]
        assert m.weight.shape == (m.nx, m.nf) and m.weight.t().is_contiguous()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 14, 15, 16]])
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits, fast(ids).logits, atol=1e-5)
        fast.save_pretrained(tmp_path)  # what a saved model holds is GPT-2's own layout
        again = GPT2LMHeadModel.from_pretrained(tmp_path).eval()
        assert torch.allclose(plain(ids).logits, again(ids).logits, atol=1e-5)
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in plain.state_dict().items()}


@pytest.mark.parametrize("flags, kind, auto", [
    ("fpu avx512f avx512bw amx_bf16 amx_tile avx512_bf16", "amx", "bf16"),
    ("fpu avx512f avx512bw avx512_bf16", "avx512_bf16", "bf16"),
    ("fpu avx512f avx512bw avx512_vnni", "other", "fp32"),  # bf16 only emulated: 4x slower than fp32
    ("fpu avx2 fma", "other", "fp32"),
])
def test_auto_precision_on_a_cpu_is_bf16_only_where_the_cpu_computes_it(monkeypatch, flags, kind, auto):
    import tuning.hardware

    info = f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n"
    assert tuning.hardware.cpu_kind(info) == kind
    monkeypatch.setattr(tuning.hardware, "cpu_kind", lambda cpuinfo=None: kind)
    assert resolve_precision("auto", torch.device("cpu")) == auto


def test_the_cpu_model_is_read_from_cpuinfo():
    from tuning.hardware import cpu_model

    assert cpu_model("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor @ 2.50GHz\nflags\t: fpu\n") \
        == "Intel(R) Xeon(R) Processor @ 2.50GHz"
    assert cpu_model("processor\t: 0\n") != ""  # platform's answer, never empty


@pytest.fixture
def cudnn_attention():
    """cuDNN attention's process-wide switch, on for the test and restored after it."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


@pytest.mark.timeout(30)
def test_on_a_gpu_attention_stays_off_cudnn_kernels_and_a_cpu_changes_nothing(cudnn_attention):
    from tuning.kernels import attention_kernels

    attention_kernels(torch.device("cpu"))
    assert torch.backends.cuda.cudnn_sdp_enabled()
    attention_kernels(torch.device("cuda"))
    assert not torch.backends.cuda.cudnn_sdp_enabled()


@pytest.mark.parametrize("bf16_supported, expected", [(True, "bf16"), (False, "fp16")])
def test_auto_on_a_gpu_is_bf16_where_it_computes_bf16_and_fp16_before(monkeypatch, bf16_supported, expected):
    """Ampere and newer compute bf16 natively; older GPUs get fp16 (with a loss scaler in train)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_supported)
    assert resolve_precision("auto", torch.device("cuda")) == expected
