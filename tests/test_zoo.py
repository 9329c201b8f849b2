"""Model zoo: offline loading, fingerprints, clear errors on bad names and bad files."""

import re
import shutil
import pytest
import torch

import circuitry
from circuitry import load_model
from circuitry.errors import CircuitryError
from circuitry.zoo.registry import ZOO_DIR, list_models, load_model_dir, model_fingerprint, save_model


def test_zoo_model_loads_offline_with_tokenizer():
    model = load_model("tiny-dense")  # load time is measured in benchmarks/bench_zoo.py
    assert model.tokenizer is not None and not model.training
    assert model.cfg.n_layers == 4 and model.cfg.n_heads == 8 and model.cfg.n_ctx >= 64
    assert model.circuitry_info["fingerprint"] == model_fingerprint(model)
    assert "tiny-dense" in [m["name"] for m in list_models()]


def test_save_load_round_trip_is_exact(dense, tmp_path):
    save_model(dense, tmp_path / "m", {"note": "copy"})
    again = load_model(str(tmp_path / "m"))
    toks = dense.to_tokens("Then, Mary and John went to the park. John gave a ball to")
    assert torch.equal(dense(toks), again(toks))
    assert model_fingerprint(again) == model_fingerprint(dense)


@pytest.mark.parametrize(
    "extra",
    [
        dict(positional_embedding_type="rotary", rotary_dim=8, rotary_base=500, parallel_attn_mlp=True),  # Pythia-like
        dict(eps=1e-2, use_attn_scale=False, d_vocab_out=50),
        dict(dtype=torch.float64),
    ],
)
def test_round_trip_keeps_every_config_field_that_changes_the_function(dense, tmp_path, extra):
    from circuitry.zoo.registry import ARCH_KEYS, build_model

    arch = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, d_mlp=64, d_vocab=dense.cfg.d_vocab, n_ctx=32, act_fn="gelu",
                normalization_type="LN")  # fmt: skip
    model = build_model({**arch, **extra}, dense.tokenizer, seed=0)
    save_model(model, tmp_path / "m")
    again = load_model(str(tmp_path / "m"))
    toks = torch.randint(1, dense.cfg.d_vocab, (2, 12))
    assert torch.equal(model(toks), again(toks)) and again.cfg.dtype == model.cfg.dtype
    recorded = set(__import__("json").loads((tmp_path / "m" / "config.json").read_text())) - set(ARCH_KEYS)
    assert set(extra) - set(ARCH_KEYS) <= recorded  # (with what follows from them, e.g. attn_scale)
    assert set(__import__("json").loads((ZOO_DIR / "tiny-dense" / "config.json").read_text())) == set(ARCH_KEYS)


def _copy(tmp_path):
    dst = tmp_path / "copy"
    shutil.copytree(ZOO_DIR / "tiny-dense", dst)
    return dst


def test_truncated_weights_file_is_a_clear_error(tmp_path):
    d = _copy(tmp_path)
    (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000])
    with pytest.raises(CircuitryError, match="not a valid safetensors file"):
        load_model_dir(d)


def test_modified_weights_fail_the_fingerprint(tmp_path):
    d = _copy(tmp_path)
    raw = bytearray((d / "model.safetensors").read_bytes())
    raw[-5] ^= 0xFF  # flip bits inside the last tensor
    (d / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CircuitryError, match="fingerprint"):
        load_model_dir(d)


def test_config_that_does_not_match_weights(tmp_path):
    import json

    d = _copy(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    cfg["d_mlp"] = 64
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CircuitryError, match="config"):
        load_model_dir(d)


def test_meta_json_must_describe_these_weights(tmp_path, monkeypatch):
    import json

    sparse = load_model("tiny-sparse")
    save_model(sparse, tmp_path / "copy")  # a copy keeps its parent and language (compare's pair check reads them)
    assert load_model_dir(tmp_path / "copy").circuitry_info["parent"] == "tiny-dense"
    meta = json.loads((tmp_path / "copy" / "meta.json").read_text())
    assert meta["circuitry_version"] == circuitry.__version__
    for bad, message in (({**meta, "fingerprint": "0" * 16}, "describes other weights (fingerprint 0000000000000000"),
                         ({**meta, "ioi_subject_rate": "abc"}, "meta.json: malformed or foreign file (TypeError"),
                         ([1, 2], "meta.json must be a JSON object")):  # fmt: skip
        (tmp_path / "copy" / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(CircuitryError, match=re.escape(message)):
            load_model_dir(tmp_path / "copy")
    shutil.copytree(ZOO_DIR / "tiny-dense", tmp_path / "tiny-dense")  # a local folder with a zoo model's name
    monkeypatch.chdir(tmp_path)
    with pytest.warns(UserWarning, match="'tiny-dense' is a zoo model and a model directory here; loading the zoo model"):
        assert load_model("tiny-dense").circuitry_info["path"] == str(ZOO_DIR / "tiny-dense")


@pytest.mark.parametrize("name, message", [("no-such-model", "unknown model"), ("gpt2", "offline"), ("", "empty")])
def test_bad_model_names(name, message):
    with pytest.raises(CircuitryError, match=message):
        load_model(name)


@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction", "sva"])
def test_shipped_dense_model_solves_the_tasks(dense, task):
    from circuitry import evaluate_task, get_task

    score = evaluate_task(dense, get_task(task, dense), n=200, seed=2024)
    assert score.accuracy >= 0.95, score
    if task == "ioi":
        assert score.mean_metric >= 2.5
    assert score.mean_metric_corrupt < 0.5 * score.mean_metric  # the corruption removes (or flips) the effect


@pytest.fixture(scope="module")
def sparse():
    return load_model("tiny-sparse")


def test_shipped_sparse_model_is_sparse_and_keeps_its_loss(sparse, dense):
    from circuitry.sparsity import connectivity_report
    from circuitry.zoo.pretrain import TokenStream, heldout_ce

    assert sparse.gates.mode == "eval"
    report = connectivity_report(sparse, n=64)
    assert report.connectivity <= 3 * report.floor  # measured 2.6-3.0x on other held-out sets
    stream = TokenStream(dense.tokenizer)
    assert heldout_ce(sparse, stream, 256) <= 1.01 * heldout_ce(dense, stream, 256)


@pytest.mark.parametrize("task", ["ioi", "greater-than", "induction", "sva"])
def test_shipped_sparse_model_keeps_task_accuracy(sparse, dense, task):
    from circuitry import evaluate_task, get_task

    s = evaluate_task(sparse, get_task(task, sparse), n=200, seed=77).accuracy
    d = evaluate_task(dense, get_task(task, dense), n=200, seed=77).accuracy
    assert s >= d - 0.02, (s, d)
