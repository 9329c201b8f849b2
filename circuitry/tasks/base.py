"""The Task protocol: clean/corrupted prompt pairs of equal token length, answers, and a metric.

A task produces text-level :class:`PromptPair` records from a seeded RNG; :meth:`Task.batches`
tokenizes them for a given model (any HookedTransformer), checks equal lengths, pads on the right
and yields :class:`TaskBatch` objects. The metric reads the logits at each prompt's last token.
"""

from __future__ import annotations

import itertools
import operator
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Iterator, Literal, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

from circuitry.errors import CircuitryError

MetricKind = Literal["logit_diff", "prob_diff"]


@dataclass(frozen=True)
class PromptPair:
    """One clean/corrupted pair. ``answers``/``wrongs`` are strings that must be single tokens
    (include the leading space where the tokenizer needs one, e.g. ``" Mary"``)."""

    clean: str
    corrupt: str
    answers: tuple[str, ...]
    wrongs: tuple[str, ...]


@dataclass
class TaskBatch:
    """Tokenized pairs. Rows are right-padded; ``answer_pos`` is each prompt's last real token."""

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    answer_pos: Int[Tensor, " batch"]
    correct: Int[Tensor, "batch n_correct"]  # -1 = padding
    wrong: Int[Tensor, "batch n_wrong"]  # -1 = padding
    pairs: list[PromptPair] = field(default_factory=list)

    def __post_init__(self) -> None:
        """Shapes checked once, so a hand-built batch fails here in one line, not deep inside a forward pass."""
        fields = {"clean": self.clean, "corrupt": self.corrupt, "answer_pos": self.answer_pos, "correct": self.correct, "wrong": self.wrong}
        if not all(isinstance(t, Tensor) for t in fields.values()):
            bad = [k for k, t in fields.items() if not isinstance(t, Tensor)]
            raise CircuitryError(f"TaskBatch fields must be tensors; {', '.join(bad)} are not")
        b = self.clean.shape[0] if self.clean.dim() == 2 else -1
        expected = {"clean": "[batch, pos]", "corrupt": "[batch, pos]", "answer_pos": "[batch]", "correct": "[batch, n]", "wrong": "[batch, n]"}
        for k, t in fields.items():
            if t.dim() != expected[k].count(",") + 1 or t.shape[0] != b:
                raise CircuitryError(f"TaskBatch.{k} has shape {tuple(t.shape)}; expected {expected[k]} (batch = clean's rows)")
        if self.corrupt.shape != self.clean.shape:
            raise CircuitryError(
                f"clean and corrupted tokens differ in shape ({tuple(self.clean.shape)} vs {tuple(self.corrupt.shape)}); "
                "every pair must have the same token length"
            )
        if len(self.answer_pos) and not (0 <= int(self.answer_pos.min()) and int(self.answer_pos.max()) < self.clean.shape[1]):
            raise CircuitryError(f"TaskBatch.answer_pos must lie in [0, {self.clean.shape[1]}) (the prompt positions)")

    def __len__(self) -> int:
        return self.clean.shape[0]


class TokenView:
    """The bits of tokenization a task needs, taken from a HookedTransformer (or a tokenizer)."""

    def __init__(self, model_or_tokenizer, prepend_bos: bool | None = None):
        tok = getattr(model_or_tokenizer, "tokenizer", None) or model_or_tokenizer
        if tok is None or not hasattr(tok, "encode"):
            raise CircuitryError("this model has no tokenizer; tasks need one to build prompts")
        self.tokenizer = tok
        cfg = getattr(model_or_tokenizer, "cfg", None)
        self.prepend_bos = prepend_bos if prepend_bos is not None else (cfg.default_prepend_bos if cfg else True)
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        self.n_ctx = cfg.n_ctx if cfg else None  # prompts must fit the model's context
        # a word outside a word-level vocabulary becomes <unk>: refuse it (GPT-2's unk is its BOS/EOS, never produced)
        unk = getattr(tok, "unk_token_id", None)
        self.unk_id = unk if unk is not None and unk not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) else None

    def encode(self, text: str) -> list[int]:
        """Token ids without special tokens."""
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def prompt_ids(self, text: str) -> list[int]:
        ids = self.encode(text)
        bos = self.tokenizer.bos_token_id
        return ([bos] if self.prepend_bos and bos is not None else []) + ids

    def check_vocabulary(self, ids: list[int], what: str, text: str) -> None:
        """Refuse ``text`` (already ``ids``) if a word of it fell outside the vocabulary (``<unk>``)."""
        if self.unk_id is not None and self.unk_id in ids:
            words = list(dict.fromkeys(w for w in text.split() if self.unk_id in self.encode(" " + w)))
            named = ", ".join(map(repr, words)) if words else repr(text)  # (a word-level vocabulary names them)
            raise CircuitryError(f"{what} has words outside the tokenizer's vocabulary: {named}")

    def single_token(self, text: str) -> int | None:
        ids = self.encode(text)
        return ids[0] if len(ids) == 1 and ids[0] != self.unk_id else None

    def keep_single(self, words: Sequence[str], prefix: str = " ") -> tuple[list[str], int]:
        """The words that are one token (with ``prefix``) and how many were dropped."""
        kept = [w for w in words if self.single_token(prefix + w) is not None]
        return kept, len(words) - len(kept)


def prompt_tokens(model, prompt: str) -> Int[Tensor, "1 pos"]:
    """[1, pos] tokens of a free-text prompt (BOS prepended as the model does), refused when empty, when a word
    falls outside a word-level vocabulary, or when longer than the context (TransformerLens would cut it
    silently)."""
    if not prompt or not prompt.strip():
        raise CircuitryError("empty prompt")
    tokens = model.to_tokens(prompt, truncate=False)
    TokenView(model).check_vocabulary(tokens[0].tolist(), "the prompt", prompt)
    check_context(model, tokens.shape[1])
    return tokens


def check_context(model, n_tokens: int) -> None:
    if n_tokens > model.cfg.n_ctx:
        raise CircuitryError(f"prompt is {n_tokens} tokens; the model's context is {model.cfg.n_ctx}")


class Task(ABC):
    """Base class of every task. Subclasses set the class attributes and implement ``sample_pair``."""

    name: str = ""
    metric_kind: MetricKind = "logit_diff"
    corruptions: tuple[str, ...] = ()
    description: str = ""

    def __init__(self, model_or_tokenizer, corruption: str | None = None):
        self.view = TokenView(model_or_tokenizer)
        corruption = self.corruptions[0] if corruption is None else corruption  # "" is a bad name, not the default
        if corruption not in self.corruptions:
            raise CircuitryError(
                f"task {self.name!r} has no corruption {corruption!r}; choose from {', '.join(self.corruptions)}"
            )
        self.corruption = corruption
        self.filtered: dict[str, int] = {}  # word list -> number of entries dropped (not single tokens)
        self.setup()

    def setup(self) -> None:
        """Filter word lists for this tokenizer (subclasses)."""

    @abstractmethod
    def sample_pair(self, rng: random.Random) -> PromptPair: ...

    def iter_pairs(self, n: int, seed: int) -> Iterator[PromptPair]:
        """The prompts of :meth:`pairs`, one at a time (memory bounded for any ``n``)."""
        check_draw(n, seed)
        rng = random.Random(f"{self.name}|{self.corruption}|{seed}")
        return (self.sample_pair(rng) for _ in range(n))

    def pairs(self, n: int, seed: int) -> list[PromptPair]:
        """``n`` prompt pairs drawn with ``seed`` (the same seed, the same pairs)."""
        return list(self.iter_pairs(n, seed))

    def tokenize(self, pairs: Sequence[PromptPair], labels: Sequence[str] | None = None) -> TaskBatch:
        """Tokenize pairs; every clean/corrupt pair must have equal token length.

        ``labels`` name the pairs in error messages (a custom task passes "task file F line 7"); by default
        "TASK record i", i the 0-based position in ``pairs``.
        """
        if not pairs:
            raise CircuitryError("no prompts to tokenize")
        cleans, corrupts, correct, wrong = [], [], [], []
        for i, p in enumerate(pairs):
            where = labels[i] if labels is not None else f"{self.name} record {i}"
            c, k = self.view.prompt_ids(p.clean), self.view.prompt_ids(p.corrupt)
            if len(c) <= (1 if self.view.prepend_bos else 0):
                raise CircuitryError(f"{where}: empty prompt")
            if len(c) != len(k):
                raise CircuitryError(
                    f"{where}: clean and corrupt differ in token length "
                    f"({len(c)} vs {len(k)}): {p.clean!r} / {p.corrupt!r}"
                )
            if self.view.n_ctx is not None and len(c) > self.view.n_ctx:
                raise CircuitryError(f"{where}: the prompt is {len(c)} tokens, longer than the model's context ({self.view.n_ctx})")
            self.view.check_vocabulary(c, f"{where}: the clean prompt", p.clean)
            self.view.check_vocabulary(k, f"{where}: the corrupt prompt", p.corrupt)
            cleans.append(c)
            corrupts.append(k)
            correct.append(self._answer_ids(where, p.answers, "answer"))
            wrong.append(self._answer_ids(where, p.wrongs, "wrong"))
            if set(correct[-1]) & set(wrong[-1]):
                raise CircuitryError(f"{where}: the same token is both an answer and a wrong answer")
        return TaskBatch(
            clean=_pad(cleans, self.view.pad_id),
            corrupt=_pad(corrupts, self.view.pad_id),
            answer_pos=torch.tensor([len(c) - 1 for c in cleans]),
            correct=_pad(correct, -1),
            wrong=_pad(wrong, -1),
            pairs=list(pairs),
        )

    def _answer_ids(self, where: str, texts: Sequence[str], what: str) -> list[int]:
        if not texts:
            raise CircuitryError(f"{where}: no {what} given")
        ids = []
        for t in texts:
            tid = self.view.single_token(t)
            if tid is None:
                unknown = self.view.unk_id is not None and self.view.unk_id in self.view.encode(t)
                raise CircuitryError(f"{where}: {what} {t!r} is " + ("outside the tokenizer's vocabulary" if unknown else
                                     "not a single token for this tokenizer"))  # fmt: skip
            ids.append(tid)
        return ids

    def batches(self, n: int, seed: int, batch_size: int = 100) -> Iterator[TaskBatch]:
        """The pairs of :meth:`pairs`, tokenized ``batch_size`` at a time (drawn as they are needed)."""
        if batch_size <= 0:
            raise CircuitryError(f"batch size must be positive, got {batch_size}")
        pairs = self.iter_pairs(n, seed)
        while chunk := list(itertools.islice(pairs, batch_size)):
            yield self.tokenize(chunk)

    def metric(self, logits: Float[Tensor, "batch pos vocab"], batch: TaskBatch) -> Float[Tensor, " batch"]:
        """Per-prompt metric at the answer position (differentiable)."""
        last = logits[torch.arange(logits.shape[0]), batch.answer_pos]  # [batch, vocab]
        return answer_metric(last, batch.correct, batch.wrong, self.metric_kind)


def check_draw(n: int, seed: int) -> None:
    """A prompt draw needs a positive count and an integer seed (1.0 and 1 would draw different prompts, None random ones)."""
    if n <= 0:
        raise CircuitryError(f"number of prompts must be positive, got {n}")
    try:
        operator.index(seed)
    except TypeError:
        raise CircuitryError(f"the prompt seed must be an integer, got {seed!r}") from None


def answer_metric(
    last: Float[Tensor, "batch vocab"],
    correct: Int[Tensor, "batch n_correct"],
    wrong: Int[Tensor, "batch n_wrong"],
    kind: MetricKind,
) -> Float[Tensor, " batch"]:
    """``logit_diff``: logit of the first correct answer minus the largest wrong logit.
    ``prob_diff``: total probability of the correct set minus that of the wrong set."""
    if kind == "logit_diff":
        good = last.gather(1, correct[:, :1].clamp(min=0)).squeeze(1)
        bad = last.gather(1, wrong.clamp(min=0)).masked_fill(wrong < 0, float("-inf")).amax(1)
        return good - bad
    if kind == "prob_diff":
        probs = last.float().softmax(-1)
        good = (probs.gather(1, correct.clamp(min=0)) * (correct >= 0)).sum(1)
        bad = (probs.gather(1, wrong.clamp(min=0)) * (wrong >= 0)).sum(1)
        return good - bad
    raise CircuitryError(f"unknown metric kind {kind!r}")


def _pad(rows: list[list[int]], value: int) -> Int[Tensor, "batch n"]:
    width = max(len(r) for r in rows)
    out = torch.full((len(rows), width), value, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out
