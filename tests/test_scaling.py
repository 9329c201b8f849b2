"""Options large models need: LoRA adapters, gradient accumulation, bf16 autocast, activation checkpointing;
each checked against the plain run it must reproduce (or, for bf16, approximate)."""

import json

import pytest
import torch

from circuitry.artifacts import load_tensors
from circuitry.errors import CircuitryError
from circuitry.lora import add_lora, has_lora, merge_lora
from circuitry.sparsity import SparsifyConfig, attach_gates, expected_connectivity, sparsify
from circuitry.training import autocast, micro_batches, set_activation_checkpointing
from circuitry.transcoders import CLTTrainConfig, train_clt
from circuitry.zoo.registry import build_model

ARCH = dict(n_layers=2, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=24, act_fn="gelu", normalization_type="LN",
            positional_embedding_type="standard", attn_only=False, default_prepend_bos=True, n_key_value_heads=None,
            rotary_dim=None, gated_mlp=False, original_architecture=None)  # fmt: skip
CFG = dict(steps=4, batch_size=8, checkpoint_every=100, log_every=1, heldout_sequences=8, lr=1e-3, bias_lr=0.1)


def tiny(tok, **arch):
    return build_model({**ARCH, **arch, "d_vocab": len(tok)}, tok, seed=0)


def weights(path):
    return load_tensors(path / "model.safetensors")[0]


def max_diff(a, b):
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def test_lora_starts_at_the_base_model_trains_adapters_only_and_merges_exactly(small_tokenizer):
    model = tiny(small_tokenizer, n_key_value_heads=2)  # grouped-query: adapters go on _W_K/_W_V
    x = torch.randint(1, len(small_tokenizer), (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        base = model(x)
    attach_gates(model, mode="train")
    adapters = add_lora(model, rank=2)
    assert has_lora(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.endswith((".A", ".B"))} | {"gates.bias"}
    model.gates.set_mode("off")
    with torch.no_grad():
        assert torch.equal(model(x), base)  # B = 0
        for p in adapters:
            p.normal_(0.0, 0.1)
        adapted = model(x)
        w_q = model.blocks[0].attn.W_Q.clone()
    merge_lora(model)
    assert not has_lora(model) and all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.allclose(model(x), adapted, atol=1e-5)
        assert torch.equal(model.blocks[0].attn.W_Q, w_q)
    with pytest.raises(CircuitryError, match="rank must be positive"):
        add_lora(model, 0)


def test_lora_sparsify_changes_each_weight_by_a_low_rank_delta(small_tokenizer, tmp_path):
    dense = tiny(small_tokenizer)
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    sparsify(dense, tmp_path / "lora", SparsifyConfig(**{**CFG, "lr": 1e-2, "qk_lr": 1e-2, "warmup": 1}, lora_rank=2), progress=False)
    after = weights(tmp_path / "lora")
    w_q = (after["blocks.0.attn.W_Q"] - before["blocks.0.attn.W_Q"]).permute(1, 0, 2).reshape(32, -1)
    w_in = after["blocks.1.mlp.W_in"] - before["blocks.1.mlp.W_in"]
    assert w_q.abs().max() > 1e-4 and w_in.abs().max() > 1e-4  # the adapters trained
    assert torch.linalg.matrix_rank(w_q).item() <= 2 and torch.linalg.matrix_rank(w_in).item() <= 2
    assert torch.equal(after["blocks.0.ln1.w"], before["blocks.0.ln1.w"])  # frozen outside the adapters
    assert after["gates.bias"].sub(SparsifyConfig.bias_init).abs().max() > 1e-3


def test_gradient_accumulation_matches_the_full_batch(small_tokenizer, tmp_path):
    sparsify(tiny(small_tokenizer), tmp_path / "one", SparsifyConfig(**CFG), progress=False)
    sparsify(tiny(small_tokenizer), tmp_path / "four", SparsifyConfig(**CFG, grad_accum=4), progress=False)
    assert max_diff(weights(tmp_path / "one"), weights(tmp_path / "four")) < 1e-5

    def clt(out, accum):
        torch.manual_seed(0)
        module, _ = train_clt(tiny(small_tokenizer), out, CLTTrainConfig(d_transcoder=16, steps=4, batch_size=8, grad_accum=accum), progress=False)
        return {k: v.detach() for k, v in module.state_dict().items()}

    assert max_diff(clt(tmp_path / "c1", 1), clt(tmp_path / "c2", 2)) < 1e-6
    with pytest.raises(CircuitryError, match="equal micro-batches"):
        micro_batches(torch.zeros(6, 3), 4)


def test_activation_checkpointing_gives_the_same_gradients_with_noisy_gates(small_tokenizer):
    def grads(checkpointing: bool):
        model = tiny(small_tokenizer)
        gates = attach_gates(model, mode="train", bias_init=1.0)
        set_activation_checkpointing(model, checkpointing)
        torch.manual_seed(3)  # gate noise
        x = torch.randint(1, len(small_tokenizer), (4, 20), generator=torch.Generator().manual_seed(1))
        loss = model(x, return_type="loss") + expected_connectivity(gates)
        loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain, ckpt = grads(False), grads(True)
    assert plain["gates.bias"].abs().max() > 0
    assert max_diff(plain, ckpt) < 1e-6


def test_activation_checkpointing_sparsify_ends_at_the_same_weights(small_tokenizer, tmp_path):
    sparsify(tiny(small_tokenizer), tmp_path / "a", SparsifyConfig(**CFG), progress=False)
    model = tiny(small_tokenizer)
    sparsify(model, tmp_path / "b", SparsifyConfig(**CFG, activation_checkpointing=True), progress=False)
    assert max_diff(weights(tmp_path / "a"), weights(tmp_path / "b")) < 1e-6
    assert all("forward" not in block.__dict__ for block in model.blocks)  # switched off after training


def test_bf16_autocast_trains_close_to_fp32(small_tokenizer, tmp_path):
    _, fp32 = sparsify(tiny(small_tokenizer), tmp_path / "f", SparsifyConfig(**CFG), progress=False)
    _, bf16 = sparsify(tiny(small_tokenizer), tmp_path / "b", SparsifyConfig(**CFG, precision="bf16"), progress=False)
    assert abs(bf16["heldout_ce"] - fp32["heldout_ce"]) < 0.02 * fp32["heldout_ce"]
    assert max_diff(weights(tmp_path / "f"), weights(tmp_path / "b")) > 0  # really ran in bf16
    log = [json.loads(line) for line in (tmp_path / "b" / "sparsify_log.jsonl").read_text().splitlines()]
    off_grid = lambda x, q: abs(x * q - round(x * q)) > 1e-3  # noqa: E731
    # the logged CE and connectivity (and the λ update) are float32 figures, not bf16's steps of 1/128 and 1/256
    assert all(off_grid(r["ce"], 128) for r in log) and any(off_grid(r["connectivity"], 256) for r in log)
    assert "--precision bf16" in bf16["command"]
    # a user's own model (not from the zoo) is recorded under its own name, not as tiny-dense's child
    assert bf16["parent"] == "custom" and bf16["command"].startswith("circuitry sparsify --model custom ")
    with pytest.raises(CircuitryError, match="unknown precision"):
        autocast("fp8", "cpu")


def test_sequence_length_beyond_the_context_is_refused(small_tokenizer, tmp_path):
    with pytest.raises(CircuitryError, match="sequence length 99"):
        sparsify(tiny(small_tokenizer), tmp_path / "x", SparsifyConfig(**CFG, seq_len=99), progress=False)
