"""Attribution graphs of IOI prompts on the dense and the sparse default model, with their shipped CLTs.

Usage:  python examples/attribution_graphs.py [--n 20] [--out runs/attribution]
Prints, per model, the median nodes/edges after pruning, the replacement and completeness scores, and how many
heads and (head, key position) pairs carry 80% of the attribution that moves between positions; writes one
graph per model (safetensors + circuit-tracer JSON + HTML figure) and the comparison.
"""

import argparse
import json
from pathlib import Path

from circuitry import get_task, load_model
from circuitry.artifacts import atomic_write_json
from circuitry.attribution import attribute, compare_graphs, write_circuit_tracer_json
from circuitry.errors import one_line_errors_in_scripts
from circuitry.plotting import attribution_graph_figure, graph_comparison_figure, head_loadings_figure, save_figure
from circuitry.transcoders import default_clt

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--n", type=int, default=20)
parser.add_argument("--out", type=Path, default=Path("runs/attribution"))
args = parser.parse_args()
one_line_errors_in_scripts()  # bad input: one "error: ..." line, as from the CLI

pairs = {}
for name in ("tiny-dense", "tiny-sparse"):
    model = load_model(name)
    pairs[name] = (model, default_clt(model))
prompts = [p.clean for p in get_task("ioi", pairs["tiny-dense"][0]).pairs(args.n, seed=0)]

graphs = {}
for name, (model, clt) in pairs.items():
    graphs[name] = attribute(model, clt, prompts[0])
    graphs[name].save(args.out / f"{name}.safetensors")
    write_circuit_tracer_json(graphs[name], args.out, name, model, clt)
    save_figure(attribution_graph_figure(graphs[name], model, clt), args.out / f"graph_{name}")
save_figure(head_loadings_figure(graphs), args.out / "head_loadings")

result = compare_graphs(pairs, prompts)
atomic_write_json(args.out / "compare_graphs.json", result)
save_figure(graph_comparison_figure(result), args.out / "compare_graphs")
for name, r in result["models"].items():
    print(name, json.dumps({k: r[k] for k in ("nodes", "edges", "replacement_score", "completeness_score", "heads_80", "head_key_pairs_80")}))
print("dense/sparse:", json.dumps(result["ratios"]))
