"""Figures for circuits: faithfulness curves, the circuit as a layered graph, head importance."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

DASH = {"q": "dot", "k": "dash", "v": "solid", "": "solid"}


def faithfulness_curves(results: dict) -> go.Figure:
    """f against edges kept (log x), one line per model (grid and bisection points); dotted lines at f = 0.8 and 0.9."""
    fig = go.Figure()
    for name, r in results.items():
        pts = sorted(r.curve.points + r.curve.refined, key=lambda p: p.budget)
        fig.add_trace(go.Scatter(x=[p.n_edges for p in pts], y=[p.f for p in pts], mode="lines+markers", name=name,
                                 hovertemplate="%{x} edges<br>f = %{y:.3f}<extra>" + name + "</extra>"))  # fmt: skip
    for t in (0.8, 0.9):
        fig.add_hline(y=t, line_dash="dot", line_color="grey")
    first = next(iter(results.values()))
    fig.update_xaxes(type="log", title="edges in circuit (after pruning)")
    fig.update_yaxes(title="faithfulness f")
    fig.update_layout(title=f"Faithfulness: {first.task} ({first.method})", width=750, height=450)
    return fig


def _node_xy(graph, node: str) -> tuple[float, float]:
    if node == "input":
        return -1.0, (graph.n_heads - 1) / 2
    if node == "logits":
        return float(graph.n_layers), (graph.n_heads - 1) / 2
    if node.startswith("m"):
        return int(node[1:]) + 0.5, -1.5
    layer, head = node[1:].split(".h")
    return float(layer), float(head)


def circuit_graph(circuit, scores=None) -> go.Figure:
    """Layers left to right; nodes = input, heads, MLPs, logits; edges coloured by sign, dash = q/k/v,
    width by |score|."""
    graph = circuit.graph
    scores = circuit.scores if scores is None else scores
    names = graph.edge_names
    idx = circuit.edge_mask.nonzero().flatten().tolist()
    top = max((abs(float(scores[i])) for i in idx), default=1.0) if scores is not None else 1.0
    fig = go.Figure()
    for i in idx:
        src, tgt = names[i].split("->")
        ch = graph.target_channel(tgt)
        (x0, y0), (x1, y1) = _node_xy(graph, src), _node_xy(graph, graph.target_node(tgt))
        s = float(scores[i]) if scores is not None else 1.0
        fig.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, hoverinfo="text",
                                 text=f"{names[i]}<br>score {s:.4g}",
                                 line=dict(color="crimson" if s < 0 else "royalblue", dash=DASH[ch],
                                           width=0.5 + 5 * abs(s) / (top or 1.0))))  # fmt: skip
    xy = [_node_xy(graph, n) for n in circuit.nodes]
    fig.add_trace(go.Scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=circuit.nodes,
                             textposition="top center", marker=dict(size=12, color="black"), showlegend=False))  # fmt: skip
    for label, dash in (("q input", "dot"), ("k input", "dash"), ("v / residual", "solid")):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, line=dict(color="grey", dash=dash)))
    fig.update_xaxes(title="layer", tickvals=list(range(-1, graph.n_layers + 1)),
                     ticktext=["input", *map(str, range(graph.n_layers)), "logits"])  # fmt: skip
    fig.update_yaxes(title="head (MLPs below)", autorange="reversed")
    fig.update_layout(title=f"Circuit: {circuit.n_edges} edges, {circuit.n_heads} heads, {circuit.n_mlps} MLPs (blue +, red -)",
                      width=900, height=550)  # fmt: skip
    return fig


def head_importance(graph, scores) -> go.Figure:
    """Layer x head heatmap of the summed |score| of every edge into or out of each head."""
    imp = torch.zeros(graph.n_layers, graph.n_heads)
    src, dst = graph.edge_nodes()
    for s_name, d_name, v in zip(src, dst, scores.abs().tolist()):
        for node in (s_name, d_name):
            if node.startswith("a"):
                layer, head = node[1:].split(".h")
                imp[int(layer), int(head)] += v
    fig = go.Figure(go.Heatmap(z=imp.tolist(), x=[f"H{h}" for h in range(graph.n_heads)], y=[f"L{l}" for l in range(graph.n_layers)],
                               colorscale="Viridis", hovertemplate="%{y} %{x}<br>sum |score| %{z:.4g}<extra></extra>"))  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title="Head importance (sum of |edge score|)", width=600, height=400)
    return fig
