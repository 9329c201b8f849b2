"""A discovered circuit saved to JSON and read back: same edges and scores, same faithfulness, checks on load, and
`circuitry circuit-eval` on saved files."""

import json
import os
import re

import pytest
import torch
from typer.testing import CliRunner

from circuitry import get_task, load_model
from circuitry.circuits import Graph, discover, faithfulness, load_circuit
from circuitry.cli import app
from circuitry.errors import CircuitryError
from circuitry.zoo.registry import build_model
from tests.random_models import BASE

runner = CliRunner()


@pytest.fixture(scope="module")
def saved(dense, tmp_path_factory):
    path = tmp_path_factory.mktemp("circuit") / "ioi.json"
    found = discover(dense, "ioi", method="eap", n_prompts=20, seed=3, grid_points=6)
    found.save(path)
    return found, path


def test_a_saved_circuit_loads_back_with_its_edges_scores_and_faithfulness(dense, saved):
    found, path = saved
    original, loaded = found.circuit(0.9), load_circuit(path, dense)
    assert original is not None and loaded.edges == original.edges and loaded.nodes == original.nodes
    assert (loaded.n_edges, loaded.n_heads, loaded.n_mlps) == (original.n_edges, original.n_heads, original.n_mlps)
    assert torch.allclose(loaded.scores[loaded.edge_mask], original.scores[original.edge_mask], rtol=1e-6)
    task = get_task("ioi", dense)
    on_fresh = [faithfulness(dense, task, c.graph, c, n=30, seed=11).f for c in (original, loaded)]
    assert on_fresh[0] == on_fresh[1] and on_fresh[0] > 0.5  # the same circuit on prompts neither run has seen
    record = json.loads(path.read_text())
    assert record["format_version"] == 1 and record["model_fingerprint"] == found.model_fingerprint
    assert original.n_edges <= record["edges_at_0.9"]  # the budget that reached 0.9, before pruning dangling edges


def test_loading_checks_the_model_the_graph_and_the_file(dense, saved, tmp_path):
    _, path = saved
    sparse = load_model("tiny-sparse")
    with pytest.raises(CircuitryError, match="other weights than this model's; pass allow_other_model=True"):
        load_circuit(path, sparse)
    on_sparse = load_circuit(path, sparse, allow_other_model=True)  # the dense circuit on the sparse model: same graph
    assert on_sparse.edges == load_circuit(path, dense).edges
    other = build_model(BASE, seed=0)
    with pytest.raises(CircuitryError, match=f"a graph of 1519 edges, this model's has {Graph.from_model(other).n_edges}"):
        load_circuit(path, other, allow_other_model=True)
    record = json.loads(path.read_text())
    spec = record["circuit_at_0.9"]
    twice = {**spec, "edges": [spec["edges"][0], *spec["edges"][:-1]]}
    cases = {  # file: (record, message)
        "newer.json": ({**record, "format_version": 99}, "has artifact format 99"),
        "foreign.json": ({"model": "x"}, "is not a circuit file"),
        "target.json": ({k: v for k, v in record.items() if k != "circuit_at_0.9"} | {"circuit_at_0.8": spec}, "it has circuit_at_0.8"),
        "none.json": ({**record, "circuit_at_0.9": None}, "holds no circuit"),
        "broken.json": ({**record, "circuit_at_0.9": {**spec, "edges": 3}}, "circuit_at_0.9 needs 'edges' as a list of edge names"),
        "count.json": ({**record, "circuit_at_0.9": {k: v for k, v in spec.items() if k != "n_edges"}}, "needs 'n_edges' as an integer, got None"),
        "list.json": ({**record, "circuit_at_0.9": [spec]}, "circuit_at_0.9 must be an object"),
        "heads.json": ({**record, "circuit_at_0.9": {**spec, "n_heads": spec["n_heads"] + 1}},
                       f"n_heads is {spec['n_heads'] + 1} but its edges use {spec['n_heads']}"),
        "unsigned.json": ({k: v for k, v in record.items() if k != "model_fingerprint"}, "on a model it does not record"),
        "twice.json": ({**record, "circuit_at_0.9": twice}, f"{spec['n_edges']} edge names ({spec['n_edges'] - 1} distinct)"),
        "unknown.json": ({**record, "circuit_at_0.9": {**spec, "edges": ["zzz", *spec["edges"][1:]]}}, "no edge 'zzz' in this model's graph"),
        "nan.json": ({**record, "circuit_at_0.9": {**spec, "scores": [float("nan")] * spec["n_edges"]}}, "non-finite score"),
    }
    for name, (content, message) in cases.items():
        (tmp_path / name).write_text(json.dumps(content))
        with pytest.raises(CircuitryError, match=re.escape(message)):
            load_circuit(tmp_path / name, dense)
    assert load_circuit(tmp_path / "target.json", dense, target=0.8).edges == load_circuit(path, dense).edges
    (tmp_path / "cut.json").write_text(path.read_text()[:100])
    with pytest.raises(CircuitryError, match="not valid JSON"):
        load_circuit(tmp_path / "cut.json", dense)


def test_circuit_eval_finds_a_custom_task_by_its_file(tmp_path):
    dense = load_model("tiny-dense")
    pairs = get_task("ioi", dense).pairs(12, 0)
    task = tmp_path / "myioi.jsonl"
    task.write_text("\n".join(json.dumps({"clean": p.clean, "corrupt": p.corrupt, "answer": list(p.answers), "wrong": list(p.wrongs)}) for p in pairs))
    args = ["discover", "--task", str(task), "--model", "tiny-dense", "--n-prompts", "12", "--method", "eap", "--out", str(tmp_path / "d")]
    assert runner.invoke(app, args).exit_code == 0
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "d" / "circuit_tiny-dense.json"), "--n-prompts", "12", "--json"])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    assert ev["task"] == "myioi" and ev["corruption"] == "file" and 0 <= ev["f"] <= 1.5
    # the file's 12 records are all the task has: the "fresh" seed draws the prompts the circuit was found on
    assert "12 of the 12 prompts were also used to find this circuit" in res.stderr
    other = tmp_path / "elsewhere" / "myioi.jsonl"  # the same name, other prompts: not the discovery's
    other.parent.mkdir()
    other.write_text("\n".join(json.dumps({"clean": p.clean, "corrupt": p.corrupt, "answer": list(p.answers), "wrong": list(p.wrongs)})
                               for p in get_task("ioi", dense).pairs(12, 7)))  # fmt: skip
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "d" / "circuit_tiny-dense.json"), "--task", str(other), "--json"])
    assert res.exit_code == 0 and "also used to find" not in res.stderr
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "d" / "circuit_tiny-dense.json"), "--task", os.path.relpath(task), "--json"])
    assert "12 of the 12 prompts were also used" in res.stderr  # the same file by another path
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "d" / "circuit_tiny-dense.json"), "--target", "0.8", "--json"])
    assert res.exit_code == 1 and "holds no 'circuit_at_0.8'" in res.stderr  # discover --out saves the f >= 0.9 circuit


def test_circuit_eval_of_a_python_built_task_asks_for_its_file(tmp_path):
    from circuitry.circuits import discover
    from circuitry.tasks import CustomTask

    dense = load_model("tiny-dense")
    records = [{"clean": p.clean, "corrupt": p.corrupt, "answer": p.answers[0], "wrong": p.wrongs[0]} for p in get_task("ioi", dense).pairs(8, 0)]
    found = discover(dense, CustomTask.from_records(records, dense, name="mine"), "eap", n_prompts=8)
    found.save(tmp_path / "c.json")
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "c.json")])
    assert res.exit_code == 1 and "built in Python (no task file recorded); write its records to a .jsonl file" in res.stderr


def test_the_same_weights_under_another_config_are_another_model(dense, saved, tmp_path):
    """Circuits, transcoders and attribution graphs record the config fingerprint beside the weights': a copy of
    tiny-dense with ReLU MLPs has the same weights (and weights fingerprint) but computes something else."""
    from circuitry.attribution import AttributionGraph, attention_split, attribute
    from circuitry.transcoders import default_clt, load_clt, save_clt
    from circuitry.zoo.registry import config_fingerprint, model_config, model_fingerprint

    relu = build_model({**model_config(dense), "act_fn": "relu"}, dense.tokenizer)
    relu.load_state_dict(dense.state_dict())
    assert model_fingerprint(relu) == model_fingerprint(dense) and config_fingerprint(relu) != config_fingerprint(dense)
    assert config_fingerprint(build_model(model_config(dense), dense.tokenizer)) == config_fingerprint(dense)
    wide = build_model({**model_config(dense), "dtype": "float64"}, dense.tokenizer)
    assert model_config(wide)["dtype"] == "float64" and config_fingerprint(wide) == config_fingerprint(dense)  # dtype is not the function
    _, path = saved
    assert json.loads(path.read_text())["model_config_fingerprint"] == config_fingerprint(dense)
    with pytest.raises(CircuitryError, match="same weights but another config"):
        load_circuit(path, relu)
    assert load_circuit(path, relu, allow_other_model=True).n_edges == load_circuit(path, dense).n_edges
    clt = default_clt(dense)
    save_clt(clt, tmp_path / "clt", dense)
    with pytest.raises(CircuitryError, match="same weights but another config"):
        load_clt(tmp_path / "clt", relu)
    graph = attribute(dense, load_clt(tmp_path / "clt", dense), "When Mary and John went to the store, John gave a drink to")
    graph.save(tmp_path / "g.safetensors")
    with pytest.raises(CircuitryError, match="another model config"):
        attention_split(relu, clt, AttributionGraph.load(tmp_path / "g.safetensors"))
