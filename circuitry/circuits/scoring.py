"""Edge attribution patching (EAP, Syed et al. 2023) and EAP-IG (Hanna et al. 2024).

A score estimates ``m(clean run with only edge u -> v ablated) - m(clean run)`` to first order::

    score(u -> v) = sum_pos (a_u(ablated) - a_u(clean)) . dm/d(input_v)

EAP takes the gradient on the clean run. EAP-IG ("inputs" variant) averages it over ``ig_steps``
runs whose input embeddings (``blocks.0.hook_resid_pre``) are interpolated from the ablated to
the clean ones, at alpha = k / ig_steps for k = 1..ig_steps (as in the reference implementation;
``ig_steps=1`` is EAP). Scores are means over prompts; positions after ``answer_pos`` are masked.
``eap-local`` (circuitry/circuits/local.py) computes each target's own response exactly and linearises
only downstream of it; ``eap-ig-node`` (node_ig.py) integrates gradients along each node's input.
"""

from __future__ import annotations

from typing import Iterable, Literal

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from circuitry.circuits.graph import Graph, graph_flags, record_hooks, record_sources
from circuitry.circuits.local import check_local_support, local_batch_scores
from circuitry.circuits.node_ig import node_ig_batch_scores
from circuitry.circuits.patching import (
    Ablation,
    MeanSources,
    Metric,
    ablated_sources,
    check_ablation,
    position_mask,
    resolve_ablation,
    resolve_data,
)
from circuitry.errors import CircuitryError
from circuitry.progress import progress_bar
from circuitry.tasks.base import Task, TaskBatch
from circuitry.training import gradients

METHODS = ("eap", "eap-local", "eap-ig", "eap-ig-node")


def _capture_hooks(graph: Graph, inputs: dict[str, Tensor]):
    """Hooks that keep every node input (a graph tensor; its gradient is read afterwards)."""

    def hook(x: Tensor, hook) -> None:
        inputs[hook.name] = x

    return [(th.name, hook) for th in graph.target_hooks]


def _grad_root(x: Tensor, hook) -> Tensor:
    """Make the embeddings a leaf that requires grad (works with frozen parameters too)."""
    return x.detach().requires_grad_(True)


def _input_grads(
    model, graph: Graph, batch: TaskBatch, metric_fn: Metric, extra_hooks: list, record: Tensor | None = None
) -> dict[str, Tensor]:
    """Gradient of sum_prompts m w.r.t. every node input (hook name -> tensor) on the clean tokens."""
    leaves: dict[str, Tensor] = {}
    hooks = list(extra_hooks) + [("blocks.0.hook_resid_pre", _grad_root)] + _capture_hooks(graph, leaves)
    if record is not None:
        hooks += record_hooks(graph, record, model)
    with torch.enable_grad(), graph_flags(model), model.hooks(fwd_hooks=hooks):
        logits = model(batch.clean.to(model.cfg.device))
        total = metric_fn(logits, batch).sum()
        names = [th.name for th in graph.target_hooks]
        grads = torch.autograd.grad(total, [leaves[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(names, grads)}


def _batch_scores(
    model, graph: Graph, batch: TaskBatch, metric_fn: Metric, method: str, ig_steps: int, ablation: Ablation | MeanSources
) -> Float[Tensor, "source target"]:
    """Sum over the batch's prompts of the per-edge estimates, as a [source, target] matrix."""
    b, p = batch.clean.shape
    shape = (b, p, len(graph.sources), model.cfg.d_model)
    abl = ablated_sources(model, graph, batch, ablation)
    if method == "eap":
        clean = torch.zeros(shape, dtype=model.cfg.dtype, device=model.cfg.device)
        grads = _input_grads(model, graph, batch, metric_fn, [], record=clean)
    else:
        clean = record_sources(model, graph, batch.clean.to(model.cfg.device))[1]
        base, target = abl[:, :, 0], clean[:, :, 0]  # input embeddings [batch or 1, pos, d_model]
        grads = {}
        for k in range(1, ig_steps + 1):
            emb = base + (k / ig_steps) * (target - base)
            interpolate = ("blocks.0.hook_resid_pre", lambda x, hook, e=emb: e.to(x.dtype))
            step = _input_grads(model, graph, batch, metric_fn, [interpolate])
            for name, g in step.items():
                grads[name] = grads[name] + g if name in grads else g
        grads = {name: g / ig_steps for name, g in grads.items()}
    diff = (abl - clean) * position_mask(batch).to(clean)[:, :, None, None]
    out = torch.zeros(graph.valid.shape, dtype=torch.float64)
    for th in graph.target_hooks:
        g, d = grads[th.name], diff[:, :, : th.n_up]
        if th.heads:
            s = einops.einsum(d, g, "b p s d, b p t d -> s t")
        else:
            s = einops.einsum(d, g, "b p s d, b p d -> s")[:, None]
        out[: th.n_up, th.start : th.start + th.count] += s.double().cpu()
    return out


@gradients("attribution patching")
def eap_scores(
    model,
    task_or_batches: Task | TaskBatch | Iterable[TaskBatch],
    graph: Graph | None = None,
    method: Literal["eap", "eap-local", "eap-ig", "eap-ig-node"] = "eap",
    ig_steps: int = 5,
    ablation: Ablation = "corrupt",
    *,
    metric: Metric | Task | None = None,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 50,
    progress: bool | None = False,
) -> Float[Tensor, " edge"]:
    """Per-edge attribution scores (mean over prompts), also stored in ``graph.scores``.

    ``task_or_batches``: a Task (``n`` prompts from ``seed``, in batches of ``batch_size``), a
    TaskBatch or a list of them (then pass ``metric``). Memory grows with the batch size only:
    one corrupted forward, one clean forward and one backward per batch (``ig_steps`` backwards
    for EAP-IG). ``progress``: a bar over the prompts, stepping once per batch (None: only on a terminal).
    """
    if method not in METHODS:
        hint = " (exact patching is exact_edge_scores)" if method == "exact" else ""
        raise CircuitryError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}{hint}")
    if method in ("eap-ig", "eap-ig-node") and (not isinstance(ig_steps, int) or ig_steps < 1):
        raise CircuitryError(f"ig_steps must be a positive integer, got {ig_steps!r}")
    check_ablation(ablation)
    graph = Graph.from_model(model) if graph is None else graph
    graph.check_model(model)
    if method == "eap-local":
        check_local_support(model)
    batches, metric_fn = resolve_data(task_or_batches, metric, n, seed, batch_size)
    ablation = resolve_ablation(model, graph, batches, ablation)  # mean: over all n prompts, not per batch
    total = torch.zeros(graph.valid.shape, dtype=torch.float64)
    n_prompts = 0
    bar = progress_bar(total=sum(len(b) for b in batches), desc=f"{method} scores", unit="prompt", progress=progress)
    for batch in batches:
        if method == "eap-local":
            total += local_batch_scores(model, graph, batch, metric_fn, ablation)
        elif method == "eap-ig-node":
            total += node_ig_batch_scores(model, graph, batch, metric_fn, ig_steps, ablation)
        else:
            total += _batch_scores(model, graph, batch, metric_fn, method, ig_steps, ablation)
        n_prompts += len(batch)
        bar.update(len(batch))
    bar.close()
    scores = graph.from_matrix(total / n_prompts).float()
    graph.scores = scores
    return scores
