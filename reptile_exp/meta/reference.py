"""The plain serial reference: Algorithms 1 and 2 written literally with nn.Module and torch.optim.

One task after another, a fresh copy of phi per task, the task's inner optimizer built by
torch.optim, for training and for evaluation; used by the tests (the task-batched engine must agree
with it) and by scripts/benchmark.py (it is how the official code and most ports run).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from ..data.tasks import TaskBatch
from .learner import Learner


def _average_adam_states(states: list[dict]) -> dict:
    """The engine's merge rule for inner Adam (see meta.optim.Adam): moments averaged over tasks."""
    merged = copy.deepcopy(states[0])
    for key, entry in merged["state"].items():
        for moment in ("exp_avg", "exp_avg_sq"):
            entry[moment] = torch.stack([s["state"][key][moment] for s in states]).mean(0)
    return merged


class SerialReptile:
    """Reptile on an nn.Module, task by task.

    Every task of a meta-batch starts from the same inner-optimizer state and the final states are averaged, as the
    task-batched engine does (the official code hands the state from one task to the next instead; identical for
    meta-batch 1).
    """

    def __init__(self, model: nn.Module, learner: Learner, outer_optimizer: torch.optim.Optimizer):
        self.model, self.learner, self.outer_optimizer = model, learner, outer_optimizer
        self.inner_state: dict | None = None

    def adapt(self, tasks: TaskBatch, t: int) -> tuple[nn.Module, torch.optim.Optimizer]:
        """Task t's copy of phi after its inner steps, and its inner optimizer (started from the carried state)."""
        task_model = copy.deepcopy(self.model)
        inner = self.learner.inner_optimizer.torch_optimizer(task_model.parameters())
        if self.inner_state is not None and not getattr(self.learner.inner_optimizer, "reset", False):
            inner.load_state_dict(copy.deepcopy(self.inner_state))  # load_state_dict aliases tensors
        for j in range(tasks.batches.shape[1]):
            idx = tasks.batches[t, j]
            inner.zero_grad()
            self.learner.criterion(task_model(tasks.x[t, idx]), tasks.y[t, idx]).backward()
            inner.step()
        return task_model, inner

    def outer_step(self, tasks: TaskBatch) -> None:
        phi = [p.detach().clone() for p in self.model.parameters()]
        adapted, final_states = [], []
        for t in range(tasks.num_tasks):
            task_model, inner = self.adapt(tasks, t)
            adapted.append([p.detach() for p in task_model.parameters()])
            final_states.append(copy.deepcopy(inner.state_dict()))
        if final_states[0]["state"]:
            self.inner_state = _average_adam_states(final_states)
        self.outer_optimizer.zero_grad()
        for p, p0, *ws in zip(self.model.parameters(), phi, *adapted):
            p.grad = p0 - torch.stack(ws).mean(0)
        self.outer_optimizer.step()

    @torch.no_grad()
    def evaluate(self, tasks: TaskBatch, transductive: bool = False) -> torch.Tensor:
        """Per-task metric of test tasks, one after another (REFERENCE.md section 5): adapt a copy of phi and
        of the inner-optimizer state, then accuracy on the queries (each classified together with the support
        set unless transductive) or, for regression, their MSE. phi and the state are left unchanged."""
        values = []
        for t in range(tasks.num_tasks):
            with torch.enable_grad():
                task_model, _ = self.adapt(tasks, t)
            x_query, y_query = tasks.x_query[t], tasks.y_query[t]
            if self.learner.loss_name == "mse":
                values.append(((task_model(x_query) - y_query) ** 2).mean())
                continue
            if transductive:
                logits = task_model(x_query)
            else:
                logits = torch.stack([task_model(torch.cat([tasks.x[t], q.unsqueeze(0)]))[-1] for q in x_query])
            values.append((logits.argmax(-1) == y_query).double().mean())
        return torch.stack(values).double()
