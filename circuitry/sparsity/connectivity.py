"""Connectivity: which share of the causal query->key edges the gates keep.

Reported connectivity is the fraction of causal (query, key) pairs, over batch, layers and heads,
with a deterministic gate z = 1[g > 0]; expected connectivity (the training regulariser) is the
mean of sigmoid(g) over the same pairs. The "floor" is one key per query, T / (T (T + 1) / 2) =
2 / (T + 1) of the edges for a length-T sequence: the least a softmax head that must attend somewhere
keeps. Gated heads without renormalisation can go below it (a query whose gates are all closed reads
nothing), so connectivity / floor < 1 is possible and means queries that attend to no key at all.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitry.errors import CircuitryError
from circuitry.progress import progress_bar
from circuitry.sparsity.gates import AttentionGates, gate_mode
from circuitry.training import check_seq_len


def floor(seq_len: int) -> float:
    """Connectivity of exactly one key per query for a length-T causal sequence (the reference, not a bound)."""
    return 2.0 / (seq_len + 1)


def pair_mask(logits: Float[Tensor, "batch head q k"], valid: Bool[Tensor, "batch pos"] | None) -> Bool[Tensor, "batch head q k"]:
    """Causal pairs (finite gate logits) whose query and key are both real tokens (not right padding)."""
    causal = torch.isfinite(logits)
    if valid is None:
        return causal
    return causal & valid[:, None, :, None] & valid[:, None, None, :]


def expected_connectivity(gates: AttentionGates, valid: Bool[Tensor, "batch pos"] | None = None) -> Float[Tensor, ""]:
    """Mean sigmoid(gate logit) over all causal pairs of the last forward (differentiable)."""
    if not gates.last_logits:
        raise CircuitryError("no gate logits recorded: run a forward pass with the gates attached first")
    total, count = 0.0, 0
    for logits in gates.last_logits.values():
        soft = torch.sigmoid(logits)  # exactly 0 on masked (-inf) entries
        if valid is None:
            total = total + soft.sum(dtype=torch.float32)  # (float32 sums: bf16 ones round the mean to 1/256)
            # finite entries; TransformerLens masks (causal and padding) are shared by all heads, so head 0
            # gives the count at 1/H of the cost of a full isfinite pass
            count += int((logits[:, 0] > float("-inf")).sum()) * logits.shape[1]
        else:
            mask = pair_mask(logits, valid)
            total = total + torch.where(mask, soft, 0.0).sum(dtype=torch.float32)
            count += int(mask.sum())
    return total / count


@dataclass
class ConnectivityReport:
    model: str
    connectivity: float  # share of causal edges kept (deterministic gates)
    keys_per_query: float  # mean number of keys kept per (query, head)
    floor: float  # one key per query; 2 / (T + 1) when every sequence has length T
    seq_len: float
    n_sequences: int
    per_layer: list[float] = field(default_factory=list)
    per_head: list[list[float]] = field(default_factory=list)  # [layer][head]
    # share of (query, head) pairs whose gates keep no key at all (such a query reads nothing), overall and per layer
    no_key: float = 0.0
    no_key_per_layer: list[float] = field(default_factory=list)
    ce: float | None = None  # held-out cross-entropy with gates on, when measured
    data: dict | None = None  # the held-out text's source (``info()``: path or language, tokens, fingerprint)

    def to_dict(self) -> dict:
        return asdict(self)


def measure_connectivity(model, tokens: Tensor, valid: Bool[Tensor, "batch pos"] | None = None, batch_size: int = 64,
                         progress: bool | None = False) -> ConnectivityReport:  # fmt: skip
    """Deterministic-gate connectivity of ``model`` on ``tokens`` (a model without gates keeps all edges).
    ``valid`` marks the real tokens of right-padded rows. ``progress``: a bar over the batches (None: only on a
    terminal)."""
    chunks = tokens.split(batch_size)
    masks = valid.split(batch_size) if valid is not None else [None] * len(chunks)
    return connectivity_of_batches(model, zip(chunks, masks), len(chunks), progress)


@torch.no_grad()
def connectivity_of_batches(model, batches: Iterable[tuple[Tensor, Bool[Tensor, "batch pos"] | None]],
                            n_batches: int | None = None, progress: bool | None = False) -> ConnectivityReport:  # fmt: skip
    """:func:`measure_connectivity` over batches of (tokens, valid or None) read one at a time, so any number of
    sequences fits in memory; ``n_batches`` sizes the progress bar."""
    cfg = model.cfg
    gates: AttentionGates | None = getattr(model, "gates", None)
    kept = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    pairs = torch.zeros(cfg.n_layers, dtype=torch.float64)
    queries, n_sequences = 0.0, 0
    no_key = torch.zeros(cfg.n_layers, dtype=torch.float64)  # (query, head) pairs keeping no key, per layer
    for chunk, v in progress_bar(batches, total=n_batches, desc="connectivity", unit="batch", progress=progress):
        v = torch.ones_like(chunk, dtype=torch.bool) if v is None else v
        n_sequences += len(chunk)
        per_seq = v.sum(1).double()
        queries += float(per_seq.sum())
        n_pairs = float((per_seq * (per_seq + 1) / 2).sum())
        if gates is None:
            kept += n_pairs
            pairs += n_pairs
            continue
        gates.last_logits.clear()  # (a stale entry from an earlier forward must not pass for this one's)
        with gate_mode(model, "eval"):
            model(chunk)
        if len(gates.last_logits) != cfg.n_layers:
            raise CircuitryError("the model has gates but its gate hooks did not run (removed by reset_hooks(including_permanent=True)?): "
                                 "detach_gates(model) and attach them again")  # fmt: skip
        for layer, logits in gates.last_logits.items():
            keys = ((logits > 0) & pair_mask(logits, v)).sum(3)  # [batch, head, q]: keys kept per query
            kept[layer] += keys.sum((0, 2)).double()
            no_key[layer] += float(((keys == 0) & v[:, None, :]).sum())
            pairs[layer] += n_pairs
    if not n_sequences:
        raise CircuitryError("no sequences to measure connectivity on")
    if gates is not None:
        gates.last_logits.clear()  # the last chunk's (batch, head, q, k) logits per layer are not needed after this
    per_head = kept / pairs[:, None]
    return ConnectivityReport(
        model=getattr(cfg, "model_name", "model"),
        connectivity=float(kept.sum() / (pairs.sum() * cfg.n_heads)),
        keys_per_query=float(kept.sum() / (queries * cfg.n_layers * cfg.n_heads)),
        floor=queries / float(pairs[0]),  # one key per query: sum T / sum T(T+1)/2
        seq_len=queries / n_sequences,
        n_sequences=n_sequences,
        per_layer=[round(float(x), 6) for x in per_head.mean(1)],
        per_head=[[round(float(x), 6) for x in row] for row in per_head],
        no_key=float(no_key.sum() / (queries * cfg.n_layers * cfg.n_heads)),
        no_key_per_layer=[round(float(x), 6) for x in no_key / (queries * cfg.n_heads)],
    )


def connectivity_report(model, task=None, n: int = 256, seed: int = 1, data=None, seq_len: int | None = None,
                        progress: bool | None = False) -> ConnectivityReport:  # fmt: skip
    """Connectivity on ``n`` held-out sequences of ``seq_len`` tokens (default: the model's context; with held-out CE)
    of ``data`` (see :func:`circuitry.data.token_source`; default: the model's synthetic language), or on ``n`` clean
    prompts of ``task`` (drawn with ``seed``; the held-out text is fixed). Sequences are drawn batch by batch, so a
    large ``n`` costs time, not memory. ``progress``: as for :func:`measure_connectivity`."""
    from circuitry.data import heldout_batches, token_source
    from circuitry.zoo.pretrain import heldout_ce

    if n <= 0:
        raise CircuitryError(f"number of sequences must be positive, got {n}")
    if task is not None and data is not None:
        raise CircuitryError("measure on a task's prompts or on data, not both")
    if task is not None and seq_len is not None:
        raise CircuitryError("a sequence length is for held-out text; a task's prompts have their own lengths")
    if seq_len is not None:
        check_seq_len(seq_len, model.cfg.n_ctx)
    if task is None:
        stream = token_source(model, data)
        batches, n_batches = heldout_batches(stream, n, seq_len or model.cfg.n_ctx)
        report = connectivity_of_batches(model, ((b, None) for b in batches), n_batches, progress)
        with gate_mode(model, "eval"), torch.no_grad():  # the CE of the model whose connectivity is reported
            report.ce = round(heldout_ce(model, stream, n, length=seq_len), 5)
        report.data = stream.info()
        return report
    size = 64  # prompts per forward, as for held-out text
    prompts = ((b.clean, torch.arange(b.clean.shape[1])[None, :] <= b.answer_pos[:, None]) for b in task.batches(n, seed, size))
    return connectivity_of_batches(model, prompts, -(-n // size), progress)
