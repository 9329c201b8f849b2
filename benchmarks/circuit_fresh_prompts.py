"""How faithful discover's f >= 0.9 circuit stays on prompts it has not seen (the README's hold-out figures).

discover scores edges on the prompts of seed s and picks the circuit where f crosses 0.9 on those of seed s + 1,
so the crossing itself is chosen on the evaluation prompts. This measures f of that circuit on seeds s + 2 and
s + 3 (the default of `circuitry circuit-eval`), 100 prompts each.

Usage: python benchmarks/circuit_fresh_prompts.py [MODELS] [SEEDS] [TASK]   (defaults: tiny-dense,tiny-sparse 0,1,2,3,4 ioi)
"""

import os
import statistics
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from circuitry import get_task, load_model  # noqa: E402
from circuitry.circuits import discover, faithfulness  # noqa: E402

MODELS = (sys.argv[1] if len(sys.argv) > 1 else "tiny-dense,tiny-sparse").split(",")
SEEDS = [int(s) for s in (sys.argv[2] if len(sys.argv) > 2 else "0,1,2,3,4").split(",")]
TASK = sys.argv[3] if len(sys.argv) > 3 else "ioi"


def main() -> None:
    for name in MODELS:
        model = load_model(name)
        task = get_task(TASK, model)
        fresh = []
        for seed in SEEDS:
            found = discover(model, task, seed=seed)
            circuit = found.circuit(0.9)
            if circuit is None:
                print(f"{name} seed {seed}: f never stays >= 0.9")
                continue
            fs = [faithfulness(model, task, found.graph, circuit, n=100, seed=s).f for s in (seed + 2, seed + 3)]
            fresh += fs
            print(f"{name} seed {seed}: {circuit.n_edges} edges, f = {found.curve.crossing(0.9).f:.3f} on seed {seed + 1}, "
                  f"{fs[0]:.3f} / {fs[1]:.3f} on seeds {seed + 2} / {seed + 3}")
        if fresh:
            print(f"{name}: fresh-prompt f {min(fresh):.3f}-{max(fresh):.3f}, median {statistics.median(fresh):.3f}, "
                  f"{sum(f >= 0.9 for f in fresh)} of {len(fresh)} >= 0.9")


if __name__ == "__main__":
    main()
