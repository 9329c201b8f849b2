"""Export to circuit-tracer's frontend graph JSON (schema_version 1) and feature labels by logit lens.

Node ids follow circuit-tracer: features ``{layer}_{feature}_{pos}``, errors ``{layer}_-1_{pos}``, embeddings
``E_{token}_{pos}``, logits ``{n_layers + 1}_{token}_{pos}``; ``feature`` of a feature node is the Cantor
pairing of (layer, feature). Links carry the raw direct effect; only kept nodes and edges are written.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitry.artifacts import atomic_write_json, read_json, reading
from circuitry.attribution.graph import AttributionGraph
from circuitry.errors import CircuitryError

SCHEMA_VERSION = 1


def _token_str(text: str) -> str:
    return text.replace("\n", "⏎").replace("\t", "→").replace("\r", "↵")


def logit_lens(model, direction: Float[Tensor, "d_model"]) -> Float[Tensor, "d_vocab"]:
    """The change of the logits per unit of ``direction`` added to the final residual stream, with the final
    layer norm's scale frozen at 1 (as attribution graphs freeze it): centred (LayerNorm), times ``ln_final.w``,
    through ``W_U``. Models loaded with ``fold_ln`` have no ``ln_final.w``: it is already in ``W_U``."""
    v = direction.detach()
    if model.cfg.normalization_type in ("LN", "LNPre"):
        v = v - v.mean()
    w = getattr(model.ln_final, "w", None)
    return (v if w is None else v * w.detach()) @ model.W_U.detach()


def feature_labels(model, clt, graph: AttributionGraph, nodes: list[int] | None = None, k: int = 3) -> dict[int, str]:
    """For feature nodes (all, or those in ``nodes``): the ``k`` tokens the feature's direct write promotes most,
    i.e. the :func:`logit_lens` of its decoders summed over the layers it writes to (every write reaches the final
    residual stream). Special tokens such as <pad> and <bos> are never predicted and are left out."""
    feats = range(graph.n_features) if nodes is None else [i for i in nodes if i < graph.n_features]
    labels = {}
    special = torch.tensor([t for t in model.tokenizer.all_special_ids if t < model.cfg.d_vocab_out], dtype=torch.long)
    for i in feats:
        layer, _, feat = graph.active_features[i].tolist()
        lens = logit_lens(model, clt.feature_write(layer, feat).sum(0))
        lens[special] = float("-inf")
        top = lens.topk(k).indices.tolist()
        labels[i] = "→ " + " ".join(repr(model.tokenizer.decode([t])) for t in top)
    return labels


def node_id(graph: AttributionGraph, i: int) -> str:
    n = graph.node(i)
    if n["kind"] == "feature":
        return f"{n['layer']}_{n['feature']}_{n['pos']}"
    if n["kind"] == "error":
        return f"{n['layer']}_-1_{n['pos']}"
    if n["kind"] == "embedding":
        return f"E_{n['token']}_{n['pos']}"
    return f"{graph.n_layers + 1}_{n['token']}_{n['pos']}"


def _node_record(graph: AttributionGraph, i: int, labels: dict[int, str], token_strs: list[str]) -> dict[str, Any]:
    n = graph.node(i)
    L, T = graph.n_layers, graph.n_pos
    rec = {"node_id": node_id(graph, i), "ctx_idx": n["pos"], "token_prob": 0.0, "is_target_logit": False, "run_idx": 0,
           "reverse_ctx_idx": T - 1 - n["pos"], "clerp": "", "influence": None, "activation": None}  # fmt: skip
    if n["kind"] == "feature":
        l, f = n["layer"], n["feature"]
        rec.update(feature=(l + f) * (l + f + 1) // 2 + f, layer=str(l), feature_type="cross layer transcoder",
                   jsNodeId=f"{l}_{f}-0", clerp=labels.get(i, ""), activation=n["activation"])  # fmt: skip
    elif n["kind"] == "error":
        rec.update(feature=-1, layer=str(n["layer"]), feature_type="mlp reconstruction error", jsNodeId=f"{n['layer']}_-1-{n['pos']}")
    elif n["kind"] == "embedding":
        rec.update(feature=n["pos"], layer="E", feature_type="embedding", jsNodeId=f"E_{n['token']}-{n['pos']}")
    else:
        k = i - graph.slices()["logits"].start
        rec.update(feature=n["token"], layer=str(L + 1), feature_type="logit", jsNodeId=f"L_{n['token']}-{n['pos']}",
                   token_prob=n["prob"], is_target_logit=k == 0,
                   clerp=f'Output "{_token_str(token_strs[k])}" (p={n["prob"]:.3f})')  # fmt: skip
    if n["kind"] != "logit" and graph.cumulative_influence is not None:
        rec["influence"] = graph.cumulative_influence[i].item()
    return rec


def to_circuit_tracer_json(graph: AttributionGraph, slug: str, model=None, clt=None) -> dict[str, Any]:
    """The frontend JSON of a pruned graph (``metadata``, ``qParams``, ``nodes``, ``links``)."""
    keep = graph.node_mask if graph.node_mask is not None else torch.ones(graph.n_nodes, dtype=torch.bool)
    edges = graph.edge_mask if graph.edge_mask is not None else graph.adjacency != 0
    edges = edges & keep[:, None] & keep[None, :]
    s = graph.slices()
    linked = edges.any(0) | edges.any(1)
    linked[s["embeddings"]] = True
    linked[s["logits"]] = True
    kept = (linked & keep).nonzero().flatten().tolist()
    labels = feature_labels(model, clt, graph, kept) if model is not None and clt is not None else {}
    logit_strs = [model.tokenizer.decode([t]) for t in graph.logit_tokens] if model is not None else [str(t) for t in graph.logit_tokens]
    nodes = [_node_record(graph, i, labels, logit_strs) for i in kept]
    links = [{"source": node_id(graph, src), "target": node_id(graph, tgt), "weight": graph.adjacency[tgt, src].item()}
             for tgt, src in edges.nonzero().tolist()]  # fmt: skip
    return {
        "metadata": {
            "slug": slug,
            "scan": graph.info.get("clt_scan", f"circuitry/{graph.info.get('model', 'model')}-clt"),
            "transcoder_list": [],
            "prompt_tokens": [_token_str(t) for t in graph.token_strs],
            "prompt": graph.prompt,
            "node_threshold": graph.info.get("node_threshold", 0.8),
            "schema_version": SCHEMA_VERSION,
        },
        "qParams": {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""},
        "nodes": nodes,
        "links": links,
    }


def write_circuit_tracer_json(graph: AttributionGraph, out_dir: str | Path, slug: str, model=None, clt=None,
                              index_from: str | Path | None = None) -> Path:  # fmt: skip
    """Write ``{out_dir}/{slug}.json`` and upsert ``graph-metadata.json`` as circuit-tracer does. ``index_from``: the
    directory whose index to upsert (default ``out_dir``; the CLI writes into a staging directory that replaces
    its ``--out``)."""
    out_dir = Path(out_dir)
    data = to_circuit_tracer_json(graph, slug, model, clt)
    path = out_dir / f"{slug}.json"
    held = Path(index_from if index_from is not None else out_dir) / "graph-metadata.json"
    with reading(held):  # a hand-edited index fails with one line naming it, before anything is written
        index = read_json(held) if held.is_file() else {"graphs": []}
        if not isinstance(index, dict) or not isinstance(index.get("graphs", []), list):
            raise CircuitryError(f"{held}: not a circuit-tracer graph index (an object with a 'graphs' list)")
        index["graphs"] = [g for g in index.get("graphs", []) if g.get("slug") != slug] + [data["metadata"]]
    atomic_write_json(path, data)
    atomic_write_json(out_dir / "graph-metadata.json", index)
    return path
