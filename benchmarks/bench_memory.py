"""Peak resident memory (RSS) of circuit discovery and of one attribution graph, each in a fresh process:
the default model, and a GPT-2-small-shaped model with random weights (the zoo tokenizer attached), n=50
IOI prompts, batch 25 (memory is bounded by the batch, not by n).

Usage: python benchmarks/bench_memory.py [default:discover gpt2-small-shape:attribute ...]
"""

import json
import os
import subprocess
import sys

CASE = r"""
import json, resource, sys, time
import torch
from circuitry import get_task, load_model
from circuitry.circuits import discover
from circuitry.zoo.registry import build_model
kind, what = sys.argv[1], sys.argv[2]
if kind == "default":
    model = load_model("tiny-dense")
else:
    tok = load_model("tiny-dense").tokenizer
    cfg = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024, act_fn="gelu_new",
               normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=True, attn_only=False,
               n_key_value_heads=None, rotary_dim=None, gated_mlp=False, original_architecture=None)
    model = build_model(cfg, tokenizer=tok, seed=0)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
t0 = time.time()
if what == "discover":
    r = discover(model, get_task("ioi", model), "eap", n_prompts=50, batch_size=25, grid_points=12)
    extra = {"edges_total": r.graph.n_edges}
else:
    from circuitry.attribution import attribute
    from circuitry.transcoders import CLTConfig, CrossLayerTranscoder, default_clt
    if kind == "default":
        clt = default_clt(model)
    else:
        torch.manual_seed(0)  # random CLT; the 7,500-feature cap (circuit-tracer's default) bounds the graph
        clt = CrossLayerTranscoder(CLTConfig(12, 768, 512, threshold_init=1.0))
    g = attribute(model, clt, "When Mary and John went to the store, John gave a drink to")
    extra = {"active_features": g.n_features}
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"model_loaded_mb": round(base), "peak_mb": round(peak), "seconds": round(time.time() - t0, 1), **extra}))
"""

env = {**os.environ, "HF_HUB_OFFLINE": "1"}
cases = [a.split(":") for a in sys.argv[1:]] or [(k, w) for k in ("default", "gpt2-small-shape") for w in ("discover", "attribute")]
for kind, what in cases:
    proc = subprocess.run([sys.executable, "-c", CASE, kind, what], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        sys.exit(f"{kind} {what} failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{kind:17s} {what:9s}: peak RSS {r['peak_mb']} MB (after loading the model: {r['model_loaded_mb']} MB), {r['seconds']} s  {r}")
