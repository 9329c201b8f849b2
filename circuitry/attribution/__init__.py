"""Attribution graphs on the local replacement model, influence pruning, attention attribution, export."""

from __future__ import annotations

import statistics
import time
import warnings
from pathlib import Path
from typing import Any

from circuitry.attribution.attention import attention_split, attention_summary
from circuitry.attribution.export import to_circuit_tracer_json, write_circuit_tracer_json
from circuitry.attribution.graph import AttributionGraph, build_graph, salient_logits, target_values
from circuitry.attribution.prune import apply_pruning, graph_scores, prune
from circuitry.progress import progress_bar
from circuitry.training import gradients

__all__ = [
    "AttributionGraph", "build_graph", "salient_logits", "target_values", "prune", "apply_pruning", "graph_scores",
    "attention_split", "attention_summary", "to_circuit_tracer_json", "write_circuit_tracer_json", "attribute",
    "graph_summary", "compare_graphs",
]  # fmt: skip


@gradients("attribution")
def attribute(model, clt, prompt: str, node_threshold: float = 0.8, edge_threshold: float = 0.98,
              max_logits: int = 10, desired_logit_prob: float = 0.95, attention: bool = True,
              attention_pruned: bool = False, progress: bool = False) -> AttributionGraph:  # fmt: skip
    """Build, prune and score the attribution graph of ``prompt``; split its cross-position edges by head (all
    edges, or the pruned graph's with ``attention_pruned``). ``progress``: a bar over the backward passes."""
    return _attribute(model, clt, prompt, provenance(model, clt), node_threshold, edge_threshold, max_logits, desired_logit_prob,
                      attention, attention_pruned, progress)  # fmt: skip


def _attribute(model, clt, prompt: str, origin: dict[str, str | None], node_threshold: float = 0.8, edge_threshold: float = 0.98,
               max_logits: int = 10, desired_logit_prob: float = 0.95, attention: bool = True, attention_pruned: bool = False,
               progress: bool = False) -> AttributionGraph:  # fmt: skip
    """:func:`attribute` with the pair's :func:`provenance` given (hashing a GPT-2's weights takes 0.6 s, so a
    loop over prompts computes it once)."""
    t0 = time.time()
    graph = build_graph(model, clt, prompt, max_logits, desired_logit_prob, progress=progress)
    apply_pruning(graph, node_threshold, edge_threshold)
    graph.info.update(graph_scores(graph))
    graph.info.update(origin)
    if attention:
        split = attention_split(model, clt, graph, pruned=attention_pruned)
        graph.attention = {"mass": split["mass"], "influence_mass": split["influence_mass"]}
        graph.info["attention"] = attention_summary(split) | {"scope": "pruned graph" if attention_pruned else "full graph"}
    graph.info["seconds"] = round(time.time() - t0, 3)
    return graph


def provenance(model, clt) -> dict[str, str | None]:
    """Fingerprints of the transcoder, of the model the graph is built on, and of the model the transcoder was
    trained on; a warning when the last two differ (the graph stays exact - error nodes absorb what the
    transcoder misses - but its features were not learned on this model's activations)."""
    from circuitry.zoo.registry import config_fingerprint, model_fingerprint

    record = getattr(clt, "record", {})
    fp, trained_on = model_fingerprint(model), record.get("model_fingerprint")
    if trained_on is not None and trained_on != fp:
        warnings.warn(f"the transcoder was trained on another model (fingerprint {trained_on}; this model: {fp})", stacklevel=3)
    return {"clt_fingerprint": record.get("fingerprint"), "model_fingerprint": fp, "model_config_fingerprint": config_fingerprint(model),
            "clt_model_fingerprint": trained_on}  # fmt: skip


def graph_summary(graph: AttributionGraph) -> dict[str, Any]:
    """Counts after pruning, scores, and the attention figures (when computed)."""
    s = graph.slices()
    nodes = graph.node_mask if graph.node_mask is not None else graph.adjacency.abs().sum(0) + graph.adjacency.abs().sum(1) > 0
    edges = graph.edge_mask if graph.edge_mask is not None else graph.adjacency != 0
    att = graph.info.get("attention", {})
    texts = graph.info.get("logit_texts", [None] * len(graph.logit_tokens))  # (graphs saved before it was recorded)
    return {
        "prompt": graph.prompt,
        "nodes": int(nodes.sum()),
        "edges": int(edges.sum()),
        "features": int(nodes[s["features"]].sum()),
        "active_features": graph.n_features,
        "replacement_score": round(graph.info.get("replacement_score", float("nan")), 5),
        "completeness_score": round(graph.info.get("completeness_score", float("nan")), 5),
        "heads_80": att.get("heads_80"),
        "head_key_pairs_80": att.get("head_key_pairs_80"),
        "heads_80_raw": att.get("heads_80_raw"),
        "head_key_pairs_80_raw": att.get("head_key_pairs_80_raw"),
        "edge_heads_80_median": att.get("edge_heads_80_median"),
        "edge_head_key_pairs_80_median": att.get("edge_head_key_pairs_80_median"),
        "top_logits": [{"token": t, "text": text, "prob": round(p, 5)} for t, text, p in zip(graph.logit_tokens, texts, graph.logit_probs)],
        "seconds": graph.info.get("seconds"),
    }


def compare_graphs(pairs: dict[str, tuple[Any, Any]], prompts: list[str], progress: bool | None = False, **kwargs) -> dict[str, Any]:
    """Attribution graphs of every prompt on every (model, clt); medians per model, and the dense/sparse
    ratio of medians when exactly two models are given (first / second). ``progress``: a bar over the graphs
    (None: only on a terminal)."""
    out: dict[str, Any] = {"n_prompts": len(prompts), "models": {}}
    keys = ("nodes", "edges", "replacement_score", "completeness_score", "heads_80", "head_key_pairs_80", "heads_80_raw",
            "head_key_pairs_80_raw", "edge_heads_80_median", "edge_head_key_pairs_80_median", "seconds")  # fmt: skip
    for name, (model, clt) in pairs.items():
        origin = provenance(model, clt)  # once per model: the weights do not change between prompts
        bar = progress_bar(prompts, desc=f"attribution graphs {Path(name).name}", unit="graph", progress=progress)
        per = [graph_summary(_attribute(model, clt, p, origin, **kwargs)) for p in bar]
        out["models"][name] = {k: _median([r[k] for r in per]) for k in keys} | {"per_prompt": per}
    if len(pairs) == 2:
        a, b = (out["models"][n] for n in pairs)
        ratio_keys = ("nodes", "edges", "heads_80", "head_key_pairs_80", "heads_80_raw", "head_key_pairs_80_raw", "edge_head_key_pairs_80_median")
        out["ratios"] = {k: round(a[k] / b[k], 3) if b[k] else None for k in ratio_keys}
    return out


def _median(values: list) -> float | None:
    """Median of the figures a graph has (the attention ones are None with ``attention=False``)."""
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None
