"""The notebooks and example scripts run end to end (small settings)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def run_example(script: str, *args: str) -> str:
    """Run examples/<script> offline; returns its stdout (fails the test on a non-zero exit)."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def run_notebook(name: str, monkeypatch, **env: str) -> str:
    """Execute notebooks/<name> offline with ``env`` set; returns all outputs as text (no errors allowed)."""
    for key, value in {"HF_HUB_OFFLINE": "1", **env}.items():
        monkeypatch.setenv(key, value)
    nb = nbformat.read(ROOT / "notebooks" / name, as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    text = "\n".join(str(o) for o in outputs)
    assert "IProgress not found" not in text  # tqdm's widget warning: without ipywidgets the bars are text bars
    return text


def test_sparsify_example_runs(tmp_path):
    assert "sparse: connectivity" in run_example("sparsify_tiny.py", "--steps", "8", "--out", str(tmp_path / "s"))
    assert (tmp_path / "s" / "plots" / "patterns_L2.html").stat().st_size > 1000


def test_examples_report_bad_input_in_one_line(tmp_path):
    for script, args, message in (("sparsify_tiny.py", ["--steps", "0", "--out", str(tmp_path / "s0")], "error: steps must be > 0, got 0"),
                                  ("ioi_circuits.py", ["--n-prompts", "0"], "error: number of prompts must be positive, got 0")):  # fmt: skip
        proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], capture_output=True, text=True,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600)  # fmt: skip
        assert proc.returncode == 1 and proc.stderr.strip() == message, proc.stderr[-2000:]
    assert not (tmp_path / "s0").exists()


def test_sparse_attention_notebook_runs(monkeypatch):
    assert "connectivity" in run_notebook("01_sparse_attention.ipynb", monkeypatch, CIRCUITRY_NB_STEPS="8")


def test_ioi_circuits_example_runs(tmp_path):
    assert "dense/sparse:" in run_example("ioi_circuits.py", "--n-prompts", "10", "--out", str(tmp_path / "c"))
    for name in ("tiny-dense", "tiny-sparse"):  # the files discover --out writes, with what circuit-eval checks
        record = json.loads((tmp_path / "c" / f"circuit_{name}.json").read_text())
        assert record["model_fingerprint"] and record["circuitry_version"] and "circuit_at_0.9" in record
    assert (tmp_path / "c" / "faithfulness_curves.html").exists()


def test_ioi_circuits_notebook_runs(monkeypatch):
    text = run_notebook("02_ioi_circuits.ipynb", monkeypatch, CIRCUITRY_NB_PROMPTS="10")
    assert "every node reaches the logits: True" in text


def test_attribution_example_runs(tmp_path):
    out = run_example("attribution_graphs.py", "--n", "2", "--out", str(tmp_path / "a"))
    assert "dense/sparse:" in out
    assert (tmp_path / "a" / "tiny-sparse.json").exists() and (tmp_path / "a" / "head_loadings.html").exists()


def test_attribution_notebook_runs(monkeypatch):
    text = run_notebook("03_attribution_graphs.ipynb", monkeypatch, CIRCUITRY_NB_PROMPTS="2")
    assert "dense/sparse ratios" in text
