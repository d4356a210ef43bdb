"""The sweeper's config (hydra.sweeper) and the sampler and pruner choices, in Hydra's ConfigStore.

    hydra/sweeper=reptile_optuna   hydra/sweeper/pruner=none|median|successive_halving|hyperband

The sampler is any Optuna sampler by `_target_` (TPE, seeded, by default); a pruner, any Optuna pruner by `_target_`
too. Pruning steps are outer iterations: a run reports at each periodic evaluation (eval_every). The pruner group
is the only one below hydra/sweeper (hydra-optuna-sweeper has none of that name, so the two never clash).
"""

# no `from __future__ import annotations`: Hydra's scan runs this module before it is in sys.modules, where
# dataclasses would look string annotations up
from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ReptileOptunaSweeperConf:
    _target_: str = "hydra_plugins.reptile_optuna_sweeper.sweeper.ReptileOptunaSweeper"
    _recursive_: bool = False  # the sweeper instantiates the sampler (seeded for the study) and the pruner itself
    defaults: list[Any] = field(default_factory=lambda: [{"pruner": "none"}])
    # TPE, seeded; GPSampler takes the same keys: hydra.sweeper.sampler._target_=optuna.samplers.GPSampler
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": 0, "n_startup_trials": 10}
    )
    pruner: Any = MISSING  # hydra/sweeper/pruner
    # no trial is stopped before this outer iteration (the pruners' n_warmup_steps or min_resource, the first rung);
    # by default the first periodic evaluation. Long runs: about a quarter of `iterations` (the presets set it)
    warmup: Any = "${eval_every}"
    # minimize | maximize, or a list of them (multi-objective: one per entry of `objectives`)
    direction: Any = "minimize"
    # what a trial's job tells Optuna: `objective` (the job's return value: its objective_split metric, or a failed
    # job's finite penalty) or a field of its summary.json (`seconds`, `peak_memory_mb`, `results.val.accuracy_ci95`)
    objectives: list[str] = field(default_factory=lambda: ["objective"])
    # null: a journal file in the sweep dir (<sweep dir>/optuna_journal.log); a file path: a journal file there;
    # a URL (sqlite:///..., postgresql://...): a database
    storage: str | None = None
    study_name: str | None = None  # null: the sweep dir's name
    n_trials: int = 20  # trials of the whole study (every run of the command and every sweeper process on it)
    n_jobs: int = 1  # trials launched together (with launcher=joblib or slurm: at once); a batch waits for its last
    max_failure_rate: float = 0.0  # share of this process's jobs that may raise before the sweep stops
    params: dict[str, str] | None = None  # knob -> choice(...), range(...), interval(...), tag(log, ...)
    trial: int | None = None  # set by the sweeper for each job: the trial the job reports to (never set it yourself)


# Steps are outer iterations; the warm-up is the sweeper's (hydra.sweeper.warmup), so a preset that sets it leaves
# every pruner choosable.
PRUNERS = {
    "none": {"_target_": "optuna.pruners.NopPruner"},
    "median": {
        "_target_": "optuna.pruners.MedianPruner",
        "n_startup_trials": 5,  # trials that finish before any is pruned
        "n_warmup_steps": "${hydra.sweeper.warmup}",
        "interval_steps": 1,
    },
    "successive_halving": {
        "_target_": "optuna.pruners.SuccessiveHalvingPruner",
        "min_resource": "${hydra.sweeper.warmup}",
        "reduction_factor": 4,
        "min_early_stopping_rate": 0,
    },
    "hyperband": {
        "_target_": "optuna.pruners.HyperbandPruner",
        "min_resource": "${hydra.sweeper.warmup}",
        "max_resource": "${iterations}",
        "reduction_factor": 3,
    },
}

store = ConfigStore.instance()
store.store(group="hydra/sweeper", name="reptile_optuna", node=ReptileOptunaSweeperConf, provider="reptile_exp")
for name, node in PRUNERS.items():
    store.store(group="hydra/sweeper/pruner", name=name, node=node, provider="reptile_exp")
