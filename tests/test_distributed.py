"""torchrun + DistributedDataParallel (gloo on CPU): 2 processes end where 1 process with the same global
batch ends, for the CLT trainer and for sparse post-training; a resumed 2-process run too."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

WORKER = str(Path(__file__).with_name("ddp_worker.py"))
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(processes: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), "--master_addr", "127.0.0.1",
            "--master_port", str(free_port())]  # fmt: skip


def run(kind: str, out: Path, steps: int, processes: int) -> dict:
    launcher = torchrun(processes) if processes > 1 else [sys.executable]
    proc = subprocess.run([*launcher, WORKER, kind, str(out), str(steps)], capture_output=True, text=True, env=ENV, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return load_file(out / "final.safetensors")


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


@pytest.mark.parametrize("kind, steps, tol", [("clt", 10, 1e-6), ("sparsify", 10, 1e-5)])
def test_two_processes_match_one(tmp_path, kind, steps, tol):
    one = run(kind, tmp_path / "one", steps, 1)
    two = run(kind, tmp_path / "two", steps, 2)
    assert max_diff(one, two) < tol
    log = "train_log.jsonl" if kind == "clt" else "sparsify_log.jsonl"
    assert len((tmp_path / "two" / log).read_text().splitlines()) == steps  # rank 0 alone writes the log


def test_two_process_clt_resumes_from_its_checkpoint(tmp_path):
    full = run("clt", tmp_path / "full", 10, 2)
    # the run leaves its step-5 checkpoint behind (train_clt does not delete it); resume from it alone
    (tmp_path / "resumed").mkdir()
    shutil.copy(tmp_path / "full" / "checkpoint.safetensors", tmp_path / "resumed")
    log = (tmp_path / "full" / "train_log.jsonl").read_text().splitlines()
    (tmp_path / "resumed" / "train_log.jsonl").write_text("\n".join(log[:5]) + "\n")
    env_resume = {**ENV, "CIRCUITRY_RESUME": "1"}
    proc = subprocess.run([*torchrun(2), WORKER, "clt", str(tmp_path / "resumed"), "10"], capture_output=True, text=True, env=env_resume, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert max_diff(full, load_file(tmp_path / "resumed" / "final.safetensors")) == 0
    steps = [json.loads(x)["step"] for x in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines()]
    assert steps == list(range(10))
