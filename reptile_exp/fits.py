"""Whether one outer step and one evaluation chunk fit in the device's memory, checked before the run allocates
them (issue 22): a configuration that cannot fit is refused in one line naming the knob, the estimate and what
is available (memory.py), instead of growing until the kernel kills it. The estimates are upper bounds of the same
kind as the evaluation chunk's (evaluate.task_bytes); values that fit run as before."""

from __future__ import annotations

import math

import torch

from . import protocols
from .evaluate import DRAW_BLOCK, task_bytes
from .experiment import Experiment
from .memory import available_bytes, require
from .meta.algorithms import MAML
from .report import eval_chunk, eval_task_bytes, shots, top_level


def check(exp: Experiment, training: bool) -> None:
    """Refuse a meta_batch (training) or an eval_chunk / eval_memory_mb (evaluation, under every protocol) that cannot
    fit; where a single task cannot, name what makes one task big instead."""
    cfg, have = exp.cfg, available_bytes(exp.device)
    if training:
        per_task = step_bytes(exp)
        require(per_task, "one training task", "lower k, inner_batch or the dataset's sizes", exp.device, have)
        fit = f"lower meta_batch (about {have // per_task:,} fit)"
        require(cfg.meta_batch * per_task, f"meta_batch={cfg.meta_batch}: one outer step", fit, exp.device, have)
    knob = f"eval_chunk={cfg.eval_chunk}" if cfg.eval_chunk else f"eval_memory_mb={cfg.eval_memory_mb}"
    top = top_level(exp)  # the periodic evaluation's settings (and its eval_every_tasks), then each protocol's
    periodic = cfg.eval_every_tasks if training and cfg.eval_every else 0
    settings = {(top.k_shot, top.eval_batch, top.k_eval): ("", max(cfg.eval_tasks, periodic))}
    for p in protocols.parse(cfg):
        settings.setdefault((p.k_shot, p.eval_batch, p.k_eval), (f"protocol {p.name}: ", cfg.eval_tasks))
    for (k_shot, batch, steps), (where, tasks) in settings.items():
        block = min(DRAW_BLOCK, tasks)  # drawn ahead of a chunk (evaluate.task_chunks)
        with shots(exp.dataset, k_shot):
            per_task, chunk = eval_task_bytes(exp, batch, steps), eval_chunk(exp, tasks, batch, steps)
            ahead = block * exp.dataset.draw_bytes(steps, batch, replacement=cfg.replacement, evaluation=True)
        what = f"{where}k_eval={steps}, eval_batch={batch}: one test task"
        require(per_task, what, "lower k_eval, eval_batch or the dataset's sizes", exp.device, have)
        require(ahead, f"{where}{block} test tasks drawn at once", "lower the dataset's sizes", exp.device, have)
        fix = f"lower {knob.partition('=')[0]}"
        require(chunk * per_task + ahead, f"{knob}: one evaluation chunk of {chunk} tasks", fix, exp.device, have)
        kept = f"{tasks} test tasks: their results, kept to the end of the evaluation"
        require(tasks * results_bytes(exp, steps), kept, "lower eval_tasks (or eval_every_tasks)", exp.device, have)


def results_bytes(exp: Experiment, k_eval: int) -> int:
    """What an evaluation keeps of each task to its end (evaluate.evaluate_split): a float64 value per mode (plain,
    transductive) and its concatenated copies; for regression the MSE curve, k_eval + 1 values, and its float64 copy."""
    curve = (k_eval + 1) * (2 * exp.dtype.itemsize + 8) if exp.dataset.kind == "regression" else 0
    return 2 * 3 * 8 + curve


def step_bytes(exp: Experiment) -> int:
    """One task's share of an outer step: its sampled examples (sampled_bytes), what drawing them passes through (the
    dataset's draw_bytes: random keys, the minibatch schedule's among them) and its adaptation (second-order MAML
    keeps every inner step's activations for the outer gradient)."""
    cfg, data = exp.cfg, exp.dataset
    query = exp.algorithm.query_shots
    drawn = data.draw_bytes(cfg.k, cfg.inner_batch, query, cfg.replacement)
    examples = cfg.inner_batch + query * (data.n_way if data.kind == "classification" else 1)
    steps_kept = cfg.k if isinstance(exp.algorithm, MAML) and not exp.algorithm.first_order else 1
    adaptation = steps_kept * task_bytes(exp.learner, exp.phi, data.input_shape, examples)
    return sampled_bytes(data, cfg.k, cfg.inner_batch, query, exp.dtype) + drawn + adaptation


def sampled_bytes(data, k: int, inner_batch: int, query_shots: int, dtype: torch.dtype) -> int:
    """The bytes of one training task as the sampler returns it in dtype (x, y, the k minibatches of indices, the
    query examples), from the dataset's shapes without drawing it (a check must not draw random numbers)."""
    if data.kind == "classification":
        n, query, label = data.n_way * data.train_shots, data.n_way * query_shots, 8  # int64 labels
    else:
        n, query, label = data.points(query_shots) - query_shots, query_shots, dtype.itemsize
    example = math.prod(data.input_shape) * dtype.itemsize + label
    return (n + query) * example + 8 * k * inner_batch
