"""Cold-start wall time of `circuitry discover --task ioi` (defaults: tiny-dense and tiny-sparse, eap-local, 100 prompts).

Usage: python benchmarks/bench_discover.py [METHOD]   (default: the CLI's default method)
"""

import os
import subprocess
import sys
import time

env = {**os.environ, "HF_HUB_OFFLINE": "1"}
extra = ["--method", sys.argv[1]] if len(sys.argv) > 1 else []
cmd = [sys.executable, "-m", "circuitry.cli", "discover", "--task", "ioi", *extra, "--json"]
t0 = time.perf_counter()
proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
wall = time.perf_counter() - t0
if proc.returncode != 0:
    sys.exit(proc.stderr)
import json  # noqa: E402

out = json.loads(proc.stdout)
print(f"circuitry discover --task ioi {' '.join(extra)} (cold process, both models, method {out['method']}): {wall:.1f} s wall")
for name, m in out["models"].items():
    print(f"  {name}: edges@0.9 {m['edges_at_0.9']}, heads@0.9 {m['heads_at_0.9']}, {m['seconds']:.1f} s in discover()")
print(f"  edge ratio at 0.9: {out.get('edge_ratio_at_0.9')}, head ratio at 0.9: {out.get('head_ratio_at_0.9')}")
