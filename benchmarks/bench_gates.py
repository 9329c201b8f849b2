"""Training throughput with gates (train mode) vs without, on tiny-dense. Usage: python benchmarks/bench_gates.py"""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from circuitry import load_model  # noqa: E402
from circuitry.sparsity import attach_gates, expected_connectivity  # noqa: E402
from circuitry.zoo.pretrain import TokenStream  # noqa: E402

STEPS, BATCH = 30, 32


def run(gated: bool) -> float:
    model = load_model("tiny-dense")
    gates = attach_gates(model, mode="train") if gated else None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    stream = TokenStream(model.tokenizer)
    batches = [stream.batch(f"bench|{i}", BATCH, model.cfg.n_ctx) for i in range(STEPS + 3)]
    for i, x in enumerate(batches):
        if i == 3:
            t0 = time.perf_counter()  # 3 warm-up steps
        loss = model(x, return_type="loss")
        if gated:
            loss = loss + expected_connectivity(gates)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return STEPS * BATCH * model.cfg.n_ctx / (time.perf_counter() - t0)


dense, gated = run(False), run(True)
print(f"torch threads {torch.get_num_threads()}, batch {BATCH} x {64} tokens, {STEPS} steps")
print(f"without gates: {dense:,.0f} tokens/s")
print(f"with gates:    {gated:,.0f} tokens/s")
print(f"overhead:      {100 * (dense / gated - 1):.1f}% more time per token")
