"""The task batch every task distribution produces, and the inner-minibatch schedule."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor

from ..errors import ConfigError

KEY_BYTES = 16  # one random key of a draw: the float32 key, its sorted copy and its int64 index (argsort, topk)


@dataclass
class TaskBatch:
    """T tasks stacked on dim 0 (GUIDE.md section 2).

    x, y: the examples the inner loop trains on, (T, n, *input_shape) and (T, n) or (T, n, 1).
    batches: (T, steps, batch) indices into dim 1 of x: the inner minibatches, in order.
    x_query, y_query: held-out examples (evaluation queries, MAML's outer loss), or None.
    """

    x: Tensor
    y: Tensor
    batches: Tensor
    x_query: Tensor | None = None
    y_query: Tensor | None = None

    @property
    def num_tasks(self) -> int:
        return self.x.shape[0]

    def _map(self, fn: Callable[[str, Tensor], Tensor]) -> TaskBatch:
        """The batch with every field present (not None) replaced by fn(field name, tensor)."""
        return replace(
            self,
            **{f.name: fn(f.name, getattr(self, f.name)) for f in fields(self) if getattr(self, f.name) is not None},
        )

    def __getitem__(self, tasks: slice) -> TaskBatch:
        """The tasks `tasks` of the batch (a rank's share of a meta-batch, distributed.shard)."""
        return self._map(lambda _, t: t[tasks])

    @staticmethod
    def cat(parts: list[TaskBatch]) -> TaskBatch:
        """The tasks of `parts`, in order, as one batch."""
        if len(parts) == 1:
            return parts[0]
        return parts[0]._map(lambda name, _: torch.cat([getattr(p, name) for p in parts]))

    def minibatch(self, step: int) -> tuple[Tensor, Tensor]:
        """Inputs and targets of inner step `step` for every task: (T, batch, ...)."""
        idx = self.batches[:, step]
        rows = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1)
        return self.x[rows, idx], self.y[rows, idx]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> TaskBatch:
        """The batch on `device`, its floating-point fields cast to dtype (when given). A field on the CPU is copied
        without blocking (safe from pageable memory; a GPU is not waited for); one on a GPU as usual."""

        def move(_, t: Tensor) -> Tensor:
            cast = dtype if dtype is not None and t.is_floating_point() else t.dtype
            return t.to(device, cast, non_blocking=t.device.type == "cpu")

        return self._map(move)


def minibatch_schedule(
    num_tasks: int,
    n: int,
    steps: int,
    batch: int,
    generator: torch.Generator,
    replacement: bool = False,
    evaluation: bool = False,
) -> Tensor:
    """Indices (num_tasks, steps, batch) of the inner minibatches (REFERENCE.md section 2).

    Without replacement (the official `_mini_batches`): cycle through the n examples in passes,
    reshuffling each pass; a minibatch may straddle two passes. With replacement: each minibatch
    is `batch` distinct examples drawn afresh. A training minibatch larger than the task (inner_batch > n)
    is refused: it would hold repeats; at evaluation an eval_batch above the K-shot support set cycles
    through it as the official code does (dataset=omniglot's defaults: eval_batch 10, 5 examples), and is
    refused with replacement (the official code's random.sample fails there; protocols.parse says it first).
    """
    if batch > n and not evaluation:
        raise ConfigError(
            f"inner_batch={batch} is invalid: a training task has {n} examples; choose inner_batch <= {n}"
        )
    if batch > n and replacement:
        raise ConfigError(
            f"eval_batch={batch} is invalid with replacement=true: a test task has {n} support examples; "
            f"choose eval_batch <= {n} or replacement=false"
        )
    rows = schedule_rows(n, steps, batch, replacement)
    keys = torch.rand(num_tasks, rows, n, generator=generator, device=generator.device)
    if replacement:
        return keys.argsort(dim=-1)[..., :batch]
    order = keys.argsort(dim=-1).reshape(num_tasks, rows * n)
    return order[:, : steps * batch].reshape(num_tasks, steps, batch)


def schedule_rows(n: int, steps: int, batch: int, replacement: bool = False) -> int:
    """The rows of n random keys minibatch_schedule draws per task: one per step with replacement, else one per
    pass over the n examples."""
    return steps if replacement else -(-steps * batch // n)


def schedule_bytes(n: int, steps: int, batch: int, replacement: bool = False) -> int:
    """One task's minibatch schedule at its peak: its random keys (KEY_BYTES each) and the int64 indices returned."""
    return KEY_BYTES * schedule_rows(n, steps, batch, replacement) * n + 8 * steps * batch
