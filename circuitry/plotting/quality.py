"""Figures for results that have no richer view: a task score (metric per prompt), transcoder quality, and the
training log of pretraining or transcoder training."""

from __future__ import annotations

from pathlib import Path

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from circuitry.plotting.io import read_log


def task_metric_figure(score) -> go.Figure:
    """Histogram of the task metric per prompt on the clean and on the corrupted prompts; the accuracy is the share
    of clean prompts right of 0 (correct beats wrong)."""
    d = score if isinstance(score, dict) else score.to_dict(values=True)  # a TaskScore or its to_dict(values=True)
    fig = go.Figure()
    for name, key in (("clean", "values"), ("corrupted", "values_corrupt")):
        fig.add_trace(go.Histogram(x=d[key], name=name, opacity=0.6, nbinsx=40))
    fig.add_vline(x=0, line_dash="dot", line_color="grey")
    fig.update_xaxes(title=f"{d['metric']} per prompt")
    fig.update_yaxes(title="prompts")
    fig.update_layout(barmode="overlay", width=760, height=420,
                      title=f"{d['task']} on {d['model']} ({d['corruption']} corruption, n = {d['n']}, seed {d['seed']}): "
                            f"accuracy {d['accuracy']:.3f}")  # fmt: skip
    return fig


def clt_quality_figure(quality, name: str = "") -> go.Figure:
    """Per layer: explained variance of the MLP outputs and active features per token (L0); the title gives the
    replacement model's share of the CE gap recovered and the dead-feature share. ``quality``: what
    :func:`circuitry.transcoders.evaluate_clt` returns, or its ``to_dict()``."""
    if not isinstance(quality, dict):
        quality = quality.to_dict()
    layers = [f"L{l}" for l in range(len(quality["explained_variance"]))]
    fig = make_subplots(rows=1, cols=2, subplot_titles=["explained variance of each MLP output", "L0 (active features per token)"])
    fig.add_trace(go.Bar(x=layers, y=quality["explained_variance"], showlegend=False, hovertemplate="%{x}: %{y:.4f}<extra></extra>"), 1, 1)
    fig.add_trace(go.Bar(x=layers, y=quality["l0"], showlegend=False, hovertemplate="%{x}: %{y:.2f}<extra></extra>"), 1, 2)
    fig.update_yaxes(range=[0, 1], row=1, col=1)
    fig.update_layout(width=900, height=420,
                      title=f"Transcoder quality{' of ' + name if name else ''}: {quality['ce_recovered']:.1%} of the CE gap recovered, "
                            f"{quality['dead_fraction']:.1%} dead features ({quality['n_tokens']} tokens)")  # fmt: skip
    return fig


def log_curves(log_path: str | Path, title: str) -> go.Figure:
    """One panel per logged quantity (loss, lr, mse, L0, ...) against step, from a JSONL training log; the
    wall-clock ``seconds`` column is left out. (Sparse post-training has its own figure, ``training_curves``.)"""
    rows = read_log(log_path)
    keys = [k for k in rows[0] if k not in ("step", "seconds") and isinstance(rows[0][k], (int, float))] if rows else []
    fig = make_subplots(rows=max(len(keys), 1), cols=1, shared_xaxes=True, vertical_spacing=0.06, subplot_titles=keys)
    steps = [r["step"] for r in rows]
    for i, key in enumerate(keys, start=1):
        ys = [r.get(key) for r in rows]
        fig.add_trace(go.Scatter(x=steps, y=ys, name=key, showlegend=False), i, 1)
        if key in ("loss", "mse") and all(y is not None and y > 0 for y in ys):  # losses fall over decades
            fig.update_yaxes(type="log", dtick="D2", row=i, col=1)
    fig.update_xaxes(title="step", row=max(len(keys), 1), col=1)
    fig.update_layout(title=title, width=800, height=max(300, 190 * len(keys)))
    return fig
