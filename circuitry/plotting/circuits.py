"""Figures for circuits: faithfulness curves, the circuit as a layered graph, head importance."""

from __future__ import annotations

import plotly.graph_objects as go
import torch

DASH = {"q": "dot", "k": "dash", "v": "solid", "": "solid"}


def faithfulness_curves(results) -> go.Figure:
    """f against edges kept (log x), one line per model (grid and bisection points); dotted lines at f = 0.8 and 0.9.
    ``results``: ``{name: Discovery}`` (as ``compare`` takes), one :class:`Discovery`, or the same with
    :class:`FaithfulnessCurve` objects (``faithfulness_curve``'s result) in place of discoveries.
    Budgets whose circuit prunes to 0 edges (f = 0 by definition) have no place on a log axis and are left out."""
    if hasattr(results, "curve"):  # one Discovery
        results = {results.model: results}
    elif hasattr(results, "points"):  # one FaithfulnessCurve
        results = {"model": results}
    fig = go.Figure()
    for name, r in results.items():
        curve = getattr(r, "curve", r)
        pts = sorted((p for p in curve.points + curve.refined if p.n_edges > 0), key=lambda p: p.budget)
        fig.add_trace(go.Scatter(x=[p.n_edges for p in pts], y=[p.f for p in pts], mode="lines+markers", name=name,
                                 hovertemplate="%{x} edges<br>f = %{y:.3f}<extra>" + name + "</extra>"))  # fmt: skip
    for t in (0.8, 0.9):
        fig.add_hline(y=t, line_dash="dot", line_color="grey", annotation_text=f"f = {t}", annotation_position="bottom right")
    first = next(iter(results.values()))
    fig.update_xaxes(type="log", title="edges in circuit (after pruning)")
    fig.update_yaxes(title="faithfulness f")
    about = (f"{first.task} ({first.method}, {first.ablation} ablation, {first.n_prompts} prompts, "
              f"scored on seed {first.seed}, measured on seed {first.seed + 1})" if hasattr(first, "curve")
             else f"{first.ablation} ablation, {first.n_prompts} prompts, {first.selection} selection")  # fmt: skip
    fig.update_layout(title=f"Faithfulness: {about}", width=800, height=450)
    return fig


# where an edge ends on a head: q, k and v inputs are three ports above, at and below the node, so edges from one
# source into the three inputs of one head are three lines, not one
PORT = {"q": -0.22, "k": 0.0, "v": 0.22, "": 0.0}
HELPS, HURTS, NEITHER = "royalblue", "crimson", "darkgrey"


def _node_xy(graph, node: str) -> tuple[float, float]:
    """Heads at (layer, head); MLPs in a row above the heads, between their layer and the next; input and logits
    at mid-height on either side."""
    if node == "input":
        return -1.0, (graph.n_heads - 1) / 2
    if node == "logits":
        return float(graph.n_layers), (graph.n_heads - 1) / 2
    if node.startswith("m"):
        return int(node[1:]) + 0.5, -1.5
    layer, head = node[1:].split(".h")
    return float(layer), float(head)


def _arc(p0: tuple[float, float], p1: tuple[float, float], n: int = 16) -> tuple[list[float], list[float]]:
    """Points of a quadratic Bezier from p0 to p1 bowed sideways by 0.12 per layer spanned, so that edges along one
    row (m0->m1, m0->m2, m0->m3, ...) are drawn apart instead of on one line. In a circuit of a few hundred edges
    many edges still pass close to nodes they do not touch: the hover text at each edge's midpoint names it."""
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length = (dx * dx + dy * dy) ** 0.5 or 1.0
    bow = 0.12 * abs(dx)
    cx, cy = (x0 + x1) / 2 - dy / length * bow, (y0 + y1) / 2 + dx / length * bow
    ts = [i / n for i in range(n + 1)]
    xs = [(1 - t) ** 2 * x0 + 2 * (1 - t) * t * cx + t * t * x1 for t in ts]
    ys = [(1 - t) ** 2 * y0 + 2 * (1 - t) * t * cy + t * t * y1 for t in ts]
    return xs, ys


def circuit_graph(circuit, scores=None, title: str | None = None) -> go.Figure:
    """Layers left to right; nodes = input, heads, MLPs, logits; edges slightly bowed (see ``_arc``), entering a
    head at its q (above), k (level) or v (below) port, dashed by q / k / v; coloured by sign and
    width by |score|. Scores are m(edge ablated) - m(clean): an edge with a negative score supports the task
    (blue), a positive one works against it (red). Hover over an edge's midpoint for its name and score.
    ``title`` names what is shown (the CLI passes model, task and method)."""
    graph = circuit.graph
    scores = circuit.scores if scores is None else scores
    names = graph.edge_names
    idx = circuit.edge_mask.nonzero().flatten().tolist()
    top = max((abs(float(scores[i])) for i in idx), default=1.0) if scores is not None else 1.0
    fig = go.Figure()
    mids: dict[str, list] = {"x": [], "y": [], "text": [], "color": []}
    for i in sorted(idx, key=lambda i: abs(float(scores[i])) if scores is not None else 0.0):  # strongest on top
        src, tgt = names[i].split("->")
        ch = graph.target_channel(tgt)
        x1, y1 = _node_xy(graph, graph.target_node(tgt))
        xs, ys = _arc(_node_xy(graph, src), (x1 - (0.08 if ch else 0.0), y1 + PORT[ch]))
        if scores is None:  # an unscored circuit: every edge alike
            color, width, text = "grey", 1.5, names[i]
        else:
            s = float(scores[i])
            color = HELPS if s < 0 else HURTS if s > 0 else NEITHER
            width, text = 1 + 5 * abs(s) / (top or 1.0), f"{names[i]}<br>score {s:.4g}"
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", showlegend=False, hoverinfo="skip",
                                 line=dict(color=color, dash=DASH[ch], width=width)))  # fmt: skip
        for key, value in (("x", xs[len(xs) // 2]), ("y", ys[len(ys) // 2]), ("text", text), ("color", color)):
            mids[key].append(value)
    fig.add_trace(go.Scatter(x=mids["x"], y=mids["y"], mode="markers", text=mids["text"], hoverinfo="text", showlegend=False,
                             marker=dict(size=5, color=mids["color"], opacity=0.6)))  # fmt: skip
    xy = [_node_xy(graph, n) for n in circuit.nodes]
    fig.add_trace(go.Scatter(x=[p[0] for p in xy], y=[p[1] for p in xy], mode="markers+text", text=circuit.nodes,
                             textposition="top center", marker=dict(size=12, color="black"), showlegend=False,
                             hovertext=circuit.nodes, hoverinfo="text"))  # fmt: skip
    legend = [("supports the task (score < 0)", HELPS, "solid"), ("works against it (score > 0)", HURTS, "solid")] if scores is not None else []
    if NEITHER in mids["color"]:
        legend.append(("score 0", NEITHER, "solid"))
    legend += [("q input (enters above)", "grey", "dot"), ("k input (level)", "grey", "dash"), ("v input (below) / MLP / logits", "grey", "solid")]
    for label, color, dash in legend:
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, line=dict(color=color, dash=dash, width=2)))
    fig.update_xaxes(title="layer", tickvals=list(range(-1, graph.n_layers + 1)),
                     ticktext=["input", *map(str, range(graph.n_layers)), "logits"])  # fmt: skip
    fig.update_yaxes(title="head", autorange="reversed", tickvals=[-1.5, *range(graph.n_heads)],
                     ticktext=["MLPs", *(f"h{h}" for h in range(graph.n_heads))])  # fmt: skip
    head = title or "Circuit"
    fig.update_layout(title=f"{head}: {circuit.n_edges} edges, {circuit.n_heads} heads, {circuit.n_mlps} MLPs",
                      width=1000, height=600, legend=dict(title="edges"))  # fmt: skip
    return fig


def head_importance(graph, scores=None, circuit=None, title: str | None = None) -> go.Figure:
    """Layer x head heatmap of the summed |score| of every edge into or out of each head (all edges of the graph,
    not only a circuit's); heads of ``circuit``, if given, are marked with a dot. ``scores``: one per edge (a tensor,
    array or list; default the graph's stored scores)."""
    scores = graph.require_scores(scores)
    imp = torch.zeros(graph.n_layers, graph.n_heads)
    src, dst = graph.edge_nodes()
    for s_name, d_name, v in zip(src, dst, scores.abs().tolist()):
        for node in (s_name, d_name):
            if node.startswith("a"):
                layer, head = node[1:].split(".h")
                imp[int(layer), int(head)] += v
    marked = set(circuit.heads) if circuit is not None else set()
    text = [["●" if f"a{l}.h{h}" in marked else "" for h in range(graph.n_heads)] for l in range(graph.n_layers)]
    fig = go.Figure(go.Heatmap(z=imp.tolist(), x=[f"H{h}" for h in range(graph.n_heads)], y=[f"L{l}" for l in range(graph.n_layers)],
                               text=text, texttemplate="%{text}", zmin=0, colorscale="Viridis",
                               colorbar=dict(title="sum of |edge score|<br>over all edges"),
                               hovertemplate="%{y} %{x}<br>sum |score| %{z:.4g}<extra></extra>"))  # fmt: skip
    fig.update_yaxes(autorange="reversed", title="layer")
    fig.update_xaxes(title="head" + (" (● in the circuit)" if circuit is not None else ""))
    fig.update_layout(title=f"Head importance{': ' + title if title else ''}", width=760, height=420)
    return fig
