"""One call from a model and a task to a scored graph, a faithfulness curve and the f >= 0.9 circuit.

Scores come from one prompt set (``seed``), faithfulness is measured on a fresh one (``seed + 1``)
so the curve is not evaluated on the prompts that chose the edges.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from circuitry import __version__
from circuitry.artifacts import FORMAT_VERSION, atomic_write_json, check_format, read_json, reading
from circuitry.circuits.evaluate import FaithfulnessCurve, default_grid, faithfulness_curve
from circuitry.circuits.graph import Graph
from circuitry.circuits.multihead import as_multi_head
from circuitry.circuits.patching import exact_edge_scores
from circuitry.circuits.scoring import METHODS as ATTRIBUTION_METHODS
from circuitry.circuits.scoring import eap_scores
from circuitry.circuits.selection import Circuit, budget_mask, prune
from circuitry.errors import CircuitryError
from circuitry.tasks.base import Task

METHODS = (*ATTRIBUTION_METHODS, "exact")  # the attribution methods of eap_scores, and exact patching


@dataclass
class Discovery:
    model: str
    task: str
    method: str
    n_prompts: int
    graph: Graph = field(repr=False)
    scores: Float[Tensor, " edge"] = field(repr=False)
    curve: FaithfulnessCurve = field(repr=False)
    seconds: float = 0.0
    ablation: str = "corrupt"
    selection: str = "abs"
    ig_steps: int | None = None  # integration steps of eap-ig / eap-ig-node (None for other methods)
    seed: int = 0  # prompts to score; faithfulness is measured on seed + 1
    eval_prompts_scored: int = 0  # faithfulness prompts that are also among the scored ones (a small task file)
    model_fingerprint: str | None = None  # the weights' fingerprint (checked by :func:`load_circuit`)
    corruption: str | None = None  # the task's corruption (what the corrupted prompts change)
    task_file: str | None = None  # a custom task's file (absolute path), so the circuit can be re-evaluated on it
    model_config_fingerprint: str | None = None  # what the weights compute with (checked by :func:`load_circuit`)

    def circuit(self, target: float = 0.9) -> Circuit | None:
        """The circuit at the curve's sustained crossing of f >= target (None if f never stays there)."""
        best = self.curve.crossing(target)
        if best is None:
            return None
        mask = budget_mask(self.graph, self.scores, best.budget, self.selection)
        return Circuit.from_mask(self.graph, prune(self.graph, mask), self.scores)

    def to_dict(self) -> dict[str, Any]:
        c = self.curve
        return {
            "model": self.model, "task": self.task, "task_file": self.task_file, "corruption": self.corruption,
            "method": self.method, "n_prompts": self.n_prompts,
            "seed": self.seed, "ablation": self.ablation, "selection": self.selection, "ig_steps": self.ig_steps,
            "edges_total": self.graph.n_edges, "heads_total": self.graph.n_layers * self.graph.n_heads,
            "edges_at_0.9": c.edges_90, "heads_at_0.9": c.heads_90, "edges_at_0.8": c.edges_80, "heads_at_0.8": c.heads_80,
            **{f"smallest_{k}_at_{t}": getattr(c.smallest(t), f"n_{k}", None) for t in (0.9, 0.8) for k in ("edges", "heads")},
            "faithfulness_curve": [[p.n_edges, round(p.f, 5)] for p in c.points],
            "budgets": [p.budget for p in c.points],  # top-k before pruning: CPR and CMD's x axis is log10 of these
            "refined_points": [[p.n_edges, round(p.f, 5)] for p in c.refined],
            "m_full": round(c.m_full, 5), "m_empty": round(c.m_empty, 5), "cpr": round(c.cpr, 5), "cmd": round(c.cmd, 5),
            "eval_prompts_scored": self.eval_prompts_scored, "seconds": round(self.seconds, 2),
            "model_fingerprint": self.model_fingerprint, "model_config_fingerprint": self.model_config_fingerprint,
        }  # fmt: skip

    def save(self, path: str | Path, target: float = 0.9) -> None:
        """Write the summary of :meth:`to_dict` and the circuit at f >= ``target`` (:func:`circuit_key`, null
        if f never stays there) to a JSON file, atomically; :func:`load_circuit` reads the circuit back."""
        circuit = self.circuit(target)
        record = {"circuitry_version": __version__, "format_version": FORMAT_VERSION, **self.to_dict(),
                  circuit_key(target): circuit.to_dict() if circuit else None}  # fmt: skip
        atomic_write_json(path, record)


def load_circuit(path: str | Path, model, target: float = 0.9, allow_other_model: bool = False) -> Circuit:
    """The circuit a :meth:`Discovery.save` file holds, on ``model``'s graph (with its saved edge scores). Refuses a
    file from a newer circuitry, a graph of another shape and, unless ``allow_other_model``, a circuit discovered
    on other weights or a file that does not say which (e.g. to test a dense model's circuit on its sparse version,
    pass ``allow_other_model=True``). A grouped-query model's graph is that of ``as_multi_head(model)``."""
    from circuitry.zoo.registry import check_config_fingerprint, model_fingerprint

    path, key = Path(path), circuit_key(target)
    record = read_json(path)
    with reading(path):
        if not isinstance(record, dict) or key not in record:
            held = [k for k in record if k.startswith("circuit_at_")] if isinstance(record, dict) else []
            raise CircuitryError(f"{path} holds no {key!r}" + (f" (it has {', '.join(held)}; pass that target)" if held else
                                 " and is not a circuit file (written by Discovery.save or `circuitry discover --out`)"))  # fmt: skip
        check_format(record, path)
        if not allow_other_model and record.get("model_fingerprint") != model_fingerprint(model):
            found = "with other weights than this model's" if record.get("model_fingerprint") else "on a model it does not record"
            raise CircuitryError(f"{path} was discovered on model {record.get('model')!r} {found}; "
                                 "pass allow_other_model=True (--allow-other-model) to apply it anyway")  # fmt: skip
        if not allow_other_model:
            check_config_fingerprint(record.get("model_config_fingerprint"), model, f"{path} (model {record.get('model')!r})")
        spec = record[key]
        if spec is None:
            raise CircuitryError(f"{path} holds no circuit: f never stayed >= {target} on {record.get('model')!r}")
        _check_spec(spec, f"{path}: {key}")
        graph = Graph.from_model(as_multi_head(model))
        index = {name: i for i, name in enumerate(graph.edge_names)}
        edges, scores = spec["edges"], spec.get("scores")
        if spec["n_edges_total"] != graph.n_edges:
            raise CircuitryError(f"{path}: the circuit is on a graph of {spec['n_edges_total']} edges, this model's has {graph.n_edges}")
        bad = [e for e in edges if e not in index]
        if bad or len(set(edges)) != len(edges) or len(edges) != spec["n_edges"]:
            raise CircuitryError(f"{path}: malformed circuit: " + (f"no edge {bad[0]!r} in this model's graph" if bad else
                                 f"{len(edges)} edge names ({len(set(edges))} distinct) for n_edges {spec['n_edges']}"))  # fmt: skip
        kept = torch.tensor([index[e] for e in edges], dtype=torch.long)
        mask = torch.zeros(graph.n_edges, dtype=torch.bool)
        mask[kept] = True
        full = None
        if scores is not None:
            values = torch.tensor(scores, dtype=torch.float32)
            if values.shape != (len(edges),) or not torch.isfinite(values).all():
                raise CircuitryError(f"{path}: malformed circuit: {len(scores)} scores for {len(edges)} edges, or a non-finite score")
            full = torch.zeros(graph.n_edges)
            full[kept] = values
        circuit = Circuit.from_mask(graph, mask, full)
        for count in ("n_heads", "n_mlps"):  # recomputed from the edges; a file that says otherwise was edited
            if count in spec and spec[count] != getattr(circuit, count):
                raise CircuitryError(f"{path}: malformed circuit: {count} is {spec[count]} but its edges use {getattr(circuit, count)}")
    return circuit


def _check_spec(spec: Any, where: str) -> None:
    """Field by field, what a (hand-edited) saved circuit lacks, in words rather than a KeyError."""
    if not isinstance(spec, dict):
        raise CircuitryError(f"{where} must be an object with the circuit's edges and counts")
    for name in ("n_edges", "n_edges_total"):
        if type(spec.get(name)) is not int:
            raise CircuitryError(f"{where} needs {name!r} as an integer, got {spec.get(name)!r}")
    if not isinstance(spec.get("edges"), list) or not all(isinstance(e, str) for e in spec["edges"]):
        raise CircuitryError(f"{where} needs 'edges' as a list of edge names (e.g. 'a0.h3->a2.h1<q>')")
    scores = spec.get("scores")
    if scores is not None and (not isinstance(scores, list) or not all(type(v) in (int, float) for v in scores)):
        raise CircuitryError(f"{where}: 'scores' must be a list of numbers, one per edge")


def circuit_key(target: float) -> str:
    """The key of the circuit at f >= ``target`` in a saved discovery (``circuit_at_0.9``; 1 and 1.0 are one key)."""
    return f"circuit_at_{float(target):g}"


def discover(
    model,
    task: Task | str,
    method: str = "eap-local",
    n_prompts: int = 100,
    seed: int = 0,
    ablation: str = "corrupt",
    ig_steps: int = 5,
    grid_points: int = 16,
    batch_size: int | None = None,
    selection: str = "abs",
    progress: bool | None = False,
) -> Discovery:
    """Score every edge with ``method``, then measure faithfulness of top-k circuits by patched forwards.
    ``batch_size`` None: as many prompts per batch as :func:`auto_batch_size` allows. ``progress``: bars over
    scoring and the curve (None: only on a terminal). ``task``: a Task, or a name / task file for
    :func:`circuitry.get_task` (default corruption). Faithfulness is measured on the prompts of ``seed + 1``;
    prompts drawn for both seeds (a small task file, or a task with few distinct prompts) are counted in
    ``eval_prompts_scored`` and a warning says so."""
    from circuitry.zoo.registry import model_fingerprint  # of the model as given (grouped-query, if it is)

    return _discover(model, task, model_fingerprint(model), method, n_prompts, seed, ablation, ig_steps, grid_points, batch_size,
                     selection, progress)  # fmt: skip


def _discover(model, task: Task | str, fingerprint: str, method: str = "eap-local", n_prompts: int = 100, seed: int = 0,
              ablation: str = "corrupt", ig_steps: int = 5, grid_points: int = 16, batch_size: int | None = None,
              selection: str = "abs", progress: bool | None = False) -> Discovery:  # fmt: skip
    """:func:`discover` with the model's weights fingerprint given (hashing a GPT-2's weights takes 0.6 s, so a
    loop over seeds computes it once)."""
    if isinstance(task, str):
        from circuitry.tasks import get_task

        task = get_task(task, model)
    if method not in METHODS:
        raise CircuitryError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if n_prompts <= 0:
        raise CircuitryError(f"number of prompts must be positive, got {n_prompts}")
    from circuitry.zoo.registry import config_fingerprint

    t0 = time.time()
    config_fp = config_fingerprint(model)  # of the model as given, as the weights' fingerprint
    model = as_multi_head(model)  # grouped-query models: the same function with per-head keys/values
    graph = Graph.from_model(model)
    batch_size = auto_batch_size(model, task, graph, n_prompts, seed) if batch_size is None else batch_size
    if method == "exact":
        scores = exact_edge_scores(model, task, graph, ablation, n=n_prompts, seed=seed, batch_size=batch_size, progress=progress)
    else:
        scores = eap_scores(model, task, graph, method, ig_steps=ig_steps, ablation=ablation, n=n_prompts, seed=seed, batch_size=batch_size,
                            progress=progress)  # fmt: skip
    scores = torch.nan_to_num(scores)
    curve = faithfulness_curve(
        model, task, graph, scores, ablation, default_grid(graph.n_edges, grid_points), n=n_prompts, seed=seed + 1, batch_size=batch_size,
        selection=selection, progress=progress,
    )
    if curve.m_full <= curve.m_empty:
        warnings.warn(f"m(full) {curve.m_full:.3f} is not above m(empty) {curve.m_empty:.3f}: the model does not do task {task.name!r} "
                      "better on clean than on corrupted prompts, so faithfulness measures nothing here", stacklevel=3)  # fmt: skip
    elif curve.m_full - curve.m_empty < 0.1 * max(abs(curve.m_full), abs(curve.m_empty)):
        warnings.warn(f"m(full) {curve.m_full:.4g} is barely above m(empty) {curve.m_empty:.4g} (less than 10% apart): f divides by "
                      "their difference, so it is noisy and can leave [0, 1] far", stacklevel=3)  # fmt: skip
    shared = shared_prompts(task, n_prompts, seed)
    if shared:
        warnings.warn(
            f"{shared} of the {curve.n_prompts} prompts faithfulness is measured on (seed {seed + 1}) were also scored "
            f"on (seed {seed}): task {task.name!r} draws from a small set of prompts, so f is partly in-sample", stacklevel=3
        )
    name = getattr(model.cfg, "model_name", "model")
    task_file = str(Path(task.path).resolve()) if getattr(task, "path", None) is not None else None
    steps = ig_steps if method.startswith("eap-ig") else None
    # prompts actually scored: pairs(n, seed) is as long as the curve's pairs(n, seed + 1) (fewer than n_prompts when
    # a task file has fewer records)
    return Discovery(name, task.name, method, curve.n_prompts, graph, scores, curve, time.time() - t0, ablation, selection, steps, seed,
                     shared, fingerprint, task.corruption, task_file, config_fp)  # fmt: skip


def shared_prompts(task: Task, n_prompts: int, seed: int) -> int:
    """How many of the pairs of ``seed + 1`` (faithfulness) are also among those of ``seed`` (scoring)."""
    return count_shared(task.pairs(n_prompts, seed + 1), task.pairs(n_prompts, seed))


def count_shared(pairs: list, *seen: list) -> int:
    """How many of ``pairs`` (task pairs) are also in one of the ``seen`` lists: the same clean and corrupt prompt."""
    known = {(p.clean, p.corrupt) for drawn in seen for p in drawn}
    return sum((p.clean, p.corrupt) in known for p in pairs)


def auto_batch_size(model, task: Task, graph: Graph, n_prompts: int, seed: int = 0, budget_bytes: int = 2**30) -> int:
    """Prompts per batch: all ``n_prompts`` if the per-batch source-output tensors (current, ablated and their
    difference, plus gradients: about 4 x [batch, pos, source, d_model]) fit in ``budget_bytes``, else fewer.
    The length comes from a few prompts of the task (fewer prompts per batch amortise less Python overhead)."""
    length = next(iter(task.batches(min(n_prompts, 8), seed, 8))).clean.shape[1]
    per_prompt = 4 * length * len(graph.sources) * model.cfg.d_model * torch.finfo(model.cfg.dtype).bits // 8
    return max(1, min(n_prompts, budget_bytes // per_prompt))


RATIO_KEYS = tuple(f"{w}_ratio_at_{t}" for w in ("edge", "head") for t in ("0.9", "0.8"))


def compare(results: dict[str, Discovery], dense: str, sparse: str) -> dict[str, float | int | None]:
    """Dense/sparse ratios of edges and heads needed for f >= 0.9 and 0.8 (None where undefined), and how many
    edges and heads the two f >= 0.9 circuits share (by name; None unless both reach 0.9)."""

    def ratio(key: str) -> float | None:
        a, b = results[dense].to_dict()[key], results[sparse].to_dict()[key]
        return round(a / b, 3) if a and b else None

    out: dict[str, float | int | None] = {key: ratio(key.replace("_ratio_at_", "s_at_")) for key in RATIO_KEYS}
    a, b = results[dense].circuit(0.9), results[sparse].circuit(0.9)
    out["shared_edges_at_0.9"] = len(set(a.edges) & set(b.edges)) if a and b else None
    out["shared_heads_at_0.9"] = len(set(a.heads) & set(b.heads)) if a and b else None
    return out


def median_ratios(runs: list[dict[str, Any]]) -> dict[str, float | int | None]:
    """Median of each ratio of :func:`compare` over several runs (e.g. prompt seeds), over the runs where it is
    defined, with ``undefined_<key>`` counting the others. A median, not a mean: one seed whose curve crosses
    late (a non-monotone curve) moves a mean of ratios far more than it moves the typical run."""
    out: dict[str, float | int | None] = {}
    for key in RATIO_KEYS:
        values = [r[key] for r in runs if r.get(key) is not None]
        out[key] = round(statistics.median(values), 3) if values else None
        out[f"undefined_{key}"] = len(runs) - len(values)
    return out
