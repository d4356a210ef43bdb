"""Pruning (issue 20; docs/sweeps.md "Pruning"): a run that is a trial of the project's Optuna sweeper
(hydra_plugins/reptile_optuna_sweeper) reports the metric of each periodic evaluation (`eval_every`) to its trial
and stops training when the study's pruner says so.

The sweeper hands every job its trial number as the override `hydra.sweeper.trial=N`, so the job (and a requeued
SLURM job, which re-runs the same config) re-attaches to that trial in the study's storage: `storage` and
`study_name` below are how both sides find it. Only rank 0 reports; `prune_now` tells every rank its answer
(distributed.agree), so all ranks stop at the same iteration.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from . import distributed

log = logging.getLogger("reptile_exp")
JOURNAL = "optuna_journal.log"  # the study's default storage, in the sweep dir


def storage(url: str | None, sweep_dir: str | Path) -> Any:
    """The study's storage: an RDB URL (`sqlite:///...`, `postgresql://...`) as given; otherwise a journal file
    (JournalStorage(JournalFileBackend), several processes and SLURM jobs on a shared file system), by default
    <sweep dir>/optuna_journal.log."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    if url is not None and "://" in url:
        return optuna.storages.RDBStorage(url)
    path = Path(url) if url is not None else Path(sweep_dir) / JOURNAL
    path.parent.mkdir(parents=True, exist_ok=True)
    return optuna.storages.JournalStorage(JournalFileBackend(str(path)))


def study_name(name: str | None, sweep_dir: str | Path) -> str:
    """The study's name: hydra.sweeper.study_name, by default the sweep dir's name."""
    return name or Path(sweep_dir).name


class Trial:
    """This run's Optuna trial: report(value, iteration) and ask the study's pruner (Trial.report/should_prune)."""

    def __init__(self, trial: Any):
        self.trial = trial
        self.last: tuple[str, float] | None = None  # the last reported metric's name and value

    def should_prune(self, iteration: int, name: str, value: float) -> bool:
        self.trial.report(value, iteration)
        self.last = (name, value)
        return self.trial.should_prune()

    def summary(self, iteration: int, device: str, start: float) -> dict:
        """summary.json of a pruned run: `pruned_at`, and the last reported metric as its objective."""
        name, value = self.last
        log.info("pruned at iteration %d (%s %.4g); its checkpoint is kept", iteration, name, value)
        return {
            "objective": value,
            "objective_name": name,
            "pruned_at": iteration,
            "iterations": iteration,
            "seconds": time.time() - start,
            "device": device,
            "results": {},
        }


def trial_of_this_run() -> Trial | None:
    """The trial this run reports to (hydra.sweeper.trial, set by the sweeper for each job), or None."""
    if not HydraConfig.initialized():
        return None
    sweeper: DictConfig = HydraConfig.get().sweeper
    number = OmegaConf.select(sweeper, "trial", default=None)
    if number is None:
        return None
    import optuna

    sweep_dir = HydraConfig.get().sweep.dir
    store = storage(sweeper.storage, sweep_dir)
    name = study_name(sweeper.study_name, sweep_dir)
    # the sweeper samples; this side only reports and asks the pruner (RandomSampler: nothing to set up)
    study = optuna.load_study(
        study_name=name, storage=store, sampler=optuna.samplers.RandomSampler(), pruner=instantiate(sweeper.pruner)
    )
    trial_id = store.get_trial_id_from_study_id_trial_number(store.get_study_id_from_name(name), int(number))
    log.info("Optuna trial %d of study %s: reporting every periodic evaluation", number, name)
    return Trial(optuna.trial.Trial(study, trial_id))


def prune_now(trial: Trial | None, iteration: int, name: str, value: float) -> bool:
    """Whether every rank stops training here: rank 0 reports to its trial and asks the pruner; the other ranks
    (trial None) get its answer. Called by every rank after each periodic evaluation."""
    asked = trial is not None and trial.should_prune(iteration, name, value)
    return distributed.agree(1 if asked else None) is not None
