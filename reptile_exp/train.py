"""The single entry point: compose -> build -> meta-train -> evaluate -> report.

    python -m reptile_exp.train [group=option ...] [knob=value ...]     (also: reptile-train)

`run` tells Algorithm 2's story: build the experiment (experiment.py), resume from the run dir's
checkpoint (rundir.py), meta-train, evaluate phi on the test tasks and report (report.py). Each
outer iteration samples a meta-batch of tasks, adapts copies of phi to all of them at once, combines
the adapted weights into a meta-gradient and takes an outer optimizer step with lr eps; then it
logs and checkpoints. `main` is Hydra's entry point; cli.py turns errors into one line.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import checkpoint as ckpt
from . import cli, distributed, fits, protocols, pruning, report, rundir
from .atomic import atomic_write_text
from .config_checks import validate
from .errors import Diverged
from .experiment import Experiment, build
from .signals import Interrupted, StopSignals
from .tracking import MetricsFile, Tracker

log = logging.getLogger("reptile_exp")


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
    exp: Experiment,
    tracker: Tracker,
    checkpointer: ckpt.Checkpointer,
    run_id: str,
    stop: StopSignals,
    trial: pruning.Trial | None = None,
) -> int | None:
    """Algorithm 2: for each outer iteration, adapt to a meta-batch and step phi towards the W_t.

    A run that is an Optuna trial reports each periodic evaluation to it; returns the iteration at which the
    pruner stopped it (its checkpoint written), or None (pruning.py).
    """
    cfg, dataset = exp.cfg, exp.dataset
    if exp.logged_from == 0:  # a fresh run, or a checkpoint from before the window was kept
        exp.loss_sum, exp.logged_from = 0.0, exp.iteration
    # the window of train/loss continues a resumed run's, so its records equal an uninterrupted run's
    loss_sum = torch.full((), exp.loss_sum, device=exp.device, dtype=torch.float64)
    logged_from, clock, timed_from = exp.logged_from, time.time(), exp.iteration
    monitor = protocols.monitor_split(dataset)
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
            check_finite(exp, loss, checkpointer)
            rate = (it - timed_from) / max(time.time() - clock, 1e-9)
            tracker.log({"iteration": it, "train/loss": loss, "train/eps": eps, "train/iters_per_s": rate})
            bar.set_postfix(loss=f"{loss:.4g}", eps=f"{eps:.3g}", refresh=False)
            loss_sum.zero_()
            logged_from, clock, timed_from = it, time.time(), it
        pruned = False
        if cfg.eval_every and it % cfg.eval_every == 0:
            result = report.evaluate_split(exp, monitor, cfg.eval_every_tasks, cfg.seed + 1)
            tracker.log({"iteration": it, **{f"eval/{monitor}_{k}": v for k, v in result.items()}})
            log.info("iteration %d: %s", it, report.periodic_line(exp, monitor, result))
            metric = report.metric_name(dataset)
            pruned = pruning.prune_now(trial, it, f"eval/{monitor}_{metric}", result[metric])
        received = distributed.agree(stop.received)
        if it % cfg.checkpoint_every == 0 or it == cfg.iterations or received or pruned:
            check_finite(exp, None, checkpointer)
            exp.loss_sum, exp.logged_from = loss_sum.item(), logged_from
            path = checkpointer.save(exp.state_dict(run_id, finished=it == cfg.iterations), it)
        bar.update(1)
        if received:
            bar.close()
            raise Interrupted(received, str(path))
        if pruned:
            bar.close()
            return it
    bar.close()
    return None


def check_finite(exp: Experiment, loss: float | None, checkpointer: ckpt.Checkpointer) -> None:
    """Raise Diverged (one line, naming the last good checkpoint) when the loss or phi is not finite."""
    bad_phi = [n for n, p in exp.phi.items() if not torch.isfinite(p).all()]
    if (loss is not None and not math.isfinite(loss)) or bad_phi:
        last = checkpointer.paths()
        kept = f"last good checkpoint {last[0]} kept" if last else "no checkpoint was written yet"
        what = f"phi ({bad_phi[0]})" if bad_phi else f"the inner-loop loss ({loss})"
        raise Diverged(
            f"diverged at iteration {exp.iteration}: {what} is not finite; {kept}; "
            "lower inner_lr or epsilon and re-run in a new run dir"
        )


def run(cfg: DictConfig, out_dir: Path) -> float:
    """Train (or resume) and evaluate one configuration; return the objective for sweepers.

    Launched as several ranks (torchrun, or one SLURM task per GPU), the ranks share every meta-batch;
    rank 0 alone logs, checkpoints and evaluates at the end (distributed.py).
    """
    validate(cfg)
    rank = distributed.setup(cfg.device.value, cfg.meta_batch)
    job_dir, out_dir = out_dir, Path(distributed.from_rank0(str(out_dir)))
    out_dir.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        rundir.claim(out_dir)
    rundir.refuse_blocked(out_dir)
    rundir.refuse_other_kind(cfg, out_dir)
    evaluated = rundir.finished_evaluation(cfg, out_dir)
    if evaluated is not None:
        return evaluated
    exp = build(cfg)
    protocols.parse(cfg, exp.dataset)  # eval_splits and protocols against the data: refused now, not after training
    checkpointer = ckpt.Checkpointer(out_dir / "checkpoints", cfg.keep_checkpoints)
    state, path = rundir.load_for(cfg, checkpointer, cfg.evaluate_only)
    if state is not None:
        rundir.restore(exp, state, path, training=not cfg.evaluate_only)
        log.info("loaded %s (iteration %d)", path, state["iteration"])
    finished = rundir.finished_objective(cfg, out_dir, state)
    if finished is not None:
        return finished
    fits.check(exp, training=not cfg.evaluate_only)  # a step or chunk that cannot fit: one line, nothing allocated
    if rank == 0 and not cfg.evaluate_only:  # before config.yaml: a metrics file that is not ours stops the run here
        MetricsFile(out_dir / "metrics.jsonl").truncate_after(exp.iteration)
    rundir.settle_hydra_record(job_dir, accepted=True)  # the run owns the dir: its Hydra record is the one
    atomic_write_text(out_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    if rank != 0:  # the other ranks only share the meta-training
        if not cfg.evaluate_only:
            with StopSignals() as stop:
                meta_train(exp, distributed.Muted(), distributed.Muted(), None, stop)
        distributed.leave()  # once rank 0 has evaluated and written its summary
        return report.penalty(cfg)  # never read: launchers take rank 0's objective
    run_id = rundir.run_id(out_dir, None if cfg.evaluate_only else state, path)
    name, group, job_type = rundir.run_identity(cfg)
    start = time.time()
    with (
        Tracker(cfg, out_dir, run_id, name, group, "evaluate" if cfg.evaluate_only else job_type) as tracker,
        StopSignals() as stop,
    ):
        trial = None if cfg.evaluate_only else pruning.trial_of_this_run()
        pruned = None if cfg.evaluate_only else meta_train(exp, tracker, checkpointer, run_id, stop, trial)
        if pruned is None:
            results = report.final_evaluation(exp, tracker, out_dir, stop)
            summary = report.summary(exp, tracker, results, start, path if cfg.evaluate_only else None)
        else:  # stopped by the study's pruner: no final evaluation
            summary = trial.summary(pruned, str(exp.device), start)
        summary_path = out_dir / ("evaluation.json" if cfg.evaluate_only else "summary.json")
        tracker.summarize(summary, summary_path)  # last: a run is finished once its summary exists
        if not cfg.evaluate_only and checkpointer.paths():
            tracker.log_model(checkpointer.paths()[0], aliases=["latest", "final"])
    log.info("results in %s", out_dir)
    distributed.leave()
    return float(summary["objective"])


# An absolute config path: "../conf" would be read as the package `conf` when run as the console script.
@hydra.main(version_base="1.3", config_path=str(Path(__file__).resolve().parents[1] / "conf"), config_name="train")
def hydra_main(cfg: DictConfig) -> float:
    """One of Hydra's jobs: run() with its errors as one line (cli.run_job)."""
    return cli.run_job(run, cfg)


def main() -> None:
    """The command line: Hydra's main, with composition errors as one line (cli.command_line)."""
    cli.command_line(hydra_main)


if __name__ == "__main__":
    main()
