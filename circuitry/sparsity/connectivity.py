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

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from circuitry.errors import CircuitryError
from circuitry.progress import progress_bar
from circuitry.sparsity.gates import AttentionGates, gate_mode


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
            total = total + soft.sum()
            # finite entries; TransformerLens masks (causal and padding) are shared by all heads, so head 0
            # gives the count at 1/H of the cost of a full isfinite pass
            count += int((logits[:, 0] > float("-inf")).sum()) * logits.shape[1]
        else:
            mask = pair_mask(logits, valid)
            total = total + torch.where(mask, soft, 0.0).sum()
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
    ce: float | None = None  # held-out cross-entropy with gates on, when measured

    def to_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure_connectivity(model, tokens: Tensor, valid: Bool[Tensor, "batch pos"] | None = None, batch_size: int = 64,
                         progress: bool | None = False) -> ConnectivityReport:  # fmt: skip
    """Deterministic-gate connectivity of ``model`` on ``tokens`` (a model without gates keeps all edges).
    ``progress``: a bar over the batches (None: only on a terminal)."""
    cfg = model.cfg
    gates: AttentionGates | None = getattr(model, "gates", None)
    kept = torch.zeros(cfg.n_layers, cfg.n_heads, dtype=torch.float64)
    pairs = torch.zeros(cfg.n_layers, dtype=torch.float64)
    queries = 0.0
    for start in progress_bar(range(0, tokens.shape[0], batch_size), desc="connectivity", unit="batch", progress=progress):
        chunk = tokens[start : start + batch_size]
        v = valid[start : start + batch_size] if valid is not None else torch.ones_like(chunk, dtype=torch.bool)
        n_q = float(v.sum())
        queries += n_q
        per_seq = v.sum(1).double()
        n_pairs = float((per_seq * (per_seq + 1) / 2).sum())
        if gates is None:
            kept += n_pairs
            pairs += n_pairs
            continue
        with gate_mode(model, "eval"):
            model(chunk)
        for layer, logits in gates.last_logits.items():
            kept[layer] += ((logits > 0) & pair_mask(logits, v)).sum((0, 2, 3)).double()
            pairs[layer] += n_pairs
    if gates is not None:
        gates.last_logits.clear()  # the last chunk's (batch, head, q, k) logits per layer are not needed after this
    per_head = kept / pairs[:, None]
    lengths = valid.sum(1).double() if valid is not None else torch.full((tokens.shape[0],), float(tokens.shape[1]))
    return ConnectivityReport(
        model=getattr(cfg, "model_name", "model"),
        connectivity=float(kept.sum() / (pairs.sum() * cfg.n_heads)),
        keys_per_query=float(kept.sum() / (queries * cfg.n_layers * cfg.n_heads)),
        floor=queries / float(pairs[0]),  # one key per query: sum T / sum T(T+1)/2
        seq_len=float(lengths.mean()),
        n_sequences=int(tokens.shape[0]),
        per_layer=[round(float(x), 6) for x in per_head.mean(1)],
        per_head=[[round(float(x), 6) for x in row] for row in per_head],
    )


def connectivity_report(model, task=None, n: int = 256, seed: int = 1, data=None, seq_len: int | None = None,
                        progress: bool | None = False) -> ConnectivityReport:  # fmt: skip
    """Connectivity on ``n`` held-out sequences of ``seq_len`` tokens (default: the model's context; with held-out CE)
    of ``data`` (see :func:`circuitry.data.token_source`; default: the model's synthetic language), or on ``n`` clean
    prompts of ``task`` (drawn with ``seed``; the held-out text is fixed). ``progress``: as for
    :func:`measure_connectivity`."""
    from circuitry.data import token_source
    from circuitry.zoo.pretrain import heldout_ce

    if n <= 0:
        raise CircuitryError(f"number of sequences must be positive, got {n}")
    if task is not None and data is not None:
        raise CircuitryError("measure on a task's prompts or on data, not both")
    if task is None:
        stream = token_source(model, data)
        report = measure_connectivity(model, stream.heldout(n, seq_len or model.cfg.n_ctx), progress=progress)
        with gate_mode(model, "eval"), torch.no_grad():  # the CE of the model whose connectivity is reported
            report.ce = round(heldout_ce(model, stream, n, length=seq_len), 5)
        return report
    batch = task.tokenize(task.pairs(n, seed))
    valid = torch.arange(batch.clean.shape[1])[None, :] <= batch.answer_pos[:, None]
    return measure_connectivity(model, batch.clean, valid, progress=progress)
