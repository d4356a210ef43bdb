"""Few-shot evaluation (REFERENCE.md sections 5 and 8): adapt to test tasks in vectorized chunks.

Every test task starts from phi and the training-time inner-optimizer state; neither is modified.
Classification: accuracy over tasks with a 95% confidence interval, transductive (the N queries
in one batch) or not (each query in its own batch together with the support set, so BatchNorm
sees support + that one query). Regression: MSE on the query points after 0..k_eval steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import torch
from torch import Tensor

from .data.tasks import TaskBatch
from .meta.learner import Learner
from .meta.optim import Params, State
from .models import Conv2dSame

DRAW_BLOCK = 100  # test tasks drawn per sampler call, whatever the chunk: the seed alone fixes the tasks


def ci95(values: Tensor) -> float:
    """Half-width of the normal 95% confidence interval of the mean of per-task values."""
    n = values.numel()
    return 1.96 * values.std(unbiased=True).item() / math.sqrt(n) if n > 1 else float("nan")


def _non_transductive_logits(learner: Learner, weights: Params, x_support: Tensor, x_query: Tensor) -> Tensor:
    """(T, q, n_way): query j of task t classified in one forward pass with all of t's support.

    One query of every task at a time, so a chunk's activations hold n_support + 1 images per task, not q times as
    many (the chunk sizing in report.eval_chunk counts on it).
    """
    logits = [
        learner.predict(weights, torch.cat([x_support, x_query[:, j : j + 1]], dim=1))[:, -1]
        for j in range(x_query.shape[1])
    ]
    return torch.stack(logits, dim=1)


def chunk_size(per_task: int, tasks_per_eval: int, memory_mb: float, requested: int = 0) -> int:
    """Tasks adapted together: `requested`, or as many as fit in memory_mb (per_task bytes each)."""
    if requested:
        return min(requested, tasks_per_eval)
    return max(1, min(tasks_per_eval, int(memory_mb * 2**20 // per_task)))


def task_bytes(learner: Learner, phi: Params, example_shape: tuple, examples: int) -> int:
    """The memory one task's adaptation takes with `examples` inputs through the model at once: its activations
    (from one forward pass in phi's dtype, at its element size) and their gradients, with task_conv=bmm each
    convolution's im2col columns and their gradient, and W, its gradient, Adam's m and v."""
    columns = learner.grouped and learner.task_conv == "bmm"
    weight = next(iter(phi.values()))
    with torch.no_grad():
        probe = torch.zeros(1, *example_shape, device=weight.device, dtype=weight.dtype)
        sizes, cols = [], [0]

        def record(module, inputs, output):
            sizes.append(output.numel())
            if columns and isinstance(module, Conv2dSame):  # (Ho * Wo, k * k * C_in)
                cols.append(output[0, 0].numel() * math.prod(module.kernel_size) * module.in_channels)

        handles = [m.register_forward_hook(record) for m in learner.model.modules() if not list(m.children())]
        try:
            learner.forward(phi, probe)
        finally:
            for h in handles:
                h.remove()
    # every layer's columns are kept for the backward pass, and one layer's gradient of them exists at a time
    numbers_per_example = 3 * (sum(sizes) + math.prod(example_shape)) + sum(cols) + max(cols)
    params = sum(p.numel() for p in phi.values())
    return weight.element_size() * (numbers_per_example * examples + 6 * params)


def task_chunks(
    dataset,
    split: str,
    num_tasks: int,
    steps: int,
    batch: int,
    generator: torch.Generator,
    chunk: int,
    replacement: bool = False,
) -> Iterator[TaskBatch]:
    """num_tasks test tasks in chunks of `chunk`, drawn DRAW_BLOCK at a time, so that every chunk size (memory
    budget, device, transductive or not) evaluates the same tasks."""
    drawn, pending = 0, []
    while drawn < num_tasks or pending:
        while sum(p.num_tasks for p in pending) < chunk and drawn < num_tasks:
            block = min(DRAW_BLOCK, num_tasks - drawn)
            pending.append(dataset.sample_eval(block, steps, batch, generator, split, replacement))
            drawn += pending[-1].num_tasks
        tasks = TaskBatch.cat(pending)
        rest = tasks[chunk:]
        pending = [rest] if rest.num_tasks else []
        yield tasks[:chunk]


def evaluate(
    learner: Learner,
    phi: Params,
    state: State,
    dataset,
    split: str,
    num_tasks: int,
    steps: int,
    batch: int,
    generator: torch.Generator,
    chunk: int,
    transductive: bool = False,
    curve: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    replacement: bool = False,
) -> dict:
    """Mean metric over num_tasks test tasks of `split`, with its 95% CI (`evaluate_modes` with one mode)."""
    modes = (transductive,)
    return evaluate_modes(
        learner,
        phi,
        state,
        dataset,
        split,
        num_tasks,
        steps,
        batch,
        generator,
        chunk,
        modes,
        curve,
        on_chunk,
        replacement,
    )[0]


@torch.no_grad()  # torch.func.grad inside adapt still differentiates (function transforms ignore it)
def evaluate_modes(
    learner: Learner,
    phi: Params,
    state: State,
    dataset,
    split: str,
    num_tasks: int,
    steps: int,
    batch: int,
    generator: torch.Generator,
    chunk: int,
    modes: tuple[bool, ...] = (False,),
    curve: bool = False,
    on_chunk: Callable[[int], None] | None = None,
    replacement: bool = False,
) -> list[dict]:
    """One result per mode of `modes` (transductive or not), each the mean metric over num_tasks test tasks of
    `split` with its 95% CI; the modes share the tasks and their adaptation (only the query pass differs).

    Inner minibatches are drawn with `replacement` or not, as in training. on_chunk(tasks) is called after each chunk
    (a progress bar; it may raise to stop). A result is {"accuracy", "accuracy_ci95"} for classification, {"mse",
    "mse_ci95"} for regression, with `curve` also "mse_curve" (the mean MSE after 0..steps inner steps; regression has
    no transductive mode, so every mode gets the same result).
    """
    per_task, curves = [[] for _ in modes], []
    phi = {n: p.detach() for n, p in phi.items()}
    for tasks in task_chunks(dataset, split, num_tasks, steps, batch, generator, chunk, replacement):
        tasks = tasks.to(tasks.x.device, next(iter(phi.values())).dtype)
        if dataset.kind == "regression":
            steps_mse = []

            def observe(j, weights, tasks=tasks, steps_mse=steps_mse):
                if curve or j == steps:
                    out = learner.predict(weights, tasks.x_query)
                    steps_mse.append(((out - tasks.y_query) ** 2).flatten(1).mean(1))

            learner.adapt(phi, tasks, state, steps, observe=observe)
            for values in per_task:
                values.append(steps_mse[-1])
            curves.append(torch.stack(steps_mse, dim=1))
        else:
            weights, _, _ = learner.adapt(phi, tasks, state, steps)
            for transductive, values in zip(modes, per_task):
                if transductive:
                    logits = learner.predict(weights, tasks.x_query)
                else:
                    logits = _non_transductive_logits(learner, weights, tasks.x, tasks.x_query)
                values.append((logits.argmax(-1) == tasks.y_query).double().mean(1))
        if on_chunk is not None:
            on_chunk(tasks.num_tasks)
    return [_result(dataset, torch.cat(values).double(), curves if curve else None) for values in per_task]


def _result(dataset, values: Tensor, curves: list[Tensor] | None) -> dict:
    """The mean of per-task values with its 95% CI (and the mean MSE curve, for regression)."""
    if dataset.kind == "regression":
        result = {"mse": values.mean().item(), "mse_ci95": ci95(values)}
        if curves is not None:
            result["mse_curve"] = torch.cat(curves).double().mean(0).tolist()
        return result
    return {"accuracy": values.mean().item(), "accuracy_ci95": ci95(values)}
