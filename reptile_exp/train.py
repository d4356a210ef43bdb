"""The single entry point: compose -> build -> meta-train -> evaluate -> report.

    python -m reptile_exp.train [group=option ...] [knob=value ...]

The loop reads like the paper's Algorithm 2: sample a meta-batch of tasks, adapt copies of phi to
all of them at once, combine the adapted weights into a meta-gradient, take an outer optimizer
step with lr eps, log, checkpoint.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import checkpoint as ckpt
from . import distributed, plots
from .atomic import atomic_write_text
from .config import ConfigError, ReptileExpError, composition_error, register_schema, validate
from .evaluate import chunk_size, evaluate
from .host_memory import keep_host_memory
from .meta.learner import Learner, check_fast_paths, set_precision
from .schedule import LinearAnneal
from .signals import Interrupted, StopSignals, redeliver
from .tracking import MetricsFile, Tracker

log = logging.getLogger("reptile_exp")
register_schema()


class Diverged(ReptileExpError):
    pass


@dataclass
class Experiment:
    """Everything built from the config: the objects of Algorithm 2 and their mutable state."""

    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    dataset: object
    learner: Learner
    algorithm: object
    outer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    task_generator: torch.Generator
    inner_state: dict
    iteration: int = 0

    @property
    def phi(self) -> dict[str, torch.Tensor]:
        return dict(self.learner.model.named_parameters())

    def state_dict(self, run_id: str, finished: bool) -> dict:
        rng = {"torch": torch.get_rng_state(), "tasks": self.task_generator.get_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "version": 1,
            "iteration": self.iteration,
            "phi": self.learner.model.state_dict(),
            "outer_optimizer": self.outer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "inner_state": self.inner_state,
            "rng": rng,
            "wandb_run_id": run_id,
            "finished": finished,
            "fingerprint": fingerprint(self.cfg),
        }

    def load_state_dict(self, state: dict, training: bool = True) -> None:
        self.learner.model.load_state_dict(state["phi"])
        self.inner_state = _to_device(state["inner_state"], self.device)
        self.iteration = state["iteration"]
        if training:
            self.outer.load_state_dict(state["outer_optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["rng"]["cuda"])
            self.task_generator.set_state(state["rng"]["tasks"])


def _to_device(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


TRAINING_KEYS = ("k", "inner_batch", "meta_batch", "epsilon", "epsilon_final", "iterations", "replacement", "seed")


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must share with the run that loads it: model, data and algorithm settings."""
    dataset = {
        k: v
        for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
        if k not in ("root", "download", "cache", "cache_dir")
    }
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": dataset,
        "algorithm": OmegaConf.to_container(cfg.algorithm, resolve=True),
        "inner_optimizer": OmegaConf.to_container(cfg.inner_optimizer, resolve=True),
        "dtype": cfg.dtype.value,
        "synthetic_data": cfg.synthetic_data,
        # the outer loop and eps schedule: a resumed run must continue the same schedule
        "training": {key: cfg[key] for key in TRAINING_KEYS},
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: no CUDA GPU is visible here; use device=auto or device=cpu")
    return torch.device(name)


def build(cfg: DictConfig) -> Experiment:
    """Instantiate dataset, model, inner/outer optimizers, eps schedule and task sampler."""
    device, dtype = resolve_device(cfg.device.value), getattr(torch, cfg.dtype.value)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_host_memory and device.type == "cpu":
        keep_host_memory()
    torch.manual_seed(cfg.seed)
    dataset = build_dataset(cfg).to(device)
    model = _instantiate(cfg.model).to(device=device, dtype=dtype)
    inner = _instantiate(cfg.inner_optimizer)
    loss = "mse" if dataset.kind == "regression" else "cross_entropy"
    fast = {"compile": cfg.compile.value, "precision": cfg.precision.value}
    check_fast_paths(device, fast["compile"], fast["precision"])
    set_precision(device, fast["precision"])
    learner = Learner(
        model, inner, loss, cfg.loss_reduction.value, **fast, fused=cfg.fused_inner, grouped=cfg.grouped_tasks
    )
    outer = _instantiate(cfg.outer_optimizer)(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(outer, LinearAnneal(cfg.epsilon, cfg.epsilon_final, cfg.iterations))
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    state = inner.init({n: p.detach() for n, p in model.named_parameters()})
    return Experiment(
        cfg, device, dtype, dataset, learner, _instantiate(cfg.algorithm), outer, scheduler, generator, state
    )


def build_dataset(cfg: DictConfig):
    """The task distribution of cfg.dataset; random images of its shape when synthetic_data=true."""
    if cfg.synthetic_data and "root" in cfg.dataset:
        from .data.fewshot import synthetic_like

        d = cfg.dataset
        return synthetic_like(get_class(d._target_), d.n_way, d.k_shot, d.train_shots, seed=cfg.seed)
    return _instantiate(cfg.dataset)


def _instantiate(node: DictConfig, *args):
    """hydra.utils.instantiate, re-raising our own one-line errors unwrapped from Hydra's."""
    try:
        return instantiate(node, *args)
    except InstantiationException as e:
        if isinstance(e.__cause__, ReptileExpError):
            raise e.__cause__ from None
        raise


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
    """Evaluate phi on num_tasks tasks of split; the same seed gives the same tasks.

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
            torch.Generator(device=exp.device).manual_seed(seed),
            eval_chunk(exp, num_tasks),
            transductive=cfg.transductive,
            curve=curve,
            on_chunk=on_chunk,
        )


def _metric(dataset) -> str:
    return "mse" if dataset.kind == "regression" else "accuracy"


def outer_step(exp: Experiment) -> torch.Tensor:
    """One outer iteration of Algorithm 2: sample a meta-batch, adapt to it, step phi with lr eps.

    Returns this rank's (T, k) inner-loop losses, still on the device: nothing here waits for the device.
    """
    cfg = exp.cfg
    tasks = exp.dataset.sample_train(
        cfg.meta_batch, cfg.k, cfg.inner_batch, exp.task_generator, cfg.replacement, exp.algorithm.query_shots
    )[distributed.shard(cfg.meta_batch)].to(exp.device, exp.dtype)  # every rank draws all, adapts its share
    phi = exp.phi
    g, exp.inner_state, losses = exp.algorithm.meta_gradient(
        exp.learner, {n: p.detach() for n, p in phi.items()}, tasks, exp.inner_state
    )
    for n, p in phi.items():
        p.grad = g[n]
    exp.outer.step()
    exp.scheduler.step()
    exp.iteration += 1
    return losses


def meta_train(
    exp: Experiment, tracker: Tracker, checkpointer: ckpt.Checkpointer, run_id: str, stop: StopSignals
) -> None:
    """Algorithm 2: for each outer iteration, adapt to a meta-batch and step phi towards the W_t."""
    cfg, dataset = exp.cfg, exp.dataset
    loss_sum, logged_from, clock = torch.zeros((), device=exp.device, dtype=torch.float64), exp.iteration, time.time()
    monitor = "val" if "val" in getattr(dataset, "splits", {}) else "test"
    bar = tqdm(
        total=cfg.iterations,
        initial=exp.iteration,
        disable=not cfg.progress,
        dynamic_ncols=True,
        desc="meta-train",
        mininterval=1.0 if sys.stderr.isatty() else 30.0,
    )
    while exp.iteration < cfg.iterations:
        eps = exp.outer.param_groups[0]["lr"]
        losses = outer_step(exp)
        loss_sum += distributed.task_mean(losses.detach().mean(1))
        it = exp.iteration
        if it % cfg.log_every == 0 or it == cfg.iterations:
            loss = (loss_sum / (it - logged_from)).item()
            _check_finite(exp, loss, checkpointer)
            rate = (it - logged_from) / max(time.time() - clock, 1e-9)
            tracker.log({"iteration": it, "train/loss": loss, "train/eps": eps, "train/iters_per_s": rate})
            bar.set_postfix(loss=f"{loss:.4g}", eps=f"{eps:.3g}", refresh=False)
            loss_sum.zero_()
            logged_from, clock = it, time.time()
        if cfg.eval_every and it % cfg.eval_every == 0:
            result = evaluate_split(exp, monitor, cfg.eval_every_tasks, cfg.seed + 1)
            tracker.log({"iteration": it, **{f"eval/{monitor}_{k}": v for k, v in result.items()}})
        received = distributed.agree(stop.received)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations or received:
            _check_finite(exp, None, checkpointer)
            path = checkpointer.save(exp.state_dict(run_id, finished=it == cfg.iterations), it)
        bar.update(1)
        if received:
            bar.close()
            raise Interrupted(received, str(path))
    bar.close()


def _check_finite(exp: Experiment, loss: float | None, checkpointer: ckpt.Checkpointer) -> None:
    bad_phi = [n for n, p in exp.phi.items() if not torch.isfinite(p).all()]
    if (loss is not None and not math.isfinite(loss)) or bad_phi:
        last = checkpointer.paths()
        kept = f"last good checkpoint {last[0]} kept" if last else "no checkpoint was written yet"
        what = f"phi ({bad_phi[0]})" if bad_phi else f"the inner-loop loss ({loss})"
        raise Diverged(
            f"diverged at iteration {exp.iteration}: {what} is not finite; {kept}; "
            "lower inner_lr or epsilon and re-run in a new run dir"
        )


def final_evaluation(exp: Experiment, tracker: Tracker, out_dir: Path, stop: StopSignals) -> dict:
    """Evaluate every split of eval_splits (REFERENCE.md section 5) and draw the figures."""
    cfg = exp.cfg
    results = {}
    for i, split in enumerate(cfg.eval_splits):
        results[split] = evaluate_split(exp, split, cfg.eval_tasks, cfg.seed + 2 + i, curve=True, stop=stop)
        log.info("%s %s: %s", split, _metric(exp.dataset), _fmt(results[split], _metric(exp.dataset)))
    plot_dir = out_dir / "plots"
    plot_dir.mkdir(exist_ok=True)
    images = {"learning_curve": plots.learning_curve(tracker.metrics.read(), plot_dir / "learning_curve.png")}
    if exp.dataset.kind == "regression":
        generator = torch.Generator(device=exp.device).manual_seed(cfg.seed + 99)
        images["sine_fit"] = plots.sine_fit(
            exp.learner,
            exp.phi,
            exp.inner_state,
            exp.dataset,
            generator,
            plot_dir / "sine_fit.png",
            steps=(0, 1, cfg.k_eval),
        )
    tracker.log_images({k: v for k, v in images.items() if v is not None}, exp.iteration)
    return results


def _fmt(result: dict, metric: str) -> str:
    scale = 100 if metric == "accuracy" else 1
    return f"{scale * result[metric]:.4g} +- {scale * result[metric + '_ci95']:.2g}"


def _run_identity(cfg: DictConfig, out_dir: Path) -> tuple[str, str | None, str | None]:
    """W&B run name, group and job type, from the chosen groups (and a sweep's overrides)."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = hydra_cfg.runtime.choices if hydra_cfg else {}
    name = cfg.name or f"{choices.get('dataset', 'run')}-{choices.get('algorithm', '')}".rstrip("-")
    if hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN":
        overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra", "logger"))]
        return f"{name} {','.join(overrides)}".strip(), Path(hydra_cfg.sweep.dir).name, name
    return name, None, name


def _run_id(out_dir: Path, state: dict | None) -> str:
    """The W&B run id: the checkpoint's, else the one this output dir already used, else new."""
    path = out_dir / "wandb_run_id"
    if state is not None:
        return state["wandb_run_id"]
    if path.exists():
        return path.read_text().strip()
    run_id = uuid.uuid4().hex[:12]
    atomic_write_text(path, run_id + "\n")
    return run_id


def _load_for(cfg: DictConfig, out_dir: Path, checkpointer: ckpt.Checkpointer, evaluate_only: bool):
    """The checkpoint to start from (resume=, checkpoint=, or this run's newest), checked against cfg."""
    source = cfg.checkpoint if evaluate_only else cfg.resume
    if evaluate_only and source == "init":
        log.info("evaluating the untrained initialisation (seed=%d)", cfg.seed)
        return None, None
    if source is not None:
        path = ckpt.resolve(source)
        loaded = (ckpt.load(path), path)
    else:
        loaded = checkpointer.latest()
    if loaded is None:
        if evaluate_only:
            raise ConfigError(
                f"checkpoint=None is invalid: evaluate_only=true needs checkpoint=<file or run dir> "
                f"(no checkpoint in {checkpointer.directory})"
            )
        return None, None
    state, path = loaded
    mine, theirs = fingerprint(cfg), state.get("fingerprint", {})
    if evaluate_only:
        mine, theirs = {"model": mine["model"]}, {"model": theirs.get("model")}
    diff = ckpt.first_difference(mine, theirs)
    if diff:
        raise ckpt.CheckpointError(
            f"checkpoint {path} was made with another config ({diff}); use the same settings or start a new run dir"
        )
    return state, path


def run(cfg: DictConfig, out_dir: Path) -> float:
    """Train (or resume) and evaluate one configuration; return the objective for sweepers.

    Launched as several ranks (torchrun, or one SLURM task per GPU), the ranks share every meta-batch;
    rank 0 alone logs, checkpoints and evaluates at the end (distributed.py).
    """
    validate(cfg)
    rank = distributed.setup(cfg.device.value, cfg.meta_batch)
    out_dir = Path(distributed.from_rank0(str(out_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    exp = build(cfg)
    checkpointer = ckpt.Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints)
    state, path = _load_for(cfg, out_dir, checkpointer, cfg.evaluate_only)
    metric = _metric(exp.dataset)
    summary_path = out_dir / ("evaluation.json" if cfg.evaluate_only else "summary.json")
    if state is not None:
        exp.load_state_dict(state, training=not cfg.evaluate_only)
        log.info("loaded %s (iteration %d)", path, state["iteration"])
    if not cfg.evaluate_only and summary_path.exists() and not cfg.overwrite:
        if state is not None and state["finished"] and state["iteration"] == cfg.iterations:
            log.info("this run already finished; its results are in %s (overwrite=true to redo them)", summary_path)
            return json.loads(summary_path.read_text())["objective"]
        found = f"its newest checkpoint is at iteration {state['iteration']}" if state else "it has no checkpoint"
        raise ConfigError(
            f"overwrite=false is invalid here: {out_dir} holds a finished run's results (summary.json) and {found}, "
            f"iterations={cfg.iterations}; set overwrite=true to continue and replace them, or use a new hydra.run.dir"
        )
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if rank != 0:  # the other ranks only share the meta-training
        if not cfg.evaluate_only:
            with StopSignals() as stop:
                meta_train(exp, distributed.Muted(), distributed.Muted(), None, stop)
        return penalty(cfg)  # never read: launchers take rank 0's objective
    if not cfg.evaluate_only:
        MetricsFile(out_dir / "metrics.jsonl").truncate_after(exp.iteration)
    run_id = _run_id(out_dir, None if cfg.evaluate_only else state)
    name, group, job_type = _run_identity(cfg, out_dir)
    start = time.time()
    with (
        Tracker(cfg, out_dir, run_id, name, group, "evaluate" if cfg.evaluate_only else job_type) as tracker,
        StopSignals() as stop,
    ):
        if not cfg.evaluate_only:
            meta_train(exp, tracker, checkpointer, run_id, stop)
        results = final_evaluation(exp, tracker, out_dir, stop)
        objective = results[cfg.objective_split][metric]
        summary = {
            "objective": objective,
            "objective_name": f"{cfg.objective_split}/{metric}",
            "iterations": exp.iteration,
            "seconds": time.time() - start,
            "device": str(exp.device),
            "results": results,
            "checkpoint": str(path) if cfg.evaluate_only else None,
        }
        tracker.log(
            {
                "iteration": exp.iteration,
                **{f"final/{s}_{k}": v for s, r in results.items() for k, v in r.items() if not isinstance(v, list)},
            }
        )
        tracker.summarize(summary, summary_path)  # last: a run is finished once its summary exists
        if not cfg.evaluate_only and checkpointer.paths():
            tracker.log_model(checkpointer.paths()[0], aliases=["latest", "final"])
    log.info("results in %s", out_dir)
    return float(objective)


def penalty(cfg: DictConfig) -> float:
    """The finite value a failed or diverged job reports to a sweeper (worst possible metric)."""
    return 0.0 if "root" in cfg.dataset else 1e6


def _user_error(e: Exception) -> str | None:
    """The one-line message of an error the user can fix: ours, a full disk, device memory exhausted."""
    if isinstance(e, ReptileExpError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"no space left writing {e.filename or 'a file'} ({e.strerror}); the checkpoints already written are "
            "kept: free disk space (or move paths.log_dir) and re-run the same command to resume"
        )
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, (ImportError, TypeError)):
        reason = " ".join(str(e).replace(", set env var HYDRA_FULL_ERROR=1 to see chained exception", "").split())
        return f"{reason}; check the _target_ and keys of that config group"
    if isinstance(e, torch.OutOfMemoryError):
        first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        return f"out of device memory ({first}); lower meta_batch, or eval_chunk / eval_memory_mb if it was evaluating"
    return None


# An absolute config path: "../conf" would be read as the package `conf` when run as the console script.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train")
def _hydra_main(cfg: DictConfig) -> float:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    try:
        objective = run(cfg, out_dir)
    except Interrupted as e:
        log.warning("%s", e)
        redeliver(e.signum)
    except Exception as e:
        message = _user_error(e)
        if message is None:
            raise
        log.error("error: %s", message)
        if multirun:  # the sweep goes on; the sweep summary shows error.txt
            atomic_write_text(out_dir / "error.txt", message + "\n")
            return penalty(cfg)
        sys.exit(1)
    if multirun and not math.isfinite(objective):  # a NaN would stop an Optuna search
        log.warning("objective %s is not finite; the sweeper gets %s", objective, penalty(cfg))
        return penalty(cfg)
    return objective


def _raised_in_task(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is _hydra_main.__wrapped__.__code__:
            return True
        tb = tb.tb_next
    return False


def main() -> None:
    """The command line (also `reptile-train`): Hydra's entry point, with the errors Hydra and OmegaConf
    raise while composing the config (k=abc, kk=3, dataset=nope) printed as one line, exit status 1.
    HYDRA_FULL_ERROR=1 shows them with their traceback instead."""
    asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises composition errors instead of printing a report
    try:
        _hydra_main()
    except Exception as e:
        message = None if _raised_in_task(e) else composition_error(e)  # a bug in run() keeps its traceback
        if message is None or asked == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        if asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


if __name__ == "__main__":
    main()
