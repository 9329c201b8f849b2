"""Figures for sparse attention: patterns dense vs sparse, training curves, per-head connectivity."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
import torch
from plotly.subplots import make_subplots

from circuitry.errors import CircuitryError
from circuitry.plotting.io import read_log
from circuitry.tasks.base import prompt_tokens


@torch.no_grad()
def attention_patterns(models: dict, prompt: str, layer: int, heads: list[int] | None = None) -> go.Figure:
    """Heatmaps of ``blocks.{layer}.attn.hook_pattern`` on ``prompt``: one row per model, one column per head.

    Each model tokenizes the prompt itself, and its row is labelled with its own tokens."""
    names = list(models)
    if not names:
        raise CircuitryError("attention_patterns needs at least one model")
    first = models[names[0]]
    heads = heads if heads is not None else list(range(first.cfg.n_heads))
    tokens = {name: prompt_tokens(model, prompt) for name, model in models.items()}
    for name, model in models.items():
        if not 0 <= layer < model.cfg.n_layers or any(not 0 <= h < model.cfg.n_heads for h in heads):
            raise CircuitryError(f"{name} has {model.cfg.n_layers} layers x {model.cfg.n_heads} heads; "
                                 f"asked for layer {layer}, heads {heads}")  # fmt: skip
    fig = make_subplots(rows=len(names), cols=len(heads), subplot_titles=[f"{n} L{layer}H{h}" for n in names for h in heads],
                        horizontal_spacing=0.02, vertical_spacing=0.08)  # fmt: skip
    for r, name in enumerate(names, start=1):
        model = models[name]
        labels = [f"{i}:{t}" for i, t in enumerate(model.to_str_tokens(tokens[name][0]))]
        _, cache = model.run_with_cache(tokens[name], names_filter=f"blocks.{layer}.attn.hook_pattern")
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"][0]
        for c, h in enumerate(heads, start=1):
            fig.add_trace(go.Heatmap(z=pattern[h].numpy(), x=labels, y=labels, zmin=0, zmax=1, colorscale="Blues",
                                     showscale=(r == 1 and c == len(heads)),
                                     hovertemplate="query %{y}<br>key %{x}<br>weight %{z:.3f}<extra></extra>"), r, c)  # fmt: skip
            fig.update_yaxes(autorange="reversed", showticklabels=c == 1, title="query" if c == 1 else None, row=r, col=c)
            fig.update_xaxes(showticklabels=r == len(names), tickangle=90, tickfont_size=9, title="key" if r == len(names) else None,
                             row=r, col=c)  # fmt: skip
    fig.update_layout(title=f"Attention patterns, layer {layer} (gated rows may sum to < 1)<br><sup>{prompt!r}</sup>",
                      height=320 * len(names) + 60, width=max(760, 260 * len(heads)))  # fmt: skip
    return fig


def training_curves(log_path: str | Path) -> go.Figure:
    """CE (with target), expected connectivity and λ per step from a sparsify JSONL log."""
    rows = read_log(log_path)
    steps = [r["step"] for r in rows]
    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.07,
                        subplot_titles=["cross-entropy (nats per token)", "expected connectivity (share of causal edges)", "λ (Lagrange multiplier)"])  # fmt: skip
    fig.add_trace(go.Scatter(x=steps, y=[r["ce"] for r in rows], name="CE (batch)", line=dict(width=1)), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["ce_ema"] for r in rows], name="CE (EMA)"), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["target"] for r in rows], name="CE target", line=dict(dash="dash")), 1, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["connectivity"] for r in rows], name="connectivity"), 2, 1)
    fig.add_trace(go.Scatter(x=steps, y=[r["lambda"] for r in rows], name="λ"), 3, 1)
    fig.update_yaxes(type="log", dtick="D2", row=2, col=1)  # D2: label 2 and 5 within each decade, not every digit
    fig.update_yaxes(type="log", dtick="D2", row=3, col=1)
    fig.update_xaxes(title="step", row=3, col=1)
    fig.update_layout(title="Sparse post-training", height=750, width=800)
    return fig


def head_connectivity(report) -> go.Figure:
    """Layer x head heatmap of the share of causal edges each head keeps."""
    per_head = report.per_head if hasattr(report, "per_head") else report["per_head"]
    name = report.model if hasattr(report, "model") else report["model"]
    fig = go.Figure(go.Heatmap(z=per_head, x=[f"H{h}" for h in range(len(per_head[0]))], y=[f"L{l}" for l in range(len(per_head))],
                               colorscale="Viridis", zmin=0, zmax=1,
                               colorbar=dict(title="share of causal<br>edges kept"), hovertemplate="%{y} %{x}<br>edges kept %{z:.4f}<extra></extra>"))  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=f"Per-head connectivity: {name}", width=600, height=400)
    return fig
