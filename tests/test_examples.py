"""The sparse-attention notebook and example script run end to end (small settings)."""

import os
import subprocess
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def test_sparsify_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "sparsify_tiny.py"), "--steps", "8", "--out", str(tmp_path / "s")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "sparse: connectivity" in proc.stdout
    assert (tmp_path / "s" / "plots" / "patterns_L2.html").stat().st_size > 1000


def test_sparse_attention_notebook_runs(monkeypatch):
    monkeypatch.setenv("CIRCUITRY_NB_STEPS", "8")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(ROOT / "notebooks" / "01_sparse_attention.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("connectivity" in str(o) for o in outputs)


def test_ioi_circuits_example_runs(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "ioi_circuits.py"), "--n-prompts", "10", "--out", str(tmp_path / "c")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "dense/sparse:" in proc.stdout
    assert (tmp_path / "c" / "faithfulness_curves.html").exists()


def test_ioi_circuits_notebook_runs(monkeypatch):
    monkeypatch.setenv("CIRCUITRY_NB_PROMPTS", "10")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    nb = nbformat.read(ROOT / "notebooks" / "02_ioi_circuits.ipynb", as_version=4)
    NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any("every node reaches the logits: True" in str(o) for o in outputs)
