"""Influence-based pruning and graph scores, with circuit-tracer's definitions (Ameisen et al. 2025).

With ``Â`` = adjacency with rows normalised to unit L1 norm (|A|), and ``w`` the logit probabilities on
logit nodes, a node's influence is ``w (Â + Â² + …) = w ((I − Â)⁻¹ − I)`` (Â is nilpotent: the graph is
a DAG); the series is summed exactly with a triangular solve rather than iterated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from circuitry.attribution.graph import AttributionGraph


def normalize(adjacency: Tensor) -> Tensor:
    a = adjacency.abs()
    return a / a.sum(dim=1, keepdim=True).clamp(min=1e-10)


def influence(norm_adj: Tensor, weights: Tensor) -> Tensor:
    """``w ((I − Â)⁻¹ − I)`` for row vector ``w`` (targets are rows, sources columns)."""
    n = norm_adj.shape[0]
    eye = torch.eye(n, dtype=torch.float64)
    x = torch.linalg.solve((eye - norm_adj.double()).T, weights.double())  # x (I − Â) = w
    return (x - weights.double()).to(norm_adj.dtype)


def logit_weights(graph: AttributionGraph) -> Tensor:
    w = torch.zeros(graph.n_nodes)
    w[graph.slices()["logits"]] = torch.tensor(graph.logit_probs)
    return w


def find_threshold(scores: Tensor, fraction: float) -> Tensor:
    """Smallest score among the top scores covering ``fraction`` of the total; at ``fraction`` 1 the smallest score
    (every one kept: the float32 cumulative sum reaches 1 before the last, tiny scores)."""
    sorted_scores = scores.flatten().sort(descending=True).values
    if fraction >= 1:
        return sorted_scores[-1]
    cum = sorted_scores.cumsum(0) / sorted_scores.sum().clamp(min=1e-12)
    idx = int(torch.searchsorted(cum, torch.tensor(fraction, dtype=cum.dtype)).clamp(max=len(cum) - 1))
    return sorted_scores[idx]


def edge_influence(graph: AttributionGraph, node_mask: Tensor | None = None) -> Tensor:
    """circuit-tracer's edge scores [target, source]: each edge's share of its target's direct inputs (|A|,
    row-normalised) times the target's influence on the logits, in the graph restricted to ``node_mask``
    (default: the graph's own node mask, else all nodes). Unlike raw edge weights, these are in one unit
    (share of the output's attribution) whatever kind of node the target is."""
    node_mask = graph.node_mask if node_mask is None else node_mask
    pruned = graph.adjacency.clone()
    if node_mask is not None:
        pruned[~node_mask] = 0
        pruned[:, ~node_mask] = 0
    norm = normalize(pruned)
    w = logit_weights(graph)
    return norm * (influence(norm, w) + w)[:, None]


@dataclass
class PruneResult:
    node_mask: Tensor
    edge_mask: Tensor  # [target, source]
    cumulative_influence: Tensor  # per node: cumulative share of influence at its rank


def prune(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> PruneResult:
    """Keep nodes covering ``node_threshold`` of influence on the logits, then edges covering
    ``edge_threshold`` of edge influence; embeddings and logits always stay; features and errors without an
    outgoing kept edge (features also without an incoming one) are dropped until nothing changes."""
    s = graph.slices()
    w = logit_weights(graph)
    node_inf = influence(normalize(graph.adjacency), w)
    node_mask = node_inf >= find_threshold(node_inf, node_threshold)
    node_mask[s["embeddings"]] = True
    node_mask[s["logits"]] = True
    edge_scores = edge_influence(graph, node_mask)
    kept = (graph.adjacency != 0) & node_mask[:, None] & node_mask[None, :]
    edge_mask = (edge_scores >= find_threshold(edge_scores, edge_threshold)) & kept
    always = torch.zeros(graph.n_nodes, dtype=torch.bool)
    always[s["embeddings"]] = True
    always[s["logits"]] = True
    is_feature = torch.zeros(graph.n_nodes, dtype=torch.bool)
    is_feature[s["features"]] = True
    while True:
        has_out = edge_mask.any(0)
        has_in = edge_mask.any(1)
        keep = always | (has_out & (has_in | ~is_feature))
        keep &= node_mask
        keep |= always
        if torch.equal(keep, node_mask):
            break
        node_mask = keep
        edge_mask[~node_mask] = False
        edge_mask[:, ~node_mask] = False
    order = node_inf.argsort(descending=True)
    cum = torch.zeros(graph.n_nodes)
    cum[order] = (node_inf[order].cumsum(0) / node_inf.sum().clamp(min=1e-12)).float()
    return PruneResult(node_mask, edge_mask, cum)


def apply_pruning(graph: AttributionGraph, node_threshold: float = 0.8, edge_threshold: float = 0.98) -> AttributionGraph:
    result = prune(graph, node_threshold, edge_threshold)
    graph.node_mask, graph.edge_mask, graph.cumulative_influence = result.node_mask, result.edge_mask, result.cumulative_influence
    graph.info.update({"node_threshold": node_threshold, "edge_threshold": edge_threshold})
    return graph


def graph_scores(graph: AttributionGraph) -> dict[str, float]:
    """Replacement score: share of (end-to-end) influence on the logits that starts at embeddings rather than
    errors. Completeness: influence-weighted share of each node's direct inputs that is not error."""
    s = graph.slices()
    w = logit_weights(graph)
    norm = normalize(graph.adjacency)
    inf = influence(norm, w)
    tok, err = inf[s["embeddings"]].sum(), inf[s["errors"]].sum()
    replacement = (tok / (tok + err)).item()
    non_error = 1 - norm[:, s["errors"]].sum(1)
    total = inf + w
    completeness = ((non_error * total).sum() / total.sum()).item()
    return {"replacement_score": replacement, "completeness_score": completeness}
