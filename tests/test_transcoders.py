"""Cross-layer transcoders: JumpReLU, decoding against a brute-force loop, circuit-tracer layout, SAELens
export, training (loss falls, resume is exact), and the shipped transcoders' quality."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from circuitry.errors import CircuitryError
from circuitry.transcoders import (
    CLTConfig,
    CLTTrainConfig,
    CrossLayerTranscoder,
    default_clt,
    evaluate_clt,
    load_clt,
    save_clt,
    to_sae_lens,
    train_clt,
)
from circuitry.transcoders.clt import JumpReLU
from tests.random_models import BASE


def random_clt(n_layers=3, d_model=8, features=5, cross_layer=True, seed=0):
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CLTConfig(n_layers, d_model, features, cross_layer, threshold_init=0.1))
    with torch.no_grad():
        clt.b_enc.normal_()
        clt.b_dec.normal_()
        clt.input_scale.uniform_(0.5, 2)
        clt.output_scale.uniform_(0.5, 2)
        for w in clt.W_dec:
            w.normal_()
    return clt


def test_jumprelu_forward_and_threshold_gradient_by_hand():
    z = torch.tensor([[0.05, 0.3, 1.0]], requires_grad=True)
    theta = torch.tensor([0.2, 0.2, 0.2], requires_grad=True)
    out = JumpReLU.apply(z, theta, 0.5)
    assert out.tolist() == [[0.0, pytest.approx(0.3), 1.0]]
    out.sum().backward()
    assert z.grad.tolist() == [[0.0, 1.0, 1.0]]
    # window |z − θ| < 0.25: entries 0 (|−0.15|) and 1 (0.1) are inside, entry 2 (0.8) is not; each gives −θ/ε
    assert theta.grad.tolist() == pytest.approx([-0.4, -0.4, 0.0])


@pytest.mark.parametrize("cross_layer", [True, False])
def test_decode_matches_a_brute_force_loop(cross_layer):
    clt = random_clt(cross_layer=cross_layer)
    acts = torch.relu(torch.randn(2, 4, 3, 5))
    out = clt.decode(acts)
    for l_out in range(3):
        ref = clt.b_dec[l_out].clone().expand(2, 4, -1).clone()
        for l_in in range(l_out + 1):
            if not cross_layer and l_in != l_out:
                continue
            for f in range(5):
                ref += acts[..., l_in, f, None] * clt.W_dec[l_in][f, l_out - l_in] * clt.output_scale[l_out]
        assert torch.allclose(out[..., l_out, :], ref, atol=1e-5)
        assert torch.allclose(clt.decode_layer(acts, l_out), ref, atol=1e-5)


def _fake_model(n_layers=3, d_model=8):
    """A tiny HookedTransformer (only its fingerprint and name are used by save/load)."""
    from circuitry.zoo.registry import build_model

    m = build_model({**BASE, "n_layers": n_layers, "d_model": d_model, "d_head": 4, "n_heads": 2}, seed=0)
    m.cfg.model_name = "random"
    return m


def test_circuit_tracer_layout_and_round_trip(tmp_path):
    clt, model = random_clt(), _fake_model()
    save_clt(clt, tmp_path, model)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder"
    assert config["feature_input_hook"] == "hook_resid_mid" and config["feature_output_hook"] == "hook_mlp_out"
    for l in range(3):
        enc = load_file(tmp_path / f"W_enc_{l}.safetensors")
        assert {k: tuple(v.shape) for k, v in enc.items()} == {f"W_enc_{l}": (5, 8), f"b_enc_{l}": (5,), f"b_dec_{l}": (8,), f"threshold_{l}": (5,)}
        assert tuple(load_file(tmp_path / f"W_dec_{l}.safetensors")[f"W_dec_{l}"].shape) == (5, 3 - l, 8)
    loaded = load_clt(tmp_path, model)
    x = torch.randn(2, 4, 3, 8) * 3
    (r1, a1), (r2, a2) = clt(x), loaded(x)
    assert torch.allclose(a1, a2, atol=1e-5) and torch.allclose(r1, r2, atol=1e-4)


def test_load_refuses_corrupt_files_and_other_models(tmp_path):
    clt, model = random_clt(), _fake_model()
    save_clt(clt, tmp_path, model)
    other = _fake_model()
    with torch.no_grad():
        other.W_E.add_(1)
    with pytest.raises(CircuitryError, match="different model"):
        load_clt(tmp_path, other)
    raw = bytearray((tmp_path / "W_dec_1.safetensors").read_bytes())
    raw[-3] ^= 0xFF
    (tmp_path / "W_dec_1.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CircuitryError, match="fingerprint"):
        load_clt(tmp_path, model)
    (tmp_path / "W_enc_0.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(CircuitryError, match="W_enc_0"):
        load_clt(tmp_path, model)
    bogus = random_clt()
    bogus.cfg.feature_input_hook = "hook_bogus"  # consistent record, yaml and headers, but no such hook in the model
    save_clt(bogus, tmp_path / "bogus", model)
    with pytest.raises(CircuitryError, match="the model has no hook 'hook_bogus'"):
        load_clt(tmp_path / "bogus", model)
    with pytest.raises(CircuitryError, match="feature_output_hook 'hook_resid_post' is not supported"):  # was silently ignored
        CLTConfig(2, 8, 4, feature_output_hook="hook_resid_post")


def test_per_layer_transcoders_export_to_sae_lens(tmp_path):
    clt, model = random_clt(cross_layer=False), _fake_model()
    save_clt(clt, tmp_path, model)
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["model_kind"] == "transcoder_set"
    assert set(load_file(tmp_path / "layer_0.safetensors")) == {"W_enc", "W_dec", "b_enc", "b_dec", "activation_function.threshold"}
    loaded = load_clt(tmp_path, model)
    x = torch.randn(6, 8) * 3
    for l, tc in enumerate(to_sae_lens(loaded)):
        pre = loaded.pre_activations(x[:, None].expand(-1, 3, -1))[:, l]
        ours = loaded.activate(pre[:, None].expand(-1, 3, -1))[:, l]
        assert torch.allclose(tc.encode(x), ours, atol=1e-5)
        recon = loaded.decode_layer(torch.stack([ours if j == l else torch.zeros_like(ours) for j in range(3)], 1), l)
        assert torch.allclose(tc.decode(tc.encode(x)), recon, atol=1e-4)
    with pytest.raises(CircuitryError, match="no SAELens class"):
        to_sae_lens(random_clt())


def test_training_reduces_loss_and_resume_is_exact(dense, tmp_path):
    import shutil

    from circuitry import load_model

    cfg = CLTTrainConfig(d_transcoder=32, steps=24, batch_size=4, checkpoint_every=12, log_every=1, warmup=4, lr=1e-2)
    full, _ = train_clt(dense, tmp_path / "a", cfg, progress=False)
    log = (tmp_path / "a" / "train_log.jsonl").read_text().splitlines()
    assert json.loads(log[-1])["mse"] < 0.6 * json.loads(log[0])["mse"]
    # a run killed after its step-12 checkpoint: that checkpoint plus a log with a few records past it
    (tmp_path / "b").mkdir()
    shutil.copy(tmp_path / "a" / "checkpoint.safetensors", tmp_path / "b")
    (tmp_path / "b" / "train_log.jsonl").write_text("\n".join(log[:15]) + "\n")
    with pytest.raises(CircuitryError, match="different config"):
        train_clt(dense, tmp_path / "b", CLTTrainConfig(**{**cfg.__dict__, "steps": 30}), resume=True, progress=False)
    with pytest.raises(CircuitryError, match="was made from another model"):  # the same shapes, other activations
        train_clt(load_model("tiny-sparse"), tmp_path / "b", cfg, resume=True, progress=False)
    with torch.no_grad():  # autograd switched off by the caller (as in many notebooks): training turns it on
        resumed, _ = train_clt(dense, tmp_path / "b", cfg, resume=True, progress=False)
    for (n, p), (_, q) in zip(full.named_parameters(), resumed.named_parameters()):
        assert torch.equal(p, q), n
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k != "seconds"} for x in lines]  # noqa: E731
    assert strip((tmp_path / "b" / "train_log.jsonl").read_text().splitlines()) == strip(log)


@pytest.mark.parametrize("name", ["tiny-dense", "tiny-sparse"])
def test_shipped_transcoders_meet_the_quality_bar(name):
    from circuitry import load_model

    model = load_model(name)
    clt = default_clt(model)
    q = evaluate_clt(model, clt, n_sequences=64)
    assert q.mean_explained_variance >= 0.85
    assert q.ce_recovered >= 0.8
    assert q.ce_zero_ablation > q.ce_replacement > q.ce_original - 0.05
