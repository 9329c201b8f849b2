"""Attribution graphs: exactness at the frozen point, interventions, the attention split, pruning against a
brute-force series, save/load, and circuit-tracer's JSON schema."""

import statistics
import warnings

import pytest
import torch

from circuitry.attribution import (
    AttributionGraph,
    apply_pruning,
    attention_split,
    attention_summary,
    build_graph,
    graph_scores,
    target_values,
    to_circuit_tracer_json,
)
from circuitry.attribution import provenance
from circuitry.attribution.export import feature_labels, logit_lens
from circuitry.attribution.prune import edge_influence, influence, normalize, prune
from circuitry.attribution.replacement import frozen_forward, true_injections
from circuitry.errors import CircuitryError
from circuitry.transcoders import CLTConfig, CrossLayerTranscoder
from circuitry.zoo.registry import build_model, load_model
from tests.random_models import ARCHS, BASE


def random_setup(arch: str, seed: int = 0):
    """A random model of ``arch`` with a random CLT whose features fire often (errors absorb the rest)."""
    model = build_model({**BASE, **ARCHS[arch]}, seed=seed)
    torch.manual_seed(seed)
    clt = CrossLayerTranscoder(CLTConfig(model.cfg.n_layers, model.cfg.d_model, 12, threshold_init=0.05))
    with torch.no_grad():
        clt.b_enc.normal_(0.2, 0.5)
        clt.b_dec.normal_()
    tokens = torch.randint(1, model.cfg.d_vocab, (10,), generator=torch.Generator().manual_seed(seed))
    return model, clt, tokens


def rows_of(graph: AttributionGraph) -> torch.Tensor:
    return torch.cat([torch.arange(graph.n_features), torch.arange(len(graph.logit_tokens)) + graph.slices()["logits"].start])


@pytest.mark.parametrize("arch", ["gpt2-style", "rotary", "grouped-query"])
def test_direct_effects_sum_to_every_target(arch):
    model, clt, tokens = random_setup(arch)
    graph = build_graph(model, clt, tokens, max_logits=3, desired_logit_prob=0.99)
    assert graph.n_features > 20
    actual, const = target_values(model, clt, graph)
    predicted = const + graph.adjacency[rows_of(graph)].sum(1)
    assert torch.allclose(predicted, actual, atol=1e-4 * actual.abs().max().item())


def test_bos_errors_write_nothing_and_the_constant_carries_them():
    """circuit-tracer's convention: the BOS error nodes have no out-edges; the BOS MLP outputs are in the
    constant term, so every target is still exactly its constant plus its direct effects."""
    model, clt, tokens = random_setup("gpt2-style", seed=3)
    graph = build_graph(model, clt, tokens, max_logits=3, desired_logit_prob=0.99)
    bos_errors = [graph.slices()["errors"].start + l * graph.n_pos for l in range(graph.n_layers)]
    assert graph.adjacency[:, bos_errors].abs().max() == 0
    bos_mlp = (graph.point.mlp_out[0] - clt.b_dec.detach()).norm(dim=-1)
    assert bos_mlp.min() > 0.1  # there is something to carry
    actual, const = target_values(model, clt, graph)
    assert torch.allclose(const + graph.adjacency[rows_of(graph)].sum(1), actual, atol=1e-4 * actual.abs().max().item())


def test_frozen_model_reproduces_the_real_forward():
    model, clt, tokens = random_setup("gpt2-style", seed=1)
    graph = build_graph(model, clt, tokens)
    point = graph.point
    with torch.no_grad():
        final = frozen_forward(model, point, [t.detach() for t in true_injections(point, 1)])["unembed.hook_in"]
    assert torch.allclose(final[0, -1] @ model.W_U + model.b_U, point.logits, atol=1e-4)


def test_removing_one_feature_moves_a_logit_by_its_edge():
    """Ablating a feature's writes in the frozen model (downstream features held fixed) changes the top
    logit target by exactly minus the graph's edge."""
    model, clt, tokens = random_setup("gpt2-style", seed=2)
    graph = build_graph(model, clt, tokens, max_logits=1)
    point = graph.point
    logit_row = graph.slices()["logits"].start
    t = graph.logit_tokens[0]
    direction = model.W_U[:, t] - model.W_U.mean(-1)
    edges = graph.adjacency[logit_row, : graph.n_features]
    checked = 0
    for i in edges.abs().argsort(descending=True)[:5].tolist():
        layer, pos, feat = graph.active_features[i].tolist()
        inj = [x.detach().clone() for x in true_injections(point, 1)]
        for j, w in enumerate(clt.feature_write(layer, feat).detach()):
            inj[1 + layer + j][0, pos] -= graph.activations[i] * w
        with torch.no_grad():
            base = frozen_forward(model, point, [x.detach() for x in true_injections(point, 1)])["unembed.hook_in"][0, -1] @ direction
            moved = frozen_forward(model, point, inj)["unembed.hook_in"][0, -1] @ direction
        assert (base - moved).item() == pytest.approx(edges[i].item(), rel=1e-4, abs=1e-5)
        checked += 1
    assert checked == 5


@pytest.mark.parametrize("arch", ["gpt2-style", "grouped-query"])
def test_attention_split_partitions_every_cross_position_edge(arch):
    model, clt, tokens = random_setup(arch, seed=3)
    graph = build_graph(model, clt, tokens, max_logits=2)
    split = attention_split(model, clt, graph)  # unpruned: every edge
    assert split["max_residual"].item() <= 1e-4 * graph.adjacency.abs().max().item()
    mass = split["mass"]
    assert mass.diagonal(dim1=2, dim2=3).abs().sum() == 0  # a last hop never stays in place
    assert torch.tril(mass.sum((0, 1)), diagonal=-1).abs().sum() == 0  # [key, query]: keys never come after queries
    summary = attention_summary(split)
    assert 0 < summary["heads_80"] <= summary["heads_total"] <= model.cfg.n_layers * model.cfg.n_heads
    # influence weighting: each edge's hops carry at least its influence on the logits (equality when all its
    # hops have one sign), and edges that do not reach the logits carry nothing
    pos = graph.node_positions()
    cross = (graph.adjacency != 0) & (pos[:, None] != pos[None, :])
    inf = edge_influence(graph, torch.ones(graph.n_nodes, dtype=torch.bool))
    assert split["influence_mass"].sum() >= inf[cross].sum() * (1 - 1e-5) > 0
    dead = cross & (inf == 0)
    assert dead.any()  # edges into features that reach no logit
    adj = graph.adjacency.clone()
    graph.adjacency = torch.where(dead, 0.0, adj)  # dropping them leaves the influence mass unchanged
    assert torch.allclose(attention_split(model, clt, graph)["influence_mass"], split["influence_mass"], atol=1e-6)
    graph.adjacency = adj
    apply_pruning(graph)
    pruned = attention_split(model, clt, graph, pruned=True)
    assert pruned["mass"].sum() < mass.sum()  # only the kept edges


def test_attention_split_of_a_one_layer_model_by_hand():
    """One attention-only layer (+ a CLT on an MLP-less model is impossible, so use 1 layer with MLP): the edge
    from an embedding at key k to the logit splits as pattern[h, q, k] · (OV_h of the frozen-LN embedding)."""
    model = build_model({**BASE, "n_layers": 1}, seed=4)
    torch.manual_seed(4)
    clt = CrossLayerTranscoder(CLTConfig(1, model.cfg.d_model, 4, threshold_init=100.0))  # no feature fires
    tokens = torch.tensor([1, 7, 9, 3])
    graph = build_graph(model, clt, tokens, max_logits=1)
    split = attention_split(model, clt, graph)
    point = graph.point
    q = len(tokens) - 1
    direction = model.W_U[:, graph.logit_tokens[0]] - model.W_U.mean(-1)
    read = (model.ln_final.w * direction) / point.scales["ln_final.hook_scale"][q]  # through the frozen final LN
    read = read - read.mean()  # LN centres its input
    ln1 = point.scales["blocks.0.ln1.hook_scale"]
    for k in range(q):
        x = point.embed[k] - point.embed[k].mean()
        v = torch.einsum("d,hde->he", x / ln1[k] * model.blocks[0].ln1.w, model.W_V[0])
        per_head = point.patterns[0][:, q, k] * torch.einsum("he,hed,d->h", v, model.W_O[0], read)
        assert torch.allclose(split["mass"][0, :, k, q], per_head.abs(), atol=1e-5)


def test_influence_is_the_geometric_series_and_pruning_keeps_inputs_and_outputs():
    model, clt, tokens = random_setup("gpt2-style", seed=5)
    graph = build_graph(model, clt, tokens, max_logits=2)
    norm = normalize(graph.adjacency)
    w = torch.zeros(graph.n_nodes)
    w[graph.slices()["logits"]] = torch.tensor(graph.logit_probs)
    series, term = torch.zeros_like(w), w.clone()
    for _ in range(graph.n_nodes):
        term = term @ norm
        series += term
        if term.abs().max() == 0:
            break
    assert torch.allclose(influence(norm, w), series, atol=1e-5)
    apply_pruning(graph, 0.8, 0.98)
    s = graph.slices()
    assert graph.node_mask[s["embeddings"]].all() and graph.node_mask[s["logits"]].all()
    assert graph.node_mask.sum() < graph.n_nodes
    kept_edges = graph.edge_mask.nonzero()
    assert graph.node_mask[kept_edges[:, 0]].all() and graph.node_mask[kept_edges[:, 1]].all()
    scores = graph_scores(graph)
    assert 0 <= scores["replacement_score"] <= 1 and 0 <= scores["completeness_score"] <= 1
    # thresholds 1.0 keep everything that reaches the logits: every node with influence, every nonzero edge between
    # kept nodes (the float32 cumulative sum alone reaches 1 before the last, tiny scores)
    everything = prune(graph, 1.0, 1.0)
    reaches = influence(norm, w) > 0
    assert everything.node_mask[reaches].all()
    between = (graph.adjacency != 0) & everything.node_mask[:, None] & everything.node_mask[None, :]
    assert torch.equal(everything.edge_mask, between)


def test_graphs_build_with_autograd_switched_off_and_refuse_inference_mode():
    model, clt, tokens = random_setup("gpt2-style", seed=5)
    graph = build_graph(model, clt, tokens, max_logits=2)
    with torch.no_grad():  # as at the top of many notebooks
        off = build_graph(model, clt, tokens, max_logits=2)
        assert torch.equal(off.adjacency, graph.adjacency)
        assert torch.equal(attention_split(model, clt, off)["mass"], attention_split(model, clt, graph)["mass"])
    with torch.inference_mode(), pytest.raises(CircuitryError, match="attribution needs gradients: call it outside"):
        build_graph(model, clt, tokens, max_logits=2)


def test_graph_save_load_round_trip_and_networkx(tmp_path):
    model, clt, tokens = random_setup("gpt2-style", seed=6)
    graph = apply_pruning(build_graph(model, clt, tokens, max_logits=2))
    graph.attention = {"mass": attention_split(model, clt, graph)["mass"]}
    graph.save(tmp_path / "g.safetensors")
    back = AttributionGraph.load(tmp_path / "g.safetensors")
    assert torch.equal(back.adjacency, graph.adjacency) and torch.equal(back.edge_mask, graph.edge_mask)
    assert torch.equal(back.attention["mass"], graph.attention["mass"]) and back.tokens == graph.tokens
    g = back.to_networkx()
    assert g.number_of_edges() == int(graph.edge_mask.sum()) and g.number_of_nodes() == int(graph.node_mask.sum())
    split = attention_split(model, clt, graph, pruned=True)  # a loaded graph is re-split from its prompt
    again = attention_split(model, clt, back, pruned=True)
    assert all(torch.allclose(again[k], split[k], atol=1e-6) for k in ("mass", "influence_mass", "edge_total"))
    other, _, _ = random_setup("gpt2-style", seed=7)
    with pytest.raises(CircuitryError, match="built with another model or transcoder"):
        attention_split(other, clt, AttributionGraph.load(tmp_path / "g.safetensors"))
    graph.info.update(provenance(model, clt))  # what attribute() records: then a changed unembedding is caught too
    graph.save(tmp_path / "g2.safetensors")
    with torch.no_grad():
        model.W_U.mul_(1.5)  # same features and activations (they are read before the unembedding), other logits
    with pytest.raises(CircuitryError, match="built with another model"):
        attention_split(model, clt, AttributionGraph.load(tmp_path / "g2.safetensors"))
    data = bytearray((tmp_path / "g.safetensors").read_bytes())
    data[-3] ^= 0x40  # one flipped bit in the last tensor's data
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(CircuitryError, match="flipped.safetensors: attribution graph does not match its recorded fingerprint"):
        AttributionGraph.load(tmp_path / "flipped.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(Exception, match="bad.safetensors"):
        AttributionGraph.load(tmp_path / "bad.safetensors")


def test_circuit_tracer_json_schema():
    model, clt, tokens = random_setup("gpt2-style", seed=7)
    graph = apply_pruning(build_graph(model, clt, tokens, max_logits=2))
    data = to_circuit_tracer_json(graph, "demo")
    assert set(data) == {"metadata", "qParams", "nodes", "links"}
    assert {"slug", "scan", "prompt_tokens", "prompt", "node_threshold", "schema_version"} <= set(data["metadata"])
    assert data["metadata"]["scan"].endswith("-clt")  # the transcoder set's name; per-layer transcoders are "-plt"
    per_layer = CrossLayerTranscoder(CLTConfig(model.cfg.n_layers, model.cfg.d_model, 12, cross_layer=False))
    assert to_circuit_tracer_json(build_graph(model, per_layer, tokens, max_logits=2), "demo")["metadata"]["scan"].endswith("-plt")
    node_keys = {"node_id", "feature", "layer", "ctx_idx", "feature_type", "token_prob", "is_target_logit", "run_idx",
                 "reverse_ctx_idx", "jsNodeId", "clerp", "influence", "activation"}  # fmt: skip
    ids = set()
    for n in data["nodes"]:
        assert set(n) == node_keys
        ids.add(n["node_id"])
        kind = n["feature_type"]
        assert kind in {"cross layer transcoder", "mlp reconstruction error", "embedding", "logit"}
        if kind == "logit":
            assert n["layer"] == str(model.cfg.n_layers + 1) and n["node_id"] == f"{model.cfg.n_layers + 1}_{n['feature']}_{len(tokens) - 1}"
        if kind == "mlp reconstruction error":
            assert n["node_id"] == f"{n['layer']}_-1_{n['ctx_idx']}"
        if kind == "embedding":
            assert n["layer"] == "E" and n["node_id"].startswith("E_")
    assert sum(n["is_target_logit"] for n in data["nodes"]) == 1
    assert data["links"] and all(link["source"] in ids and link["target"] in ids for link in data["links"])


def test_sparse_zoo_model_graph_is_exact_with_gated_patterns():
    """On the shipped sparse model (gates on) with its shipped CLT: frozen patterns are the gated ones
    (most entries shut), and constants + direct effects still reproduce every target."""
    from circuitry import load_model
    from circuitry.transcoders import default_clt

    model = load_model("tiny-sparse")
    clt = default_clt(model)
    graph = build_graph(model, clt, "When Mary and John went to the store, John gave a drink to")
    patterns = torch.stack(graph.point.patterns)
    causal = torch.tril(torch.ones(graph.n_pos, graph.n_pos, dtype=torch.bool))
    assert (patterns[..., causal] > 0).float().mean() < 0.5  # the gates shut most causal entries
    actual, const = target_values(model, clt, graph)
    predicted = const + graph.adjacency[rows_of(graph)].sum(1)
    assert torch.allclose(predicted, actual, atol=1e-4 * actual.abs().max().item())
    # feature labels: the logit lens of the summed write, never a special token (<pad>, <bos>, ...)

    labels = feature_labels(model, clt, graph)
    specials = {repr(t) for t in model.tokenizer.all_special_tokens}
    assert len(labels) == graph.n_features and not any(w in specials for text in labels.values() for w in text[2:].split(" "))
    layer, _, feat = graph.active_features[0].tolist()
    lens = logit_lens(model, clt.feature_write(layer, feat).sum(0))
    lens[model.tokenizer.all_special_ids] = float("-inf")
    assert labels[0] == "→ " + " ".join(repr(model.tokenizer.decode([t])) for t in lens.topk(3).indices.tolist())


@pytest.mark.parametrize("arch", ["gpt2-style", "rotary"])
def test_logit_lens_is_the_logit_change_through_the_frozen_final_norm(arch):
    """logit_lens(v) * (1 / scale) is what adding v to the final residual stream does to the logits when the
    final layer norm's scale is held at its value (LayerNorm and RMSNorm models)."""
    model, _, _ = random_setup(arch, seed=3)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a norm weight other than 1, so that leaving it out would show
        model.ln_final.w.copy_(torch.rand(model.cfg.d_model, generator=gen) + 0.5)
    resid, v = torch.randn(2, 1, 1, model.cfg.d_model, generator=gen)
    scale = {}
    keep = lambda x, hook: scale.setdefault("s", x)  # noqa: E731  (the first call stores, later calls reuse)
    with model.hooks(fwd_hooks=[("ln_final.hook_scale", keep)]):
        before = model.unembed(model.ln_final(resid))
        after = model.unembed(model.ln_final(resid + v))
    expected = logit_lens(model, v[0, 0]) / scale["s"][0, 0]
    assert torch.allclose(after - before, expected, atol=1e-5 * expected.abs().max().item())


def test_feature_cap_folds_the_rest_into_errors_and_stays_exact():
    model, clt, tokens = random_setup("gpt2-style", seed=8)
    full = build_graph(model, clt, tokens, max_logits=2)
    capped = build_graph(model, clt, tokens, max_logits=2, max_feature_nodes=10)
    assert full.n_features > 10 and capped.n_features == 10
    actual, const = target_values(model, clt, capped)
    assert torch.allclose(const + capped.adjacency[rows_of(capped)].sum(1), actual, atol=1e-4 * actual.abs().max().item())
    # the logit rows are the same targets in both graphs: their values agree
    assert torch.allclose(actual[-2:], target_values(model, clt, full)[0][-2:])


def test_float64_model_and_clt_give_the_float32_graph():
    """The shipped CLT still belongs to its model moved to float64, and the graph and attention split run in
    float64 and agree with float32."""
    from circuitry import load_model
    from circuitry.attribution import attribute
    from circuitry.transcoders import default_clt

    prompt = "When Mary and John went to the store, John gave a drink to"
    m32 = load_model("tiny-dense")
    g32 = attribute(m32, default_clt(m32), prompt)
    m64 = load_model("tiny-dense").to(torch.float64)
    g64 = attribute(m64, default_clt(m64).to(torch.float64), prompt)
    assert g64.adjacency.dtype == torch.float64 and g64.adjacency.shape == g32.adjacency.shape
    assert (g64.adjacency - g32.adjacency.double()).abs().max() < 1e-4 * g32.adjacency.abs().max()


def test_graph_inputs_are_checked_and_provenance_names_the_model():
    """A [1, pos] token tensor is one prompt; a transcoder of another shape, an attention-only model and a
    batch of prompts are refused in one line; a transcoder trained on another model warns, and the graph records
    both fingerprints."""
    from circuitry.attribution import attribute
    from circuitry.zoo.registry import model_fingerprint

    model, clt, tokens = random_setup("gpt2-style", seed=4)
    flat, batched = build_graph(model, clt, tokens, max_logits=2), build_graph(model, clt, tokens[None], max_logits=2)
    assert torch.equal(flat.adjacency, batched.adjacency)
    with pytest.raises(CircuitryError, match="one prompt"):
        build_graph(model, clt, tokens.repeat(2, 1))
    other = CrossLayerTranscoder(CLTConfig(model.cfg.n_layers + 1, model.cfg.d_model, 12))
    with pytest.raises(CircuitryError, match="transcoder is for 3 layers"):
        build_graph(model, other, tokens)
    with pytest.raises(CircuitryError, match="clt.to"):
        build_graph(model, CrossLayerTranscoder(CLTConfig(model.cfg.n_layers, model.cfg.d_model, 12)).double(), tokens)
    attn_only, _, _ = random_setup("attn-only", seed=4)
    with pytest.raises(CircuitryError, match="no MLPs"):
        build_graph(attn_only, clt, tokens)
    clt.record = {"fingerprint": "clt-fp", "model_fingerprint": "another-model"}
    with pytest.warns(UserWarning, match="trained on another model"):
        graph = attribute(model, clt, tokens, max_logits=2, attention=False)
    assert graph.info["model_fingerprint"] == model_fingerprint(model) and graph.info["clt_model_fingerprint"] == "another-model"
    clt.record["model_fingerprint"] = model_fingerprint(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching model: no warning
        assert attribute(model, clt, tokens, max_logits=2, attention=False).info["clt_fingerprint"] == "clt-fp"


def test_compare_graphs_checks_provenance_once_and_matches_attribute():
    """compare_graphs hashes each model once (not per prompt): a transcoder trained on another model warns once
    for two prompts, and each prompt's summary is what attribute() gives for it alone."""
    from circuitry.attribution import attribute, compare_graphs, graph_summary

    model, clt, tokens = random_setup("gpt2-style", seed=5)
    clt.record = {"fingerprint": "clt-fp", "model_fingerprint": "another-model"}
    prompts = [tokens, tokens[:-2]]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = compare_graphs({"m": (model, clt)}, prompts, max_logits=2, attention=False)
    assert sum("trained on another model" in str(w.message) for w in caught) == 1
    # without the attention split its figures are absent (None), not a crash in the median
    assert out["models"]["m"]["heads_80"] is None and out["models"]["m"]["per_prompt"][0]["heads_80"] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        direct = [graph_summary(attribute(model, clt, p, max_logits=2, attention=False)) for p in prompts]
    assert out["models"]["m"]["nodes"] == statistics.median(d["nodes"] for d in direct)
    for got, want in zip(out["models"]["m"]["per_prompt"], direct):
        assert {k: v for k, v in got.items() if k != "seconds"} == {k: v for k, v in want.items() if k != "seconds"}


def test_token_ids_without_bos_are_refused():
    """Position 0 is taken as BOS (no features): ids that do not start with BOS would lose their first word, so
    they are refused; with BOS prepended they give the prompt's own graph."""
    from circuitry.transcoders import default_clt

    model = load_model("tiny-dense")
    clt = default_clt(model)
    prompt = "When Mary and John went to the store, John gave a drink to"
    tokens = model.to_tokens(prompt)[0]
    with pytest.raises(CircuitryError, match="do not start with BOS"):
        build_graph(model, clt, tokens[1:], max_logits=2)
    from_ids = build_graph(model, clt, tokens.tolist(), max_logits=2)  # a list of ids is a prompt too
    from_text = build_graph(model, clt, prompt, max_logits=2)
    assert torch.equal(from_ids.adjacency, from_text.adjacency) and from_ids.token_strs == from_text.token_strs  # words, not ids
    for bad, message in ((torch.cat([tokens, torch.tensor([-1])]), "token id -1 is outside the model's vocabulary"),
                         (torch.cat([tokens, torch.tensor([10**6])]), "token id 1000000 is outside"),
                         (tokens.float(), "token ids must be integers, got torch.float32"),
                         ({"ids": tokens}, "a prompt is a string or token ids")):  # fmt: skip
        with pytest.raises(CircuitryError, match=message):
            build_graph(model, clt, bad, max_logits=2)


def test_head_loadings_need_the_attention_split():
    from circuitry.attribution import attribute
    from circuitry.plotting import head_loadings_figure

    model, clt, tokens = random_setup("gpt2-style", seed=6)
    with pytest.raises(CircuitryError, match="graph 'g' has no attention split"):
        head_loadings_figure({"g": attribute(model, clt, tokens, max_logits=2, attention=False)})
    assert len(head_loadings_figure({"g": attribute(model, clt, tokens, max_logits=2)}).data) == 1
