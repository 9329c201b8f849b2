"""Task accuracy and mean metric of a model on fresh prompts."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from circuitry.tasks.base import Task


@dataclass
class TaskScore:
    task: str
    model: str
    n: int
    seed: int
    corruption: str
    metric: str
    accuracy: float  # share of clean prompts where the metric is > 0 (correct beats wrong)
    mean_metric: float
    mean_metric_corrupt: float  # same metric on the corrupted prompts
    accuracy_corrupt: float
    filtered: dict[str, int] = field(default_factory=dict)
    values: list[float] = field(default_factory=list, repr=False)  # the metric per clean prompt
    values_corrupt: list[float] = field(default_factory=list, repr=False)  # ... per corrupted prompt

    def to_dict(self, values: bool = False) -> dict:
        """The scores (with the per-prompt values if ``values``)."""
        d = asdict(self)
        return d if values else {k: v for k, v in d.items() if k not in ("values", "values_corrupt")}


@torch.no_grad()
def evaluate_task(model, task: Task, n: int = 500, seed: int = 1, batch_size: int = 100) -> TaskScore:
    """Accuracy (share of prompts where the answer's metric is > 0) and mean metric of ``model`` on ``n`` prompts of
    ``task`` drawn with ``seed``, on the clean prompts and on their corruptions, with the per-prompt values."""
    clean, corrupt = [], []
    for batch in task.batches(n, seed, batch_size):
        clean.append(task.metric(model(batch.clean), batch))
        corrupt.append(task.metric(model(batch.corrupt), batch))
    m, mc = torch.cat(clean).float(), torch.cat(corrupt).float()
    return TaskScore(
        task=task.name,
        model=getattr(model.cfg, "model_name", "model"),
        n=len(m),
        seed=seed,
        corruption=task.corruption,
        metric=task.metric_kind,
        accuracy=round((m > 0).float().mean().item(), 4),
        mean_metric=round(m.mean().item(), 4),
        mean_metric_corrupt=round(mc.mean().item(), 4),
        accuracy_corrupt=round((mc > 0).float().mean().item(), 4),
        filtered=dict(task.filtered),
        values=[round(v, 4) for v in m.tolist()],
        values_corrupt=[round(v, 4) for v in mc.tolist()],
    )
