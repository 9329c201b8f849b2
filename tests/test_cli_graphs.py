"""CLI for transcoders and attribution graphs: JSON keys, files written, one-line errors."""

import json

import pytest
from typer.testing import CliRunner

from circuitry.cli import app
from circuitry.zoo.registry import ZOO_DIR

runner = CliRunner()
PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_attribute_json_and_files(tmp_path):
    res = runner.invoke(app, ["attribute", PROMPT, "--model", "tiny-sparse", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"nodes", "edges", "replacement_score", "completeness_score", "heads_80", "head_key_pairs_80"} <= out.keys()
    assert 0 < out["nodes"] and 0 < out["heads_80"] <= 32
    assert out["top_logits"][0]["text"].strip() == "Mary" and out["top_logits"][0]["prob"] > 0.5  # the id's text, as printed
    for name in ("graph.safetensors", "graph.json", "graph-metadata.json", "attribution_graph.html", "head_loadings.html"):
        assert (tmp_path / name).exists(), name
    index = json.loads((tmp_path / "graph-metadata.json").read_text())
    index["graphs"].append({**index["graphs"][0], "slug": "other"})  # a graph another run wrote into this directory
    (tmp_path / "graph-metadata.json").write_text(json.dumps(index))
    res = runner.invoke(app, ["attribute", "When Mary and John went to the store", "--model", "tiny-sparse", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output  # the index is upserted as circuit-tracer does: "graph" replaced, "other" kept
    assert [g["slug"] for g in json.loads((tmp_path / "graph-metadata.json").read_text())["graphs"]] == ["other", "graph"]
    (tmp_path / "graph-metadata.json").write_text("[]")
    res = runner.invoke(app, ["attribute", PROMPT, "--model", "tiny-sparse", "--out", str(tmp_path)])
    assert res.exit_code == 1 and res.stderr.startswith(f"error: {tmp_path / 'graph-metadata.json'}: not a circuit-tracer graph index"), res.stderr


def test_compare_graphs_json():
    res = runner.invoke(app, ["compare-graphs", "--task", "ioi", "--n", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    for name in ("tiny-dense", "tiny-sparse"):
        assert {"nodes", "edges", "replacement_score", "completeness_score", "heads_80", "head_key_pairs_80"} <= out["models"][name].keys()
        assert len(out["models"][name]["per_prompt"]) == 2


def test_compare_graphs_takes_transcoders_and_warns_of_a_swapped_pair():
    """--dense-clt / --sparse-clt choose the transcoders (checked against their models); a pair given as
    (sparse, dense) warns, and the figures are those of the models named."""
    zoo_clt = {name: str(ZOO_DIR / name / "clt") for name in ("tiny-dense", "tiny-sparse")}
    args = ["compare-graphs", "--prompt", PROMPT, "--json"]
    default = runner.invoke(app, args)
    swapped = runner.invoke(app, [*args, "--dense", "tiny-sparse", "--sparse", "tiny-dense", "--dense-clt", zoo_clt["tiny-sparse"],
                                  "--sparse-clt", zoo_clt["tiny-dense"]])  # fmt: skip
    assert default.exit_code == 0 and swapped.exit_code == 0, default.output + swapped.output
    assert "is this the (dense, sparse) order?" in swapped.stderr and "order" not in default.stderr
    a, b = json.loads(default.stdout)["models"], json.loads(swapped.stdout)["models"]
    for name in ("tiny-dense", "tiny-sparse"):
        assert a[name]["nodes"] == b[name]["nodes"] and a[name]["heads_80"] == b[name]["heads_80"]
    wrong = runner.invoke(app, [*args, "--dense-clt", zoo_clt["tiny-sparse"]])
    assert wrong.exit_code == 1 and "trained on a different model than tiny-dense" in wrong.stderr


def test_clt_eval_says_when_the_data_gives_fewer_sequences_than_asked(tmp_path):
    from tests.test_data import docs

    (tmp_path / "d.txt").write_text(" ".join(docs(200)))
    res = runner.invoke(app, ["clt", "eval", "--data", str(tmp_path / "d.txt"), "--n", "256", "--json"])
    assert res.exit_code == 0, res.output
    got = json.loads(res.stdout)["n_sequences"]
    assert 0 < got < 256 and f"gives {got} sequences, fewer than --n 256" in res.stderr


def test_clt_train_then_eval(tmp_path):
    res = runner.invoke(app, ["clt", "train", "--model", "tiny-dense", "--out", str(tmp_path / "c"), "--steps", "6", "--features", "16", "--json"])
    assert res.exit_code == 0, res.output
    assert {"explained_variance", "l0", "dead_fraction", "ce_recovered"} <= json.loads(res.stdout).keys()
    assert not (tmp_path / "c" / "checkpoint.safetensors").exists()
    assert (tmp_path / "c" / "plots" / "training_curves.html").exists() and (tmp_path / "c" / "plots" / "clt_quality.html").exists()
    res = runner.invoke(app, ["clt", "eval", "--model", "tiny-dense", "--clt", str(tmp_path / "c"), "--n", "8", "--json", "--out", str(tmp_path / "q")])
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.stdout)["explained_variance"]) == 4 and json.loads(res.stdout)["n_sequences"] == 8
    # --out: the same numbers as a file, and the per-layer figure holding them
    assert json.loads((tmp_path / "q" / "quality.json").read_text()) == json.loads(res.stdout)
    html = (tmp_path / "q" / "clt_quality.html").read_text()
    assert all(f"{v:.6f}"[:6] in html for v in json.loads(res.stdout)["explained_variance"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["attribute", " "], "empty prompt"),
        (["attribute", " the" * 80], "the model's context is 64"),
        (["attribute", PROMPT, "--model", "tiny-sparse", "--clt", str(ZOO_DIR / "tiny-dense" / "clt")], "different model"),
        (["attribute", PROMPT, "--clt", "/nonexistent"], "not a transcoder directory"),
        (["attribute", PROMPT, "--node-threshold", "0"], "(0, 1]"),
        (["compare-graphs"], "exactly one of"),
        (["compare-graphs", "--task", "nope"], "unknown task"),
        (["clt", "eval", "--n", "0"], "positive"),
        (["clt", "train", "--out", "/tmp/x", "--steps", "0"], "positive"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(args, message):
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
