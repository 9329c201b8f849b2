"""Plotly figures. Every figure saves as HTML; PNG too when kaleido and a browser are present."""

from circuitry.plotting.attribution import attribution_graph_figure, graph_comparison_figure, head_loadings_figure
from circuitry.plotting.circuits import circuit_graph, faithfulness_curves, head_importance
from circuitry.plotting.io import save_figure
from circuitry.plotting.quality import clt_quality_figure, log_curves, task_metric_figure
from circuitry.plotting.sparsity import attention_patterns, head_connectivity, training_curves

__all__ = [
    "save_figure", "circuit_graph", "faithfulness_curves", "head_importance", "attention_patterns", "head_connectivity",
    "training_curves", "attribution_graph_figure", "head_loadings_figure", "graph_comparison_figure", "task_metric_figure",
    "clt_quality_figure", "log_curves",
]  # fmt: skip
