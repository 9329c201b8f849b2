"""Run by tests/test_distributed.py, alone or under torchrun: a short CLT or sparsify run on tiny-dense that
writes its final weights to OUT/final.safetensors (rank 0)."""

import os
import sys

from safetensors.torch import save_file

from circuitry.distributed import init_from_env, is_main, shutdown
from circuitry.sparsity import SparsifyConfig, sparsify
from circuitry.transcoders.train import CLTTrainConfig, train_clt
from circuitry.zoo.registry import load_model

kind, out, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
resume = os.environ.get("CIRCUITRY_RESUME") == "1"
init_from_env()
model = load_model("tiny-dense")
if kind == "clt":
    module, _ = train_clt(model, out, CLTTrainConfig(d_transcoder=32, steps=steps, batch_size=8, checkpoint_every=5, log_every=1), resume=resume, progress=False)
else:
    cfg = SparsifyConfig(steps=steps, batch_size=8, checkpoint_every=5, log_every=1, heldout_sequences=16, lr=1e-3, bias_lr=0.1)
    module, _ = sparsify(model, out, cfg, resume=resume, progress=False)
if is_main():
    save_file({k: v.detach().contiguous() for k, v in module.named_parameters()}, f"{out}/final.safetensors")
shutdown()
