"""Sparsify the default dense model and compare its attention with the dense parent.

Usage:  python examples/sparsify_tiny.py [--steps 1500] [--out runs/example-sparse]
The default 1,500 steps at tolerance 0 (about 8 min on 2 CPU cores) give a model well on its way, not
tiny-sparse: connectivity 0.42 (13.56 keys per query) at held-out CE 1.645, where tiny-sparse reaches 0.078
with 3,500 steps at tolerance 0.005 (its command is in circuitry/zoo/models/tiny-sparse/meta.json).
The test suite runs it with --steps 8.
"""

import argparse
from pathlib import Path

from circuitry import load_model
from circuitry.errors import one_line_errors_in_scripts
from circuitry.plotting import attention_patterns, head_connectivity, save_figure, training_curves
from circuitry.sparsity import SparsifyConfig, connectivity_report, sparsify

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=1500)
parser.add_argument("--out", type=Path, default=Path("runs/example-sparse"))
args = parser.parse_args()
one_line_errors_in_scripts()  # bad input: one "error: ..." line, as from the CLI

sparse, meta = sparsify(load_model("tiny-dense"), args.out, SparsifyConfig(steps=args.steps))  # checks --out and --steps first
dense = load_model("tiny-dense")
before, after = connectivity_report(dense, n=64), connectivity_report(sparse, n=64)
print(f"dense : connectivity {before.connectivity:.4f}, keys/query {before.keys_per_query:.2f}, CE {before.ce:.4f}")
print(f"sparse: connectivity {after.connectivity:.4f}, keys/query {after.keys_per_query:.2f}, CE {after.ce:.4f} "
      f"(floor {after.floor:.4f})")

prompt = "When Mary and John went to the store, John gave a drink to"
save_figure(attention_patterns({"dense": dense, "sparse": sparse}, prompt, layer=2), args.out / "plots" / "patterns_L2")
save_figure(training_curves(args.out / "sparsify_log.jsonl"), args.out / "plots" / "training_curves")
save_figure(head_connectivity(after), args.out / "plots" / "head_connectivity")
print(f"plots in {args.out / 'plots'}")
