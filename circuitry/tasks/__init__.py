"""Built-in tasks and the task registry: ``get_task(name, model)``."""

from __future__ import annotations

from pathlib import Path

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task, TaskBatch, TokenView, answer_metric
from circuitry.tasks.custom import CustomTask
from circuitry.tasks.docstring import DocstringTask
from circuitry.tasks.greater_than import GreaterThanTask
from circuitry.tasks.induction import InductionTask
from circuitry.tasks.ioi import IOITask
from circuitry.tasks.sva import SVATask

TASKS: dict[str, type[Task]] = {
    t.name: t for t in (IOITask, GreaterThanTask, InductionTask, SVATask, DocstringTask)
}


def check_task_name(name: str) -> None:
    """Fail early (before a model is loaded) on a task that is neither built in nor a file."""
    if name in TASKS:
        return
    if name.endswith((".json", ".jsonl")) or Path(name).is_file():
        if not Path(name).is_file():
            raise CircuitryError(f"task file {name} does not exist")
        return
    raise CircuitryError(f"unknown task {name!r}; built-in tasks: {', '.join(TASKS)} (or a .json/.jsonl file)")


def get_task(name: str, model_or_tokenizer, corruption: str | None = None) -> Task:
    """A built-in task by name, or a custom task from a ``.json`` / ``.jsonl`` file path."""
    check_task_name(name)
    if name in TASKS:
        return TASKS[name](model_or_tokenizer, corruption)
    return CustomTask(name, model_or_tokenizer, corruption)


__all__ = ["TASKS", "get_task", "check_task_name", "Task", "TaskBatch", "PromptPair", "TokenView", "CustomTask", "answer_metric"]
