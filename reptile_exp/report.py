"""The report: evaluation of phi on the test tasks (REFERENCE.md section 5), figures and the summary.

`evaluate_split` scores phi on a split's tasks under one protocol (fine-tune k_eval steps, then the
query metric, with a 95% confidence interval); `final_evaluation` does so for every protocol
(protocols.py: test-time K, transduction, eval batch, k_eval) and every split of eval_splits, and
draws the figures; `summary` is what a finished run reports: summary.json and the `final/...` metrics.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

from . import plots, protocols
from .errors import Diverged
from .evaluate import chunk_size, evaluate_modes, task_bytes
from .experiment import Experiment
from .measure import run_peak_memory_mb
from .protocols import Protocol
from .signals import Interrupted, StopSignals
from .tracking import Tracker

log = logging.getLogger("reptile_exp")


def eval_examples(exp: Experiment, eval_batch: int | None = None) -> int:
    """The most inputs a test task puts through the model at once: its inner minibatch (eval_batch: an eval_batch
    above the support set cycles through it), or its support and one query per class (which cover the support plus
    one query, or the queries alone); sine: the minibatch or the query points (the grid, or k_shot fresh points)."""
    dataset = exp.dataset
    if dataset.kind == "classification":
        task = dataset.n_way * (dataset.k_shot + 1)
    else:
        task = dataset.points(evaluation=True) - (dataset.k_shot if dataset.x_sampling == "uniform" else 0)
    return max(eval_batch or exp.cfg.eval_batch, task)


def eval_task_bytes(exp: Experiment, eval_batch: int | None = None, k_eval: int | None = None) -> int:
    """One test task's memory (eval_batch, k_eval: default the knobs): its adaptation (evaluate.task_bytes of
    eval_examples inputs) and its draw (the dataset's draw_bytes: the task, its random keys, its minibatch
    schedule of k_eval x eval_batch indices)."""
    batch = eval_batch or exp.cfg.eval_batch
    steps = exp.cfg.k_eval if k_eval is None else k_eval
    adaptation = task_bytes(exp.learner, exp.phi, exp.dataset.input_shape, eval_examples(exp, batch))
    return adaptation + exp.dataset.draw_bytes(steps, batch, replacement=exp.cfg.replacement, evaluation=True)


def eval_chunk(exp: Experiment, num_tasks: int, eval_batch: int | None = None, k_eval: int | None = None) -> int:
    """Test tasks adapted together when evaluating num_tasks (eval_batch, k_eval: default the knobs): eval_chunk, or
    what fits in eval_memory_mb."""
    per_task = eval_task_bytes(exp, eval_batch, k_eval)
    return chunk_size(per_task, num_tasks, exp.cfg.eval_memory_mb, exp.cfg.eval_chunk)


def evaluate_split(
    exp: Experiment,
    split: str,
    num_tasks: int,
    seed: int,
    curve: bool = False,
) -> dict:
    """Evaluate phi on num_tasks tasks of split under the top-level knobs (its k_shot is the dataset's, see
    `shots`); the same seed gives the same tasks on every device."""
    return evaluate_protocols(exp, split, num_tasks, seed, [top_level(exp)], curve)[0]


def top_level(exp: Experiment) -> Protocol:
    """The protocol of the top-level knobs (k_shot: the dataset's), which periodic evaluations use."""
    cfg = exp.cfg
    return Protocol("default", exp.dataset.k_shot, cfg.transductive, cfg.eval_batch, cfg.k_eval)


def periodic_line(exp: Experiment, split: str, result: dict) -> str:
    """The console's line for a periodic evaluation (describe)."""
    cfg = exp.cfg
    metric = metric_name(exp.dataset)
    return describe(split, result, metric, cfg.eval_every_tasks, top_level(exp), False, synthetic(cfg))


def synthetic(cfg: DictConfig) -> bool:
    """Whether the run's images are random (synthetic_data=true, debug=smoke): its accuracies mean nothing."""
    return bool(cfg.synthetic_data) and "root" in cfg.dataset


def evaluate_protocols(
    exp: Experiment,
    split: str,
    num_tasks: int,
    seed: int,
    group: list[Protocol],
    curve: bool = False,
    stop: StopSignals | None = None,
) -> list[dict]:
    """One result per protocol of `group`, protocols that differ only in transduction: they score the same tasks
    after one shared adaptation (evaluate_modes). With `stop` (the final evaluation): a progress bar, and a stop
    signal ends it between chunks (Interrupted)."""
    cfg, first = exp.cfg, group[0]
    with tqdm(
        total=num_tasks,
        disable=stop is None or not cfg.progress,
        dynamic_ncols=True,
        desc=f"evaluate {split}" + ("" if first.name == "default" else f" ({', '.join(p.name for p in group)})"),
        unit="task",
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    ) as bar:

        def on_chunk(tasks: int) -> None:
            bar.update(tasks)
            if stop is not None and stop.received:
                raise Interrupted(stop.received, None)

        return evaluate_modes(
            exp.learner,
            exp.phi,
            exp.inner_state,
            exp.dataset,
            split,
            num_tasks,
            first.k_eval,
            first.eval_batch,
            torch.Generator().manual_seed(seed),
            eval_chunk(exp, num_tasks, first.eval_batch, first.k_eval),
            modes=tuple(p.transductive for p in group),
            curve=curve,
            on_chunk=on_chunk,
            replacement=cfg.replacement,
        )


def metric_name(dataset) -> str:
    return "mse" if dataset.kind == "regression" else "accuracy"


def describe(
    split: str, result: dict, metric: str, tasks: int, protocol: Protocol, named: bool, synthetic: bool
) -> str:
    """The console's line for one split under one protocol, e.g. `test MSE 0.502 (95% CI +-0.044 over 1,000 tasks,
    32 steps)` or `1shot_transductive: test accuracy 97.6% (95% CI +-0.14 points over 10,000 tasks, 1-shot, 50
    steps, transductive)`; one task has no interval (`1 task, no CI`); runs on synthetic images say their numbers
    mean nothing."""
    value, ci = result[metric], result[metric + "_ci95"]
    if metric == "accuracy":
        score, ci_text = f"accuracy {100 * value:.4g}%", f"+-{100 * ci:.2g} points"
    else:
        score, ci_text = f"{metric.upper()} {value:.4g}", f"+-{ci:.2g}"
    setting = [f"{protocol.k_shot}-shot"] if metric == "accuracy" else []
    setting += [f"{protocol.k_eval} steps"] + (["transductive"] if protocol.transductive else [])
    spread = f"95% CI {ci_text} over {tasks:,} tasks" if tasks > 1 else "1 task, no CI"
    line = f"{split} {score} ({spread}, {', '.join(setting)})"
    if synthetic:
        line += " [synthetic random images: not a result]"
    return f"{protocol.name}: {line}" if named else line


@contextmanager
def shots(dataset, k_shot: int) -> Iterator[None]:
    """The dataset's test tasks hold k_shot support examples per class while inside (a protocol's K)."""
    saved, dataset.k_shot = dataset.k_shot, k_shot
    try:
        yield
    finally:
        dataset.k_shot = saved


def shared_adaptation(listed: list[Protocol]) -> list[list[Protocol]]:
    """The protocols grouped by (k_shot, eval_batch, k_eval), in order: a group differs only in transduction, so
    its protocols share one adaptation per task (the paper's transductive and plain rows of one K)."""
    groups: dict[tuple, list[Protocol]] = {}
    for p in listed:
        groups.setdefault((p.k_shot, p.eval_batch, p.k_eval), []).append(p)
    return list(groups.values())


DIVERGED_FIX = (
    "the checkpoints are kept: lower k_eval and re-run with hydra.run.dir=<this run dir>, or evaluate_only=true "
    "checkpoint=<this run dir> with a lower inner_lr"
)


def final_evaluation(exp: Experiment, tracker: Tracker, out_dir: Path, stop: StopSignals) -> dict:
    """Evaluate every protocol on every split of eval_splits (REFERENCE.md section 5; the paper's Tables 1 and 2
    score one training under several) and draw the figures.

    Returns {protocol name: {split: results, "k_shot", "transductive", "eval_batch", "k_eval", "seconds"}}, in the
    order listed ("seconds": the evaluation its group shared). Split i is evaluated with seed + 2 + i under every
    protocol: the same test tasks as a single-protocol run.
    """
    cfg, metric = exp.cfg, metric_name(exp.dataset)
    listed, results = protocols.parse(cfg, exp.dataset), {}
    for group in shared_adaptation(listed):
        started, splits = time.time(), [{} for _ in group]
        with shots(exp.dataset, group[0].k_shot):
            for i, split in enumerate(cfg.eval_splits):
                scored = evaluate_protocols(exp, split, cfg.eval_tasks, cfg.seed + 2 + i, group, curve=True, stop=stop)
                for protocol, result, by_split in zip(group, scored, splits):
                    if not math.isfinite(result[metric]):  # regression only: accuracies are always finite
                        fix = "lower k_eval or inner_lr" if cfg.evaluate_only else DIVERGED_FIX
                        raise Diverged(
                            f"the evaluation diverged: {split} {metric} is {result[metric]} after k_eval="
                            f"{protocol.k_eval} steps (protocol {protocol.name}); {fix}"
                        )
                    by_split[split] = result
                    named = bool(cfg.protocols)
                    line = describe(split, result, metric, cfg.eval_tasks, protocol, named, synthetic(cfg))
                    log.info("%s", line)
        for protocol, by_split in zip(group, splits):
            settings = {k: v for k, v in asdict(protocol).items() if k != "name"}
            results[protocol.name] = {**by_split, **settings, "seconds": time.time() - started}
    results = {p.name: results[p.name] for p in listed}
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
    """What a finished run reports (summary.json): the objective (the first protocol's), the first protocol's
    results per split (`results`), every protocol's (`protocols`), iterations, time, device, peak memory
    (measure.run_peak_memory_mb), the evaluated checkpoint. Logs each scalar result as
    `final/<protocol>/<split>_<key>`, or `final/<split>_<key>` when the run has no protocol list."""
    cfg, metric = exp.cfg, metric_name(exp.dataset)
    first = next(iter(results.values()))
    tracker.log(
        {
            "iteration": exp.iteration,
            **{
                f"final/{f'{name}/' if cfg.protocols else ''}{split}_{k}": v
                for name, protocol in results.items()
                for split in cfg.eval_splits
                for k, v in protocol[split].items()
                if not isinstance(v, list)
            },
        }
    )
    return {
        "objective": first[cfg.objective_split][metric],
        "objective_name": f"{cfg.objective_split}/{metric}",
        "iterations": exp.iteration,
        "seconds": time.time() - start,
        "device": str(exp.device),
        "peak_memory_mb": run_peak_memory_mb(exp.device),
        "results": {split: first[split] for split in cfg.eval_splits},
        "protocols": results,
        "checkpoint": None if checkpoint is None else str(checkpoint),
    }


def penalty(cfg: DictConfig) -> float:
    """The finite value a failed or diverged job reports to a sweeper (worst possible metric)."""
    return 0.0 if "root" in cfg.dataset else 1e6
