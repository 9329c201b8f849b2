"""Circuits from edge scores: top-n, threshold or greedy selection, then pruning.

Pruning keeps an edge u -> v only if u is reachable from ``input`` and ``logits`` is reachable
from v using kept edges (i.e. the edge lies on some input -> logits path); nodes without kept
edges are dropped. Ties in scores are broken by edge order (stable sorts), so selection is
deterministic.

Signed selection (``absolute=False``, the curves' ``signed``) ranks edges by how much they help the task: scores
estimate m(edge ablated) - m(clean), so an edge that helps scores below 0 and comes first (largest -score).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Literal

import networkx as nx
import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitry.circuits.graph import Graph
from circuitry.errors import CircuitryError


@dataclass
class Circuit:
    """A set of kept edges of a :class:`Graph`."""

    edge_mask: Bool[Tensor, " edge"]
    n_edges: int
    n_heads: int
    n_mlps: int
    nodes: list[str]
    graph: Graph = field(repr=False, compare=False)
    scores: Float[Tensor, " edge"] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_mask(cls, graph: Graph, edge_mask: Bool[Tensor, " edge"], scores: Tensor | None = None) -> "Circuit":
        mask = graph.check_edge_mask(edge_mask).clone()
        src, dst = graph.edge_nodes()
        used = set()
        for i in mask.nonzero().flatten().tolist():
            used.update((src[i], dst[i]))
        nodes = [n for n in graph.nodes if n in used]
        heads = sum(1 for n in nodes if n.startswith("a"))
        mlps = sum(1 for n in nodes if n.startswith("m"))
        return cls(mask, int(mask.sum()), heads, mlps, nodes, graph, scores)

    @property
    def edges(self) -> list[str]:
        names = self.graph.edge_names
        return [names[i] for i in self.edge_mask.nonzero().flatten().tolist()]

    @property
    def heads(self) -> list[str]:
        return [n for n in self.nodes if n.startswith("a")]

    def to_networkx(self):
        """``networkx.MultiDiGraph`` of the kept edges (see :meth:`Graph.to_networkx`)."""
        return self.graph.to_networkx(self.edge_mask, self.scores)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary: counts, nodes, kept edge names (and their scores if known)."""
        out: dict[str, Any] = {
            "n_edges": self.n_edges,
            "n_heads": self.n_heads,
            "n_mlps": self.n_mlps,
            "n_edges_total": self.graph.n_edges,
            "nodes": list(self.nodes),
            "edges": self.edges,
        }
        if self.scores is not None:
            out["scores"] = [float(x) for x in self.scores[self.edge_mask].tolist()]
        return out


def prune(graph: Graph, edge_mask: Bool[Tensor, " edge"]) -> Bool[Tensor, " edge"]:
    """Keep only edges on an ``input`` -> ``logits`` path of kept edges (networkx reachability)."""
    mask = graph.check_edge_mask(edge_mask)
    src, dst = graph.edge_nodes()
    kept = mask.nonzero().flatten().tolist()
    g = nx.DiGraph()
    g.add_nodes_from(["input", "logits"])
    g.add_edges_from((src[i], dst[i]) for i in kept)
    from_input = nx.descendants(g, "input") | {"input"}
    to_logits = nx.ancestors(g, "logits") | {"logits"}
    out = torch.zeros_like(mask)
    for i in kept:
        if src[i] in from_input and dst[i] in to_logits:
            out[i] = True
    return out


def _key(graph: Graph, scores: Tensor, absolute: bool) -> Tensor:
    """What selection ranks by, highest first: |score|, or -score (how much ablating the edge hurts the task)."""
    scores = graph.check_edge_vector(scores, "scores").float()
    if torch.isnan(scores).any():
        raise CircuitryError("scores contain NaN")
    return scores.abs() if absolute else -scores


def _check_n(graph: Graph, n: int) -> int:
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise CircuitryError(f"number of edges must be a non-negative integer, got {n!r}")
    return min(n, graph.n_edges)


def top_n(graph: Graph, scores: Float[Tensor, " edge"], n: int, absolute: bool = True) -> Bool[Tensor, " edge"]:
    """The ``n`` best edges by |score| (or, signed, the ``n`` most negative scores: the most helpful edges)."""
    n, key = _check_n(graph, n), _key(graph, scores, absolute)
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    mask[torch.sort(key, descending=True, stable=True).indices[:n]] = True
    return mask


def threshold(graph: Graph, scores: Float[Tensor, " edge"], tau: float, absolute: bool = True) -> Bool[Tensor, " edge"]:
    """Edges with |score| >= tau (or, signed, score <= -tau)."""
    return _key(graph, scores, absolute) >= float(tau)


def greedy(graph: Graph, scores: Float[Tensor, " edge"], n: int, absolute: bool = True) -> Bool[Tensor, " edge"]:
    """Grow from ``logits``: repeatedly add the best edge (|score| or, signed, -score) whose target node is already
    in the circuit."""
    n, key = _check_n(graph, n), _key(graph, scores, absolute).tolist()
    src, dst = graph.edge_nodes()
    incoming: dict[str, list[int]] = {}
    for i, v in enumerate(dst):
        incoming.setdefault(v, []).append(i)
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    heap: list[tuple[float, int]] = []
    in_circuit: set[str] = set()

    def add_node(node: str) -> None:
        if node not in in_circuit:
            in_circuit.add(node)
            for i in incoming.get(node, []):
                heapq.heappush(heap, (-key[i], i))  # ties: lower edge index first

    add_node("logits")
    for _ in range(n):
        if not heap:
            break
        _, i = heapq.heappop(heap)
        mask[i] = True
        add_node(src[i])
    return mask


CURVE_SELECTIONS = ("abs", "signed", "greedy")


def check_selection(selection: str) -> None:
    if selection not in CURVE_SELECTIONS:
        raise CircuitryError(f"unknown selection {selection!r}; choose from {', '.join(CURVE_SELECTIONS)}")


def budget_mask(graph: Graph, scores: Float[Tensor, " edge"], k: int, selection: str = "abs") -> Bool[Tensor, " edge"]:
    """The ``k`` edges a faithfulness curve keeps at budget ``k`` (before pruning).

    ``abs``: top-k by |score|. ``signed``: the k most negative scores first, i.e. the edges whose ablation lowers
    the metric most (:func:`top_n` with ``absolute=False``). ``greedy``: grown from the logits by |score|
    (:func:`greedy`)."""
    check_selection(selection)
    if selection == "signed":
        return top_n(graph, scores, k, absolute=False)
    return greedy(graph, scores, k) if selection == "greedy" else top_n(graph, scores, k)


def select_circuit(
    graph: Graph,
    scores: Float[Tensor, " edge"] | None = None,
    method: Literal["top-n", "threshold", "greedy"] = "top-n",
    n: int | None = None,
    tau: float | None = None,
    absolute: bool = True,
    pruned: bool = True,
) -> Circuit:
    """A :class:`Circuit` from scores (default ``graph.scores``), pruned unless ``pruned=False``."""
    scores = graph.require_scores(scores)
    if method in ("top-n", "greedy"):
        if n is None:
            raise CircuitryError(f"selection {method!r} needs n (number of edges)")
        mask = top_n(graph, scores, n, absolute) if method == "top-n" else greedy(graph, scores, n, absolute)
    elif method == "threshold":
        if tau is None:
            raise CircuitryError("selection 'threshold' needs tau")
        mask = threshold(graph, scores, tau, absolute)
    else:
        raise CircuitryError(f"unknown selection method {method!r}; choose from top-n, threshold, greedy")
    return Circuit.from_mask(graph, prune(graph, mask) if pruned else mask, scores)
