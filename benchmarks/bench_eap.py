"""EAP / EAP-local / EAP-IG / exact patching on a task (tiny-dense IOI by default): timings and agreement with exact patching.

Usage: OMP_NUM_THREADS=1 python benchmarks/bench_eap.py [SEED] [MODEL] [TASK] [IG_STEPS] [CORRUPTION]
(defaults: 0, tiny-dense, ioi, 5, the task's default corruption). IG_STEPS is one or more EAP-IG step counts,
comma-separated ("10,30,100"): one EAP-IG row each.
"""

import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402

from circuitry import get_task, load_model  # noqa: E402
from circuitry.circuits import Graph, eap_scores, exact_edge_scores, faithfulness_curve  # noqa: E402

N_EAP, N_EXACT, BATCH = 200, 20, 50
SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 0
MODEL = sys.argv[2] if len(sys.argv) > 2 else "tiny-dense"
TASK = sys.argv[3] if len(sys.argv) > 3 else "ioi"
IG_STEPS = [int(k) for k in sys.argv[4].split(",")] if len(sys.argv) > 4 else [5]
CORRUPTION = sys.argv[5] if len(sys.argv) > 5 else None


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    model = load_model(MODEL)
    task = get_task(TASK, model, CORRUPTION)
    graph = Graph.from_model(model)
    print(f"{MODEL}, {TASK} ({task.corruption} corruption); torch threads {torch.get_num_threads()}; {graph}")

    ig = [(f"EAP-IG ({k})", {"method": "eap-ig", "ig_steps": k}) for k in IG_STEPS]
    methods = (("EAP", {"method": "eap"}), ("EAP-local", {"method": "eap-local"}), *ig,
               ("EAP-IG-node (3)", {"method": "eap-ig-node", "ig_steps": 3}))  # fmt: skip
    for name, kwargs in methods[:-1]:
        _, t = timed(lambda kw=kwargs: eap_scores(model, task, graph, n=N_EAP, seed=SEED, batch_size=BATCH, **kw))
        print(f"{name:15s} {N_EAP} pairs: {t:6.2f} s")

    small = task.tokenize(task.pairs(N_EXACT, SEED))
    exact, t = timed(lambda: exact_edge_scores(model, small, graph, metric=task))
    print(f"exact patching, all {graph.n_edges} edges, {N_EXACT} pairs: {t:6.2f} s")

    top = exact.abs().topk(200).indices
    with torch.no_grad():
        m_clean, m_corrupt = (task.metric(model(t), small).mean().item() for t in (small.clean, small.corrupt))
    print(f"metric clean {m_clean:.2f}, corrupted {m_corrupt:.2f}")
    kinds = [graph.target_channel(n) or ("logits" if n.endswith("logits") else "mlp") for n in graph.edge_names]
    print(f"Spearman vs exact ({N_EXACT} pairs, seed {SEED}; top-200 edges by |exact| / all edges):")
    for name, kwargs in methods:
        same = eap_scores(model, small, graph, metric=task, **kwargs)
        big = eap_scores(model, task, graph, n=N_EAP, seed=SEED, batch_size=BATCH, **kwargs)
        rho = [spearmanr(s[top], exact[top])[0] for s in (same, big)] + [spearmanr(s, exact)[0] for s in (same, big)]
        print(f"  {name:15s} same {N_EXACT} pairs: {rho[0]:.3f} / {rho[2]:.3f}", end="")
        print(f"   from {N_EAP} pairs (exact still from {N_EXACT}): {rho[1]:.3f} / {rho[3]:.3f}")
        print("    top-200 by target kind (count, Spearman, sum |score - exact| / sum |exact|):", end="")
        for kind in ("q", "k", "v", "logits", "mlp"):
            idx = torch.tensor([i for i in top.tolist() if kinds[i] == kind])
            if len(idx) > 2:
                err = (same[idx] - exact[idx]).abs().sum() / exact[idx].abs().sum()
                print(f"  {kind} {len(idx)}, {spearmanr(same[idx], exact[idx])[0]:.2f}, {err:.2f}", end="")
        print()
        curve, t = timed(lambda: faithfulness_curve(model, task, graph, big, n=100, seed=SEED + 1, batch_size=BATCH))
        print(
            f"    faithfulness (100 held-out pairs, {t:.1f} s): CPR {curve.cpr:.3f} CMD {curve.cmd:.3f}; "
            f"f>=0.8 at {curve.edges_80} edges / {curve.heads_80} heads, "
            f"f>=0.9 at {curve.edges_90} edges / {curve.heads_90} heads"
        )


if __name__ == "__main__":
    main()
