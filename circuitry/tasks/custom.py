"""Custom tasks from a JSON / JSONL file, or a Python list, of ``{clean, corrupt, answer, wrong}`` records.

``clean`` and ``corrupt`` are one prompt each; ``answer`` and ``wrong`` are strings (or lists of strings) that must
each be one token, with the leading space where the tokenizer puts one (``" Mary"`` for GPT-2's BPE, where
``"Mary"`` is another token). A JSON file may also be an object
``{"metric": "logit_diff" | "prob_diff", "records": [...]}``.
"""

from __future__ import annotations

import json
import random
import warnings
from pathlib import Path
from typing import Iterable, Iterator

from circuitry.errors import CircuitryError
from circuitry.tasks.base import PromptPair, Task, check_draw


def read_records(path: Path) -> tuple[list[dict], list[str], str]:
    """The records of a task file, a label for each ("task file F line 7" in .jsonl, "record 3", 1-based, in
    .json) and the metric."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise CircuitryError(f"cannot read task file {path}: {e}") from None
    metric = "logit_diff"
    try:
        if path.suffix == ".jsonl":
            lines = [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
            labels = [f"task file {path} line {n}" for n, _ in lines]
            records = []
            for n, line in lines:
                try:
                    records.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise CircuitryError(f"task file {path} line {n} is not valid JSON: {e.msg} (column {e.colno})") from None
        else:
            data = json.loads(text)
            if isinstance(data, dict):
                unknown = sorted(set(data) - {"metric", "records"})
                if "clean" in unknown:
                    raise CircuitryError(f'task file {path} is one record: a .json task is a list of records or {{"records": [...]}}')
                if unknown:
                    raise CircuitryError(f"task file {path}: unknown key {unknown[0]!r} (a task object has 'records' and, "
                                         "optionally, 'metric')")  # fmt: skip
                metric = data.get("metric", metric)
                data = data.get("records")
            records = data
            labels = [f"task file {path} record {i}" for i in range(1, len(records) + 1)] if isinstance(records, list) else []
    except json.JSONDecodeError as e:
        raise CircuitryError(f"task file {path} is not valid JSON: {e}") from None
    if not isinstance(records, list) or not records:
        raise CircuitryError(f"task file {path} holds no records: give {{clean, corrupt, answer, wrong}} objects, one per line in "
                             '.jsonl, or in .json a list of them or {"records": [...]}')  # fmt: skip
    return records, labels, metric


def _strings(record: dict, key: str, where: str) -> tuple[str, ...]:
    value = record.get(key)
    if isinstance(value, str):
        value = [value]
    if isinstance(value, tuple):
        value = list(value)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
        raise CircuitryError(f"{where}: {key!r} must be a non-empty string or list of strings")
    return tuple(value)


class CustomTask(Task):
    """A task from a file, or from Python records (``CustomTask.from_records``). ``pairs(n, seed)`` draws n records
    (all of them if n is larger)."""

    corruptions = ("file",)

    def __init__(self, path: str | Path, model_or_tokenizer, corruption: str | None = None):
        self.path = Path(path)
        records, labels, metric = read_records(self.path)
        self._build(records, labels, self.path.stem, metric, f"task file {self.path}", model_or_tokenizer, corruption)

    @classmethod
    def from_records(
        cls, records: Iterable[dict], model_or_tokenizer, name: str = "custom", metric: str = "logit_diff", corruption: str | None = None
    ) -> "CustomTask":
        """A task from ``{clean, corrupt, answer, wrong}`` dicts, checked as a file's records are."""
        task = cls.__new__(cls)
        task.path = None
        try:
            records = [] if isinstance(records, (str, bytes, dict)) else list(records)  # any iterable of dicts, not a lone dict
        except TypeError:
            records = []
        if not records:
            raise CircuitryError("records must be a non-empty list of {clean, corrupt, answer, wrong} dicts")
        name = name or "custom"
        task._build(records, [f"record {i}" for i in range(1, len(records) + 1)], name, metric, f"task {name!r}", model_or_tokenizer, corruption)
        return task

    def _build(self, records: list, labels: list[str], name: str, metric: str, where: str, model_or_tokenizer, corruption) -> None:
        if metric not in ("logit_diff", "prob_diff"):
            raise CircuitryError(f"{where}: unknown metric {metric!r}")
        self.name, self.metric_kind, self.labels = name, metric, labels
        self.records = []
        for r, label in zip(records, self.labels):
            if not isinstance(r, dict):
                raise CircuitryError(f"{label}: not an object")
            for key in ("clean", "corrupt"):
                if not isinstance(r.get(key), str) or not r[key]:
                    raise CircuitryError(f"{label}: {key!r} must be one non-empty prompt string (one record per clean/corrupt pair)")
            fields = [_strings(r, key, label) for key in ("clean", "corrupt", "answer", "wrong")]
            self.records.append(PromptPair(fields[0][0], fields[1][0], fields[2], fields[3]))
        repeats = len(self.records) - len(set(self.records))
        if repeats:
            warnings.warn(f"{where}: {repeats} of its {len(self.records)} records repeat an earlier one; each repeat is drawn "
                          "as a prompt of its own", stacklevel=2)  # fmt: skip
        super().__init__(model_or_tokenizer, corruption)
        self.tokenize(self.records, self.labels)  # validate every record once, naming the offending one

    def sample_pair(self, rng: random.Random) -> PromptPair:
        return rng.choice(self.records)

    def iter_pairs(self, n: int, seed: int) -> Iterator[PromptPair]:
        """At most ``n`` records, each once, in an order drawn with ``seed``."""
        check_draw(n, seed)
        order = list(range(len(self.records)))
        random.Random(seed).shuffle(order)
        return iter([self.records[i] for i in order[:n]])
