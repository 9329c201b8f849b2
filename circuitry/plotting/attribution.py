"""Figures for attribution graphs: the pruned graph, head loadings, dense-vs-sparse comparison."""

from __future__ import annotations

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from circuitry.errors import CircuitryError

POS_RGB, NEG_RGB = "31,119,180", "214,39,40"  # edge colours: lines at half opacity, legend entries solid
KIND_COLOUR = {"feature": "#4C78A8", "error": "#9D9D9D", "embedding": "#54A24B", "logit": "#E45756"}


def attribution_graph_figure(graph, model=None, clt=None, max_edges: int = 600) -> go.Figure:
    """x = token position (labelled), y = layer (embeddings at −1, logits on top); node size = influence;
    edges blue (+) / red (−), width by |weight|; hover: feature id, activation, top tokens."""
    from circuitry.attribution.export import feature_labels

    keep = graph.node_mask.nonzero().flatten().tolist() if graph.node_mask is not None else list(range(graph.n_nodes))
    labels = feature_labels(model, clt, graph, keep) if model is not None and clt is not None else {}
    cum = graph.cumulative_influence
    xy, per_cell = {}, {}
    for i in keep:  # nodes sharing a (pos, layer) cell are laid out in a small grid inside the cell
        n = graph.node(i)
        per_cell.setdefault((n["pos"], n["layer"]), []).append(i)
    for (pos, layer), ids in per_cell.items():
        cols = min(len(ids), 4)
        rows = -(-len(ids) // cols)
        for j, i in enumerate(ids):
            xy[i] = (pos + (j % cols - (cols - 1) / 2) * 0.2, layer + (j // cols - (rows - 1) / 2) * 0.25)
    edges = graph.edge_mask if graph.edge_mask is not None else graph.adjacency != 0
    pairs = [(t, s) for t, s in edges.nonzero().tolist() if s in xy and t in xy]
    pairs = sorted(pairs, key=lambda ts: -abs(graph.adjacency[ts].item()))[:max_edges]
    top = max((abs(graph.adjacency[ts].item()) for ts in pairs), default=1.0)
    fig = go.Figure()
    for t, s in pairs:
        w = graph.adjacency[t, s].item()
        fig.add_trace(go.Scatter(x=[xy[s][0], xy[t][0]], y=[xy[s][1], xy[t][1]], mode="lines", hoverinfo="skip", showlegend=False,
                                 line={"color": f"rgba({POS_RGB if w > 0 else NEG_RGB},0.5)", "width": 0.5 + 4 * abs(w) / top}))  # fmt: skip
    for kind, colour in KIND_COLOUR.items():
        ids = [i for i in keep if graph.node(i)["kind"] == kind]
        if not ids:
            continue
        text = []
        for i in ids:
            n = graph.node(i)
            desc = {"feature": lambda: f"L{n['layer']} F{n['feature']} @ {n['pos']}<br>activation {n['activation']:.3f}<br>{labels.get(i, '')}",
                    "error": lambda: f"error L{n['layer']} @ {n['pos']}", "embedding": lambda: f"embedding {graph.token_strs[n['pos']]!r}",
                    "logit": lambda: f"logit {_token(model, n['token'])} p={n['prob']:.3f}"}[kind]()  # fmt: skip
            text.append(desc)
        size = [6 + 10 * (1 - cum[i].item()) if cum is not None and kind in ("feature", "error") else 12 for i in ids]
        fig.add_trace(go.Scatter(x=[xy[i][0] for i in ids], y=[xy[i][1] for i in ids], mode="markers", name=kind,
                                 marker={"color": colour, "size": size, "line": {"width": 0.5, "color": "black"}},
                                 text=text, hovertemplate="%{text}<extra></extra>"))  # fmt: skip
    for label, rgb in (("edge weight > 0", POS_RGB), ("edge weight < 0", NEG_RGB)):
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="lines", name=label, line={"color": f"rgb({rgb})", "width": 2}))
    fig.update_xaxes(tickvals=list(range(graph.n_pos)), ticktext=[f"{p}:{t}" for p, t in enumerate(graph.token_strs)], tickangle=45)
    fig.update_yaxes(tickvals=list(range(-1, graph.n_layers + 1)), ticktext=["emb"] + [f"L{l}" for l in range(graph.n_layers)] + ["logit"])
    fig.update_layout(title=f"Attribution graph ({graph.info.get('model', '')}): {graph.prompt!r}", width=max(1000, 200 + 80 * graph.n_pos),
                      height=600)  # fmt: skip
    return fig


def _token(model, token: int) -> str:
    """A token id as its text (the id alone when no model is given)."""
    return repr(model.tokenizer.decode([token])) if model is not None else f"token {token}"


def head_loadings_figure(graphs: dict) -> go.Figure:
    """One heatmap per graph: share of attention-carried attribution (influence on the logits) through each (layer, head)."""
    fig = make_subplots(rows=1, cols=len(graphs), subplot_titles=list(graphs), horizontal_spacing=0.08)
    shares = []
    for name, graph in graphs.items():
        if not graph.attention:
            raise CircuitryError(f"graph {name!r} has no attention split: build it with attribute(..., attention=True)")
        mass = graph.attention.get("influence_mass", graph.attention["mass"]).sum((2, 3))
        shares.append(mass / mass.sum().clamp(min=1e-12))
    top = max(float(s.max()) for s in shares)  # one colour scale for every panel: the one colour bar reads them all
    for c, share in enumerate(shares, start=1):
        fig.add_trace(go.Heatmap(z=share.numpy(), colorscale="Viridis", zmin=0, zmax=top, showscale=c == len(graphs),
                                 colorbar=dict(title="share", tickformat=".0%"),
                                 hovertemplate="L%{y} H%{x}: %{z:.1%}<extra></extra>"), row=1, col=c)  # fmt: skip
        fig.update_xaxes(title="head", row=1, col=c)
        fig.update_yaxes(title="layer", autorange="reversed", row=1, col=c)  # layer 0 on top, as in head_importance
    fig.update_layout(title="Head loadings: share of cross-position attribution per head", width=max(560, 420 * len(graphs)), height=420)
    return fig


def graph_comparison_figure(result: dict) -> go.Figure:
    """Per-prompt heads and (head, key) pairs covering 80% of attention attribution, per model (box + points)."""
    fig = make_subplots(rows=1, cols=3, subplot_titles=["heads @ 80%", "(head, key) pairs @ 80%", "edges after pruning"])
    palette = ("#4C78A8", "#E45756", "#54A24B", "#B279A2")  # one colour per model in every panel, as in the legend
    for m, (name, r) in enumerate(result["models"].items()):
        for c, key in enumerate(("heads_80", "head_key_pairs_80", "edges"), start=1):
            fig.add_trace(go.Box(y=[p[key] for p in r["per_prompt"]], name=name, boxpoints="all", showlegend=c == 1,
                                 legendgroup=name, marker_color=palette[m % len(palette)]), row=1, col=c)  # fmt: skip
            fig.update_yaxes(title="count per prompt" if c == 1 else None, row=1, col=c)
    fig.update_layout(title=f"Attribution graphs, dense vs sparse ({result['n_prompts']} prompts)", width=1050, height=430)
    return fig
