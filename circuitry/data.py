"""Training text: the synthetic language of the zoo models, or a user's own text or tokens.

Sparse post-training, transcoder training, connectivity and transcoder quality read token sequences from a
*token source*, which has ``batch(key, size, length)`` (the same key gives the same batch, so a resumed run
reads what an uninterrupted one would), ``heldout(size, length)`` (sequences training never reads) and
``info()`` (what is recorded beside the result). Two sources exist:

- :class:`circuitry.zoo.pretrain.TokenStream` generates the synthetic language a zoo model was trained on;
- :class:`TextData` cuts windows out of a user's token stream (a text file, JSONL documents, or token ids)
  and keeps the stream's last part (``heldout_fraction``) for held-out sequences.

:func:`token_source` picks one for a model: ``data=None`` means the synthetic language.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
from jaxtyping import Int
from torch import Tensor

from circuitry.errors import CircuitryError

MAX_UNKNOWN = 0.25  # refuse text whose tokens are more than this share <unk>: it is not in the model's language
DATA_SUFFIXES = (".txt", ".jsonl", ".safetensors")
DATA_HELP = ("Your own text instead of the model's synthetic language: .txt (one document), "
             ".jsonl ({\"text\": ...} per line) or .safetensors ('tokens' ids); its last 5% is held out.")


class TextData:
    """Windows of a 1-D token stream: training windows from its first part, held-out ones from its last.

    Documents are joined with ``bos`` before each. A window is ``bos`` (when known) and then ``length - 1`` tokens
    from a *chunk start*: a document's first token, or every ``length - 1`` tokens further into a long document
    (packing, as language models are trained); a window may run on into the next document. Training draws chunk
    starts from ``key``; held-out windows are the chunks of the last part in order (so every held-out document
    start begins one; only a window's run-on into the next document overlaps another window).
    """

    def __init__(self, tokens: Int[Tensor, " n"], bos: int | None, source: str = "tokens", heldout_fraction: float = 0.05):
        if not 0 < heldout_fraction < 1:
            raise CircuitryError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
        tokens = torch.as_tensor(tokens)
        if tokens.is_floating_point() or tokens.is_complex() or tokens.dtype == torch.bool:
            raise CircuitryError(f"{source}: token ids must be integers, got {tokens.dtype}")
        tokens = tokens.flatten().long()
        if tokens.numel() and int(tokens.min()) < 0:
            raise CircuitryError(f"{source}: negative token id {int(tokens.min())}")
        self.bos, self.source = bos, source
        n_heldout = round(tokens.numel() * heldout_fraction)
        if n_heldout < 1 or n_heldout >= tokens.numel():
            raise CircuitryError(f"{source}: {tokens.numel()} tokens do not split into training and held-out parts "
                                 f"(held-out fraction {heldout_fraction})")  # fmt: skip
        self.train, self.held = tokens[:-n_heldout], tokens[-n_heldout:]
        self.fingerprint = hashlib.sha256(tokens.numpy().tobytes()).hexdigest()[:16]
        self._starts: dict[tuple[str, int], list[int]] = {}

    @classmethod
    def from_texts(cls, texts: Sequence[str], tokenizer, source: str = "texts", heldout_fraction: float = 0.05) -> "TextData":
        """Tokenize ``texts`` (a list of documents) with a HuggingFace tokenizer and join them, BOS before each."""
        if isinstance(texts, str):
            raise CircuitryError("texts must be a list of documents, not one string (wrap it in a list)")
        texts = [t for t in texts if t.strip()]
        if not texts:
            raise CircuitryError(f"{source}: no text")
        bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if bos is None:
            raise CircuitryError("the tokenizer has neither a BOS nor an EOS token to separate documents")
        ids: list[int] = []
        for doc in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids += [bos, *doc]
        unk = tokenizer.unk_token_id
        if unk is not None and ids.count(unk) > MAX_UNKNOWN * len(ids):
            raise CircuitryError(f"{source}: {ids.count(unk) / len(ids):.0%} of the tokens are unknown to the model's tokenizer; "
                                 "is the text in the model's language?")  # fmt: skip
        return cls(torch.tensor(ids), bos, source, heldout_fraction)

    @classmethod
    def load(cls, path: str | Path, model, heldout_fraction: float = 0.05) -> "TextData":
        """Read ``path`` for ``model``: ``.txt`` (one document), ``.jsonl`` (one ``{"text": ...}`` document per line)
        or ``.safetensors`` (a ``tokens`` tensor of ids; the rows of a 2-D one are joined as they are, so put the
        BOS / EOS ids in it where documents start or end). The recorded source is the absolute path."""
        path = Path(path)
        if path.suffix not in DATA_SUFFIXES:
            raise CircuitryError(f"data file {path}: expected one of {', '.join(DATA_SUFFIXES)}")
        if not path.is_file():
            raise CircuitryError(f"data file {path} {'is a directory' if path.is_dir() else 'does not exist'}")
        tokenizer, source = getattr(model, "tokenizer", None), str(path.resolve())
        if path.suffix == ".safetensors":
            data = cls(_read_tokens(path), None if tokenizer is None else tokenizer.bos_token_id, source, heldout_fraction)
        else:
            if tokenizer is None:
                raise CircuitryError(f"this model has no tokenizer to read {path}; give token ids in a .safetensors file")
            data = cls.from_texts(_read_texts(path), tokenizer, source, heldout_fraction)
        data.check(model)
        return data

    def check(self, model) -> None:
        """Refuse token ids the model's embedding does not have."""
        top = int(max(self.train.max(), self.held.max(), -1 if self.bos is None else self.bos))
        if top >= model.cfg.d_vocab:
            raise CircuitryError(f"{self.source}: token id {top} is out of the model's vocabulary ({model.cfg.d_vocab})")

    def _body(self, length: int) -> int:
        body = length - (self.bos is not None)
        if body < 1:
            raise CircuitryError(f"sequence length {length} is too short: it must hold at least one token after BOS")
        return body

    def chunk_starts(self, part: str, length: int) -> list[int]:
        """Chunk starts in ``part`` ("train" or "held") whose window of ``length`` fits in it (see the class)."""
        key = (part, length)
        if key not in self._starts:
            tokens, body = getattr(self, part), self._body(length)
            docs = [] if self.bos is None else ((tokens == self.bos).nonzero().flatten() + 1).tolist()
            if not docs or docs[0] != 1:  # the part begins inside a document (or no BOS is known)
                docs = [0, *docs]
            ends = [d - 1 for d in docs[1:]] + [len(tokens)]  # each document ends where the next one's BOS is
            self._starts[key] = [c for d, e in zip(docs, ends) for c in range(d, e, body) if c + body <= len(tokens)]
        return self._starts[key]

    def _windows(self, tokens: Tensor, starts: list[int], length: int) -> Int[Tensor, "batch pos"]:
        body = self._body(length)
        rows = torch.stack([tokens[s : s + body] for s in starts])
        return rows if self.bos is None else torch.cat([torch.full((len(starts), 1), self.bos), rows], 1)

    def batch(self, key: str, size: int, length: int) -> Int[Tensor, "batch pos"]:
        """``size`` training windows at chunk starts drawn from ``key`` (a string: the same key, the same batch)."""
        starts = self.chunk_starts("train", length)
        if not starts:
            raise CircuitryError(f"{self.source}: {len(self.train)} training tokens, fewer than one sequence of {length}")
        rng = random.Random(key)
        return self._windows(self.train, [rng.choice(starts) for _ in range(size)], length)

    def train_batch(self, seed: int, step: int, size: int, length: int) -> Int[Tensor, "batch pos"]:
        return self.batch(f"train|{seed}|{step}", size, length)

    def heldout(self, size: int, length: int) -> Int[Tensor, "batch pos"]:
        """The first ``size`` chunks of the held-out part, in order (fewer when it is short)."""
        taken = self.chunk_starts("held", length)[:size]
        if not taken:
            raise CircuitryError(f"{self.source}: the held-out part has {len(self.held)} tokens, fewer than one sequence of "
                                 f"{length}; give more text or a shorter sequence length")  # fmt: skip
        return self._windows(self.held, taken, length)

    def info(self) -> dict[str, Any]:
        return {"source": self.source, "tokens": len(self.train) + len(self.held), "heldout_tokens": len(self.held),
                "fingerprint": self.fingerprint}  # fmt: skip


def heldout_batches(stream, n: int, length: int, batch_size: int = 64) -> tuple[Iterator[Int[Tensor, "b pos"]], int]:
    """The first ``n`` held-out sequences of ``stream`` (``stream.heldout(n, length)``) in batches of
    ``batch_size``, and the number of batches. A source that can draw its sequences one at a time (the synthetic
    language: ``heldout_sequences``) is read batch by batch, so memory stays bounded for any ``n``."""
    rows = getattr(stream, "heldout_sequences", None)
    if rows is None:
        chunks = stream.heldout(n, length).split(batch_size)
        return iter(chunks), len(chunks)

    def batches() -> Iterator[Tensor]:
        drawn = rows(n, length)
        while chunk := list(itertools.islice(drawn, batch_size)):
            yield torch.tensor(chunk, dtype=torch.long)

    return batches(), -(-n // batch_size)


def token_source(model, data: "str | Path | TextData | None" = None):
    """The token source for ``model``: its synthetic language (``data=None``), a data file, or ``data`` itself."""
    if data is None:
        from circuitry.zoo.pretrain import TokenStream

        return TokenStream.for_model(model)
    if isinstance(data, (str, Path)):
        return TextData.load(data, model)
    if isinstance(data, TextData):
        data.check(model)
    elif not all(callable(getattr(data, a, None)) for a in ("batch", "heldout", "info")):
        raise CircuitryError(f"data must be a file path or a token source such as TextData, got {type(data).__name__}")
    return data


def check_length(source, length: int) -> None:
    """Refuse, before any work, a token source too short for one training and one held-out sequence of ``length``."""
    source.batch("check", 1, length)
    source.heldout(1, length)


def check_same_data(saved: dict[str, Any] | None, source, where: str) -> None:
    """Refuse to resume a run (whose checkpoint recorded ``saved``) on other training data: other tokens (by
    fingerprint, wherever the file now lives) or another synthetic language."""

    def identity(info: dict[str, Any]) -> dict[str, Any]:
        return {"fingerprint": info["fingerprint"]} if "fingerprint" in info else info

    if saved is not None and identity(saved) != identity(source.info()):
        raise CircuitryError(f"{where} was made on other training data ({saved.get('source')}); rerun with the same --data")


def _read_texts(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise CircuitryError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if path.suffix == ".txt":
        return [text]
    docs = []
    for i, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise CircuitryError(f"{path}, line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise CircuitryError(f'{path}, line {i}: expected an object with a "text" string')
        docs.append(record["text"])
    return docs


def _read_tokens(path: Path) -> Tensor:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        raise CircuitryError(f"{path}: not a readable safetensors file ({e})") from None
    if "tokens" not in tensors:
        raise CircuitryError(f"{path}: no 'tokens' tensor (has {', '.join(sorted(tensors)) or 'nothing'})")
    return tensors["tokens"]
