"""Data parallelism over the tasks of a meta-batch (torch.distributed).

Every rank draws the same meta-batch from the same seeded generator and adapts its own contiguous
share of the tasks; means over tasks are all-reduced, so phi evolves exactly as in one process.
Without an initialised process group everything here is the single-process identity.
"""

from __future__ import annotations

import torch.distributed as dist
from torch import Tensor


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def shard(num_tasks: int) -> slice:
    """This rank's contiguous share of a meta-batch of num_tasks tasks."""
    rank, size = world()
    per_rank = -(-num_tasks // size)
    return slice(min(rank * per_rank, num_tasks), min((rank + 1) * per_rank, num_tasks))


def task_mean(x: Tensor, num_tasks: int | None = None) -> Tensor:
    """Mean over dim 0 (the task dimension) across all ranks' tasks.

    num_tasks is the meta-batch size over all ranks (default: the local count times the world size).
    """
    _, size = world()
    if size == 1:
        return x.mean(0)
    total = x.sum(0)
    dist.all_reduce(total)
    return total / (num_tasks if num_tasks is not None else x.shape[0] * size)
