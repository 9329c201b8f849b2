"""torch.distributed plumbing for training under ``torchrun`` (DistributedDataParallel; NCCL on GPUs, gloo on CPU).

Every rank draws the same global batch (batches are pure functions of (seed, step)) and keeps its own contiguous
shard of rows, so a run on N processes sees exactly the data of a 1-process run with the same global batch and,
with DDP averaging gradients over equal shards, takes the same steps up to float summation order. Rank 0 alone
writes logs and checkpoints; every rank resumes from the same checkpoint file.
"""

from __future__ import annotations

import atexit
import os

import torch
import torch.distributed as dist
from torch import Tensor

from circuitry.errors import CircuitryError


def init_from_env() -> tuple[int, int]:
    """Join the process group that ``torchrun`` describes in the environment (no-op for a single process);
    returns (rank, world size)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
        # leave the group before the interpreter exits: a process that exits with gloo's threads still running
        # can abort ("terminate called without an active exception"); a successful run leaves earlier, in shutdown()
        atexit.register(_leave_group)
    return rank_and_world()


def _leave_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def shutdown() -> None:
    """End of a successful distributed run, on every rank: wait for all ranks, then leave the group together (the
    shutdown PyTorch documents), so no rank tears down its gloo connections while a peer still uses them. The
    exit handler above only covers runs that end otherwise (it cannot wait: a crashed rank never arrives)."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return rank_and_world()[0] == 0


def shard(batch: Tensor) -> Tensor:
    """This rank's contiguous rows of a global batch."""
    rank, world = rank_and_world()
    if world == 1:
        return batch
    if len(batch) % world:
        raise CircuitryError(f"global batch size {len(batch)} is not divisible by the {world} processes")
    n = len(batch) // world
    return batch[rank * n : (rank + 1) * n]


def wrap(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` in DistributedDataParallel when running distributed, else unchanged."""
    if rank_and_world()[1] == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module)


def mean_over_ranks(value: float) -> float:
    """The mean of a scalar over all ranks (the global-batch value when shards are equal)."""
    _, world = rank_and_world()
    if world == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t)
    return t.item() / world


def barrier() -> None:
    if rank_and_world()[1] > 1:
        dist.barrier()
