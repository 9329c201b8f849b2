"""The CLI: JSON output, and one-line errors with non-zero exit on bad input."""

import json
import math
import os
import shutil
import statistics
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from circuitry import get_task, load_model
from circuitry.circuits import faithfulness, load_circuit
from circuitry.cli import app
from circuitry.data import TextData
from circuitry.zoo.language import SyntheticLanguage
from circuitry.zoo.registry import ZOO_DIR

runner = CliRunner()


def test_eval_json_has_the_documented_keys():
    res = runner.invoke(app, ["eval", "--task", "ioi", "--n", "40", "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert {"task", "model", "n", "accuracy", "mean_metric"} <= out.keys()
    assert out["task"] == "ioi" and out["model"] == "tiny-dense" and out["n"] == 40


def test_models_lists_the_zoo():
    res = runner.invoke(app, ["models", "--json"])
    assert res.exit_code == 0
    assert "tiny-dense" in [m["name"] for m in json.loads(res.stdout)["models"]]


def _bad_weights_dir(tmp_path):
    d = tmp_path / "broken"
    shutil.copytree(ZOO_DIR / "tiny-dense", d)
    (d / "model.safetensors").write_bytes(b"\x00garbage")
    return d


def _bad_task_file(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text('{"clean": "The capital of France is", "corrupt": "The capital is", "answer": "Paris", "wrong": "Rome"}\n')
    return p


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task"),
        (["--task", "ioi", "--model", "no-such-model"], "unknown model"),
        (["--task", "ioi", "--model", "gpt2"], "offline"),
        (["--task", "ioi", "--n", "0"], "positive"),
        (["--task", "ioi", "--corruption", "zzz"], "no corruption"),
        (["--task", "BAD_TASK"], "bad.jsonl line 1: clean and corrupt differ"),
        (["--task", "ioi", "--model", "BAD_WEIGHTS"], "not a valid safetensors file"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(tmp_path, args, message):
    args = [str(_bad_task_file(tmp_path)) if a == "BAD_TASK" else str(_bad_weights_dir(tmp_path)) if a == "BAD_WEIGHTS" else a for a in args]
    res = runner.invoke(app, ["eval", *args])
    assert res.exit_code == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def test_console_script_exit_code_offline():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "circuitry.cli", "eval", "--task", "nope"], capture_output=True, text=True, env=env)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: unknown task 'nope'; built-in tasks: ioi, greater-than, induction, sva, docstring (or a .json/.jsonl file)"


def test_empty_out_is_refused_and_library_warnings_are_one_line(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for out in (["--out", ""], ["--out="]):  # typer reads "" as ".": it would write into the current directory
        proc = subprocess.run([sys.executable, "-m", "circuitry.cli", "eval", "--task", "ioi", "--n", "2", *out], capture_output=True,
                              text=True, env=env, cwd=tmp_path)  # fmt: skip
        assert proc.returncode == 1 and proc.stderr.strip() == "error: --out is an empty name; give a directory (--out . for the current one)"
    assert list(tmp_path.iterdir()) == []
    proc = subprocess.run([sys.executable, "-m", "circuitry.cli", "eval", "--task", "ioi", "--n", "2", "--out", "e"], capture_output=True,
                          text=True, env={**env, "RANK": "1"}, cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "outputs in" not in proc.stderr  # under torchrun, rank 0 alone says where its files are
    task = tmp_path / "twice.jsonl"
    record = {"clean": "The capital of Spain is", "corrupt": "The capital of Italy is", "answer": "Madrid", "wrong": "Rome"}
    task.write_text(json.dumps(record) + "\n" + json.dumps(record))
    res = runner.invoke(app, ["eval", "--task", str(task), "--model", "tiny-dense", "--json"])
    assert res.exit_code == 0 and res.stderr.splitlines() == [f"warning: task file {task}: 1 of its 2 records repeat an earlier one; "
                                                              "each repeat is drawn as a prompt of its own"]  # fmt: skip


@pytest.mark.parametrize("args", [["eval", "--task", "ioi", "--n", "abc"], ["eval"], ["discover", "--bogus"]])
def test_console_script_usage_errors_are_one_line(args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "circuitry.cli", *args], capture_output=True, text=True, env=env)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "--help" in lines[0], proc.stderr


def test_sparsify_and_connectivity_commands(tmp_path):
    out = tmp_path / "sp"
    res = runner.invoke(app, ["sparsify", "--out", str(out), "--steps", "2", "--json"])
    assert res.exit_code == 0, res.output
    meta = json.loads(res.stdout.strip().splitlines()[-1])
    assert meta["kind"] == "sparse" and meta["parent"] == "tiny-dense" and meta["name"] == "sp"  # named after --out
    assert (out / "plots" / "training_curves.html").exists() and (out / "plots" / "head_connectivity.html").exists()
    # two steps do not bring CE back under the target: a warning line says so (and none when it is met)
    assert ("the constraint is not met" in res.stderr) == (meta["heldout_ce"] > meta["target_ce"])
    res = runner.invoke(app, ["connectivity", "--model", str(out), "--n", "16", "--json"])
    assert res.exit_code == 0, res.output
    rep = json.loads(res.stdout)
    assert {"model", "connectivity", "keys_per_query", "floor", "ce", "per_layer"} <= rep.keys()
    assert rep["floor"] == 2 / 65 and len(rep["per_layer"]) == 4 and 0 < rep["connectivity"] <= 1
    assert rep["data"] == {"source": "synthetic"}  # the model's own language, default options
    res = runner.invoke(app, ["connectivity", "--model", str(out), "--n", "16", "--seq-len", "16", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["floor"] == 2 / 17 and json.loads(res.stdout)["seq_len"] == 16
    own = tmp_path / "own.jsonl"  # a user's own text (here: sentences of the same language, as documents)
    own.write_text("\n".join(json.dumps({"text": " ".join(SyntheticLanguage().sentences(i, 30))}) for i in range(20)))
    res = runner.invoke(app, ["connectivity", "--model", str(out), "--n", "16", "--json", "--data", str(own)])
    assert res.exit_code == 0, res.output
    mine = json.loads(res.stdout)
    own_data = TextData.load(own, load_model(out))  # recorded: the file's absolute path and its tokens' fingerprint
    assert mine["data"] == own_data.info() and mine["data"]["source"] == str(own.resolve()) and 0 < mine["n_sequences"] <= 16 and mine["ce"] != rep["ce"]  # its held-out 5%
    res = runner.invoke(app, ["sparsify", "--out", str(out), "--steps", "2"])
    assert res.exit_code == 1 and "already holds a model" in res.stderr  # never overwrites a finished model


def test_discover_single_model_json_and_files(tmp_path):
    res = runner.invoke(app, ["discover", "--task", "ioi", "--model", "tiny-dense", "--n-prompts", "12", "--out", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    m = out["models"]["tiny-dense"]
    assert out["task"] == "ioi" and out["method"] == "eap-local"
    assert {"edges_total", "edges_at_0.9", "heads_at_0.9", "edges_at_0.8", "heads_at_0.8", "faithfulness_curve", "seconds"} <= m.keys()
    assert m["edges_total"] == 1519 and m["faithfulness_curve"][-1] == [1519, 1.0]
    done = sorted(m["faithfulness_curve"] + m["refined_points"])  # edges_at_0.9: where f stays >= 0.9
    assert m["edges_at_0.9"] == next(e for i, (e, _) in enumerate(done) if all(f >= 0.9 for _, f in done[i:]))
    assert m["smallest_edges_at_0.9"] == min(e for e, f in done if f >= 0.9) <= m["edges_at_0.9"]
    x, f = [math.log10(k) for k in m["budgets"]], [f for _, f in m["faithfulness_curve"]]  # CPR from the JSON alone
    assert m["cpr"] == pytest.approx(sum((x[i + 1] - x[i]) * (f[i] + f[i + 1]) / 2 for i in range(len(x) - 1)) / (x[-1] - x[0]), abs=1e-4)
    assert (tmp_path / "circuit_tiny-dense.json").exists() and (tmp_path / "faithfulness_curves.html").exists()
    assert (out["ablation"], out["selection"], m["ig_steps"], out["seed"], m["seed"]) == ("corrupt", "abs", None, 0, 0)
    saved = tmp_path / "circuit_tiny-dense.json"  # the saved circuit, measured again on fresh prompts
    res = runner.invoke(app, ["circuit-eval", str(saved), "--n-prompts", "16", "--json", "--out", str(tmp_path / "eval")])
    assert res.exit_code == 0, res.output
    ev = json.loads(res.stdout)
    dense = load_model("tiny-dense")
    circuit = load_circuit(saved, dense)
    f = faithfulness(dense, get_task("ioi", dense), circuit.graph, circuit, n=16, seed=2).f
    assert (ev["model"], ev["task"], ev["corruption"], ev["seed"], ev["edges"]) == ("tiny-dense", "ioi", "abc", 2, circuit.n_edges)
    assert ev["f"] == round(f, 5) and (tmp_path / "eval" / "circuit.html").exists()
    res = runner.invoke(app, ["circuit-eval", str(saved), "--model", "tiny-sparse", "--n-prompts", "4"])
    assert res.exit_code == 1 and "--allow-other-model" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    res = runner.invoke(app, ["circuit-eval", str(saved), "--model", "tiny-sparse", "--n-prompts", "4", "--allow-other-model", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["found_on"] == "tiny-dense"
    res = runner.invoke(app, ["circuit-eval", str(tmp_path / "faithfulness_curves.html")])
    assert res.exit_code == 1 and res.stderr.startswith("error: ") and "not valid JSON" in res.stderr


def test_compare_repeats_report_every_seed_and_the_median(tmp_path):
    args = ["compare", "--task", "ioi", "--n-prompts", "8", "--method", "eap", "--json"]
    res = runner.invoke(app, [*args, "--seed", "4", "--repeats", "3", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert [r["seed"] for r in out["per_seed"]] == [4, 5, 6] and out["models"] == out["per_seed"][0]["models"]
    single = json.loads(runner.invoke(app, [*args, "--seed", "5"]).stdout)  # the same run as the second seed
    assert single["models"]["tiny-sparse"]["faithfulness_curve"] == out["per_seed"][1]["models"]["tiny-sparse"]["faithfulness_curve"]
    assert single["edge_ratio_at_0.9"] == out["per_seed"][1]["edge_ratio_at_0.9"]
    assert all(out[k] == out["median"][k] for k in ("edge_ratio_at_0.9", "head_ratio_at_0.9"))  # headline: the medians
    for key in ("edge_ratio_at_0.9", "head_ratio_at_0.8"):
        values = [r[key] for r in out["per_seed"] if r[key] is not None]
        assert out["median"][key] == pytest.approx(statistics.median(values), abs=1e-3)
        assert out["median"][f"undefined_{key}"] == 3 - len(values)
    assert all((tmp_path / f"seed_{s}" / "faithfulness_curves.html").exists() for s in (4, 5, 6))
    for run in out["per_seed"]:  # shared edges / heads: the intersection of the two written f >= 0.9 circuits
        c = [json.loads((tmp_path / f"seed_{run['seed']}" / f"circuit_{m}.json").read_text())["circuit_at_0.9"] for m in ("tiny-dense", "tiny-sparse")]
        if c[0] and c[1]:
            assert run["shared_edges_at_0.9"] == len(set(c[0]["edges"]) & set(c[1]["edges"])) > 0
            heads = [{n for n in x["nodes"] if n.startswith("a")} for x in c]
            assert run["shared_heads_at_0.9"] == len(heads[0] & heads[1])


def test_discover_options_reach_the_library():
    """--ablation, --selection and --ig-steps change the run as the library call with the same arguments does."""
    from circuitry.circuits import discover

    args = ["--model", "tiny-dense", "--n-prompts", "8", "--method", "eap-ig", "--ig-steps", "2", "--ablation", "zero", "--selection", "greedy"]
    res = runner.invoke(app, ["discover", *args, "--seed", "3", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    m = out["models"]["tiny-dense"]
    assert (out["ablation"], out["selection"], m["ig_steps"]) == ("zero", "greedy", 2)
    model = load_model("tiny-dense")
    ref = discover(model, get_task("ioi", model), "eap-ig", 8, 3, ablation="zero", ig_steps=2, selection="greedy").to_dict()
    assert m["faithfulness_curve"] == ref["faithfulness_curve"] and m["edges_at_0.9"] == ref["edges_at_0.9"]
    assert m["m_empty"] != pytest.approx(json.loads(runner.invoke(app, ["discover", *args[:8], "--seed", "3", "--json"]).stdout)
                                          ["models"]["tiny-dense"]["m_empty"])  # zero ablation is not the corrupted run


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "nope"], "unknown task"),
        (["--n-prompts", "0"], "positive"),
        (["--corruption", "zzz", "--model", "tiny-dense"], "no corruption"),
        (["--method", "magic"], "unknown method"),
        (["--model", "no-such-model"], "unknown model"),
        (["--ablation", "resample"], "unknown ablation"),
        (["--selection", "best"], "unknown selection"),
        (["--method", "eap-ig", "--ig-steps", "0"], "--ig-steps must be positive"),
        (["--repeats", "0"], "--repeats must be positive"),
    ],
)
def test_discover_bad_input(args, message):
    res = runner.invoke(app, ["discover", *args])
    assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def _task_file(tmp_path, name: str, record: dict):
    p = tmp_path / f"{name}.json"
    p.write_text(json.dumps([record]))
    return str(p)


def _edited_copy(tmp_path, src, name, edit):
    d = tmp_path / name
    shutil.copytree(src, d)
    edit(d)
    return str(d)


def _nan_weights(d):
    from circuitry.artifacts import fingerprint, load_tensors, save_tensors

    tensors, meta = load_tensors(d / "model.safetensors")
    tensors["embed.W_E"][0, 0] = float("nan")
    save_tensors(d / "model.safetensors", tensors, {**meta, "fingerprint": fingerprint(tensors)})


def _drop_clt_fingerprint(d):
    record = json.loads((d / "circuitry.json").read_text())
    del record["fingerprint"]
    (d / "circuitry.json").write_text(json.dumps(record))


def _edit_clt_hook(where: str):
    def edit(d):
        if where == "record":  # a valid hook, but not the one the weights were trained on
            record = json.loads((d / "circuitry.json").read_text())
            record["config"]["feature_input_hook"] = "hook_resid_pre"
            (d / "circuitry.json").write_text(json.dumps(record))
        else:
            (d / "config.yaml").write_text((d / "config.yaml").read_text().replace("hook_resid_mid", "hook_resid_pre"))

    return edit


def _claim_sparse_model(d):
    """A tiny-dense transcoder whose record claims it was trained on tiny-sparse."""
    record = json.loads((d / "circuitry.json").read_text())
    record["model_fingerprint"] = json.loads((ZOO_DIR / "tiny-sparse" / "meta.json").read_text())["fingerprint"]
    (d / "circuitry.json").write_text(json.dumps(record))


def _text_file(tmp_path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text)
    return str(tmp_path / name)


IOI = {"clean": "When Mary and John went to the store, John gave a drink to", "answer": " Mary", "wrong": " John"}


@pytest.mark.parametrize(
    "case, message",
    [
        ("long_prompt", "longer than the model's context (64)"),
        ("unknown_word", "outside the tokenizer's vocabulary"),
        ("answer_is_wrong", "both an answer and a wrong answer"),
        ("nan_weights", "non-finite values"),
        ("clt_record", "malformed or foreign file (KeyError: 'fingerprint')"),
        ("clt_record_hook", "config differs from the one W_enc_0.safetensors was saved with (feature_input_hook)"),
        ("clt_yaml_hook", "config.yaml feature_input_hook 'hook_resid_pre' disagrees"),
        ("clt_record_model", "differs from the one W_enc_0.safetensors was saved with (2665667202414454)"),
        ("out_is_file", "is a file, not a directory"),
        ("out_under_file", "is a file, not a directory"),
        ("same_pair", "name the same model"),
        ("nan_lr", "--lr must be a positive number, got nan"),
        ("negative_bias_lr", "--bias-lr must be a positive number, got -0.1"),
        ("lora_alpha_alone", "lora_alpha (--lora-alpha) scales LoRA adapters: it needs lora_rank (--lora-rank) > 0"),
        ("clt_batch_0", "--batch-size must be a positive number, got 0"),
        ("clt_seq_len_0", "sequence length 0 must be between 2 and the model's context 64"),
        ("clt_seq_len_2", "transcoder quality needs sequences of at least 3 tokens, got 2"),
        ("connectivity_seq_len_1", "sequence length 1 must be between 2 and the model's context 64"),
        ("connectivity_seq_len_task", "a sequence length is for held-out text"),
        ("batch_split", "does not split into 1 process(es) x 2 equal micro-batches"),
        ("data_unknown_words", "of the tokens are unknown to the model's tokenizer"),
        ("data_bad_jsonl", "line 2: not valid JSON"),
    ],
)
def test_bad_files_and_options_fail_in_one_line_before_any_output(tmp_path, case, message):
    """Malformed tasks and artifacts, impossible outputs and options: one line, exit 1, nothing written."""
    (tmp_path / "file").write_text("")
    run = str(tmp_path / "run")
    args = {
        "long_prompt": ["eval", "--task", _task_file(tmp_path, "long", {**IOI, "clean": IOI["clean"] * 6, "corrupt": IOI["clean"] * 6})],
        "unknown_word": ["eval", "--task", _task_file(tmp_path, "unknown", {**IOI, "corrupt": IOI["clean"].replace("store", "zorblax")})],
        "answer_is_wrong": ["eval", "--task", _task_file(tmp_path, "same", {**IOI, "corrupt": IOI["clean"], "wrong": " Mary"})],
        "nan_weights": ["eval", "--task", "ioi", "--model", _edited_copy(tmp_path, ZOO_DIR / "tiny-dense", "m", _nan_weights)],
        "clt_record": ["clt", "eval", "--n", "4", "--clt", _edited_copy(tmp_path, ZOO_DIR / "tiny-dense" / "clt", "c", _drop_clt_fingerprint)],
        "clt_record_hook": ["clt", "eval", "--n", "4", "--clt", _edited_copy(tmp_path, ZOO_DIR / "tiny-dense" / "clt", "c_record", _edit_clt_hook("record"))],
        "clt_yaml_hook": ["clt", "eval", "--n", "4", "--clt", _edited_copy(tmp_path, ZOO_DIR / "tiny-dense" / "clt", "c_yaml", _edit_clt_hook("yaml"))],
        "clt_record_model": ["attribute", "When Mary and John", "--model", "tiny-sparse", "--clt",
                             _edited_copy(tmp_path, ZOO_DIR / "tiny-dense" / "clt", "c_model", _claim_sparse_model)],
        "out_is_file": ["connectivity", "--n", "4", "--out", str(tmp_path / "file")],
        "out_under_file": ["sparsify", "--steps", "2", "--out", str(tmp_path / "file" / "run")],
        "same_pair": ["compare-graphs", "--prompt", "When Mary", "--dense", "tiny-dense", "--sparse", "tiny-dense"],
        "nan_lr": ["sparsify", "--steps", "2", "--out", run, "--lr", "nan"],
        "negative_bias_lr": ["sparsify", "--steps", "2", "--out", run, "--bias-lr", "-0.1"],
        "lora_alpha_alone": ["sparsify", "--steps", "2", "--out", run, "--lora-alpha", "8"],
        "clt_batch_0": ["clt", "train", "--steps", "2", "--out", run, "--batch-size", "0"],
        "clt_seq_len_0": ["clt", "train", "--steps", "2", "--out", run, "--seq-len", "0"],
        "clt_seq_len_2": ["clt", "train", "--steps", "2", "--out", run, "--seq-len", "2"],  # refused before training
        "connectivity_seq_len_1": ["connectivity", "--n", "4", "--seq-len", "1", "--out", run],
        "connectivity_seq_len_task": ["connectivity", "--task", "ioi", "--n", "4", "--seq-len", "8", "--out", run],
        "batch_split": ["sparsify", "--steps", "2", "--out", run, "--batch-size", "3", "--grad-accum", "2"],
        "data_unknown_words": ["sparsify", "--steps", "2", "--out", run, "--data", _text_file(tmp_path, "english.txt", "Photosynthesis converts sunlight.")],
        "data_bad_jsonl": ["clt", "train", "--steps", "2", "--out", run, "--data", _text_file(tmp_path, "d.jsonl", '{"text": "Mary left."}\n{')],
    }[case]
    res = runner.invoke(app, args)
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 1 and len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr
    assert not (tmp_path / "run").exists()


def test_compare_warns_about_a_swapped_or_unrelated_pair(tmp_path):
    shutil.copytree(ZOO_DIR / "tiny-dense", tmp_path / "other-dense")
    cases = [(["--dense", "tiny-sparse", "--sparse", "tiny-dense"], "is this the (dense, sparse) order?"),
             (["--dense", str(tmp_path / "other-dense")], "tiny-sparse was post-trained from tiny-dense, not from")]  # fmt: skip
    for args, warning in cases:
        res = runner.invoke(app, ["compare", "--task", "ioi", "--n-prompts", "3", *args])
        assert res.exit_code == 0 and warning in res.stderr, res.stderr
    res = runner.invoke(app, ["compare", "--task", "ioi", "--n-prompts", "3"])
    assert res.exit_code == 0 and "warning" not in res.stderr, res.stderr


def test_outputs_are_written_all_or_none(tmp_path):
    from circuitry.artifacts import atomic_write_json, staged_output

    out = tmp_path / "out"
    with pytest.raises(RuntimeError), staged_output(out) as stage:  # a failure halfway: nothing reaches out
        atomic_write_json(stage / "a.json", {"a": 1})
        raise RuntimeError("plot failed")
    assert not out.exists() or not any(out.iterdir())
    (out / "old.json").parent.mkdir(parents=True, exist_ok=True)
    (out / "old.json").write_text("{}")
    with staged_output(out) as stage:
        atomic_write_json(stage / "sub" / "b.json", {"b": 2})
        atomic_write_json(stage / "old.json", {"new": True})
    assert json.loads((out / "sub" / "b.json").read_text()) == {"b": 2} and json.loads((out / "old.json").read_text()) == {"new": True}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging directory left behind
    # the CLI: a directory where one output file goes fails in one line before any file is moved
    (out / "circuit_tiny-dense.json").mkdir()
    res = runner.invoke(app, ["discover", "--task", "ioi", "--model", "tiny-dense", "--n-prompts", "4", "--out", str(out)])
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1].startswith("error: cannot write")
    assert not (out / "faithfulness_curves.html").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_eval_out_writes_the_metric_per_prompt(tmp_path):
    res = runner.invoke(app, ["eval", "--task", "ioi", "--n", "30", "--out", str(tmp_path / "e"), "--json"])
    assert res.exit_code == 0, res.output
    printed = json.loads(res.stdout)
    saved = json.loads((tmp_path / "e" / "eval.json").read_text())
    assert len(saved["values"]) == len(saved["values_corrupt"]) == 30 and "values" not in printed
    assert saved["accuracy"] == printed["accuracy"] == round(sum(v > 0 for v in saved["values"]) / 30, 4)
    assert abs(statistics.mean(saved["values"]) - printed["mean_metric"]) < 1e-3
    assert (tmp_path / "e" / "metric_per_prompt.html").exists() and "outputs in" in res.stderr
