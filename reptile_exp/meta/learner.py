"""The task-batched inner loop: k steps of an inner optimizer from phi on T tasks at once.

The model is used as a pure function of its parameters (task-stacked, GUIDE.md section 2); every task's loss
and gradient come from one gradient of the summed task losses through models.forward_tasks (`grouped`, below),
or from `vmap(grad(...))` over the task dimension for second-order MAML, with grouped_tasks=false, or for a
model forward_tasks cannot batch.
Fast paths (issue 6, measured in docs/benchmarks.md); they change results only by rounding: `fused`
(on by default: an inner loop that nobody differentiates updates its weights and optimizer state in
place, optim.*.step_), `grouped` (on by default: where nothing differentiates twice, all tasks run as
one model over task-grouped channels, models.forward_tasks, and one gradient of the summed task losses
gives every task's gradient, taken with plain autograd unless compiled; vmap is kept for MAML's second
order; `task_conv` picks how it convolves: one grouped convolution, or, "bmm", one batched matmul of im2col
columns, task_layers, issue 21), `compile` (torch.compile of the per-step gradient; "cudagraphs" also replays it
as a CUDA graph) and `precision` ("tf32" tensor cores, "bf16" autocast of the forward pass, so bfloat16 rounding).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad_and_value, vmap

from ..data.tasks import TaskBatch
from ..errors import ConfigError
from ..hardware import cpp_compiler, native_bf16
from ..models import TASK_CONV, forward_tasks, task_batchable
from .optim import Params, State

LOSSES = ("mse", "cross_entropy")
COMPILE = {"none": None, "inductor": "default", "cudagraphs": "reduce-overhead"}  # knob -> torch.compile mode
PRECISIONS = ("highest", "tf32", "bf16")
log = logging.getLogger(__name__)


def check_fast_paths(device: torch.device, compile: str = "none", precision: str = "highest") -> None:
    """One-line ConfigError for a fast path that needs a CUDA GPU on another device, or inductor on a CPU without a
    C++ compiler (it would fail at the first step); a warning for bf16 on a CPU without bfloat16 instructions
    (hardware.native_bf16), where oneDNN emulates it (Omniglot training and evaluation 8x to 9x slower than float32 on
    an AVX2-only CPU, docs/benchmarks.md)."""
    if device.type != "cuda" and (compile == "cudagraphs" or precision == "tf32"):
        knob = f"compile={compile}" if compile == "cudagraphs" else f"precision={precision}"
        raise ConfigError(f"{knob} is invalid on device={device.type}: it needs a CUDA GPU; leave it at its default")
    if device.type == "cpu" and compile == "inductor" and cpp_compiler() is None:
        raise ConfigError(
            "compile=inductor on a CPU needs a C++ compiler and none was found (the CXX environment variable, else "
            "g++): install g++ or leave compile=none"
        )
    native, why = native_bf16(device) if device.type == "cpu" and precision == "bf16" else (True, "")
    if not native:
        log.warning(
            "precision=bf16 on this CPU (%s: no bfloat16 instructions) is many times slower than float32; "
            "leave precision=highest (or precision=auto)",
            why,
        )


def set_precision(device: torch.device, precision: str = "highest") -> None:
    """Float32 matmuls and convolutions on CUDA: exact IEEE ("highest", "bf16") or TF32 tensor cores ("tf32").

    Process-wide (torch.backends); PyTorch's own default runs cuDNN convolutions in TF32, "highest" does not.
    """
    if device.type == "cuda":  # the flags torch.get_float32_matmul_precision (read by inductor) agrees with
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = precision == "tf32"


class Learner:
    """A model, its per-task loss and the inner optimizer.

    loss "cross_entropy" with reduction "sum" is the official code's (REFERENCE.md section 2);
    "mse" (mean) is the sine loss (section 8).
    """

    def __init__(
        self,
        model: nn.Module,
        inner_optimizer,
        loss: str = "mse",
        reduction: str = "mean",
        compile: str = "none",
        precision: str = "highest",
        fused: bool = True,
        grouped: bool = True,
        task_conv: str = "grouped",
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss={loss!r}: choose one of {LOSSES}")
        if reduction not in ("mean", "sum"):
            raise ValueError(f"loss_reduction={reduction!r}: choose 'mean' or 'sum'")
        if task_conv not in TASK_CONV:
            raise ValueError(f"task_conv={task_conv!r}: choose one of {TASK_CONV}")
        if compile not in COMPILE or precision not in PRECISIONS:
            raise ValueError(f"compile={compile!r}, precision={precision!r}: choose from {list(COMPILE)}, {PRECISIONS}")
        self.model, self.inner_optimizer, self.loss_name, self.reduction = model, inner_optimizer, loss, reduction
        self.autocast, self.cudagraphs, self.fused = precision == "bf16", compile == "cudagraphs", fused
        self.grouped, self.task_conv = grouped and task_batchable(model), task_conv
        self._grad = vmap(grad_and_value(self.loss))
        # The inner optimizer stays eager: its integer step count would recompile (or re-record) every step.
        # torch.compile traces torch.func's grad (not autograd.grad): the compiled grouped step uses _grouped_grad.
        traced = self._grouped_grad if self.grouped else self._grad
        self._fast_grad = None if compile == "none" else torch.compile(traced, mode=COMPILE[compile])
        eager = self._grouped_autograd if self.grouped else self._grad
        self._tasks_grad = eager if self._fast_grad is None else self._fast_grad

    def _precision(self, x: Tensor):
        return torch.autocast(x.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()

    def forward(self, params: Params, x: Tensor) -> Tensor:
        """Outputs of one task's model on a batch x (no task dimension)."""
        with self._precision(x):
            return functional_call(self.model, params, (x,)).to(x.dtype)

    def _per_example(self, out: Tensor, y: Tensor) -> Tensor:
        """Unreduced losses, shaped like y (cross entropy: out has one more, last, dimension of classes)."""
        if self.loss_name == "mse":
            return F.mse_loss(out, y, reduction="none")
        return F.cross_entropy(out.flatten(0, -2), y.flatten(), reduction="none").view(y.shape)

    def _reduce(self, losses: Tensor, dim: int) -> Tensor:
        return losses.sum(dim) if self.reduction == "sum" else losses.mean(dim)

    def criterion(self, out: Tensor, y: Tensor) -> Tensor:
        """One task's loss on its batch."""
        return self._reduce(self._per_example(out, y).flatten(), 0)

    def loss(self, params: Params, x: Tensor, y: Tensor) -> Tensor:
        return self.criterion(self.forward(params, x), y)

    def _task_losses(self, weights: Params, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The sum over tasks of each task's loss (its gradient with respect to task t's weights is task t's own
        gradient) and the (T,) losses, from models.forward_tasks."""
        with self._precision(x):
            out = forward_tasks(self.model, weights, x, self.task_conv).to(x.dtype)
        losses = self._reduce(self._per_example(out, y).flatten(1), 1)
        return losses.sum(), losses.detach()

    def _grouped_grad(self, weights: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        grads, (_, losses) = grad_and_value(self._task_losses, has_aux=True)(weights, x, y)
        return grads, losses

    def _grouped_autograd(self, weights: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        """_grouped_grad's gradients from plain autograd on detached leaves, without torch.func's wrapping of every
        call, which dominated the sine model's tiny steps (docs/benchmarks.md). Weights that are themselves
        differentiated (requires_grad) keep torch.func, whose gradients stay differentiable."""
        if any(w.requires_grad for w in weights.values()):
            return self._grouped_grad(weights, x, y)
        leaves = {n: w.detach().requires_grad_() for n, w in weights.items()}
        with torch.enable_grad():  # evaluation runs under no_grad
            total, losses = self._task_losses(leaves, x, y)
            grads = torch.autograd.grad(total, list(leaves.values()))
        return dict(zip(leaves, grads)), losses

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
        j = 0..steps updates (W is updated in place afterwards: read it, do not keep it). Differentiable
        with respect to phi (used by MAML); with `fused` and a phi nobody differentiates, W and the state are
        this call's own copies, updated in place.
        """
        num_tasks = tasks.num_tasks
        steps = tasks.batches.shape[1] if steps is None else steps
        in_place = self.fused and not any(p.requires_grad or _transformed(p) for p in phi.values())
        weights = {n: p.unsqueeze(0).expand(num_tasks, *p.shape) for n, p in phi.items()}
        if in_place:  # copies (with one task the expanded view is contiguous already: no copy)
            weights = {n: w.clone(memory_format=torch.contiguous_format) for n, w in weights.items()}
        elif self._fast_grad is not None:  # one compiled graph for all steps: no stride-0 first step
            weights = {n: w.contiguous() for n, w in weights.items()}
        state = self.inner_optimizer.tile(state, num_tasks, owned=in_place)
        losses = []
        if observe is not None:
            observe(0, weights)
        for j in range(steps):
            if in_place:
                grads, loss = self.gradients(weights, *tasks.minibatch(j))
                state = self.inner_optimizer.step_(weights, grads, state)
            else:
                weights, state, loss = self.step(weights, state, *tasks.minibatch(j))
            losses.append(loss)
            if observe is not None:
                observe(j + 1, weights)
        losses = torch.stack(losses, dim=1) if losses else torch.zeros(num_tasks, 0, device=tasks.x.device)
        return weights, state, losses

    def step(self, weights: Params, state: State, x: Tensor, y: Tensor) -> tuple[Params, State, Tensor]:
        """One inner step of every task from task-stacked weights on its minibatch x, y (T, batch, ...).

        Returns the new weights, the new per-task state and the (T,) losses before the step.
        """
        grads, loss = self.gradients(weights, x, y)
        weights, state = self.inner_optimizer.step(weights, grads, state)
        return weights, state, loss

    def gradients(self, weights: Params, x: Tensor, y: Tensor) -> tuple[Params, Tensor]:
        """Every task's loss gradient at its weights on its minibatch, and the (T,) losses. With
        compile=cudagraphs the gradients live until the next call only."""
        if _transformed(next(iter(weights.values()))):
            return self._grad(weights, x, y)
        if self.cudagraphs:  # a new replay overwrites the previous one's outputs
            torch.compiler.cudagraph_mark_step_begin()
        grads, loss = self._tasks_grad(weights, x, y)
        return grads, loss.clone() if self.cudagraphs else loss

    def predict(self, weights: Params, x: Tensor) -> Tensor:
        """Outputs of every task's adapted model on its own inputs x: (T, n, ...)."""
        if self.grouped and not _transformed(next(iter(weights.values()))):
            with self._precision(x):
                return forward_tasks(self.model, weights, x, self.task_conv).to(x.dtype)
        return vmap(self.forward)(weights, x)


def _transformed(t: Tensor) -> bool:
    """Whether t is seen through an enclosing torch.func transform (MAML differentiates through adapt): the
    compiled step is not differentiable twice, so the step runs eagerly there."""
    return torch._C._functorch.is_functorch_wrapped_tensor(t)
