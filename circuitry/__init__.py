"""circuitry: sparse attention post-training and circuit discovery on TransformerLens.

Public API::

    load_model(name)          zoo name ("tiny-dense"), model directory, or TransformerLens name
    list_models()             the zoo models shipped in the package
    get_task(name, model)     ioi, greater-than, induction, sva, docstring, or a .json/.jsonl file
    evaluate_task(model, task, n, seed)
    CircuitryError            bad input or files (one-line message)
"""

__version__ = "0.1.0"

from circuitry.errors import CircuitryError  # noqa: E402
from circuitry.tasks import TASKS, Task, TaskBatch, get_task  # noqa: E402
from circuitry.tasks.evaluate import TaskScore, evaluate_task  # noqa: E402
from circuitry.zoo.registry import list_models, load_model, save_model  # noqa: E402

__all__ = [
    "__version__",
    "CircuitryError",
    "TASKS",
    "Task",
    "TaskBatch",
    "get_task",
    "TaskScore",
    "evaluate_task",
    "list_models",
    "load_model",
    "save_model",
]
