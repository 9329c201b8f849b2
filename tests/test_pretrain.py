"""Pretraining: the loss goes down; a killed run resumes to the same weights; `circuitry zoo build` end to end."""

import dataclasses
import json

import pytest
import torch
from typer.testing import CliRunner

from circuitry import load_model
from circuitry.artifacts import load_tensors
from circuitry.cli import app
from circuitry.errors import CircuitryError
from circuitry.zoo.language import SyntheticLanguage
from circuitry.zoo.pretrain import CHECKPOINT, LOG, PretrainConfig, dropout_hooks, pretrain
from circuitry.zoo.registry import build_model
from circuitry.zoo.tokenizer import build_tokenizer

runner = CliRunner()

TINY = dict(n_layers=1, n_heads=2, d_model=32, d_mlp=64, n_ctx=32, batch_size=8, lr=1e-2, warmup=2, heldout_sequences=16)


def test_few_steps_lower_the_loss(tmp_path):
    pretrain(PretrainConfig(steps=40, log_every=1, **TINY), tmp_path / "m", progress=False)
    losses = [json.loads(line)["loss"] for line in (tmp_path / "m" / LOG).read_text().splitlines()]
    assert len(losses) == 40
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 1.0  # measured: 6.1 -> 4.6 nats
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["heldout_ce"] < losses[0]
    assert not (tmp_path / "m" / CHECKPOINT).exists()


@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, monkeypatch, dropout):
    cfg = PretrainConfig(steps=6, checkpoint_every=3, dropout=dropout, **TINY)  # dropout draws from the saved RNG
    pretrain(cfg, tmp_path / "full", progress=False)

    import circuitry.zoo.pretrain as pt

    real = pt.save_checkpoint

    def save_then_die(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt  # the process is killed right after the first checkpoint

    monkeypatch.setattr(pt, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(pt, "save_checkpoint", real)
    assert (tmp_path / "cut" / CHECKPOINT).exists()
    with pytest.raises(CircuitryError, match="--resume"):
        pretrain(cfg, tmp_path / "cut", progress=False)
    pretrain(cfg, tmp_path / "cut", resume=True, progress=False)
    a, _ = load_tensors(tmp_path / "full" / "model.safetensors")
    b, _ = load_tensors(tmp_path / "cut" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_from_before_an_option_existed_resumes_at_its_default(tmp_path):
    from circuitry.checkpoint import load_checkpoint, resume_run, save_checkpoint

    cfg = PretrainConfig(**TINY)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    old = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("dropout", "ioi_share")}  # written by 0.x
    save_checkpoint(tmp_path / "c.safetensors", model, opt, 7, {"config": old})
    step, state = resume_run(tmp_path / "c.safetensors", model, opt, cfg)
    assert step == 7 and state["config"] == old
    for changed in (dict(dropout=0.05), dict(ioi_share=0.04), dict(seed=1)):  # a new option set, or an old one changed
        with pytest.raises(CircuitryError, match="different config"):
            resume_run(tmp_path / "c.safetensors", model, opt, PretrainConfig(**{**TINY, **changed}))
    save_checkpoint(tmp_path / "d.safetensors", model, opt, 7, {"config": {**old, "gone": 1}})  # an option since removed
    with pytest.raises(CircuitryError, match="different config"):
        resume_run(tmp_path / "d.safetensors", model, opt, cfg)
    assert load_checkpoint(tmp_path / "d.safetensors", model, opt)[0] == 7


def test_dropout_hooks_drop_gpt2_sites_at_rate_p():
    tokenizer = build_tokenizer()
    cfg = PretrainConfig(**TINY)
    model = build_model(cfg.arch(len(tokenizer)), tokenizer, seed=0)
    tokens = torch.randint(0, len(tokenizer), (16, 32))
    assert dropout_hooks(model, 0.0) == []
    with pytest.raises(CircuitryError, match="dropout"):
        PretrainConfig(dropout=1.0)
    _, clean = model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_pre")
    torch.manual_seed(0)
    p, seen = 0.25, {}
    with model.hooks(fwd_hooks=dropout_hooks(model, p)):
        _, dropped = model.run_with_cache(tokens)
    x, ref = dropped["blocks.0.hook_resid_pre"], clean["blocks.0.hook_resid_pre"]
    kept = x != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.02  # 16 x 32 x 32 entries
    assert torch.allclose(x[kept], ref[kept] / (1 - p))  # inverted dropout: survivors scaled by 1 / (1 - p)
    causal = torch.ones(32, 32).tril().bool()  # the pattern is 0 above the diagonal before any dropout
    for name in ("blocks.0.attn.hook_pattern", "blocks.0.hook_attn_out", "blocks.0.hook_mlp_out"):
        x = dropped[name][..., causal] if name.endswith("pattern") else dropped[name]
        seen[name] = (x == 0).float().mean().item()
        assert abs(seen[name] - p) < 0.03, seen
    assert not model.hook_dict["blocks.0.hook_mlp_out"]._forward_hooks  # removed after the block


def test_a_corrupted_checkpoint_is_refused_before_resuming(tmp_path):
    """A flipped byte in a tensor, or a NaN written with a matching header: refused in one line, nothing loaded."""
    from circuitry.artifacts import load_tensors, save_tensors
    from circuitry.checkpoint import load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    model = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(4, 64)).sum().backward()
    opt.step()
    path = tmp_path / "c.safetensors"
    save_checkpoint(path, model, opt, 3, {"lam": 1.0})
    before = model.weight.detach().clone()
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # inside the tensor data, as a disk error would
    path.write_bytes(bytes(raw))
    with pytest.raises(CircuitryError, match="does not match its recorded fingerprint"):
        load_checkpoint(path, model, opt)
    assert torch.equal(model.weight, before)
    save_checkpoint(path, model, opt, 3, {"lam": 1.0})
    tensors, meta = load_tensors(path)
    tensors["model.weight"][0, 0] = float("nan")
    save_tensors(path, tensors, {k: v for k, v in meta.items() if k != "fingerprint"})  # no fingerprint: still checked
    with pytest.raises(CircuitryError, match="non-finite"):
        load_checkpoint(path, model, opt)
    save_checkpoint(path, model, opt, 3, {"lam": 1.0})
    assert load_checkpoint(path, model, opt)[0] == 3  # an intact one loads


def test_zoo_build_then_eval_the_built_model(tmp_path):
    out = tmp_path / "built"
    res = runner.invoke(app, ["zoo", "build", "--out", str(out), "--steps", "3", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta["pretrain_config"]["steps"] == 3 and meta["heldout_ce"] > 0 and meta["name"] == "built"
    assert (out / "plots" / "training_curves.html").exists()  # the training log as a figure
    res = runner.invoke(app, ["eval", "--task", "sva", "--model", str(out), "--n", "10", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["n"] == 10
    res = runner.invoke(app, ["zoo", "build", "--out", str(out), "--steps", "3", "--resume"])
    assert res.exit_code == 1 and f"nothing to resume: no {out}/checkpoint.safetensors ({out} holds a finished run)" in res.stderr


def test_zoo_build_other_architecture(tmp_path):
    out = tmp_path / "small"
    args = ["zoo", "build", "--out", str(out), "--steps", "2", "--n-layers", "1", "--n-heads", "2", "--d-model", "16", "--d-mlp", "32",
            "--ioi-subject-rate", "0.05", "--ioi-share", "0.1", "--dropout", "0.1"]  # fmt: skip
    res = runner.invoke(app, args + ["--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["n_layers"], cfg["n_heads"], cfg["d_head"], cfg["d_model"], cfg["d_mlp"]) == (1, 2, 8, 16, 32)
    assert meta["command"].endswith("--steps 2 --seed 0 --n-layers 1 --n-heads 2 --d-model 16 --d-mlp 32 --ioi-subject-rate 0.05 --ioi-share 0.1 --dropout 0.1")
    assert meta["pretrain_config"]["ioi_subject_rate"] == 0.05 and meta["pretrain_config"]["dropout"] == 0.1
    # the language travels with the model: sparse post-training (and connectivity, CLTs) read text of it
    assert SyntheticLanguage.of(load_model(str(out))).options() == {"ioi_subject_rate": 0.05, "ioi_share": 0.1}
    assert SyntheticLanguage.of(load_model("tiny-dense")).options() == {}
    res = runner.invoke(app, ["sparsify", "--model", str(out), "--out", str(tmp_path / "sp"), "--steps", "2", "--no-plots", "--json"])
    assert res.exit_code == 0, res.output
    assert SyntheticLanguage.of(load_model(str(tmp_path / "sp"))).options() == {"ioi_subject_rate": 0.05, "ioi_share": 0.1}
    bad_args = ((["--d-model", "10", "--n-heads", "4"], "not divisible"), (["--n-layers", "0"], "n_layers must be positive"),
                (["--ioi-subject-rate", "0.7"], "subject rate"), (["--ioi-share", "0"], "IOI share"),
                (["--dropout", "1"], "dropout must be in [0, 1)"))  # fmt: skip
    for bad, msg in bad_args:
        res = runner.invoke(app, ["zoo", "build", "--out", str(tmp_path / "bad"), "--steps", "2", *bad])
        assert res.exit_code == 1 and msg in res.stderr and not (tmp_path / "bad" / "config.json").exists()
