"""Attention attribution: split each cross-position edge into (layer, head, key → query) contributions.

With frozen patterns every path from a source at position p to a target at position q ≠ p changes position
a last time, through some head h of some layer l, from a key k ≠ q into the query q, and then stays at q.
Grouping paths by that last hop partitions the edge exactly:

    edge(s → t) = Σ_{l, h, k ≠ q} pattern[l, h, q, k] · ⟨∂v_{l,h}(k)/∂s · a_s, g^stay_{t,l,h}⟩

where ``v_{l,h}(k)`` is the head's value vector at key k (through every path of the frozen model) and
``g^stay`` the gradient of the target with respect to the head's output ``z_{l,h}(q)`` in the frozen model
with only the diagonal of every pattern kept (paths that never leave q). Two batched backward sweeps give
everything: a backward sweep over targets (diagonal model) and one forward over sources (full model).
"""

from __future__ import annotations

import torch
from torch import Tensor

from circuitry.attribution.graph import AttributionGraph, frozen_point, target_rows
from circuitry.attribution.prune import edge_influence
from circuitry.attribution.replacement import backward_rows, frozen_forward, write_points
from circuitry.training import gradients


def _cover(mass: Tensor, fraction: float) -> int:
    """How many of the largest entries of ``mass`` cover ``fraction`` of its total."""
    flat = mass.flatten().sort(descending=True).values
    total = flat.sum()
    if total <= 0:
        return 0
    return int(torch.searchsorted(flat.cumsum(0) / total, torch.tensor(fraction, dtype=flat.dtype))) + 1


def _cover_columns(mass: Tensor, fraction: float) -> Tensor:
    """:func:`_cover` of every column of ``mass`` [entries, columns] at once."""
    flat = mass.sort(dim=0, descending=True).values
    total = flat.sum(0)
    cum = flat.cumsum(0) / total.clamp(min=1e-30)
    count = (cum < fraction).sum(0) + 1
    return torch.where(total > 0, count.clamp(max=len(flat)), torch.zeros_like(count))


def source_writes(graph: AttributionGraph, clt, sources: Tensor) -> list[Tensor]:
    """Injections [source, pos, d_model] per write point holding only what each source writes."""
    point = graph.point
    L, T, d = graph.n_layers, point.n_pos, point.embed.shape[-1]
    out = [torch.zeros(len(sources), T, d) for _ in range(L + 1)]
    for b, i in enumerate(sources.tolist()):
        node = graph.node(i)
        p = node["pos"]
        if node["kind"] == "embedding":
            out[0][b, p] = point.embed[p]
        elif node["kind"] == "error":
            out[1 + node["layer"]][b, p] = point.errors[p, node["layer"]]
        else:
            l = node["layer"]
            for j, w in enumerate(clt.feature_write(l, node["feature"]).detach()):
                out[1 + l + j][b, p] = node["activation"] * w
    return out


@gradients("attention attribution")
def attention_split(model, clt, graph: AttributionGraph, batch_size: int = 256, pruned: bool = False) -> dict[str, Tensor]:
    """Split every cross-position edge of the graph by last hop: all edges (default), or only the edges kept by
    pruning (``pruned=True``; pruning is circuit-tracer's display step, and it drops the tail whose spread
    over heads is what this measures). Influence is taken in the graph the edges come from.

    Returns ``influence_mass [layer, head, key, query]``: Σ over edges of |contribution| × (the edge's influence
    on the logits / |edge|), i.e. each edge's circuit-tracer influence score spread over its last hops in
    proportion to their |contributions|, so edges into logits and into features of any scale are in one unit;
    ``mass``: the same with raw |contribution| (units of each target); ``edge_total`` = Σ |edge| over those
    edges, ``max_residual`` = max |edge − Σ contributions| (exactness check), and per edge the number of
    (head, key) pairs and of heads covering 80% of its |contributions|. A loaded graph is re-split from its
    prompt, with the model and transcoder it was built with."""
    point = frozen_point(graph, model, clt)
    L, H, T = model.cfg.n_layers, model.cfg.n_heads, point.n_pos
    n_kv = getattr(model.cfg, "n_key_value_heads", None) or H
    use_pruned = pruned and graph.edge_mask is not None
    edges = graph.edge_mask if use_pruned else graph.adjacency != 0
    pos = graph.node_positions()
    cross = edges & (pos[:, None] != pos[None, :])
    targets = cross.any(1).nonzero().flatten()
    sources = cross.any(0).nonzero().flatten()
    dt = model.cfg.dtype
    mass = torch.zeros(L, H, T, T, dtype=dt)
    if len(targets) == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return {"mass": mass, "influence_mass": mass.clone(), "edge_total": torch.tensor(0.0), "max_residual": torch.tensor(0.0),
                "edge_head_key_pairs_80": empty, "edge_heads_80": empty}  # fmt: skip
    influence_mass = torch.zeros(L, H, T, T, dtype=dt)
    adj = graph.adjacency.abs()
    all_nodes = torch.ones(graph.n_nodes, dtype=torch.bool)
    scores = edge_influence(graph, graph.node_mask if use_pruned else all_nodes)
    per_unit = torch.where(adj > 0, scores / adj.clamp(min=1e-30), torch.zeros(()))  # influence per |edge|
    feats = graph.active_features
    n_feat = graph.n_features
    hooks, read_pos, vecs = target_rows(model, clt, point, feats, graph.logit_tokens)
    row_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    row_of[: n_feat] = torch.arange(n_feat)
    row_of[graph.slices()["logits"]] = torch.arange(len(graph.logit_tokens)) + n_feat
    rows = row_of[targets]
    z_names = tuple(f"blocks.{l}.attn.hook_z" for l in range(L))
    # 1. stay gradients of each target with respect to every head output at its own position
    g_stay = torch.zeros(len(targets), L, H, model.cfg.d_head, dtype=dt)
    t_pos = pos[targets]
    sel_hooks, sel_pos = [hooks[r] for r in rows], [read_pos[r] for r in rows]
    for chunk, grads in backward_rows(model, point, sel_hooks, sel_pos, vecs[rows], batch_size, diagonal_only=True, grad_at=z_names):
        idx = torch.arange(chunk.stop - chunk.start)
        for l, name in enumerate(z_names):
            g_stay[chunk, l] = grads[name][idx, t_pos[chunk]]
    # 2. what each source alone adds to every value vector: the frozen model is affine in its injections,
    #    so that is v(source's write only) − v(nothing written), one batched forward, no backward
    v_names = tuple(f"blocks.{l}.attn.hook_v" for l in range(L))
    with torch.no_grad():
        alone = frozen_forward(model, point, source_writes(graph, clt, sources), capture=v_names)
        empty = frozen_forward(model, point, [torch.zeros(1, T, model.cfg.d_model, dtype=dt) for _ in write_points(model)], capture=v_names)
    J = torch.stack([alone[n] - empty[n] for n in v_names], dim=1)  # [source, layer, key, kv_head, e]
    J = J.repeat_interleave(H // n_kv, dim=3).permute(1, 2, 3, 4, 0)  # query head h reads kv head h // (H/n_kv)
    # 3. contributions per edge and last hop
    patterns = torch.stack(point.patterns)  # [layer, head, query, key]
    col_of = torch.full((graph.n_nodes,), -1, dtype=torch.long)
    col_of[sources] = torch.arange(len(sources))
    max_res, edge_total = 0.0, 0.0
    per_edge_pairs: list[int] = []
    per_edge_heads: list[int] = []
    for i, t in enumerate(targets.tolist()):
        q = int(pos[t])
        src = cross[t].nonzero().flatten()
        c = torch.einsum("lhe,lkhes->lhks", g_stay[i], J[..., col_of[src]])
        c = c * patterns[:, :, q, :, None]
        c[:, :, q] = 0
        mass[:, :, :, q] += c.abs().sum(-1)
        influence_mass[:, :, :, q] += (c.abs() * per_unit[t, src]).sum(-1)
        # per edge: how concentrated is this one attribution?
        per_edge_pairs += _cover_columns(c.abs().flatten(0, 2), 0.8).tolist()
        per_edge_heads += _cover_columns(c.abs().sum(2).flatten(0, 1), 0.8).tolist()
        max_res = max(max_res, (c.sum((0, 1, 2)) - graph.adjacency[t, src]).abs().max().item())
        edge_total += graph.adjacency[t, src].abs().sum().item()
    return {"mass": mass, "influence_mass": influence_mass, "edge_total": torch.tensor(edge_total), "max_residual": torch.tensor(max_res),
            "edge_head_key_pairs_80": torch.tensor(per_edge_pairs), "edge_heads_80": torch.tensor(per_edge_heads)}  # fmt: skip


def attention_summary(split: dict[str, Tensor], fraction: float = 0.8) -> dict[str, float | int]:
    """Heads and (head, key position) pairs covering ``fraction`` of the attention-carried attribution, measured
    as influence on the logits (``heads_80``, ``head_key_pairs_80``) and as raw edge weight (``*_raw``)."""
    out: dict[str, float | int] = {}
    for key, suffix in (("influence_mass", ""), ("mass", "_raw")):
        per_head = split[key].sum((2, 3))
        per_pair = split[key].sum(3)  # [layer, head, key]
        out[f"heads_80{suffix}"] = _cover(per_head, fraction)
        out[f"head_key_pairs_80{suffix}"] = _cover(per_pair, fraction)
    mass = split["mass"]
    return out | {
        "heads_total": int((mass.sum((2, 3)) > 0).sum()),
        "head_key_pairs_total": int((mass.sum(3) > 0).sum()),
        "attention_mass": round(mass.sum().item(), 6),
        "attention_influence": round(split["influence_mass"].sum().item(), 6),
        "edge_mass": round(split["edge_total"].item(), 6),
        "max_residual": split["max_residual"].item(),
        # the paper's view: for a single cross-position edge, the heads / (head, key) pairs carrying 80% of it
        "edge_heads_80_median": _median(split["edge_heads_80"]),
        "edge_head_key_pairs_80_median": _median(split["edge_head_key_pairs_80"]),
        "edge_head_key_pairs_80_max": int(split["edge_head_key_pairs_80"].max()) if len(split["edge_head_key_pairs_80"]) else 0,
    }


def _median(x: Tensor) -> float:
    return float(x.float().median()) if len(x) else 0.0
