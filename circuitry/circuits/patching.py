"""Real patched forward passes over graph edges, and exact (brute-force) edge scores.

Removing edge u -> v means: v reads the *ablated* output of u (corrupted, mean or zero) instead of
the output u computes in this run, everything else unchanged. At each node-input hook we compute
``input_v - sum_{u: u->v removed} (a_u(this run) - a_u(ablated))``; upstream outputs of this run are
recorded as they are computed (sources come before the targets that read them).
"""

from __future__ import annotations

from typing import Callable, Iterable, Literal, Sequence

import einops
import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from circuitry.circuits.graph import Graph, SourceHook, TargetHook, graph_flags, record_sources, source_outputs
from circuitry.errors import CircuitryError
from circuitry.progress import progress_bar
from circuitry.tasks.base import Task, TaskBatch

Ablation = Literal["corrupt", "mean", "zero"]
ABLATIONS = ("corrupt", "mean", "zero")
Metric = Callable[[Tensor, TaskBatch], Tensor]


def resolve_data(
    task_or_batches, metric: Metric | Task | None = None, n: int = 100, seed: int = 0, batch_size: int = 50
) -> tuple[list[TaskBatch], Metric]:
    """Batches and a per-prompt metric from a Task (``n`` prompts, ``seed``), one TaskBatch or a
    list of them (then ``metric`` - a Task or a function ``(logits, batch) -> [batch]`` - is required)."""
    if isinstance(metric, Task):
        metric = metric.metric
    if isinstance(task_or_batches, Task):
        if batch_size <= 0:
            raise CircuitryError(f"batch size must be positive, got {batch_size}")
        return list(task_or_batches.batches(n, seed, batch_size)), per_prompt(metric or task_or_batches.metric)
    batches = [task_or_batches] if isinstance(task_or_batches, TaskBatch) else list(task_or_batches)
    if not batches or not all(isinstance(b, TaskBatch) for b in batches):
        raise CircuitryError("expected a Task, a TaskBatch or a non-empty list of TaskBatch")
    if metric is None:
        raise CircuitryError(
            "pass metric= (a Task or a function of (logits, batch)) when giving batches instead of a task"
        )
    return batches, per_prompt(metric)


def per_prompt(metric: Metric) -> Metric:
    """``metric`` checked to return one value per prompt ([batch]); a scalar (a mean) would silently rescale
    scores by 1/batch or break the stacked runs of exact patching."""

    def checked(logits: Tensor, batch: TaskBatch) -> Tensor:
        out = metric(logits, batch)
        if not isinstance(out, Tensor) or out.shape != (logits.shape[0],):
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise CircuitryError(
                f"the metric must return one value per prompt, shape ({logits.shape[0]},); got {shape} "
                "(do not average over the batch)"
            )
        return out

    return checked


class MeanSources:
    """``mean`` ablation resolved for a dataset: every source's corrupted-run output averaged over all the dataset's
    prompts at each position (real tokens only), ``values`` [1, pos, source, d_model]. The entry points
    (scores, faithfulness, curves) resolve it once over all their batches (:func:`resolve_ablation`), so results do
    not depend on the batch size; one batch given alone is its own dataset."""

    def __init__(self, values: Float[Tensor, "1 pos source d_model"]):
        self.values = values


def check_ablation(ablation: str | MeanSources) -> None:
    if not isinstance(ablation, MeanSources) and ablation not in ABLATIONS:
        raise CircuitryError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")


def position_mask(batch: TaskBatch) -> Bool[Tensor, "batch pos"]:
    """True at the real tokens (positions <= answer_pos)."""
    return torch.arange(batch.clean.shape[1])[None, :] <= batch.answer_pos[:, None]


def resolve_ablation(model, graph: Graph, batches: Sequence[TaskBatch], ablation: Ablation | MeanSources) -> Ablation | MeanSources:
    """``ablation`` itself, except ``mean``: then the mean over every prompt of ``batches`` (:class:`MeanSources`)."""
    check_ablation(ablation)
    if ablation != "mean":
        return ablation
    pos = max(b.clean.shape[1] for b in batches)  # batches may be padded to different lengths
    total = torch.zeros(pos, len(graph.sources), model.cfg.d_model, dtype=model.cfg.dtype, device=model.cfg.device)
    count = torch.zeros(pos, dtype=model.cfg.dtype, device=model.cfg.device)
    for batch in batches:
        _, corrupt = record_sources(model, graph, batch.corrupt.to(model.cfg.device))
        w = position_mask(batch).to(corrupt)
        p = corrupt.shape[1]
        total[:p] += einops.einsum(corrupt, w, "b p s d, b p -> p s d")
        count[:p] += w.sum(0)
    return MeanSources((total / count.clamp(min=1)[:, None, None])[None])


def ablated_sources(model, graph: Graph, batch: TaskBatch, ablation: Ablation | MeanSources) -> Tensor:
    """Ablated outputs of every source node for ``batch`` ([batch or 1, pos, source, d_model]): the corrupted run,
    zeros, or the mean of the corrupted runs (over ``batch`` alone when given the string ``mean``)."""
    check_ablation(ablation)
    pos = batch.clean.shape[1]
    if ablation == "zero":
        shape = (1, pos, len(graph.sources), model.cfg.d_model)
        return torch.zeros(shape, dtype=model.cfg.dtype, device=model.cfg.device)
    if ablation == "mean":
        ablation = resolve_ablation(model, graph, [batch], ablation)
    if isinstance(ablation, MeanSources):
        if ablation.values.shape[1] < pos:
            raise CircuitryError(f"the mean ablation covers {ablation.values.shape[1]} positions, the batch has {pos}")
        return ablation.values[:, :pos]
    return record_sources(model, graph, batch.corrupt.to(model.cfg.device))[1]


class _SourceDiffs:
    """(current - ablated) output of every source as one [source, batch*pos*d_model] matrix, written by
    forward hooks as the sources run (targets read only sources recorded before them), and the patched node
    inputs computed from it."""

    def __init__(self, model, graph: Graph, abl: Float[Tensor, "batch pos source d_model"], batch: int, pos: int):
        self.model, self.graph, self.abl = model, graph, abl
        self.diff = abl.new_empty(len(graph.sources), batch * pos * model.cfg.d_model)

    def hooks(self) -> list:
        def make(h: SourceHook):
            rows = self.diff[h.start : h.start + h.count]

            def hook(x: Tensor, hook) -> None:
                out = source_outputs(self.model, h, x) - self.abl[:, : x.shape[1], h.start : h.start + h.count]
                rows.view(h.count, *x.shape[:2], -1).copy_(einops.rearrange(out, "b p s d -> s b p d"))

            return hook

        return [(h.name, make(h)) for h in self.graph.source_hooks]

    def inputs(self, x: Float[Tensor, "batch pos d_model"], removed: Float[Tensor, "n up"]) -> Float[Tensor, "n batch pos d_model"]:
        """``x`` (the unpatched input) with the sources marked in each row of ``removed`` at their ablated
        output: ``x - removed @ (current - ablated)``. Constant terms of the residual stream that belong to no
        source (attention output biases) stay in ``x``."""
        return x[None] - torch.matmul(removed.to(x), self.diff[: removed.shape[1]]).view(-1, *x.shape)


def _subtract_hook(th: TargetHook, cols: Float[Tensor, "up 1"], diff: _SourceDiffs):
    """MLP input or logits input with the removed sources at their ablated outputs."""
    # every upstream source, with zero weight where no edge is removed: one matrix product over a
    # contiguous slice is several times faster on CPU than gathering the removed sources.
    w = cols.T.contiguous()

    def hook(x: Tensor, hook) -> Tensor:
        return diff.inputs(x, w)[0]

    return hook


def _head_hook(blk, ch: str, th: TargetHook, cols: Float[Tensor, "up head"], resid: dict, normed: dict, diff: _SourceDiffs):
    """Overwrite the ``ch`` (q, k or v) of the heads with removed input edges by projecting their own
    patched input through ``ln1``.

    The same values as TransformerLens' split q/k/v inputs (``hook_{q,k,v}_input``), which normalise
    3 x n_heads copies of the residual stream in every layer; here only heads with removed edges are
    recomputed, and heads whose inputs drop the same sources (e.g. every source, in small circuits) share
    one layer norm, also across q, k and v (``normed`` caches them per forward)."""
    heads = cols.any(0).nonzero().flatten()
    keys = [cols[:, h].numpy().tobytes() for h in heads.tolist()]
    column = dict(zip(keys, cols[:, heads].T))
    layer = int(th.name.split(".")[1])

    def hook(x: Tensor, hook) -> Tensor:  # x [batch, pos, head, d_head]
        missing = list(dict.fromkeys(k for k in keys if (layer, k) not in normed))
        if missing:
            inputs = diff.inputs(resid[layer], torch.stack([column[k] for k in missing]))
            for k, v in zip(missing, blk.ln1(inputs)):
                normed[(layer, k)] = v
        value = project_heads(blk.attn, ch, heads, torch.stack([normed[(layer, k)] for k in keys]))  # [n, b, p, e]
        x = x.clone()
        x[:, :, heads] = einops.rearrange(value, "n b p e -> b p n e")
        return x

    return hook


def patched_logits(
    model,
    graph: Graph,
    tokens: Int[Tensor, "batch pos"],
    abl: Float[Tensor, "batch pos source d_model"],
    removed: Float[Tensor, "source target"] | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of ``tokens`` with the removed edges (0/1 [source, target] matrix) reading ``abl``.
    Permanent hooks (e.g. gates) stay in place.

    Inputs of nodes with no kept outgoing edge are left unpatched: nothing downstream reads such a
    node's current output (every reader gets its ablated output instead), so this changes no logit."""
    graph.check_model(model)
    if removed is None or not removed.any():
        with torch.no_grad():
            return model(tokens)
    removed = removed.float().cpu()
    diff = _SourceDiffs(model, graph, abl, *tokens.shape)
    hooks, resid, normed, head_layers = diff.hooks(), {}, {}, set()
    live = ((removed == 0) & graph.valid).any(1)  # sources with a kept outgoing edge
    node_source = {name: i for i, name in enumerate(graph.sources)}
    for th in graph.target_hooks:
        cols = removed[: th.n_up, th.start : th.start + th.count].clone()
        for j in range(th.count):
            src = node_source.get(graph.target_node(graph.targets[th.start + j]))
            if src is not None and not live[src]:
                cols[:, j] = 0
        if not cols.any():
            continue
        if not th.heads:
            hooks.append((th.name, _subtract_hook(th, cols, diff)))
            continue
        layer, ch = int(th.name.split(".")[1]), th.name[-7]  # "blocks.l.hook_q_input" -> "q"
        hooks.append((f"blocks.{layer}.attn.hook_{ch}", _head_hook(model.blocks[layer], ch, th, cols, resid, normed, diff)))
        head_layers.add(layer)
    hooks += [(f"blocks.{layer}.hook_resid_pre", _store(resid, layer)) for layer in sorted(head_layers)]
    with torch.no_grad(), graph_flags(model, split=False), model.hooks(fwd_hooks=hooks):
        return model(tokens)


def removed_matrix(graph: Graph, edge_mask: Bool[Tensor, " edge"]) -> Float[Tensor, "source target"]:
    """0/1 [source, target] matrix of the edges NOT in ``edge_mask``."""
    keep = graph.check_edge_mask(edge_mask)
    return graph.to_matrix((~keep).float())


def run_with_edges(
    model,
    batch: TaskBatch,
    graph: Graph,
    edge_mask: Bool[Tensor, " edge"],
    ablation: Ablation | MeanSources = "corrupt",
    abl: Tensor | None = None,
) -> Float[Tensor, "batch pos vocab"]:
    """Logits of the clean prompts where every edge not in ``edge_mask`` carries its source's
    ablated activation. ``abl``: precomputed :func:`ablated_sources` (optional)."""
    graph.check_model(model)
    removed = removed_matrix(graph, edge_mask)
    abl = ablated_sources(model, graph, batch, ablation) if abl is None else abl
    return patched_logits(model, graph, batch.clean.to(model.cfg.device), abl, removed)


def _edge_indices(graph: Graph, edges: Sequence[int | str] | None) -> Tensor:
    if edges is None:
        return torch.arange(graph.n_edges)
    idx = [graph.edge_index(e) if isinstance(e, str) else int(e) for e in edges]
    if any(not 0 <= i < graph.n_edges for i in idx):
        raise CircuitryError(f"edge indices must be in [0, {graph.n_edges})")
    return torch.tensor(idx, dtype=torch.long)


def _set_rows_hook(rows: Tensor, heads: Tensor | None, value: Tensor, subtract: bool = False):
    """Overwrite (or subtract ``value`` from) rows ``rows`` (at head ``heads[i]``) of an activation."""

    def hook(x: Tensor, hook) -> Tensor:
        x = x.clone()
        idx = (rows, slice(None), heads) if heads is not None else (rows,)
        x[idx] = x[idx] - value if subtract else value.to(x.dtype)
        return x

    return hook


def _ablate_edges_from_layer(
    model, graph: Graph, resid: Tensor, layer: int, src: Tensor, tgt: Tensor, diff: Tensor
) -> Float[Tensor, "rows pos vocab"]:
    """Logits of k stacked copies of one batch, copy i with edge src[i] -> tgt[i] ablated.

    Starts from the clean residual stream ``resid`` [batch, pos, d_model] before ``layer``
    (n_layers: the logits input); ``diff`` [batch, pos, source, d_model] = clean - ablated source
    outputs. A head's q/k/v with an ablated input edge is recomputed from ``ln1(resid - diff)`` on
    just that row and head (the same result as the split q/k/v hooks, without splitting all heads).
    """
    b, k = resid.shape[0], len(src)
    x = resid.repeat(k, 1, 1)
    rows = torch.arange(k * b)
    src_r, tgt_r = src.repeat_interleave(b), tgt.repeat_interleave(b)
    delta = diff[rows % b, :, src_r]  # [k*b, pos, d_model]
    with torch.no_grad():
        if layer == graph.n_layers:  # edges into the logits
            return model(x - delta, start_at_layer=layer)
        hooks, blk = [], model.blocks[layer]
        for th in graph.target_hooks:
            sel = (tgt_r >= th.start) & (tgt_r < th.start + th.count)
            if not th.name.startswith(f"blocks.{layer}.") or not sel.any():
                continue
            if not th.heads:  # MLP input
                hooks.append((th.name, _set_rows_hook(rows[sel], None, delta[sel], subtract=True)))
                continue
            ch, head = th.name[-7], tgt_r[sel] - th.start  # "blocks.l.hook_q_input" -> "q"
            value = head_input_value(blk, ch, head, x[sel] - delta[sel])
            hooks.append((f"blocks.{layer}.attn.hook_{ch}", _set_rows_hook(rows[sel], head, value)))
        with graph_flags(model, split=False), model.hooks(fwd_hooks=hooks):
            return model(x, start_at_layer=layer)


def exact_edge_scores(
    model,
    task_or_batches: Task | TaskBatch | Iterable[TaskBatch],
    graph: Graph | None = None,
    ablation: Ablation = "corrupt",
    *,
    edges: Sequence[int | str] | None = None,
    metric: Metric | Task | None = None,
    n: int = 20,
    seed: int = 0,
    batch_size: int = 20,
    max_rows: int = 640,
    progress: bool | None = False,
) -> Float[Tensor, " edge"]:
    """Per edge: mean over prompts of m(clean run with only that edge ablated) - m(clean run).

    Stored in ``graph.scores`` when every edge is scored (as :func:`eap_scores` does), so selection and
    faithfulness curves use them by default. ``edges`` (names or indices) restricts the work; other entries are NaN. With one edge ablated,
    everything upstream of its target is the clean run, so each ablation starts from the cached
    clean residual stream at the target's layer; up to ``max_rows`` rows (copies x prompts) go
    through the model at once. ``progress``: a bar over the stacked runs (None: only on a terminal).
    """
    graph = Graph.from_model(model) if graph is None else graph
    graph.check_model(model)
    batches, metric_fn = resolve_data(task_or_batches, metric, n, seed, batch_size)
    ablation = resolve_ablation(model, graph, batches, ablation)
    which = _edge_indices(graph, edges)
    tgt_layer = torch.tensor([target_layer(graph, t) for t in range(len(graph.targets))])[graph.edge_dst[which]]
    total = torch.zeros(len(which), dtype=torch.float64)
    n_prompts = 0
    copies = [max(1, max_rows // len(batch)) for batch in batches]  # edges ablated at once, per batch
    per_layer = torch.bincount(tgt_layer, minlength=graph.n_layers + 1).tolist()
    runs = sum(-(-count // k) for k in copies for count in per_layer)
    bar = progress_bar(total=runs, desc="exact patching", unit="run", progress=progress)
    for batch, k_max in zip(batches, copies):
        b = len(batch)
        tokens = batch.clean.to(model.cfg.device)
        resid: dict[int, Tensor] = {}
        with model.hooks(fwd_hooks=residual_store_hooks(graph, resid)):
            clean_logits, clean = record_sources(model, graph, tokens)
        m_clean = metric_fn(clean_logits, batch).double()
        diff = clean - ablated_sources(model, graph, batch, ablation)
        for layer in range(graph.n_layers + 1):
            pos = (tgt_layer == layer).nonzero().flatten()
            for start in range(0, len(pos), k_max):
                chunk = pos[start : start + k_max]
                e = which[chunk]
                src, tgt = graph.edge_src[e], graph.edge_dst[e]
                logits = _ablate_edges_from_layer(model, graph, resid[layer], layer, src, tgt, diff)
                k = len(chunk)
                m = metric_fn(logits, repeat_batch(batch, k)).double().view(k, b)
                total[chunk] += (m - m_clean[None]).sum(1).cpu()
                bar.update()
        n_prompts += b
    bar.close()
    out = torch.full((graph.n_edges,), float("nan"))
    out[which] = (total / n_prompts).float()
    if edges is None:
        graph.scores = out
    return out


def head_input_value(blk, ch: str, heads: Tensor, resid_in: Float[Tensor, "n ... d_model"]) -> Float[Tensor, "n ... d_head"]:
    """The ``ch`` (q, k or v) of head ``heads[i]`` computed from the residual input ``resid_in[i]``: what the
    split-input hook path gives for that one head, without splitting every head's input."""
    return project_heads(blk.attn, ch, heads, blk.ln1(resid_in))


def project_heads(attn, ch: str, heads: Tensor, normed: Float[Tensor, "n ... d_model"]) -> Float[Tensor, "n ... d_head"]:
    """The ``ch`` (q, k or v) of head ``heads[i]`` from its normalised input ``normed[i]``."""
    w, bias = getattr(attn, f"W_{ch.upper()}")[heads], getattr(attn, f"b_{ch.upper()}")[heads]
    bias = bias.reshape(len(heads), *([1] * (normed.dim() - 2)), bias.shape[-1])
    return einops.einsum(normed, w, "n ... d, n d e -> n ... e") + bias


def repeat_batch(batch: TaskBatch, k: int) -> TaskBatch:
    """``k`` copies of ``batch`` stacked along the batch axis (copy-major), for metrics of stacked runs."""
    return TaskBatch(batch.clean.repeat(k, 1), batch.corrupt.repeat(k, 1), batch.answer_pos.repeat(k),
                     batch.correct.repeat(k, 1), batch.wrong.repeat(k, 1))  # fmt: skip


def residual_store_hooks(graph: Graph, store: dict[int, Tensor]) -> list:
    """Hooks that keep the clean residual stream before each layer (key l) and the logits' input (key n_layers)."""
    hooks = [(f"blocks.{i}.hook_resid_pre", _store(store, i)) for i in range(graph.n_layers)]
    return hooks + [(f"blocks.{graph.n_layers - 1}.hook_resid_post", _store(store, graph.n_layers))]


def target_layer(graph: Graph, t: int) -> int:
    name = graph.targets[t]
    return graph.n_layers if name == "logits" else int(name[1:].split(".")[0])


def _store(store: dict, key: int):
    def hook(x: Tensor, hook) -> None:
        store[key] = x.detach().clone()

    return hook
