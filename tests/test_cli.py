"""The CLI: JSON output, and one-line errors with non-zero exit on bad input."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from circuitry.cli import app
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
        (["--task", "BAD_TASK"], "record 0: clean and corrupt differ"),
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
