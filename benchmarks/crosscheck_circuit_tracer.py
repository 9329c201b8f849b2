"""circuitry's attribution graphs against circuit-tracer 0.5.0 (a public reference) on a zoo model and its CLT.

circuit-tracer (safety-research/circuit-tracer, PyPI ``circuit-tracer``) builds the same local replacement
model (attention patterns and layer-norm scales frozen, one error node per layer and position) on a
TransformerLens model. This script loads the model's shipped CLT directory with circuit-tracer's own loader
(so it also checks that circuitry's on-disk layout is circuit-tracer's), builds circuit-tracer's replacement
model with the same weights (and, for sparse models, the same attention gates), runs both libraries on the
same IOI prompts (up to 10 logits, 0.95 cumulative probability, no feature cap) and compares, per prompt:
- the active features (layer, pos, feature) and their activations, the logit tokens and probabilities;
- the full unpruned adjacency, nodes matched by kind (features by (layer, pos, feature), errors by
  (layer, pos), embeddings by pos, logits by token);
- replacement and completeness scores, node and edge masks after pruning at 0.8 / 0.98.

Exit 1 if anything differs by more than TOLERANCE (adjacency: of the largest |value|; scores and probabilities:
absolute) or any pruning mask differs. Like circuit-tracer, circuitry puts the BOS MLP outputs into the constant
term, not into error nodes (it did not until this check found the difference).

circuit-tracer is not a dependency. Its metadata pins transformers<=4.57.3 and pulls nnsight, which only its
other backend needs, so install it without its requirements beside circuitry:

    pip install --no-deps circuit-tracer==0.5.0

Usage: python benchmarks/crosscheck_circuit_tracer.py [MODEL] [N_PROMPTS]   (defaults: tiny-dense, 5)
"""

import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import huggingface_hub.constants  # noqa: E402
import torch  # noqa: E402
import yaml  # noqa: E402

# circuit-tracer 0.5.0 imports a constant that huggingface_hub 1.x removed (only used for downloads).
if not hasattr(huggingface_hub.constants, "HF_HUB_ENABLE_HF_TRANSFER"):
    huggingface_hub.constants.HF_HUB_ENABLE_HF_TRANSFER = False

from circuit_tracer.attribution.attribute import attribute as ct_attribute  # noqa: E402
from circuit_tracer.graph import compute_graph_scores, prune_graph  # noqa: E402
from circuit_tracer.replacement_model.replacement_model_transformerlens import TransformerLensReplacementModel  # noqa: E402
from circuit_tracer.transcoder.cross_layer_transcoder import load_clt as ct_load_clt  # noqa: E402

from circuitry import get_task, load_model  # noqa: E402
from circuitry.attribution import AttributionGraph, attribute  # noqa: E402
from circuitry.sparsity.gates import attach_gates  # noqa: E402
from circuitry.transcoders import default_clt  # noqa: E402

MODEL = sys.argv[1] if len(sys.argv) > 1 else "tiny-dense"
N = int(sys.argv[2]) if len(sys.argv) > 2 else 5
TOLERANCE = 1e-4
warnings.filterwarnings("ignore", message="Full backward hook is firing")  # circuit-tracer's backward hooks
NODE_T, EDGE_T = 0.8, 0.98


def reference_model(model) -> TransformerLensReplacementModel:
    """circuit-tracer's replacement model: the shipped CLT through its loader, circuitry's weights, same gates."""
    clt_dir = Path(model.circuitry_info["path"]) / "clt"
    config = yaml.safe_load((clt_dir / "config.yaml").read_text())
    assert config["model_kind"] == "cross_layer_transcoder", config
    ct_clt = ct_load_clt(str(clt_dir), config["feature_input_hook"], config["feature_output_hook"], scan=config["scan"],
                         device=torch.device("cpu"), dtype=torch.float32, lazy_decoder=False)  # fmt: skip
    ref = TransformerLensReplacementModel.from_config(model.cfg, ct_clt, tokenizer=model.tokenizer)
    # circuit-tracer wraps blocks.N.mlp and unembed (ReplacementMLP.old_mlp, ReplacementUnembed.old_unembed)
    renamed = {k.replace(".mlp.", ".mlp.old_mlp.").replace("unembed.", "unembed.old_unembed."): v
               for k, v in model.state_dict().items() if not k.startswith("gates.")}  # fmt: skip
    missing, unexpected = ref.load_state_dict(renamed, strict=False)
    if unexpected or [k for k in missing if not k.startswith("transcoders.")]:
        raise SystemExit(f"weights do not fit circuit-tracer's model: missing {missing}, unexpected {unexpected}")
    if getattr(model, "gates", None) is not None:  # the same gate module, deterministic (eval) mode
        attach_gates(ref, mode="eval", renormalise=model.gates.renormalise, gates=model.gates)
    return ref.eval()


def node_keys_ours(g: AttributionGraph) -> list[tuple]:
    keys = [("feature", *map(int, f)) for f in g.active_features.tolist()]
    keys += [("error", l, p) for l in range(g.n_layers) for p in range(g.n_pos)]
    return keys + [("embed", p) for p in range(g.n_pos)] + [("logit", t) for t in g.logit_tokens]


def node_keys_ref(G) -> list[tuple]:
    keys = [("feature", *map(int, f)) for f in G.active_features[G.selected_features].tolist()]
    keys += [("error", l, p) for l in range(G.cfg.n_layers) for p in range(G.n_pos)]
    return keys + [("embed", p) for p in range(G.n_pos)] + [("logit", t.vocab_idx) for t in G.logit_targets]


def compare(model, clt, ref, prompt: str) -> dict:
    tokens = model.to_tokens(prompt)[0]  # BOS first: circuit-tracer keeps a leading special token as it is
    t0 = time.perf_counter()
    g = attribute(model, clt, prompt, NODE_T, EDGE_T, attention=False)
    t1 = time.perf_counter()
    G = ct_attribute(tokens, ref, max_n_logits=10, desired_logit_prob=0.95, max_feature_nodes=None)
    ct_prune = prune_graph(G, NODE_T, EDGE_T)
    ct_rep, ct_comp = compute_graph_scores(G)
    t2 = time.perf_counter()

    ours, theirs = node_keys_ours(g), node_keys_ref(G)
    r = {"nodes": g.n_nodes, "features": g.n_features, "t_ours": t1 - t0, "t_ref": t2 - t1}
    r["same_nodes"] = set(ours) == set(theirs) and len(ours) == len(theirs)
    r["same_logits"] = g.logit_tokens == G.logit_token_ids.tolist()
    probs = zip(g.logit_probs, G.logit_probabilities.tolist())
    r["prob_diff"] = max(abs(a - b) for a, b in probs) if r["same_logits"] else float("inf")
    if not r["same_nodes"]:
        return r
    perm = torch.tensor([theirs.index(k) for k in ours]) if ours != theirs else torch.arange(len(ours))
    B = G.adjacency_matrix[perm][:, perm]  # circuit-tracer's matrix in circuitry's node order
    act_ref = G.activation_values[G.selected_features]
    r["act_diff"] = (g.activations - act_ref[perm[: g.n_features]]).abs().max().item() if g.n_features else 0.0
    r["scale"] = B.abs().max().item()
    r["adj_diff"] = (g.adjacency - B).abs().max().item()
    r["scores_ours"] = (g.info["replacement_score"], g.info["completeness_score"])
    r["scores_ref"] = (ct_rep, ct_comp)
    r["node_flips"] = int((g.node_mask != ct_prune.node_mask[perm]).sum())
    r["edge_flips"] = int((g.edge_mask != ct_prune.edge_mask[perm][:, perm]).sum())
    r["kept"] = (int(g.node_mask.sum()), int(g.edge_mask.sum()))
    return r


def main() -> None:
    model = load_model(MODEL)
    clt = default_clt(model)
    ref = reference_model(model)
    task = get_task("ioi", model)
    prompts = [p.clean for p in task.pairs(N, 0)]
    with torch.no_grad():
        logit_gap = max((model(model.to_tokens(p)) - ref(model.to_tokens(p))).abs().max().item() for p in prompts)
    print(f"{MODEL}: {N} IOI prompts (seed 0); max |logits circuitry model - circuit-tracer model| {logit_gap:.2e}")
    if getattr(model, "gates", None) is not None:  # the gates really act in circuit-tracer's model
        with torch.no_grad():
            gated = ref(model.to_tokens(prompts[0]))
            model.gates.set_mode("off")
            dense = ref(model.to_tokens(prompts[0]))
            model.gates.set_mode("eval")
        print(f"  gates act in circuit-tracer's model: off, its logits move by up to {(gated - dense).abs().max().item():.2f}")
    ok = logit_gap <= TOLERANCE
    rows = []
    for i, prompt in enumerate(prompts):
        r = compare(model, clt, ref, prompt)
        rows.append(r)
        good = r["same_nodes"] and r["same_logits"] and r["prob_diff"] <= TOLERANCE
        if r["same_nodes"]:
            good &= r["act_diff"] <= TOLERANCE and r["adj_diff"] <= TOLERANCE * max(r["scale"], 1.0)
            good &= max(abs(a - b) for a, b in zip(r["scores_ours"], r["scores_ref"])) <= TOLERANCE
            good &= r["node_flips"] == 0 and r["edge_flips"] == 0
        ok &= good
        print(f"[{i}] {prompt!r}: {r['features']} features, {r['nodes']} nodes; same nodes {r['same_nodes']}, "
              f"same logits {r['same_logits']} (max |dp| {r['prob_diff']:.1e}); {r['t_ours']:.2f} s vs {r['t_ref']:.2f} s"
              + ("" if good else "   <-- DISAGREE"))  # fmt: skip
        if not r["same_nodes"]:
            continue
        (ro, co), (rr, cr) = r["scores_ours"], r["scores_ref"]
        print(f"    max |adjacency diff| {r['adj_diff']:.2e} (largest |edge| {r['scale']:.2f}); activations {r['act_diff']:.1e}; "
              f"replacement / completeness: circuitry {ro:.5f} / {co:.5f}, circuit-tracer {rr:.5f} / {cr:.5f}")  # fmt: skip
        print(f"    pruned at {NODE_T} / {EDGE_T}: {r['kept'][0]} nodes, {r['kept'][1]} edges; mask differences: "
              f"nodes {r['node_flips']}, edges {r['edge_flips']}")  # fmt: skip
    full = [r for r in rows if r["same_nodes"]]
    if full:
        worst = max(r["adj_diff"] / max(r["scale"], 1.0) for r in full)
        d_score = max(abs(a - b) for r in full for a, b in zip(r["scores_ours"], r["scores_ref"]))
        flips = sum(r["node_flips"] + r["edge_flips"] for r in full)
        print(f"summary over {len(full)} prompts: worst adjacency diff {worst:.1e} of the largest edge; scores differ by "
              f"up to {d_score:.1e}; {flips} pruning-mask differences")  # fmt: skip
    print("agree" if ok else f"DISAGREE (tolerance {TOLERANCE})")
    del ref  # its __del__ resets hooks; at interpreter exit that fails noisily
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
