"""Training-loop options that large models need: gradient accumulation, bf16 autocast, activation
checkpointing. Used by sparse post-training and CLT training; all three leave a small-model run unchanged
when off (the defaults on CPU).
"""

from __future__ import annotations

import dataclasses
import math
from contextlib import contextmanager, nullcontext
from typing import Any, ContextManager, Iterable, Iterator

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from circuitry.distributed import rank_and_world
from circuitry.errors import CircuitryError

PRECISIONS = ("auto", "fp32", "bf16")


@contextmanager
def gradients(what: str) -> Iterator[None]:
    """Autograd on for ``what`` (also as a decorator), whatever the caller set: ``torch.set_grad_enabled(False)``
    at the top of a notebook is common. ``torch.inference_mode()`` cannot be left from inside, so it is refused."""
    if torch.is_inference_mode_enabled():
        raise CircuitryError(f"{what} needs gradients: call it outside torch.inference_mode()")
    with torch.enable_grad():
        yield


def check_fields(cfg: Any, positive: Iterable[str] = (), non_negative: Iterable[str] = ()) -> None:
    """Refuse a training config with a NaN / infinite number, or a listed field (when set) that is not > 0 / >= 0,
    before any work is done (a NaN learning rate would only surface as a 'non-finite loss' later)."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise CircuitryError(f"{f.name} must be a finite number, got {v}")
    for names, ok, what in ((positive, lambda v: v > 0, "> 0"), (non_negative, lambda v: v >= 0, ">= 0")):
        for name in names:
            v = getattr(cfg, name)
            if v is not None and not ok(v):
                raise CircuitryError(f"{name} must be {what}, got {v}")


def check_seq_len(length: int, n_ctx: int) -> None:
    """Refuse a sequence length outside [2, n_ctx] (one prediction needs two tokens)."""
    if not 2 <= length <= n_ctx:
        raise CircuitryError(f"sequence length {length} must be between 2 and the model's context {n_ctx}")


def check_options(
    grad_accum: int, precision: str, seq_len: int | None = None, n_ctx: int | None = None, batch_size: int | None = None
) -> int | None:
    """Refuse bad values before any work is done; returns the training sequence length (``seq_len``, default
    the model context ``n_ctx``). ``batch_size`` (global) must split over the processes and micro-batches."""
    world = rank_and_world()[1]
    if batch_size is not None and grad_accum >= 1 and batch_size % (world * grad_accum):
        raise CircuitryError(f"batch size {batch_size} does not split into {world} process(es) x {grad_accum} equal micro-batches")
    length = n_ctx if seq_len is None else seq_len  # 0 is a bad length, not "unset"
    if n_ctx is not None:
        check_seq_len(length, n_ctx)
    if grad_accum < 1:
        raise CircuitryError(f"gradient accumulation steps must be >= 1, got {grad_accum}")
    if precision not in PRECISIONS:
        raise CircuitryError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    return length


@contextmanager
def deterministic() -> Iterator[None]:
    """Deterministic kernels inside a training loop, the caller's setting restored after. Without them the CPU
    backward of the embedding lookup adds rows in thread order: two identical ``sparsify`` runs on 2 threads ended
    1.7e-5 apart. ``warn_only``: an op with no deterministic kernel (on some GPUs) warns instead of failing."""
    before, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before, warn_only=warn_only)


def autocast(precision: str, device: torch.device | str) -> ContextManager:
    """``torch.autocast`` to bfloat16 for ``bf16`` (and for ``auto`` when the model is on a GPU); fp32 otherwise.
    On CPU ``bf16`` works too (slower than fp32 on most CPUs; useful to test a GPU recipe)."""
    check_options(1, precision)
    device_type = torch.device(device).type
    if precision == "bf16" or (precision == "auto" and device_type == "cuda"):
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return nullcontext()


def micro_batches(batch: Tensor, n: int) -> list[Tensor]:
    """``batch`` split into ``n`` equal micro-batches (gradient accumulation over ``n`` backward passes)."""
    if n < 1:
        raise CircuitryError(f"gradient accumulation steps must be >= 1, got {n}")
    if len(batch) % n:
        raise CircuitryError(f"batch of {len(batch)} sequences per process does not split into {n} equal micro-batches")
    return list(batch.chunk(n))


def rng_rewinder():
    """A function that puts torch's RNG (CPU and CUDA) back to its state now. Called before each micro-batch,
    it makes every micro-batch draw the same random seeds a single full-batch pass draws (gate noise is drawn
    for the whole batch and sliced), so accumulation does not change the run."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None

    def rewind() -> None:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)

    return rewind


def no_sync(module, last: bool) -> ContextManager:
    """DistributedDataParallel's ``no_sync`` on every micro-batch but the last (one all-reduce per step)."""
    return nullcontext() if last or not hasattr(module, "no_sync") else module.no_sync()


def set_activation_checkpointing(model, enabled: bool = True) -> None:
    """Recompute each transformer block's activations in the backward pass instead of storing them
    (``torch.utils.checkpoint``, non-reentrant): memory per block falls to its input, for one extra forward.
    Hooks run again during recomputation with torch's RNG restored, so gate noise (seeded from torch's RNG)
    is redrawn identically and gradients equal those without checkpointing. Only applies with grad enabled."""
    for block in model.blocks:
        if not enabled:
            block.__dict__.pop("forward", None)
            continue
        if "forward" in block.__dict__:
            continue
        forward = block.forward

        def checkpointed(*args, _forward=forward, **kwargs):
            if not torch.is_grad_enabled():
                return _forward(*args, **kwargs)
            return checkpoint(_forward, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)

        block.forward = checkpointed
