"""Circuit faithfulness by real patched forward passes, and faithfulness curves.

f(C) = (m(C) - m(empty)) / (m(full) - m(empty)), m averaged over prompts: m(full) keeps every edge
(the clean run), m(empty) none (every node input reads ablated activations; with ``corrupt``
ablation that is the corrupted run).

Curve summaries over a grid of edge budgets k_1 < ... < k_n (top-k by |score| unless
another ``selection`` is asked for, then pruned), with
x_i = log10(k_i) and trapezoid areas normalised by the x range, so a circuit that is perfectly
faithful at every budget scores CPR = 1 and CMD = 0:

- CPR (circuit performance ratio) = area under f / (x_n - x_1)
- CMD (circuit-model difference)  = area under |1 - f| / (x_n - x_1)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable, Sequence

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitry.circuits.graph import Graph
from circuitry.circuits.patching import (
    Ablation,
    MeanSources,
    Metric,
    ablated_sources,
    check_ablation,
    resolve_ablation,
    resolve_data,
    run_with_edges,
)
from circuitry.circuits.selection import Circuit, budget_mask, check_selection, prune
from circuitry.errors import CircuitryError
from circuitry.progress import progress_bar
from circuitry.tasks.base import Task, TaskBatch


@dataclass
class Faithfulness:
    m_circuit: float
    m_full: float
    m_empty: float
    f: float
    n_edges: int


@dataclass
class CurvePoint:
    budget: int  # top-k edges before pruning
    n_edges: int  # after pruning
    n_heads: int
    n_mlps: int
    metric: float
    f: float


@dataclass
class FaithfulnessCurve:
    points: list[CurvePoint]
    m_full: float
    m_empty: float
    cpr: float
    cmd: float
    edges_80: int | None = None  # pruned edge count where f reaches 0.8 for good (see ``crossing``; None: never)
    heads_80: int | None = None
    edges_90: int | None = None
    heads_90: int | None = None
    ablation: str = "corrupt"
    n_prompts: int = 0
    selection: str = "abs"  # how each budget's edges were picked (selection.budget_mask)
    refined: list[CurvePoint] = field(default_factory=list)  # extra budgets bisected near f = 0.8 and 0.9

    def crossing(self, target: float) -> CurvePoint | None:
        """The smallest evaluated budget (grid or refined) from which on f stays >= target at every larger
        evaluated budget. f is not monotone in the budget (an edge with a negative effect can enter before
        the edges that cancel it), so "the smallest circuit with f >= target" would depend on which budgets
        happen to be evaluated; the sustained crossing does not."""
        done = sorted(self.points + self.refined, key=lambda p: p.budget)
        failing = [i for i, p in enumerate(done) if p.f < target]
        start = failing[-1] + 1 if failing else 0
        return done[start] if start < len(done) else None

    def smallest(self, target: float) -> CurvePoint | None:
        """The evaluated circuit (grid or refined) with the fewest edges and f >= target, or None. DESIGN's
        "smallest circuit with f >= target", which depends on the budgets evaluated (see :meth:`crossing`)."""
        return min((p for p in self.points + self.refined if p.f >= target), key=lambda p: (p.n_edges, p.budget), default=None)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_means(
    model,
    batches: Sequence[TaskBatch],
    graph: Graph,
    masks: Sequence[Bool[Tensor, " edge"]],
    metric_fn: Metric,
    ablation: Ablation | MeanSources,
    abls: Sequence[Tensor] | None = None,
    bar=None,
) -> list[float]:
    """Mean over all prompts of the metric of each masked model. ``abls``: the ablated source outputs of
    each batch (:func:`ablated_sources`), else one corrupted run per batch computes them. ``bar``: a progress bar
    advanced by one per patched forward (one circuit on one batch)."""
    sums = torch.zeros(len(masks), dtype=torch.float64)
    n_prompts = 0
    for i, batch in enumerate(batches):
        abl = ablated_sources(model, graph, batch, ablation) if abls is None else abls[i]
        for j, mask in enumerate(masks):
            logits = run_with_edges(model, batch, graph, mask, ablation, abl=abl)
            sums[j] += metric_fn(logits, batch).double().sum().cpu()
            if bar is not None:
                bar.update(1)
        n_prompts += len(batch)
    return (sums / n_prompts).tolist()


def _ratio(m: float, m_full: float, m_empty: float) -> float:
    gap = m_full - m_empty
    if not abs(gap) > 1e-9 * max(1.0, abs(m_full)):
        raise CircuitryError(
            f"the full model and the empty circuit score the same ({m_full:.4g}); faithfulness is undefined"
        )
    return (m - m_empty) / gap


def _log_area(grid: Sequence[int], values: Sequence[float]) -> float:
    """Trapezoid area under ``values`` over x = log10(grid), divided by the x range."""
    x = [math.log10(k) for k in grid]
    if x[-1] == x[0]:  # a single budget: the area degenerates to the value itself
        return float(values[0])
    area = sum((x[i + 1] - x[i]) * (values[i] + values[i + 1]) / 2 for i in range(len(x) - 1))
    return area / (x[-1] - x[0])


def faithfulness(
    model,
    task_or_batches: Task | TaskBatch | Iterable[TaskBatch],
    graph: Graph,
    circuit: Circuit | Bool[Tensor, " edge"],
    ablation: Ablation = "corrupt",
    *,
    metric: Metric | Task | None = None,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 50,
) -> Faithfulness:
    """f of one circuit (or edge mask) by real forward passes."""
    check_ablation(ablation)
    graph.check_model(model)
    mask = graph.check_edge_mask(circuit.edge_mask if isinstance(circuit, Circuit) else circuit)
    batches, metric_fn = resolve_data(task_or_batches, metric, n, seed, batch_size)
    abl = resolve_ablation(model, graph, batches, ablation)
    full, empty = torch.ones(graph.n_edges, dtype=torch.bool), torch.zeros(graph.n_edges, dtype=torch.bool)
    m_c, m_full, m_empty = metric_means(model, batches, graph, [mask, full, empty], metric_fn, abl)
    return Faithfulness(m_c, m_full, m_empty, _ratio(m_c, m_full, m_empty), int(mask.sum()))


def default_grid(n_edges: int, n_points: int = 16) -> list[int]:
    """About ``n_points`` log-spaced edge budgets from 1 to ``n_edges`` (inclusive)."""
    if n_edges < 1:
        raise CircuitryError("the graph has no edges")
    pts = {round(10 ** (i * math.log10(n_edges) / (n_points - 1))) for i in range(n_points)}
    return sorted(p for p in pts | {1, n_edges} if 1 <= p <= n_edges)


def faithfulness_curve(
    model,
    task_or_batches: Task | TaskBatch | Iterable[TaskBatch],
    graph: Graph,
    scores: Float[Tensor, " edge"] | None = None,
    ablation: Ablation = "corrupt",
    grid: Sequence[int] | None = None,
    *,
    metric: Metric | Task | None = None,
    n: int = 100,
    seed: int = 0,
    batch_size: int = 50,
    refine: int = 3,
    selection: str = "abs",
    progress: bool | None = False,
) -> FaithfulnessCurve:
    """Faithfulness of the pruned k-edge circuits over a log-spaced grid of k.

    ``selection`` picks the k edges: ``abs`` (top-k by |score|), ``signed`` (most negative scores first) or
    ``greedy`` (grown from the logits); see :func:`~circuitry.circuits.selection.budget_mask`.
    ``scores`` defaults to ``graph.scores``; ``grid`` to :func:`default_grid`. Returns the points,
    CPR, CMD (module docstring) and the circuits where f reaches 0.8 and 0.9 for good (``crossing``); for those,
    ``refine`` bisection steps between grid budgets (extra patched runs, kept in ``refined``) narrow the
    edge count beyond the grid's spacing. ``progress``: a bar over the evaluated circuits (None: only on a
    terminal).
    """
    check_ablation(ablation)
    check_selection(selection)
    graph.check_model(model)
    scores = graph.require_scores(scores)
    grid = default_grid(graph.n_edges) if grid is None else sorted({int(k) for k in grid})
    if not grid or grid[0] < 1 or grid[-1] > graph.n_edges:
        raise CircuitryError(f"grid budgets must be between 1 and {graph.n_edges} edges")
    batches, metric_fn = resolve_data(task_or_batches, metric, n, seed, batch_size)
    resolved = resolve_ablation(model, graph, batches, ablation)
    abls = [ablated_sources(model, graph, batch, resolved) for batch in batches]  # shared by every circuit
    full, empty = torch.ones(graph.n_edges, dtype=torch.bool), torch.zeros(graph.n_edges, dtype=torch.bool)
    m_full, m_empty = metric_means(model, batches, graph, [full, empty], metric_fn, resolved, abls)

    known = {empty.numpy().tobytes(): m_empty, full.numpy().tobytes(): m_full}  # one patched run per distinct circuit
    # one step per circuit and batch; at most this many (a circuit met before, or a bisection that stops early, skips steps)
    bar = progress_bar(total=(len(grid) + 2 * refine) * len(batches), desc="faithfulness curve", unit="run", progress=progress)

    def evaluate(budgets: Sequence[int]) -> list[CurvePoint]:
        circuits = [Circuit.from_mask(graph, prune(graph, budget_mask(graph, scores, k, selection))) for k in budgets]
        keys = [c.edge_mask.numpy().tobytes() for c in circuits]
        new = {k: c.edge_mask for k, c in zip(keys, circuits) if k not in known}
        known.update(zip(new, metric_means(model, batches, graph, list(new.values()), metric_fn, resolved, abls, bar)))
        bar.update((len(budgets) - len(new)) * len(batches))  # circuits already evaluated
        means = [known[k] for k in keys]
        return [CurvePoint(k, c.n_edges, c.n_heads, c.n_mlps, m, _ratio(m, m_full, m_empty)) for k, c, m in zip(budgets, circuits, means)]

    points = evaluate(grid)
    f = [p.f for p in points]
    cpr, cmd = _log_area(grid, f), _log_area(grid, [abs(1 - v) for v in f])
    n_prompts = sum(len(b) for b in batches)
    curve = FaithfulnessCurve(points, m_full, m_empty, cpr, cmd, ablation=ablation, n_prompts=n_prompts, selection=selection)
    for t in (0.8, 0.9):
        _bisect(curve, t, refine, evaluate)
    bar.close()
    for t in (0.8, 0.9):  # after both: a point added for 0.9 may move the 0.8 crossing
        best = curve.crossing(t)
        if best is not None:
            setattr(curve, f"edges_{round(t * 100)}", best.n_edges)
            setattr(curve, f"heads_{round(t * 100)}", best.n_heads)
    return curve


def _bisect(curve: FaithfulnessCurve, target: float, steps: int, evaluate) -> None:
    """Narrow the sustained crossing of ``target`` (:meth:`FaithfulnessCurve.crossing`): bisect (geometrically)
    between the last evaluated budget with f < target and the crossing, ``steps`` times, adding the new
    points to ``curve.refined``."""
    for _ in range(steps):
        hi = curve.crossing(target)
        if hi is None:
            return
        lo = max((p.budget for p in curve.points + curve.refined if p.budget < hi.budget), default=None)
        if lo is None or hi.budget - lo <= 1:
            return
        mid = min(hi.budget - 1, max(lo + 1, round(math.sqrt(lo * hi.budget))))
        curve.refined += evaluate([mid])
