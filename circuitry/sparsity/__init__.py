"""Sparse attention: gates on every head, connectivity metrics, constrained sparse post-training."""

from circuitry.sparsity.connectivity import (
    ConnectivityReport,
    connectivity_report,
    expected_connectivity,
    floor,
    measure_connectivity,
)
from circuitry.sparsity.gates import AttentionGates, attach_gates, detach_gates
from circuitry.sparsity.train import SparsifyConfig, sparsify

__all__ = [
    "AttentionGates", "attach_gates", "detach_gates", "ConnectivityReport", "connectivity_report",
    "expected_connectivity", "floor", "measure_connectivity", "SparsifyConfig", "sparsify",
]  # fmt: skip
