"""How much of the dense model's IOI circuit the sparse model keeps (exact patching; the README's overlap figures).

For each prompt seed: the f >= 0.9 circuits of both models, their shared edges and heads, the shared strongest
edges, and the share of the summed |effect| that the 10 strongest edges carry.

Usage: python benchmarks/circuit_overlap.py [DENSE] [SPARSE] [SEEDS]   (defaults: tiny-dense tiny-sparse 0,1,2)
"""

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from circuitry import get_task, load_model  # noqa: E402
from circuitry.circuits import compare, discover  # noqa: E402

DENSE = sys.argv[1] if len(sys.argv) > 1 else "tiny-dense"
SPARSE = sys.argv[2] if len(sys.argv) > 2 else "tiny-sparse"
SEEDS = [int(s) for s in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2").split(",")]
N_PROMPTS, TOP = 50, 50


def main() -> None:
    models = {name: load_model(name) for name in (DENSE, SPARSE)}
    for seed in SEEDS:
        runs = {name: discover(m, get_task("ioi", m), "exact", n_prompts=N_PROMPTS, seed=seed) for name, m in models.items()}
        shared = compare(runs, DENSE, SPARSE)
        circuits = {name: r.circuit(0.9) for name, r in runs.items()}
        size = ", ".join(f"{n} {c.n_edges} edges / {c.n_heads} heads" if c else f"{n} never 0.9" for n, c in circuits.items())
        tops = [set(r.scores.abs().topk(TOP).indices.tolist()) for r in runs.values()]
        top10 = ", ".join(f"{n} {float(r.scores.abs().topk(10).values.sum() / r.scores.abs().sum()):.3f}" for n, r in runs.items())
        print(f"seed {seed}: {size}; shared {shared['shared_edges_at_0.9']} edges / {shared['shared_heads_at_0.9']} heads; "
              f"top-{TOP} edges shared {len(tops[0] & tops[1])}; share of summed |effect| in the top 10: {top10}")  # fmt: skip


if __name__ == "__main__":
    main()
