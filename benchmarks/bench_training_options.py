"""Step time and peak resident memory of one gated sparse post-training step under the large-model options,
each in a fresh process: plain, gradient accumulation, activation checkpointing, LoRA, bf16 autocast.
Model: GPT-2-small shape with random weights (124M parameters), batch 4 x 256 tokens, gates in train mode.
peak_over_model_mb = peak RSS minus the RSS after building the model: gradients, AdamW state and activations.

Usage: python benchmarks/bench_training_options.py [plain accum4 ckpt lora8 bf16 ...]
"""

import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time
import torch
from transformer_lens.utilities import lm_cross_entropy_loss
from circuitry.lora import add_lora
from circuitry.sparsity import attach_gates, expected_connectivity
from circuitry.training import autocast, micro_batches, set_activation_checkpointing
from circuitry.zoo.registry import build_model
torch.set_num_threads(2)
case = sys.argv[1]
cfg = dict(n_layers=12, d_model=768, n_heads=12, d_head=64, d_mlp=3072, d_vocab=50257, n_ctx=1024, act_fn="gelu_new",
           normalization_type="LN", positional_embedding_type="standard", default_prepend_bos=True, attn_only=False,
           n_key_value_heads=None, rotary_dim=None, gated_mlp=False, original_architecture=None)
model = build_model(cfg, seed=0)
gates = attach_gates(model, mode="train", bias_init=3.0)
if case == "lora8":
    add_lora(model, 8)
set_activation_checkpointing(model, case == "ckpt")
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-5)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
tokens = torch.randint(0, 50257, (4, 256), generator=torch.Generator().manual_seed(0))
parts = micro_batches(tokens, 4 if case == "accum4" else 1)
times = []
for step in range(3):
    t0 = time.time()
    opt.zero_grad(set_to_none=True)
    step_loss = 0.0  # the whole step's loss (mean over micro-batches), not the last micro-batch's
    for part in parts:
        with autocast("bf16" if case == "bf16" else "fp32", "cpu"):
            loss = lm_cross_entropy_loss(model(part).float(), part) + expected_connectivity(gates)  # CE as sparsify takes it
        (loss / len(parts)).backward()
        step_loss += loss.item() / len(parts)
    opt.step()
    times.append(time.time() - t0)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({"case": case, "trainable_params": sum(p.numel() for p in params), "step_seconds": round(sorted(times)[1], 2),
                  "peak_rss_mb": round(peak), "peak_over_model_mb": round(peak - base), "loss": round(step_loss, 4)}))
"""

if __name__ == "__main__":
    cases = sys.argv[1:] or ["plain", "accum4", "ckpt", "lora8", "bf16"]
    for case in cases:
        proc = subprocess.run([sys.executable, "-c", CASE, case], capture_output=True, text=True)
        if proc.returncode:
            print(json.dumps({"case": case, "error": proc.stderr.strip().splitlines()[-1]}))
        else:
            print(proc.stdout.strip().splitlines()[-1], flush=True)
