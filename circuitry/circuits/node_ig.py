"""EAP-IG per target node ("eap-ig-node"): integrated gradients along each node input separately.

EAP multiplies every edge's activation difference by the gradient at the clean run; EAP-IG ("inputs") by the
gradient averaged over runs whose input embeddings move from ablated to clean. Both linearise the whole model
at once, which fails where single-edge effects are large and saturating (small, over-trained models; hard
attention gates). Here each target node v (a head's q, k or v input, an MLP input, the logits) gets its own
path: its input moves from clean towards "every incoming edge ablated",

    x_v(α) = x_v + α Σ_{u → v} (a_u(ablated) − a_u(clean)),  α = (j − ½) / steps, j = 1..steps,

with the rest of the run clean downstream of it (upstream is untouched, as when one edge into v is patched).
The score of u → v is (a_u(ablated) − a_u(clean)) · mean_α ∂m/∂x_v(α). At α-steps → ∞ and a single incoming edge
this is exactly the single-edge patching effect; it costs ``steps`` forward+backward passes per target node
(batched: every target of a layer is one copy of the batch, started from the cached clean residual stream at
that layer), i.e. O(nodes), not O(edges) like exact patching.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from circuitry.circuits.graph import Graph, TargetHook, graph_flags, record_sources
from circuitry.circuits.patching import (
    Ablation,
    MeanSources,
    Metric,
    ablated_sources,
    head_input_value,
    position_mask,
    repeat_batch,
    residual_store_hooks,
    target_layer,
)
from circuitry.tasks.base import TaskBatch


def node_ig_batch_scores(
    model, graph: Graph, batch: TaskBatch, metric_fn: Metric, steps: int, ablation: Ablation | MeanSources, max_rows: int = 1024
) -> Float[Tensor, "source target"]:
    """Sum over the batch's prompts of the per-edge estimates, as a [source, target] matrix."""
    b = len(batch)
    resid: dict[int, Tensor] = {}
    with model.hooks(fwd_hooks=residual_store_hooks(graph, resid)):
        clean = record_sources(model, graph, batch.clean.to(model.cfg.device))[1]
    diff = (ablated_sources(model, graph, batch, ablation) - clean) * position_mask(batch).to(clean)[:, :, None, None]  # [b, ...]
    out = torch.zeros(graph.valid.shape, dtype=torch.float64)
    # one copy of the batch per target node; copies of the same layer run together, from that layer on
    copies = [(th, i) for th in graph.target_hooks for i in range(th.count)]
    per_chunk = max(1, max_rows // b)
    for layer in range(graph.n_layers + 1):
        mine = [(th, i) for th, i in copies if target_layer(graph, th.start) == layer]
        for start in range(0, len(mine), per_chunk):
            chunk = mine[start : start + per_chunk]
            grads = _chunk_grads(model, graph, batch, metric_fn, resid[layer], diff, layer, chunk, steps)
            for c, (th, i) in enumerate(chunk):
                s = torch.einsum("bpsd,bpd->s", diff[:, :, : th.n_up], grads[c])
                out[: th.n_up, th.start + i] += s.double().cpu()
    return out


def _chunk_grads(model, graph: Graph, batch: TaskBatch, metric_fn: Metric, resid: Tensor, diff: Tensor, layer: int,
                 chunk: list[tuple[TargetHook, int]], steps: int) -> Float[Tensor, "copy batch pos d_model"]:  # fmt: skip
    """mean over α of ∂m/∂x_v(α) for each (target hook, index) of ``chunk`` (all in ``layer``).

    A head's q/k/v input is moved by recomputing just that head's q/k/v from ``ln1(resid + move)`` at
    ``hook_q``/``hook_k``/``hook_v`` (the same values the split-input hooks give, without splitting every head)."""
    b, p = batch.clean.shape
    k, d = len(chunk), diff.shape[-1]
    shift = torch.stack([diff[:, :, : th.n_up].sum(2) for th, _ in chunk])  # [copy, batch, pos, d]: all inputs ablated
    stacked = repeat_batch(batch, k)
    x0 = resid.repeat(k, 1, 1)
    total = torch.zeros(k, b, p, d, dtype=diff.dtype, device=diff.device)
    groups: dict[str, list[int]] = {}
    for c, (th, _) in enumerate(chunk):
        point = th.name if not th.heads else f"blocks.{layer}.attn.hook_{th.name[-7]}"  # "...hook_q_input" -> q
        groups.setdefault(point, []).append(c)
    for j in range(steps):
        alpha = (j + 0.5) / steps
        leaf = torch.zeros(k, b, p, d, dtype=diff.dtype, device=diff.device, requires_grad=True)
        with torch.enable_grad():
            move = alpha * shift + leaf  # the gradient w.r.t. leaf is the gradient at x_v(α)
            if layer == graph.n_layers:  # the logits' input: the final residual stream
                logits = model(x0 + move.reshape(k * b, p, d), start_at_layer=layer)
            else:
                hooks = [(name, _mover(model, layer, name, cs, chunk, move, resid)) for name, cs in groups.items()]
                with graph_flags(model, split=False), model.hooks(fwd_hooks=hooks):
                    logits = model(x0, start_at_layer=layer)
            (g,) = torch.autograd.grad(metric_fn(logits, stacked).sum(), [leaf])
        total += g / steps
    return total


def _mover(model, layer: int, name: str, cs: list[int], chunk: list[tuple[TargetHook, int]], move: Tensor, resid: Tensor):
    """Hook at ``name`` that moves the input of copies ``cs`` by ``move`` (MLP input) or recomputes their head's
    q/k/v from the moved input (attention)."""
    idx = torch.tensor(cs, device=move.device)
    k = len(chunk)

    def hook(x: Tensor, hook) -> Tensor:
        view = x.view(k, -1, *x.shape[1:]).clone()
        if name.endswith("hook_mlp_in"):
            view[idx] = view[idx] + move[idx]
            return view.view_as(x)
        heads = torch.tensor([chunk[c][1] for c in cs], device=x.device)
        value = head_input_value(model.blocks[layer], name[-1], heads, resid[None] + move[idx])  # [copy, batch, pos, e]
        view[idx, :, :, heads] = value.to(view.dtype)
        return view.view_as(x)

    return hook
