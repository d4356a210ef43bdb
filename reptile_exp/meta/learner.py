"""The task-batched inner loop: k steps of an inner optimizer from phi on T tasks at once.

The model is used as a pure function of its parameters (`torch.func.functional_call`); per-task
losses and gradients come from `vmap(grad(...))` over the task dimension (GUIDE section 2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..data.tasks import TaskBatch
from .optim import Params, State

LOSSES = ("mse", "cross_entropy")


class Learner:
    """A model, its per-task loss and the inner optimizer.

    loss "cross_entropy" with reduction "sum" is the official code's (REFERENCE.md section 2);
    "mse" (mean) is the sine loss (section 8).
    """

    def __init__(self, model: nn.Module, inner_optimizer, loss: str = "mse", reduction: str = "mean"):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {LOSSES}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction={reduction!r}: choose 'mean' or 'sum'")
        self.model, self.inner_optimizer, self.loss_name, self.reduction = model, inner_optimizer, loss, reduction
        self._grad = vmap(grad_and_value(self.loss))

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs of one task's model on a batch x (no task dimension)."""
        return functional_call(self.model, params, (x,))

    def criterion(self, out: Tensor, y: Tensor) -> Tensor:
        if self.loss_name == "mse":
            return F.mse_loss(out, y, reduction=self.reduction)
        return F.cross_entropy(out, y, reduction=self.reduction)

    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.criterion(self.forward(params, x), y)

    def adapt(
        self,
        phi: Params,
        tasks: TaskBatch,
        state: State,
        steps: int | None = None,
        observe: Callable[[int, Params], None] | None = None,
    ) -> tuple[Params, State, Tensor]:
        """Run `steps` (default: all scheduled) inner steps from phi on every task.

        Returns the adapted weights W (task-stacked), the per-task optimizer state and the
        (T, steps) minibatch losses before each step. `observe(j, W)` sees the weights after
        j = 0..steps updates. Differentiable with respect to phi (used by MAML).
        """
        num_tasks = tasks.num_tasks
        steps = tasks.batches.shape[1] if steps is None else steps
        weights = {n: p.unsqueeze(0).expand(num_tasks, *p.shape) for n, p in phi.items()}
        state = self.inner_optimizer.tile(state, num_tasks)
        losses = []
        if observe is not None:
            observe(0, weights)
        for j in range(steps):
            xb, yb = tasks.minibatch(j)
            grads, loss = self._grad(weights, xb, yb)
            weights, state = self.inner_optimizer.step(weights, grads, state)
            losses.append(loss)
            if observe is not None:
                observe(j + 1, weights)
        losses = torch.stack(losses, dim=1) if losses else torch.zeros(num_tasks, 0, device=tasks.x.device)
        return weights, state, losses

    def predict(self, weights: Params, x: Tensor) -> Tensor:
        """Outputs of every task's adapted model on its own inputs x: (T, n, ...)."""
        return vmap(self.forward)(weights, x)
