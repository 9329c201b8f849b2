"""Plot builders: figures hold the model's numbers, and bad input is refused with a clear error."""

import pytest
import torch

from circuitry import load_model
from circuitry.errors import CircuitryError
from circuitry.plotting import attention_patterns

PROMPT = "When Mary and John went to the store, John gave a drink to"


def test_attention_patterns_show_the_gated_patterns():
    dense, sparse = load_model("tiny-dense"), load_model("tiny-sparse")
    fig = attention_patterns({"dense": dense, "sparse": sparse}, PROMPT, layer=2, heads=[0, 3])
    assert len(fig.data) == 4  # 2 models x 2 heads
    with torch.no_grad():
        _, cache = sparse.run_with_cache(sparse.to_tokens(PROMPT), names_filter="blocks.2.attn.hook_pattern")
    want = cache["blocks.2.attn.hook_pattern"][0, 3].numpy()
    got = fig.data[3].z
    assert got.shape == want.shape == (len(fig.data[3].x),) * 2
    assert abs(got - want).max() < 1e-6 and (got > 0).sum(1).mean() < (fig.data[1].z > 0).sum(1).mean()


@pytest.mark.parametrize("kwargs, message", [
    ({"prompt": ""}, "empty prompt"),
    ({"prompt": " Mary" * 80}, "context is 64"),
    ({"prompt": " Mary zzqx went home"}, "outside the tokenizer's vocabulary: 'zzqx'"),
    ({"layer": 4}, "asked for layer 4"),
    ({"heads": [8]}, "heads [8]"),
])  # fmt: skip
def test_attention_patterns_bad_input(kwargs, message):
    args = {"prompt": PROMPT, "layer": 2, "heads": None, **kwargs}
    with pytest.raises(CircuitryError, match=message.replace("[", r"\[").replace("]", r"\]")):
        attention_patterns({"dense": load_model("tiny-dense")}, args["prompt"], args["layer"], args["heads"])


def test_attention_patterns_label_each_model_with_its_own_tokens(tmp_path):
    """Two tokenizers split the prompt differently: each row has its own token count and labels."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(vocab_size=270,  # few merges: words split into pieces
                                special_tokens=["<bos>", "<pad>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([PROMPT] * 3, trainer)
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<bos>", pad_token="<pad>", unk_token="<unk>").save_pretrained(tmp_path)
    tok = PreTrainedTokenizerFast.from_pretrained(tmp_path)  # TransformerLens wants a tokenizer with a name_or_path
    cfg = HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=64, d_head=4, n_heads=4, d_vocab=len(tok), act_fn="relu", seed=0)
    other = HookedTransformer(cfg, tokenizer=tok)
    dense = load_model("tiny-dense")
    fig = attention_patterns({"dense": dense, "bpe": other}, PROMPT, layer=0, heads=[0])
    for trace, model in zip(fig.data, (dense, other)):
        want = [f"{i}:{t}" for i, t in enumerate(model.to_str_tokens(PROMPT))]
        assert list(trace.y) == want and trace.z.shape == (len(want), len(want))
    assert len(fig.data[0].y) != len(fig.data[1].y)


def test_circuit_graph_draws_each_edge_apart_with_its_sign():
    """Every circuit edge is one line with its own end point (q / k / v of one head apart), coloured by the sign of
    its score as the legend says, and its name and score are in the hover text."""
    from circuitry.circuits import Graph
    from circuitry.circuits.selection import Circuit
    from circuitry.plotting import circuit_graph, head_importance
    from circuitry.plotting.circuits import HELPS, HURTS, NEITHER

    graph = Graph.from_model(load_model("tiny-dense"))
    scores = torch.randn(graph.n_edges, generator=torch.Generator().manual_seed(0))
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    names = graph.edge_names
    picked = [names.index(f"a0.h3->a2.h1<{c}>") for c in "qkv"] + [i for i, n in enumerate(names) if n.startswith("m0->")][:9]
    scores[picked[-2:]] = 0.0  # an edge that neither supports nor works against the task
    mask[picked] = True
    circuit = Circuit.from_mask(graph, mask, scores)
    fig = circuit_graph(circuit, title="tiny-dense, test")
    lines = [t for t in fig.data if t.mode == "lines" and t.showlegend is False]
    assert len(lines) == circuit.n_edges == 12
    assert len({(t.x[0], t.y[0], t.x[-1], t.y[-1]) for t in lines}) == 12  # q, k and v of a2.h1 end apart
    hover = next(t for t in fig.data if t.mode == "markers" and t.hoverinfo == "text" and len(t.x) == 12)
    by_name = {text.split("<br>")[0]: (text, colour) for text, colour in zip(hover.text, hover.marker.color)}
    for i in picked:
        text, colour = by_name[names[i]]
        assert f"score {float(scores[i]):.4g}" in text and colour == (HELPS if scores[i] < 0 else HURTS if scores[i] > 0 else NEITHER)
    assert sum(c == NEITHER for c in hover.marker.color) == 2 and "score 0" in [t.name for t in fig.data]
    assert fig.layout.title.text.startswith("tiny-dense, test: 12 edges")

    heat = head_importance(graph, scores, circuit).data[0]
    assert head_importance(graph, scores.tolist(), circuit).data[0].z == heat.z  # a list of scores reads the same
    src, dst = graph.edge_nodes()
    want = sum(abs(float(s)) for a, b, s in zip(src, dst, scores) if "a2.h1" in (a, b))
    assert abs(heat.z[2][1] - want) < 1e-4 and heat.text[2][1] == "●" and heat.text[2][0] == ""


def test_comparison_and_connectivity_figures_keep_their_scales():
    """compare-graphs: one colour per model in all three panels (as in the legend); per-head connectivity: a 0-1
    colour scale, so a dense model (1.0 everywhere) and a sparse one read on the same bar."""
    from circuitry.plotting import graph_comparison_figure, head_connectivity

    row = {"heads_80": 3, "head_key_pairs_80": 5, "edges": 40}
    fig = graph_comparison_figure({"n_prompts": 1, "models": {"dense": {"per_prompt": [row]}, "sparse": {"per_prompt": [row]}}})
    colours = {name: {t.marker.color for t in fig.data if t.name == name} for name in ("dense", "sparse")}
    assert all(len(c) == 1 for c in colours.values()) and colours["dense"] != colours["sparse"]
    heat = head_connectivity({"model": "tiny-dense", "per_head": [[1.0, 1.0], [1.0, 1.0]]}).data[0]
    assert (heat.zmin, heat.zmax) == (0, 1)


def test_saved_html_needs_no_network(tmp_path):
    """HTML figures load plotly.js from a copy written once beside them, not from a CDN."""
    import plotly.graph_objects as go

    from circuitry.plotting import save_figure

    fig = go.Figure(go.Scatter(x=[1, 2], y=[3, 4]))
    first = save_figure(fig, tmp_path / "a", png=False)
    second = save_figure(fig, tmp_path / "b", png=False)
    assert [p.name for p in first] == ["plotly.min.js", "a.html"] and [p.name for p in second] == ["b.html"]
    html = (tmp_path / "a.html").read_text()
    assert 'src="plotly.min.js"' in html and "cdn.plot.ly" not in html
    assert (tmp_path / "plotly.min.js").stat().st_size > 1_000_000 and "Plotly" in (tmp_path / "plotly.min.js").read_text()[:5000]


def test_unscored_circuit_graph_claims_no_sign():
    from circuitry.circuits import Graph
    from circuitry.circuits.selection import Circuit
    from circuitry.plotting import circuit_graph

    graph = Graph.from_model(load_model("tiny-dense"))
    mask = torch.zeros(graph.n_edges, dtype=torch.bool)
    mask[:5] = True
    fig = circuit_graph(Circuit.from_mask(graph, mask))
    lines = [t for t in fig.data if t.mode == "lines" and t.showlegend is False]
    assert len(lines) == 5 and {t.line.color for t in lines} == {"grey"}
    assert not any("supports" in (t.name or "") for t in fig.data)


def test_log_curves_plot_every_logged_quantity(tmp_path):
    """A training log becomes one panel per quantity (seconds left out), holding the logged values."""
    import json

    from circuitry.plotting import log_curves

    log = tmp_path / "train_log.jsonl"
    rows = [{"step": s, "loss": 5.0 / (s + 1), "lr": 1e-3, "seconds": 0.1 * s} for s in range(0, 50, 10)]
    log.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    fig = log_curves(log, "Pretraining test")
    assert [t.name for t in fig.data] == ["loss", "lr"] and list(fig.data[0].x) == [r["step"] for r in rows]
    assert list(fig.data[0].y) == [r["loss"] for r in rows] and fig.layout.title.text == "Pretraining test"


def test_figures_take_the_library_objects_as_well_as_their_dicts():
    from circuitry import get_task
    from circuitry.circuits import discover
    from circuitry.plotting import clt_quality_figure, faithfulness_curves
    from circuitry.transcoders.quality import CLTQuality

    q = CLTQuality([0.9, 0.8], [0.1, 0.2], [3.0, 1.5], 0.1, 1.6, 1.7, 3.0, 0.93, 500)
    assert clt_quality_figure(q).to_dict() == clt_quality_figure(q.to_dict()).to_dict()
    model = load_model("tiny-dense")
    found = discover(model, get_task("ioi", model), "eap", n_prompts=4, grid_points=3)
    one, named = faithfulness_curves(found), faithfulness_curves({"tiny-dense": found})
    assert one.to_dict() == named.to_dict() and one.data[0].name == "tiny-dense"
    assert "4 prompts, scored on seed 0, measured on seed 1" in one.layout.title.text  # discover's two prompt sets
    assert list(one.data[0].y) == [p.f for p in sorted(found.curve.points + found.curve.refined, key=lambda p: p.budget) if p.n_edges > 0]
    bare = faithfulness_curves({"tiny-dense": found.curve})  # faithfulness_curve's own result plots the same points
    assert list(bare.data[0].x) == list(one.data[0].x) and list(bare.data[0].y) == list(one.data[0].y)
    assert faithfulness_curves(found.curve).data[0].name == "model"
