"""Time of one attribution graph on the default models (build, prune, attention split), and of the
`circuitry attribute` command from a cold process.

Usage: python benchmarks/bench_attribution.py [--repeats 5]
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

import torch

from circuitry import get_task, load_model
from circuitry.attribution import apply_pruning, attention_split, build_graph, graph_scores
from circuitry.transcoders import default_clt

parser = argparse.ArgumentParser()
parser.add_argument("--repeats", type=int, default=5)
args = parser.parse_args()
print(f"torch threads: {torch.get_num_threads()}")

for name in ("tiny-dense", "tiny-sparse"):
    model = load_model(name)
    clt = default_clt(model)
    prompts = [p.clean for p in get_task("ioi", model).pairs(args.repeats, seed=123)]
    build_graph(model, clt, prompts[0])  # warm-up
    times = {"build": [], "prune": [], "attention split": [], "total": []}
    for prompt in prompts:
        t0 = time.perf_counter()
        graph = build_graph(model, clt, prompt)
        t1 = time.perf_counter()
        apply_pruning(graph)
        graph_scores(graph)
        t2 = time.perf_counter()
        attention_split(model, clt, graph)
        t3 = time.perf_counter()
        for key, v in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
            times[key].append(v)
    print(f"{name}: {graph.n_features} active features, {graph.n_pos} tokens (last prompt); median over {len(prompts)} IOI prompts:")
    print("  " + ", ".join(f"{k} {statistics.median(v):.2f} s" for k, v in times.items()))

env = {**os.environ, "HF_HUB_OFFLINE": "1"}
prompt = "When Mary and John went to the store, John gave a drink to"
t0 = time.perf_counter()
proc = subprocess.run([sys.executable, "-m", "circuitry.cli", "attribute", prompt, "--json"], capture_output=True, text=True, env=env)
if proc.returncode != 0:
    sys.exit(proc.stderr)
print(f"circuitry attribute (cold process, tiny-dense, incl. imports and loading): {time.perf_counter() - t0:.1f} s wall")
