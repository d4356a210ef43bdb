"""Functional inner optimizers acting on task-stacked parameters (GUIDE.md section 2).

Parameters are dicts of tensors whose dim 0 is the task; every update is elementwise, so one call
steps all tasks at once. The formulas are torch.optim's, so the serial reference (which uses
torch.optim itself) agrees to rounding. State is a dict of tensors plus an integer step count and
is checkpointed as is. `step` returns new tensors (MAML differentiates through it); `step_` updates
params and state in place with torch's multi-tensor kernels, for an inner loop nobody differentiates
(Learner.adapt with fused=True: one pass over memory per tensor instead of one per elementwise op).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..distributed import task_mean

Params = dict[str, Tensor]
State = dict


class SGD:
    """Plain SGD, W <- W - lr * g."""

    def __init__(self, lr: float):
        self.lr = lr

    def init(self, phi: Params) -> State:
        return {}

    def tile(self, state: State, num_tasks: int, owned: bool = False) -> State:
        return {}

    def merge(self, state: State) -> State:
        return {}

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        return {n: p - self.lr * grads[n] for n, p in params.items()}, state

    def step_(self, params: Params, grads: Params, state: State) -> State:
        """`step` in place."""
        torch._foreach_add_(list(params.values()), [grads[n] for n in params], alpha=-self.lr)
        return state

    def torch_optimizer(self, parameters) -> torch.optim.Optimizer:
        return torch.optim.SGD(parameters, lr=self.lr)


class Adam:
    """Adam as torch.optim.Adam computes it; the paper's inner optimizer with betas (0, 0.999).

    REFERENCE.md section 2: the official code never resets the state, not between tasks nor
    between outer iterations (`reset=False`). Tasks of one meta-batch run in parallel here, so they
    all start from the same state; afterwards the state becomes the mean of their final states
    (first and second moments averaged over tasks; the step count has advanced by the k steps each
    task took). With meta-batch 1 this is exactly the official serial behaviour. `reset=True` starts
    every task from a fresh state.
    """

    def __init__(self, lr: float, betas: tuple[float, float] = (0.0, 0.999), eps: float = 1e-8, reset: bool = False):
        self.lr, self.betas, self.eps, self.reset = lr, tuple(betas), eps, reset

    def init(self, phi: Params) -> State:
        zeros = {n: torch.zeros_like(p) for n, p in phi.items()}
        return {"step": 0, "exp_avg": zeros, "exp_avg_sq": {n: z.clone() for n, z in zeros.items()}}

    def tile(self, state: State, num_tasks: int, owned: bool = False) -> State:
        """Give every task its own copy of the state (fresh when `reset`): views of it, or copies when `owned`
        (for `step_`)."""
        if self.reset:
            state = self.init(state["exp_avg"])

        def expand(d: dict) -> dict:
            views = {n: v.unsqueeze(0).expand(num_tasks, *v.shape) for n, v in d.items()}
            return {n: v.clone(memory_format=torch.contiguous_format) for n, v in views.items()} if owned else views

        return {"step": state["step"], "exp_avg": expand(state["exp_avg"]), "exp_avg_sq": expand(state["exp_avg_sq"])}

    def merge(self, state: State) -> State:
        """Fold per-task states back into one: moments averaged over tasks, as documented above."""
        mean = lambda d: {n: task_mean(v) for n, v in d.items()}  # noqa: E731
        return {"step": state["step"], "exp_avg": mean(state["exp_avg"]), "exp_avg_sq": mean(state["exp_avg_sq"])}

    def step(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        beta1, beta2 = self.betas
        step = state["step"] + 1
        bias1, bias2_sqrt = 1 - beta1**step, (1 - beta2**step) ** 0.5
        new_params, exp_avg, exp_avg_sq = {}, {}, {}
        for n, p in params.items():
            g = grads[n]
            m = state["exp_avg"][n].lerp(g, 1 - beta1)
            v = state["exp_avg_sq"][n] * beta2 + (1 - beta2) * (g * g)
            new_params[n] = p - (self.lr / bias1) * m / (v.sqrt() / bias2_sqrt + self.eps)
            exp_avg[n], exp_avg_sq[n] = m, v
        return new_params, {"step": step, "exp_avg": exp_avg, "exp_avg_sq": exp_avg_sq}

    def step_(self, params: Params, grads: Params, state: State) -> State:
        """`step` in place, in the kernel of torch.optim.Adam(fused=True) (the same formula, one pass per tensor)."""
        step = state["step"] + 1
        names = list(params)
        device = params[names[0]].device
        count = torch.full((), float(step), device=device)  # filled on the device: no host-to-device copy
        torch._fused_adam_(
            [params[n] for n in names],
            [grads[n].contiguous() for n in names],  # the kernel walks every tensor in its params' memory order
            [state["exp_avg"][n] for n in names],
            [state["exp_avg_sq"][n] for n in names],
            [],
            [count] * len(names),
            lr=self.lr,
            beta1=self.betas[0],
            beta2=self.betas[1],
            weight_decay=0.0,
            eps=self.eps,
            amsgrad=False,
            maximize=False,
        )
        return {**state, "step": step}

    def torch_optimizer(self, parameters) -> torch.optim.Optimizer:
        return torch.optim.Adam(parameters, lr=self.lr, betas=self.betas, eps=self.eps, foreach=False)
