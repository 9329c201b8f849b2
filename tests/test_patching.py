"""Real patched forward passes: the full and empty circuits, and any edge set against a brute force."""

import pytest
import torch

from circuitry.circuits import Graph, exact_edge_scores, faithfulness, prune, run_with_edges
from circuitry.circuits import patching
from circuitry.zoo.registry import build_model

from random_models import BASE, FLAGS, GRAPH_ARCHS as ARCHS, logit_diff, random_batch


@pytest.mark.parametrize("arch", list(ARCHS))
def test_full_and_empty_masks_reproduce_clean_and_corrupt_runs(arch):
    model, batch = build_model({**BASE, **ARCHS[arch]}, seed=1), random_batch()
    graph = Graph.from_model(model)
    if arch == "attn-only":
        assert not any(n.startswith("m") for n in graph.nodes) and graph.n_edges == 81
    with torch.no_grad():
        clean, corrupt = model(batch.clean), model(batch.corrupt)
    full = run_with_edges(model, batch, graph, torch.ones(graph.n_edges, dtype=torch.bool))
    empty = run_with_edges(model, batch, graph, torch.zeros(graph.n_edges, dtype=torch.bool))
    assert torch.allclose(full, clean, atol=1e-5) and torch.allclose(empty, corrupt, atol=1e-5)
    assert not torch.allclose(clean, corrupt, atol=1e-2)
    f_full = faithfulness(model, batch, graph, torch.ones(graph.n_edges, dtype=torch.bool), metric=logit_diff)
    f_empty = faithfulness(model, batch, graph, torch.zeros(graph.n_edges, dtype=torch.bool), metric=logit_diff)
    assert f_full.f == pytest.approx(1, abs=1e-5) and f_empty.f == pytest.approx(0, abs=1e-5)
    assert f_full.m_full == pytest.approx(logit_diff(clean, batch).mean().item(), abs=1e-5)
    assert f_full.m_empty == pytest.approx(logit_diff(corrupt, batch).mean().item(), abs=1e-5)
    # the fast exact path agrees with real patched runs, for every ablation
    edges = [0, 5, graph.n_edges // 3, graph.n_edges - 1, graph.edge_index("a0.h1->a1.h2<k>")]
    for ablation in ("corrupt", "mean", "zero"):
        exact = exact_edge_scores(model, batch, graph, ablation, edges=edges, metric=logit_diff)
        assert torch.isnan(exact).sum() == graph.n_edges - len(edges)
        m_clean = logit_diff(clean, batch).mean()
        for i in edges:
            mask = torch.ones(graph.n_edges, dtype=torch.bool)
            mask[i] = False
            ref = logit_diff(run_with_edges(model, batch, graph, mask, ablation), batch).mean() - m_clean
            assert exact[i].item() == pytest.approx(ref.item(), abs=1e-4)
    assert all(getattr(model.cfg, f) is False for f in FLAGS)  # flags restored


def reference_patched_logits(model, graph, batch, keep, ablation="corrupt"):
    """Brute force with TransformerLens' own split q/k/v inputs and hook_result, independent of the patching
    code: every target input minus sum over its removed edges of (current - ablated) source output."""
    src, dst = graph.edge_nodes()
    names = graph.edge_names
    removed: dict[str, list[str]] = {}
    for i in (~keep).nonzero().flatten().tolist():
        removed.setdefault(names[i].split("->")[1], []).append(src[i])
    saved = {f: getattr(model.cfg, f) for f in FLAGS}
    try:
        for f in FLAGS:
            setattr(model.cfg, f, True)
        _, cache = model.run_with_cache(batch.corrupt)

        def output(store, node):
            if node == "input":
                return store["blocks.0.hook_resid_pre"]
            if node.startswith("m"):
                return store[f"blocks.{node[1:]}.hook_mlp_out"]
            layer, head = node[1:].split(".h")
            return store[f"blocks.{layer}.attn.hook_result"][:, :, int(head)]

        real = patching.position_mask(batch).float()  # the mean ablation averages real tokens only

        def ablate(v):
            if ablation != "mean":
                return v * 0 if ablation == "zero" else v
            w = real.view(*real.shape, *[1] * (v.dim() - 2))
            return (v * w).sum(0, keepdim=True) / w.sum(0, keepdim=True).clamp(min=1)

        abl = {k: ablate(v) for k, v in cache.items() if k.endswith(("resid_pre", "hook_result", "hook_mlp_out"))}
        current: dict = {}

        def record(x, hook):
            current[hook.name] = x

        def patch(targets):
            def hook(x, hook):
                x = x.clone()
                for index, target in targets:
                    delta = sum(output(current, u) - output(abl, u) for u in removed.get(target, []))
                    if index is None:
                        x = x - delta
                    else:
                        x[:, :, index] -= delta
                return x

            return hook

        L, H = graph.n_layers, graph.n_heads
        hooks = [("blocks.0.hook_resid_pre", record)]
        for layer in range(L):
            for ch in "qkv":
                hooks.append((f"blocks.{layer}.hook_{ch}_input", patch([(h, f"a{layer}.h{h}<{ch}>") for h in range(H)])))
            hooks.append((f"blocks.{layer}.attn.hook_result", record))
            if graph.has_mlp:
                hooks.append((f"blocks.{layer}.hook_mlp_in", patch([(None, f"m{layer}")])))
                hooks.append((f"blocks.{layer}.hook_mlp_out", record))
        hooks.append((f"blocks.{L - 1}.hook_resid_post", patch([(None, "logits")])))
        with torch.no_grad():
            return model.run_with_hooks(batch.clean, fwd_hooks=hooks)
    finally:
        for f, v in saved.items():
            setattr(model.cfg, f, v)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_patched_runs_match_brute_force_for_any_edge_set(arch):
    """Random and pruned edge sets of every size, each ablation: the fast patched forward (which skips
    nodes without kept outgoing edges and shares layer norms between heads) equals the brute force."""
    model, batch = build_model({**BASE, **ARCHS[arch]}, seed=2), random_batch(1)
    graph, g = Graph.from_model(model), torch.Generator().manual_seed(0)
    with torch.no_grad():  # non-zero biases: the attention output bias belongs to no source node
        for name, p in model.named_parameters():
            if name.split(".")[-1].startswith("b_"):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    for ablation in ("corrupt", "mean", "zero"):
        for frac in (0.03, 0.2, 0.5, 0.8, 0.97):
            keep = torch.rand(graph.n_edges, generator=g) < frac
            for mask in (keep, prune(graph, keep)):
                fast = run_with_edges(model, batch, graph, mask, ablation)
                ref = reference_patched_logits(model, graph, batch, mask, ablation)
                assert torch.allclose(fast, ref, atol=2e-5), (ablation, frac, (fast - ref).abs().max())
    assert all(getattr(model.cfg, f) is False for f in FLAGS)
