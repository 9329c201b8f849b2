"""Prints: library import time, zoo model load time, eval throughput. Usage: python benchmarks/bench_zoo.py"""

import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

t0 = time.perf_counter()
import transformer_lens  # noqa: E402,F401

t_import = time.perf_counter() - t0

from circuitry import evaluate_task, get_task, load_model  # noqa: E402

loads = []
for _ in range(3):
    t = time.perf_counter()
    model = load_model("tiny-dense")
    loads.append(time.perf_counter() - t)
t = time.perf_counter()
score = evaluate_task(model, get_task("ioi", model), n=500, seed=1)
t_eval = time.perf_counter() - t
print(f"import transformer_lens (cold process): {t_import:.2f} s")
print(f"load_model('tiny-dense'): first {loads[0]:.2f} s, then {min(loads[1:]):.2f} s")
print(f"eval ioi n=500 (clean + corrupt forwards): {t_eval:.2f} s, accuracy {score.accuracy}")
