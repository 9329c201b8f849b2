"""Real architectures with random weights (no download): TransformerLens configs of GPT-2 small, Pythia-160m
(rotary, parallel attention + MLP) and a Llama-style grouped-query model, with the zoo tokenizer. Every workflow
runs on each: gates (exactly removable), sparse post-training (one step; LoRA on one architecture), the EAP
graph and `discover`, CLT training (one step) and exact attribution graphs."""

import pytest
import torch

from circuitry.attribution import attention_split, build_graph, target_values
import math

from circuitry.circuits import Graph, discover
from circuitry.circuits.multihead import as_multi_head, is_grouped_query
from circuitry.errors import CircuitryError
from circuitry.sparsity import SparsifyConfig, attach_gates, detach_gates, expected_connectivity, sparsify
from circuitry.tasks import get_task
from circuitry.transcoders import CLTConfig, CLTTrainConfig, CrossLayerTranscoder, train_clt
from circuitry.transcoders.train import input_hook
from circuitry.zoo.registry import build_model, load_model

COMMON = dict(default_prepend_bos=True, original_architecture=None, attn_only=False, n_key_value_heads=None, rotary_dim=None, gated_mlp=False)
CONFIGS = {
    "gpt2-small": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024, act_fn="gelu_new",
                       normalization_type="LN", positional_embedding_type="standard"),
    "pythia-160m": dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50304, n_ctx=2048, act_fn="gelu",
                        normalization_type="LN", positional_embedding_type="rotary", rotary_dim=16, parallel_attn_mlp=True),
    "llama-gqa": dict(n_layers=4, d_model=512, n_heads=8, n_key_value_heads=2, d_head=64, d_mlp=1376, d_vocab=32000, n_ctx=2048,
                      act_fn="silu", normalization_type="RMS", positional_embedding_type="rotary", rotary_dim=64, gated_mlp=True),
}  # fmt: skip
EDGES = {"gpt2-small": 32491}
LORA = {"llama-gqa": 4}  # sparse post-training with LoRA adapters on this one, all weights on the others


@pytest.fixture(scope="module", params=list(CONFIGS))
def arch(request):
    tokenizer = load_model("tiny-dense").tokenizer  # the zoo language, so tasks and training data exist
    return request.param, build_model({**COMMON, **CONFIGS[request.param]}, tokenizer, seed=0)


def tokens(model, n=12, seed=0):
    return torch.randint(1, model.cfg.d_vocab, (2, n), generator=torch.Generator().manual_seed(seed))


def test_gates_detach_exactly_and_train_one_step(arch):
    name, model = arch
    x = tokens(model)
    with torch.no_grad():
        before = model(x)
    gates = attach_gates(model, mode="train", bias_init=1.0)
    try:
        loss = model(x, return_type="loss") + expected_connectivity(gates)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert gates.bias.grad is not None and all(torch.isfinite(g).all() for g in grads)
        gates.set_mode("eval")
        with torch.no_grad():
            assert model(x).shape == (2, 12, model.cfg.d_vocab)
    finally:
        detach_gates(model)
        model.zero_grad(set_to_none=True)
    with torch.no_grad():
        assert torch.equal(model(x), before)


def test_component_graph_edge_count(arch, capsys):
    name, model = arch
    if is_grouped_query(model):
        with pytest.raises(CircuitryError, match="as_multi_head"):
            Graph.from_model(model)
        mha = as_multi_head(model)
        assert capsys.readouterr().out == ""  # nothing on stdout (--json output stays one JSON object)
        x = tokens(model)
        with torch.no_grad():
            assert torch.allclose(mha(x), model(x), atol=1e-5)  # the same function, per-head keys/values
        model = mha
    graph = Graph.from_model(model)
    L, H = model.cfg.n_layers, model.cfg.n_heads
    sources = [1 + l * (H + 1) for l in range(L)]  # sources upstream of layer l's heads
    parallel = getattr(model.cfg, "parallel_attn_mlp", False)
    formula = sum(3 * H * s + s + (0 if parallel else H) for s in sources) + 1 + L * (H + 1)
    assert graph.n_edges == formula == EDGES.get(name, formula)


def test_discover_runs_with_full_circuit_faithful(arch, tmp_path):
    from circuitry.circuits import load_circuit

    name, model = arch
    result = discover(model, get_task("ioi", model), "eap", n_prompts=4, grid_points=3, batch_size=4)
    d = result.to_dict()
    assert d["edges_total"] == Graph.from_model(as_multi_head(model)).n_edges
    full = [f for n, f in d["faithfulness_curve"] if n == d["edges_total"]]
    assert full and abs(full[0] - 1) < 1e-3 and torch.isfinite(result.scores).all()
    result.save(tmp_path / "c.json")  # read back onto the model as given (grouped-query: its multi-head graph)
    assert load_circuit(tmp_path / "c.json", model).edges == result.circuit(0.9).edges


def test_eap_local_runs_and_is_exact_into_the_logits(arch):
    """eap-local recomputes patterns through each architecture's own rotary / norm / MLP code: finite scores
    everywhere, and exactly the single-edge patching effect on every edge into the logits."""
    from circuitry.circuits import eap_scores, exact_edge_scores

    name, model = arch
    model = as_multi_head(model)
    task = get_task("ioi", model)
    batch, graph = task.tokenize(task.pairs(3, 0)), Graph.from_model(model)
    local = eap_scores(model, batch, graph, method="eap-local", metric=task)
    into_logits = [i for i, n in enumerate(graph.edge_names) if n.endswith("->logits")]
    exact = exact_edge_scores(model, batch, graph, edges=into_logits, metric=task)[into_logits]
    assert torch.isfinite(local).all() and local.abs().max() > 0
    assert torch.allclose(local[into_logits], exact, atol=1e-4 * exact.abs().max() + 1e-6)


def test_sparsify_one_step(arch, tmp_path):
    name, model = arch
    cfg = SparsifyConfig(steps=1, batch_size=2, seq_len=16, heldout_sequences=2, lora_rank=LORA.get(name, 0))
    sparse, meta = sparsify(model, tmp_path / name, cfg, progress=False, name=f"{name}-sparse", parent=name)
    try:
        assert math.isfinite(meta["heldout_ce"]) and 0 < meta["connectivity"] <= 1
        assert all(p.requires_grad for p in sparse.parameters())  # LoRA merged back into plain weights
    finally:
        detach_gates(sparse)


def test_clt_train_one_step(arch, tmp_path):
    name, model = arch
    clt, info = train_clt(model, tmp_path / "clt", CLTTrainConfig(d_transcoder=8, steps=1, batch_size=2, seq_len=16), progress=False)
    assert clt.cfg.feature_input_hook == input_hook(model)
    log = (tmp_path / "clt" / "train_log.jsonl").read_text()
    assert '"step": 0' in log and "NaN" not in log


def test_attribution_graph_is_exact(arch):
    name, model = arch
    torch.manual_seed(0)
    clt = CrossLayerTranscoder(CLTConfig(model.cfg.n_layers, model.cfg.d_model, 4, threshold_init=0.5, feature_input_hook=input_hook(model)))
    with torch.no_grad():
        clt.b_enc.normal_(0.0, 0.2)
    ids = tokens(model, 8)[0]
    if getattr(model.tokenizer, "bos_token_id", None) is not None:
        ids[0] = model.tokenizer.bos_token_id  # position 0 is BOS (build_graph refuses ids without it)
    graph = build_graph(model, clt, ids, max_logits=2, batch_size=128)
    assert graph.n_features > 0
    actual, const = target_values(model, clt, graph)
    rows = torch.cat([torch.arange(graph.n_features), torch.arange(len(graph.logit_tokens)) + graph.slices()["logits"].start])
    assert torch.allclose(const + graph.adjacency[rows].sum(1), actual, atol=1e-4 * actual.abs().max().item() + 1e-5)
    split = attention_split(model, clt, graph)
    assert split["max_residual"].item() <= 1e-4 * graph.adjacency.abs().max().item() + 1e-6
