"""Circuit discovery: component graphs, edge attribution patching (EAP, EAP-local, EAP-IG), exact patching,
circuit selection and faithfulness by real forward passes.

    graph = Graph.from_model(model)                        # nodes, edges, per-edge scores
    scores = eap_scores(model, task, graph, method="eap")  # or "eap-local", "eap-ig", "eap-ig-node"
    circuit = select_circuit(graph, scores, "top-n", n=200)
    faithfulness(model, task, graph, circuit).f
    faithfulness_curve(model, task, graph, scores)         # points, CPR, CMD, f >= 0.8 / 0.9
    discover(model, "ioi").save("ioi.json"); load_circuit("ioi.json", model)  # the f >= 0.9 circuit, saved and read
"""

from circuitry.circuits.discover import METHODS, Discovery, compare, discover, load_circuit, median_ratios
from circuitry.circuits.evaluate import (
    CurvePoint,
    Faithfulness,
    FaithfulnessCurve,
    default_grid,
    faithfulness,
    faithfulness_curve,
    metric_means,
)
from circuitry.circuits.graph import Graph, graph_flags, record_sources
from circuitry.circuits.multihead import as_multi_head
from circuitry.circuits.patching import ablated_sources, exact_edge_scores, patched_logits, run_with_edges
from circuitry.circuits.scoring import eap_scores
from circuitry.circuits.selection import Circuit, budget_mask, greedy, prune, select_circuit, threshold, top_n

__all__ = [
    "discover", "load_circuit", "compare", "median_ratios", "as_multi_head", "Discovery", "METHODS", "Graph", "graph_flags", "record_sources", "eap_scores", "exact_edge_scores", "run_with_edges", "patched_logits",
    "ablated_sources", "Circuit", "select_circuit", "top_n", "threshold", "greedy", "budget_mask", "prune", "faithfulness",
    "faithfulness_curve", "metric_means", "default_grid", "Faithfulness", "FaithfulnessCurve", "CurvePoint",
]  # fmt: skip
