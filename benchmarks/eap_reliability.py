"""How reproducible is the exact-patching ranking that edge scores are checked against, and how close do the
estimators come to it?

For R prompt seeds (fresh pairs each), exact single-edge patching of every edge and every estimator on the same
N pairs. Prints, per seed, each estimator's Spearman against exact patching over the 200 edges with the largest
|exact effect|; then, for every two seeds a and b, the Spearman of exact patching on b's pairs against exact
patching on a's pairs over a's top 200: the ceiling an estimator scored on other prompts could reach.

Usage: python benchmarks/eap_reliability.py [N_PAIRS] [MODEL] [FIRST_SEED] [R] [NODE_IG_STEPS]
(defaults: 100, tiny-dense, 100, 4, 3; NODE_IG_STEPS is EAP-IG-node's step count)
"""

import itertools
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from scipy.stats import spearmanr  # noqa: E402

from circuitry import get_task, load_model  # noqa: E402
from circuitry.circuits import Graph, eap_scores, exact_edge_scores  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 100
MODEL = sys.argv[2] if len(sys.argv) > 2 else "tiny-dense"
FIRST = int(sys.argv[3]) if len(sys.argv) > 3 else 100
R = int(sys.argv[4]) if len(sys.argv) > 4 else 4
NODE_STEPS = int(sys.argv[5]) if len(sys.argv) > 5 else 3
TOP = 200
METHODS = {"EAP": {"method": "eap"}, "eap-local": {"method": "eap-local"}, "EAP-IG (5)": {"method": "eap-ig", "ig_steps": 5},
           f"EAP-IG-node ({NODE_STEPS})": {"method": "eap-ig-node", "ig_steps": NODE_STEPS}}  # fmt: skip


def main() -> None:
    model = load_model(MODEL)
    task = get_task("ioi", model)
    graph = Graph.from_model(model)
    print(f"{MODEL}: {graph}; IOI, {N} pairs per seed, seeds {FIRST}..{FIRST + R - 1}, top {TOP} edges by |exact|")
    exact = {}
    for seed in range(FIRST, FIRST + R):
        batch = task.tokenize(task.pairs(N, seed))
        t0 = time.perf_counter()
        exact[seed] = exact_edge_scores(model, batch, graph, metric=task)
        top = exact[seed].abs().topk(TOP).indices
        rho = {name: spearmanr(eap_scores(model, batch, graph, metric=task, **kw)[top], exact[seed][top])[0] for name, kw in METHODS.items()}
        print(f"seed {seed}: " + ", ".join(f"{k} {v:.3f}" for k, v in rho.items()) + f"  ({time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"exact patching on other pairs against exact patching (top {TOP} of the first seed of each two):")
    ceil = []
    for a, b in itertools.combinations(exact, 2):
        top = exact[a].abs().topk(TOP).indices
        ceil.append(spearmanr(exact[b][top], exact[a][top])[0])
        print(f"  seeds {a} / {b}: {ceil[-1]:.3f}")
    print(f"range {min(ceil):.3f}-{max(ceil):.3f}")


if __name__ == "__main__":
    main()
