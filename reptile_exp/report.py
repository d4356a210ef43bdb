"""The report: evaluation of phi on the test tasks (REFERENCE.md section 5), figures and the summary.

`evaluate_split` scores phi on a split's tasks (fine-tune k_eval steps, then the query metric, with a
95% confidence interval); `final_evaluation` does so for every split of eval_splits and draws the
figures; `summary` is what a finished run reports: summary.json and the `final/...` metrics.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import plots
from .evaluate import chunk_size, evaluate
from .experiment import Experiment
from .signals import Interrupted, StopSignals
from .tracking import Tracker

log = logging.getLogger("reptile_exp")


def eval_chunk(exp: Experiment, num_tasks: int) -> int:
    """Test tasks adapted together when evaluating num_tasks: eval_chunk, or what fits in eval_memory_mb."""
    cfg, dataset = exp.cfg, exp.dataset
    # the most inputs a task puts through the model at once: its support and queries (the inner minibatches, the
    # support plus one query, or the queries alone); sine: the minibatch or the query grid
    examples = (
        dataset.n_way * (dataset.k_shot + 1)
        if dataset.kind == "classification"
        else max(cfg.eval_batch, getattr(dataset, "n_points", 0))
    )
    return chunk_size(
        exp.learner, exp.phi, num_tasks, dataset.input_shape, examples, cfg.eval_memory_mb, cfg.eval_chunk
    )


def evaluate_split(
    exp: Experiment, split: str, num_tasks: int, seed: int, curve: bool = False, stop: StopSignals | None = None
) -> dict:
    """Evaluate phi on num_tasks tasks of split; the same seed gives the same tasks on every device.

    With `stop` (the final evaluation): a progress bar, and a stop signal ends it between chunks (Interrupted).
    """
    cfg, dataset = exp.cfg, exp.dataset
    with tqdm(
        total=num_tasks,
        disable=stop is None or not cfg.progress,
        dynamic_ncols=True,
        desc=f"evaluate {split}",
        unit="task",
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    ) as bar:

        def on_chunk(tasks: int) -> None:
            bar.update(tasks)
            if stop is not None and stop.received:
                raise Interrupted(stop.received, None)

        return evaluate(
            exp.learner,
            exp.phi,
            exp.inner_state,
            dataset,
            split,
            num_tasks,
            cfg.k_eval,
            cfg.eval_batch,
            torch.Generator().manual_seed(seed),
            eval_chunk(exp, num_tasks),
            transductive=cfg.transductive,
            curve=curve,
            on_chunk=on_chunk,
        )


def metric_name(dataset) -> str:
    return "mse" if dataset.kind == "regression" else "accuracy"


def fmt(result: dict, metric: str) -> str:
    scale = 100 if metric == "accuracy" else 1
    return f"{scale * result[metric]:.4g} +- {scale * result[metric + '_ci95']:.2g}"


def final_evaluation(exp: Experiment, tracker: Tracker, out_dir: Path, stop: StopSignals) -> dict:
    """Evaluate every split of eval_splits (REFERENCE.md section 5) and draw the figures."""
    cfg, metric = exp.cfg, metric_name(exp.dataset)
    results = {}
    for i, split in enumerate(cfg.eval_splits):
        results[split] = evaluate_split(exp, split, cfg.eval_tasks, cfg.seed + 2 + i, curve=True, stop=stop)
        log.info("%s %s: %s", split, metric, fmt(results[split], metric))
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    images = {"learning_curve": plots.learning_curve(tracker.metrics.read(), plot_dir / "learning_curve.png")}
    if exp.dataset.kind == "regression":
        images["sine_fit"] = plots.sine_fit(
            exp.learner,
            exp.phi,
            exp.inner_state,
            exp.dataset,
            torch.Generator().manual_seed(cfg.seed + 99),
            plot_dir / "sine_fit.png",
            steps=(0, 1, cfg.k_eval),
        )
    tracker.log_images({k: v for k, v in images.items() if v is not None}, exp.iteration)
    return results


def summary(exp: Experiment, tracker: Tracker, results: dict, start: float, checkpoint: Path | None) -> dict:
    """What a finished run reports (summary.json): the objective, every split's results, iterations, time,
    device, the evaluated checkpoint; logs each split's scalar results as `final/<split>_<key>`."""
    cfg, metric = exp.cfg, metric_name(exp.dataset)
    tracker.log(
        {
            "iteration": exp.iteration,
            **{f"final/{s}_{k}": v for s, r in results.items() for k, v in r.items() if not isinstance(v, list)},
        }
    )
    return {
        "objective": results[cfg.objective_split][metric],
        "objective_name": f"{cfg.objective_split}/{metric}",
        "iterations": exp.iteration,
        "seconds": time.time() - start,
        "device": str(exp.device),
        "results": results,
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


def penalty(cfg: DictConfig) -> float:
    """The finite value a failed or diverged job reports to a sweeper (worst possible metric)."""
    return 0.0 if "root" in cfg.dataset else 1e6
