"""IOI circuits on the dense and the sparse default model, end to end.

Usage:  python examples/ioi_circuits.py [--n-prompts 100] [--method eap-local] [--out runs/ioi-circuits]
Prints edges/heads needed for f >= 0.9 on each model and their ratio; writes circuit JSON and HTML plots.
"""

import argparse
import json
from pathlib import Path

from circuitry import get_task, load_model
from circuitry.circuits import compare, discover
from circuitry.errors import one_line_errors_in_scripts
from circuitry.plotting import circuit_graph, faithfulness_curves, save_figure

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n-prompts", type=int, default=100)
parser.add_argument("--method", default="eap-local", help="eap, eap-local, eap-ig, eap-ig-node or exact")
parser.add_argument("--out", type=Path, default=Path("runs/ioi-circuits"))
args = parser.parse_args()
one_line_errors_in_scripts()  # bad input: one "error: ..." line, as from the CLI

results = {}
for name in ("tiny-dense", "tiny-sparse"):
    model = load_model(name)
    results[name] = discover(model, get_task("ioi", model), args.method, args.n_prompts, seed=0)
    circuit = results[name].circuit(0.9)
    results[name].save(args.out / f"circuit_{name}.json")  # what discover --out writes; circuitry circuit-eval reads it
    if circuit is not None:
        save_figure(circuit_graph(circuit, title=f"{name}, IOI ({args.method}, f >= 0.9)"), args.out / f"circuit_{name}")
    print(name, json.dumps({k: results[name].to_dict()[k] for k in ("edges_at_0.9", "heads_at_0.9", "edges_at_0.8", "heads_at_0.8")}))
save_figure(faithfulness_curves(results), args.out / "faithfulness_curves")
print("dense/sparse:", json.dumps(compare(results, "tiny-dense", "tiny-sparse")))
