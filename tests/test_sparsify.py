"""Sparse post-training: resume equivalence, NaN handling, saved sparse models load with gates on."""

import json
from contextlib import contextmanager

import pytest
import torch

from circuitry.artifacts import load_tensors
from circuitry.errors import CircuitryError
from circuitry.sparsity import SparsifyConfig, sparsify
from circuitry.sparsity.train import CHECKPOINT, LOG
from circuitry.zoo.registry import build_model, load_model

ARCH = dict(n_layers=1, d_model=32, d_head=8, n_heads=4, d_mlp=64, n_ctx=24, act_fn="gelu", normalization_type="LN",
            positional_embedding_type="standard", attn_only=False, default_prepend_bos=True, n_key_value_heads=None,
            rotary_dim=None, gated_mlp=False, original_architecture=None)  # fmt: skip
CFG = dict(steps=6, batch_size=4, checkpoint_every=3, log_every=1, heldout_sequences=8, lr=1e-3)


def tiny(tok):
    return build_model({**ARCH, "d_vocab": len(tok)}, tok, seed=0)


@contextmanager
def interrupted_at_first_checkpoint(monkeypatch):
    """Inside: sparse post-training writes its first checkpoint, then stops as if interrupted (KeyboardInterrupt,
    which the block expects)."""
    import circuitry.sparsity.train as tr

    real = tr.save_checkpoint

    def save_then_die(*a, **k):
        real(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(tr, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        yield
    monkeypatch.setattr(tr, "save_checkpoint", real)


def test_interrupted_sparsify_resumes_to_identical_weights(small_tokenizer, tmp_path, monkeypatch):
    cfg = SparsifyConfig(**CFG)
    sparsify(tiny(small_tokenizer), tmp_path / "full", cfg, progress=False)

    with interrupted_at_first_checkpoint(monkeypatch):
        sparsify(tiny(small_tokenizer), tmp_path / "cut", cfg, progress=False)
    assert (tmp_path / "cut" / CHECKPOINT).exists()
    other = build_model({**ARCH, "d_vocab": len(small_tokenizer)}, small_tokenizer, seed=1)  # same shapes, other weights
    with pytest.raises(CircuitryError, match="was made from another model"):
        sparsify(other, tmp_path / "cut", cfg, resume=True, progress=False)
    sparsify(tiny(small_tokenizer), tmp_path / "cut", cfg, resume=True, progress=False)
    a, _ = load_tensors(tmp_path / "full" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert "gates.bias" in a and a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    full_log = (tmp_path / "full" / LOG).read_text().splitlines()
    cut_log = (tmp_path / "cut" / LOG).read_text().splitlines()
    strip = lambda rows: [{k: v for k, v in json.loads(r).items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(cut_log) == strip(full_log)


def test_sparsify_runs_with_autograd_switched_off_and_refuses_inference_mode(small_tokenizer, tmp_path):
    cfg = SparsifyConfig(**{**CFG, "steps": 2})
    sparsify(tiny(small_tokenizer), tmp_path / "ref", cfg, progress=False)
    with torch.no_grad():  # as at the top of many notebooks: training switches autograd on for itself
        sparsify(tiny(small_tokenizer), tmp_path / "off", cfg, progress=False)
    a, _ = load_tensors(tmp_path / "ref" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "off" / "model.safetensors")
    assert not torch.equal(a["gates.bias"], torch.full_like(a["gates.bias"], a["gates.bias"].flatten()[0]))  # trained
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.inference_mode(), pytest.raises(CircuitryError, match="sparse post-training needs gradients"):
        sparsify(tiny(small_tokenizer), tmp_path / "inf", cfg, progress=False)
    assert not (tmp_path / "inf").exists()


def test_a_target_below_the_dense_ce_is_named_as_the_reason(small_tokenizer, tmp_path):
    with pytest.raises(CircuitryError, match="give target_ce or tolerance, not both"):
        SparsifyConfig(**CFG, target_ce=2.0, tolerance=0.01)
    with pytest.warns(UserWarning, match=r"the constraint is not met \(the target is below the dense model's own CE"):
        _, meta = sparsify(tiny(small_tokenizer), tmp_path / "s", SparsifyConfig(**{**CFG, "steps": 2}, target_ce=0.5), progress=False)
    assert meta["target_ce"] == 0.5 and meta["dense_heldout_ce"] > 0.5 and "target_ce=0.5" in meta["command"].split("  # ")[1]


def test_saved_sparse_model_loads_with_deterministic_gates(small_tokenizer, tmp_path):
    model, meta = sparsify(tiny(small_tokenizer), tmp_path / "s", SparsifyConfig(**CFG), progress=False)
    again = load_model(str(tmp_path / "s"))
    assert again.gates.mode == "eval" and torch.equal(again.gates.bias, model.gates.bias)
    x = again.to_tokens("Then, Mary and John went to the park. John gave a ball to")
    assert torch.equal(again(x), model(x))
    assert 0 < meta["connectivity"] <= 1 and meta["floor"] == pytest.approx(2 / 25)
    assert all(p.grad is None for p in model.parameters())  # no stale gradients for the caller's next backward


def test_fixed_biases_and_renormalised_rows_are_options_that_reload(small_tokenizer, tmp_path):
    """learn_bias=False keeps every head's bias at bias_init while the weights train; renormalise=True is saved
    and reloaded with the model (its rows sum to 1); the meta command names both."""
    cfg = SparsifyConfig(**CFG, learn_bias=False, renormalise=True)
    model, meta = sparsify(tiny(small_tokenizer), tmp_path / "s", cfg, progress=False)
    assert torch.all(model.gates.bias == cfg.bias_init) and not model.gates.bias.requires_grad
    again = load_model(str(tmp_path / "s"))
    command, python = meta["command"].split("  # and, from Python: ")  # CFG sets fields the CLI has no flag for
    assert again.gates.renormalise and command.endswith("--fixed-bias --renormalise")
    assert python == "checkpoint_every=3, log_every=1, heldout_sequences=8"
    x = again.to_tokens("Then, Mary and John went to the park. John gave a ball to")
    _, cache = again.run_with_cache(x, names_filter="blocks.0.attn.hook_pattern")
    rows = cache["blocks.0.attn.hook_pattern"].sum(-1)
    assert torch.allclose(rows[rows > 0], torch.ones(()), atol=1e-5) and torch.equal(again(x), model(x))


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(small_tokenizer, tmp_path, monkeypatch):
    model = tiny(small_tokenizer)
    calls = {"n": 0}
    real_forward = model.forward

    def forward(*a, **k):
        calls["n"] += 1
        out = real_forward(*a, **k)
        return out * float("nan") if calls["n"] > 5 else out  # 1 held-out forward + 4 good steps, then NaN

    monkeypatch.setattr(model, "forward", forward)
    with pytest.raises(CircuitryError, match="non-finite loss at step 4; last good checkpoint kept at"):
        sparsify(model, tmp_path / "n", SparsifyConfig(**{**CFG, "checkpoint_every": 2}), progress=False)
    _, meta = load_tensors(tmp_path / "n" / CHECKPOINT)
    assert meta["step"] == 4
    from circuitry.sparsity import detach_gates

    detach_gates(model)
    calls["n"] = 0  # the same failure before the first checkpoint names none
    with pytest.raises(CircuitryError, match="non-finite loss at step 4; no checkpoint was written before it"):
        sparsify(model, tmp_path / "m", SparsifyConfig(**{**CFG, "checkpoint_every": 50}), progress=False)
    assert not (tmp_path / "m" / CHECKPOINT).exists()


def test_training_refuses_unsuitable_models_before_writing_anything(tmp_path):
    """A gated model (sparsify), a model without a tokenizer (sparsify), an attention-only model (CLT training):
    one-line errors, and no run directory left behind."""
    from circuitry.sparsity import attach_gates
    from circuitry.transcoders import CLTTrainConfig
    from circuitry.transcoders.train import train_clt
    from tests.random_models import BASE

    gated = build_model(BASE, seed=0)
    attach_gates(gated)
    with pytest.raises(CircuitryError, match="already has gates"):
        sparsify(gated, tmp_path / "a", SparsifyConfig(steps=1), progress=False)
    with pytest.raises(CircuitryError, match="no tokenizer"):
        sparsify(build_model(BASE, seed=0), tmp_path / "b", SparsifyConfig(steps=1), progress=False)
    with pytest.raises(CircuitryError, match="no MLPs"):
        train_clt(build_model({**BASE, "attn_only": True, "d_mlp": None}, seed=0), tmp_path / "c", CLTTrainConfig(steps=1), progress=False)
    assert not any(tmp_path.iterdir())
