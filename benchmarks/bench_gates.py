"""Training-step time with gates (train mode, + expected-connectivity term) vs without, on tiny-dense.

Dense and gated steps are interleaved and the median step time is compared, so drifts in machine
speed hit both alike. Also prints a GPT-2-small-shaped random model (T=128) for scale.
Usage: python benchmarks/bench_gates.py
"""

import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from circuitry import load_model  # noqa: E402
from circuitry.sparsity import attach_gates, expected_connectivity  # noqa: E402
from circuitry.zoo.pretrain import TokenStream  # noqa: E402
from circuitry.zoo.registry import build_model  # noqa: E402

STEPS = 41


def stepper(model, gated: bool):
    gates = attach_gates(model, mode="train") if gated else None
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5)

    def step(x):
        t0 = time.perf_counter()
        loss = model(x, return_type="loss")
        if gates is not None:
            loss = loss + expected_connectivity(gates)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return time.perf_counter() - t0

    return step


def compare(make, batches, label):
    dense, gated = stepper(make(), False), stepper(make(), True)
    times = {"dense": [], "gated": []}
    for i, x in enumerate(batches):
        for name, fn in (("dense", dense), ("gated", gated)) if i % 2 else (("gated", gated), ("dense", dense)):
            t = fn(x)
            if i >= 3:  # warm-up
                times[name].append(t)
    d, g = statistics.median(times["dense"]), statistics.median(times["gated"])
    tokens = batches[0].numel()
    print(f"{label}: {tokens} tokens/step; median step {d * 1000:.0f} ms dense, {g * 1000:.0f} ms gated "
          f"({tokens / d:,.0f} vs {tokens / g:,.0f} tokens/s): overhead {100 * (g / d - 1):.1f}%")


torch.manual_seed(0)
model = load_model("tiny-dense")
stream = TokenStream(model.tokenizer)
print(f"torch threads {torch.get_num_threads()}, {STEPS} interleaved steps each")
compare(lambda: load_model("tiny-dense"), [stream.batch(f"bench|{i}", 32, 64) for i in range(STEPS)], "tiny-dense, batch 32 x 64")
gpt2 = dict(n_layers=12, d_model=768, d_head=64, n_heads=12, d_mlp=3072, d_vocab=50257, n_ctx=128, act_fn="gelu_new",
            normalization_type="LN", positional_embedding_type="standard", attn_only=False, default_prepend_bos=True,
            n_key_value_heads=None, rotary_dim=None, gated_mlp=False, original_architecture=None)  # fmt: skip
compare(lambda: build_model(gpt2, seed=0), [torch.randint(0, 50257, (4, 128)) for _ in range(8)], "GPT-2-small shape, batch 4 x 128")
