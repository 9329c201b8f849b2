"""circuitry's EAP scores, exact edge patching and faithfulness against auto-circuit (a public reference).

auto-circuit (UFO-101/auto-circuit, PyPI ``auto-circuit``) builds the same component graph (input, heads, MLPs,
logits; q/k/v inputs apart) on a TransformerLens model by wrapping its hook points. This script gives both
libraries the same model and the same IOI pairs and prints the largest difference between:
- EAP scores (auto-circuit: mask gradients at mask 0, ``grad_function="logit"``, which its docs call EAP);
- single-edge patching effects (auto-circuit: its patch masks, one edge at a time);
- faithfulness of circuits of the top-k edges (auto-circuit: every edge outside the circuit patched).
It exits 1 if any differs by more than 1e-4 of the largest value.

auto-circuit is not a dependency. Its PyPI metadata pins kaleido 0.2.1 and pulls tracr, so install it beside
circuitry without its requirements, then the three packages its imports need:

    pip install --no-deps auto-circuit==1.0.1 && pip install ordered-set blobfile attrs

Usage: python benchmarks/crosscheck_auto_circuit.py [SEED] [MODEL] [N_PAIRS]   (defaults: 0, tiny-dense, 20)
"""

import copy
import os
import sys
import time
import types

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformer_lens  # noqa: E402
from scipy.stats import spearmanr  # noqa: E402
from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache  # noqa: E402

# auto-circuit 1.0.1 imports TransformerLens 1.x/2.x names that 3.9 moved; point them at the new class.
transformer_lens.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
_old = types.ModuleType("transformer_lens.past_key_value_caching")
_old.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
sys.modules.setdefault("transformer_lens.past_key_value_caching", _old)

from auto_circuit.data import PromptDataLoader, PromptDataset  # noqa: E402
from auto_circuit.prune_algos.mask_gradient import mask_gradient_prune_scores  # noqa: E402
from auto_circuit.types import AblationType  # noqa: E402
from auto_circuit.utils.ablation_activations import batch_src_ablations  # noqa: E402
from auto_circuit.utils.graph_utils import patch_mode, patchable_model, set_all_masks  # noqa: E402
from auto_circuit.utils.tensor_ops import batch_avg_answer_diff  # noqa: E402

from circuitry import get_task, load_model  # noqa: E402
from circuitry.circuits import Graph, eap_scores, exact_edge_scores, faithfulness  # noqa: E402
from circuitry.tasks.base import TaskBatch  # noqa: E402

SEED = int(sys.argv[1]) if len(sys.argv) > 1 else 0
MODEL = sys.argv[2] if len(sys.argv) > 2 else "tiny-dense"
N = int(sys.argv[3]) if len(sys.argv) > 3 else 20
TOLERANCE = 1e-4


def same_length_pairs(task, n: int, seed: int) -> TaskBatch:
    """n IOI pairs of the most common length, cut to it: auto-circuit reads the metric at the last position."""
    full = task.tokenize(task.pairs(20 * n, seed))
    last = int(full.answer_pos.mode().values)
    idx = (full.answer_pos == last).nonzero().flatten()[:n]
    if len(idx) < n:
        raise SystemExit(f"only {len(idx)} pairs of {last + 1} tokens among {20 * n}")
    cut = slice(None, last + 1)
    return TaskBatch(full.clean[idx, cut], full.corrupt[idx, cut], full.answer_pos[idx], full.correct[idx], full.wrong[idx])


def edge_name(edge) -> str:
    """auto-circuit's edge ("A0.3->A1.2.Q", "Resid Start->MLP 0", ...) in circuitry's names ("a0.h3->a1.h2<q>")."""

    def node(name: str) -> str:
        if name in ("Resid Start", "Resid End"):
            return "input" if name == "Resid Start" else "logits"
        if name.startswith("MLP "):
            return "m" + name[4:]
        layer, head = name[1:].split(".")[:2]
        return f"a{layer}.h{head}"

    dest = edge.dest.name
    if dest.endswith((".Q", ".K", ".V")):
        return f"{node(edge.src.name)}->{node(dest[:-2])}<{dest[-1].lower()}>"
    return f"{node(edge.src.name)}->{node(dest)}"


class Reference:
    """auto-circuit's patchable copy of the model, its edges in circuitry's order, and metric evaluation."""

    def __init__(self, model, batch: TaskBatch, graph: Graph):
        copy_ = copy.deepcopy(model)
        copy_.cfg.use_attn_result = copy_.cfg.use_split_qkv_input = copy_.cfg.use_hook_mlp_in = True
        copy_.eval().requires_grad_(False)
        self.model = patchable_model(copy_, factorized=True, slice_output="last_seq", separate_qkv=True)
        answers = [[row[row >= 0] for row in ids] for ids in (batch.correct, batch.wrong)]
        data = PromptDataset(batch.clean, batch.corrupt, *answers)
        self.loader = PromptDataLoader(data, seq_len=None, diverge_idx=0, batch_size=len(batch), shuffle=False)
        (self.batch,) = list(self.loader)
        order = {name: i for i, name in enumerate(graph.edge_names)}
        self.edges = sorted(self.model.edges, key=lambda e: order[edge_name(e)])
        if [edge_name(e) for e in self.edges] != graph.edge_names:
            raise SystemExit(f"graphs differ: auto-circuit {len(self.edges)} edges, circuitry {graph.n_edges}")
        self.wrapper = {w.module_name: w for w in self.model.dest_wrappers}
        ablations = batch_src_ablations(self.model, self.loader, AblationType.RESAMPLE, clean_corrupt="corrupt")
        self.corrupt_sources = ablations[self.batch.key]

    def eap(self) -> torch.Tensor:
        scores = mask_gradient_prune_scores(self.model, self.loader, None, "logit", "avg_diff", mask_val=0.0)
        # Its loss is -(logit difference) and mask 1 means "patched": each score is -EAP.
        return torch.tensor([-scores[e.dest.module_name][e.patch_idx].item() for e in self.edges])

    def set_patched(self, edges: list[int], value: float) -> None:
        for i in edges:
            e = self.edges[i]
            self.wrapper[e.dest.module_name].patch_mask.data[e.patch_idx] = value

    @torch.no_grad()
    def metric(self) -> float:
        with patch_mode(self.model, self.corrupt_sources.clone()):
            return batch_avg_answer_diff(self.model(self.batch.clean)[self.model.out_slice], self.batch).item()

    def exact(self) -> torch.Tensor:
        set_all_masks(self.model, 0.0)
        clean = self.metric()
        effects = []
        for i in range(len(self.edges)):
            self.set_patched([i], 1.0)
            effects.append(self.metric() - clean)
            self.set_patched([i], 0.0)
        return torch.tensor(effects)

    def faithfulness(self, keep: list[int]) -> float:
        if not hasattr(self, "full"):  # the metric with every edge clean / every edge patched, measured once
            set_all_masks(self.model, 0.0)
            self.full = self.metric()
            set_all_masks(self.model, 1.0)
            self.empty = self.metric()
        set_all_masks(self.model, 1.0)
        self.set_patched(keep, 0.0)
        return (self.metric() - self.empty) / (self.full - self.empty)


def report(name: str, ours: torch.Tensor, ref: torch.Tensor) -> bool:
    diff, scale = (ours - ref).abs().max().item(), ref.abs().max().item()
    print(f"  {name:42s} max |circuitry - auto-circuit| {diff:.2e}  (largest |value| {scale:.2f})")
    return diff <= TOLERANCE * max(scale, 1.0)


def main() -> None:
    model = load_model(MODEL)
    task = get_task("ioi", model)
    graph = Graph.from_model(model)
    batch = same_length_pairs(task, N, SEED)
    print(f"{MODEL}, {graph.n_edges} edges; {N} IOI pairs of {batch.clean.shape[1]} tokens, seed {SEED}")
    ref = Reference(model, batch, graph)

    t0 = time.perf_counter()
    ours_eap, ours_exact = eap_scores(model, batch, graph, metric=task, method="eap"), exact_edge_scores(model, batch, graph, metric=task)
    t_ours = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref_eap, ref_exact = ref.eap(), ref.exact()
    print(f"  time (EAP + exact patching of every edge): circuitry {t_ours:.1f} s, auto-circuit {time.perf_counter() - t0:.1f} s")

    ok = report("EAP score", ours_eap, ref_eap)
    ok &= report("single-edge patching effect", ours_exact, ref_exact)
    budgets = [k for k in (10, 30, 100, 300, 1000) if k < graph.n_edges] + [graph.n_edges]
    f_ours, f_ref = [], []
    for k in budgets:
        keep = ours_exact.abs().topk(k).indices
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        mask[keep] = True
        f_ours.append(faithfulness(model, batch, graph, mask, metric=task).f)
        f_ref.append(ref.faithfulness(keep.tolist()))
    ok &= report(f"f of the top-k edges by |exact|, k = {budgets[0]}..{budgets[-1]}", torch.tensor(f_ours), torch.tensor(f_ref))
    print("    f: " + ", ".join(f"{k}: {a:.4f}" for k, a in zip(budgets, f_ref)))
    top = ref_exact.abs().topk(min(200, graph.n_edges)).indices
    print(f"  Spearman, top-200 edges by |exact|, EAP vs exact: auto-circuit {spearmanr(ref_eap[top], ref_exact[top])[0]:.3f}, "
          f"circuitry {spearmanr(ours_eap[top], ours_exact[top])[0]:.3f}")  # fmt: skip
    print("agree" if ok else f"DISAGREE (tolerance {TOLERANCE} of the largest value)")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
