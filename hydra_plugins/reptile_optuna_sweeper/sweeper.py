"""The sweep: Optuna's ask/tell loop over Hydra's launcher (issue 20; docs/sweeps.md "Hyperparameter search").

Each batch asks the study for `n_jobs` trials and launches them as one batch of jobs, each in <sweep dir>/<trial
number> with the override hydra.sweeper.trial=<number>, so the job reports its periodic evaluations to its trial
(reptile_exp/pruning.py; a requeued SLURM job re-runs the same overrides). Then it tells Optuna each outcome:
PRUNED when the job's summary.json says `pruned_at`, FAIL when the job raised (or left no value for an objective),
else COMPLETE with the job's values (a failed job's finite penalty included: reptile_exp/cli.py).

The study lives in its storage (reptile_exp.pruning.storage; by default a journal file in the sweep dir): the same
command again continues it up to n_trials trials in all (other overrides or another search space are refused: the
study keeps them in its user attrs; launcher, logger and progress may differ), and trials left RUNNING by a sweeper
process of this host that is gone are launched again (their jobs resume from their checkpoints). Several sweeper
processes may share one study (each ends once the trials the others run on this host have ended). At the end:
<sweep dir>/optimization_results.yaml (the best trial, or the Pareto front, of the trials whose job did not fail)
and optimization_history.png.

The search space, in Hydra's override grammar (hydra.sweeper.params, or a sweep on the command line):
    choice(a, b, ...)            categorical (a, b, ... and glob(...) too)
    range(start, stop[, step])   integers from start to stop, stop INCLUDED (floats if a bound or the step is one)
    interval(a, b)               a float in [a, b]
    tag(log, interval(a, b))     log-uniform (tag(log, range(a, b)): integers, log-uniform)
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import time
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override, Transformer
from hydra.core.plugins import Plugins
from hydra.core.utils import JobReturn
from hydra.errors import InstantiationException
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from reptile_exp.atomic import atomic_write_text
from reptile_exp.errors import ConfigError, fail, first_line
from reptile_exp.run_results import read_json

log = logging.getLogger(__name__)
OWNER = "sweeper"  # trial user attribute: host:pid of the sweeper process that launched it
SETTINGS = "settings"  # study user attribute: what makes its problem (settings)
RUN_ONLY = ("launcher", "logger", "progress")  # overrides that change how jobs run, not what they compute


def distribution(override: Override) -> Any:
    """The Optuna distribution of one swept knob."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    value = override.value()
    log_scale = "log" in getattr(value, "tags", set())
    if override.is_choice_sweep():
        return CategoricalDistribution(list(override.sweep_iterator(transformer=Transformer.encode)))
    try:
        if override.is_range_sweep():
            bounds = (value.start, value.stop, value.step)
            if all(isinstance(b, int) for b in bounds):
                return IntDistribution(value.start, value.stop, log=log_scale, step=value.step)
            return FloatDistribution(value.start, value.stop, log=log_scale, step=None if log_scale else value.step)
        assert override.is_interval_sweep(), override  # Hydra's sweeps: choice (glob too), range, interval
        return FloatDistribution(value.start, value.end, log=log_scale)
    except ValueError as e:
        raise ConfigError(
            f"{override.input_line} is an invalid search range ({first_line(e)}): give low <= high, a step > 0, "
            "and low > 0 under tag(log, ...)"
        ) from e


def search_space(arguments: list[str], parser: OverridesParser) -> dict[str, Override]:
    """The overrides by knob, swept and plain. A later override of a knob replaces an earlier one:
    hydra.sweeper.params come first, so the command line's k=5 fixes k."""
    given: dict[str, Override] = {}
    for override in parser.parse_overrides(arguments):
        given.pop(override.get_key_element(), None)  # the later one goes last: the order jobs and Optuna get
        given[override.get_key_element()] = override
    return given


def settings(given: dict[str, Override], space: dict[str, Any]) -> dict[str, list[str]]:
    """What makes a study's problem, by knob: [the override as given, what is compared (the distribution of a swept
    knob, the value of a fixed one)]; the overrides of RUN_ONLY left out."""
    return {
        key: [o.input_line, repr(space[key] if key in space else o.value())]
        for key, o in given.items()
        if key.split(".")[0].lstrip("+~") not in RUN_ONLY
    }


def difference(held: dict[str, list[str]], now: dict[str, list[str]]) -> tuple[str, str] | None:
    """The first knob whose setting differs: (the study's, this command's), `<default>` where one leaves it out."""
    for key in [*held, *(k for k in now if k not in held)]:
        old, new = held.get(key, [f"{key}=<default>", ""]), now.get(key, [f"{key}=<default>", ""])
        if old[1] != new[1]:
            return old[0], new[0]
    return None


def job_overrides(number: int, params: dict[str, Any], fixed: list[str], report: bool) -> list[str]:
    """A trial's job: its parameters, the plain overrides, its dir (the trial number) and the trial it reports to."""
    where = [f"hydra.sweep.subdir={number}"] + ([f"hydra.sweeper.trial={number}"] if report else [])
    return [*(f"{k}={v}" for k, v in params.items()), *fixed, *where]


def owner() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def launched_by(trial: Any) -> str:
    """Who runs a RUNNING trial: "gone" (a sweeper process of this host that has ended: its job will never be
    told), "alive" (another live sweeper process of this host) or "elsewhere" (another host: unknown)."""
    host, _, pid = str(trial.user_attrs.get(OWNER, "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return "elsewhere"
    if int(pid) == os.getpid():  # a pid reused by this process (containers): the process that had it is gone
        return "gone"
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        return "alive"
    return "alive"


def numeric_fields(summary: dict, prefix: str = "") -> list[str]:
    """The dotted names of a summary.json's numbers (what hydra.sweeper.objectives may name)."""
    names = []
    for key, value in summary.items():
        if isinstance(value, dict):
            names += numeric_fields(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            names.append(f"{prefix}{key}")
    return names


def built(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """hydra.sweeper.<key> (an Optuna sampler or pruner by _target_) instantiated; a bad target or argument is one
    line naming the key and the fix (a sampler set by _target_ keeps the default TPE's other keys, which it may not
    take)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        extra = re.search(r"unexpected keyword argument '(\w+)'", str(e.__cause__ or e))
        if extra:
            name = extra.group(1)
            raise ConfigError(
                f"hydra.sweeper.{key}.{name} is invalid: {node.get('_target_')} takes no {name}; drop it with "
                f"'~hydra.sweeper.{key}.{name}'"
            ) from e
        if isinstance(e.__cause__, ImportError):
            raise ConfigError(
                f"hydra.sweeper.{key}._target_={node.get('_target_')} cannot be imported: give an Optuna {key} class "
                f"(optuna.{key}s.<name>)"
            ) from e
        raise ConfigError(f"hydra.sweeper.{key} is invalid ({first_line(e.__cause__ or e)}): fix its arguments") from e


class ReptileOptunaSweeper(Sweeper):
    """Hydra sweeper on Optuna's ask/tell API (config.py: ReptileOptunaSweeperConf)."""

    def __init__(
        self,
        sampler: DictConfig,
        pruner: DictConfig,
        warmup: int,
        direction: Any,
        objectives: ListConfig,
        storage: str | None,
        study_name: str | None,
        n_trials: int,
        n_jobs: int,
        max_failure_rate: float,
        params: DictConfig | None,
        trial: int | None,
    ) -> None:
        self.sampler, self.pruner, self.warmup = sampler, pruner, warmup  # warmup: read by the pruner's config
        self.directions = [direction] if isinstance(direction, str) else list(direction)
        if any(d not in ("minimize", "maximize") for d in self.directions):
            fail("hydra.sweeper.direction", direction, "give minimize or maximize (a list of them: one per objective)")
        self.objectives = list(objectives)
        self.storage, self.study_name = storage, study_name
        self.n_trials, self.n_jobs, self.max_failure_rate = n_trials, n_jobs, max_failure_rate
        self.params = dict(params or {})
        if trial is not None:
            raise ConfigError(f"hydra.sweeper.trial={trial} is set by the sweeper for each job; leave it out")
        if len(self.directions) != len(self.objectives):
            raise ConfigError(
                f"hydra.sweeper.direction={self.directions} needs one entry per objective: "
                f"hydra.sweeper.objectives={self.objectives}"
            )
        if not 0.0 <= max_failure_rate <= 1.0:
            raise ConfigError(f"hydra.sweeper.max_failure_rate={max_failure_rate} is invalid: a share in [0, 1]")
        for key, value in (("n_trials", n_trials), ("n_jobs", n_jobs)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"hydra.sweeper.{key}={value!r} is invalid: must be an integer >= 1")
        if len(self.directions) > 1 and OmegaConf.select(pruner, "_target_") != "optuna.pruners.NopPruner":
            raise ConfigError(
                f"hydra.sweeper.direction={self.directions} is invalid with a pruner: Optuna prunes single-objective "
                "studies only; add hydra/sweeper/pruner=none"
            )

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.groups = hydra_context.config_loader.repository  # group_exists: a swept config group
        self.parser = OverridesParser.create(config_loader=hydra_context.config_loader)  # glob(...) needs it
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=task_function, config=config
        )

    def check_senses(self, space: dict[str, Any]) -> None:
        """Refuse a direction against the sense of `objective` (an MSE is minimised, an accuracy maximised): the
        penalty a failed job returns (report.penalty, the worst value) would be the best. Not checked when a config
        group (dataset, experiment) is swept: the composed config's dataset may not be the jobs'."""
        from reptile_exp.report import penalty

        if any(self.groups.group_exists(key) for key in space):
            return
        metric, sense, better = (
            ("accuracy", "maximize", "higher") if penalty(self.config) == 0.0 else ("mse", "minimize", "lower")
        )
        for name, direction in zip(self.objectives, self.directions):
            if name == "objective" and direction != sense:
                raise ConfigError(
                    f"hydra.sweeper.direction={direction} is invalid for the objective "
                    f"{self.config.objective_split}/{metric} ({better} is better): use {sense}"
                )

    def study(self, sweep_dir: Path, problem: dict[str, list[str]]) -> Any:
        """The study, created or loaded; a study created here holds `problem` (settings), a loaded one must have
        the same. Its sampler's seed is offset by the trials already in the study, so a continued study draws new
        points rather than its first ones again."""
        import optuna
        from sqlalchemy.exc import SQLAlchemyError

        from reptile_exp import pruning

        self.where = self.storage or str(sweep_dir / pruning.JOURNAL)
        seed = OmegaConf.select(self.sampler, "seed", default=None)
        built(self.sampler, "sampler")  # a bad sampler is refused before the study is made
        pruner = built(self.pruner, "pruner")
        try:
            self.store = pruning.storage(self.storage, sweep_dir)
            if isinstance(self.store, optuna.storages.JournalStorage) and Path(self.where).stat().st_size:
                with open(self.where, "rb") as f:  # Optuna reads past a bad last line (a torn write) and appends
                    json.loads(f.readline())["op_code"]
            study = optuna.create_study(
                study_name=pruning.study_name(self.study_name, sweep_dir),
                storage=self.store,
                pruner=pruner,
                directions=self.directions,
                load_if_exists=True,
            )
        except (SQLAlchemyError, OSError, ValueError, KeyError, TypeError) as e:  # the last 3: a journal's 1st line
            what = "cannot be opened" if isinstance(e, (SQLAlchemyError, OSError)) else "is not an Optuna journal file"
            raise ConfigError(
                f"hydra.sweeper.storage={self.where} {what} ({first_line(e)}): give a journal file (a new one or a "
                "sweep's) in a writable folder, or a database URL (sqlite:///..., postgresql://...)"
            ) from e
        held = [d.name.lower() for d in study.directions]
        if held != self.directions:
            raise ConfigError(
                f"hydra.sweeper.direction={self.directions} is invalid here: study {study.study_name} in its storage "
                f"has direction {held}; use another study_name or storage"
            )
        if SETTINGS in study.user_attrs:
            changed = difference(study.user_attrs[SETTINGS], problem)
            if changed:
                raise ConfigError(
                    f"study {study.study_name} in {self.where} was run with {changed[0]}; this command gives "
                    f"{changed[1]}: use another hydra.sweep.dir or hydra.sweeper.study_name, or the study's settings"
                )
        elif study.trials:
            log.warning("study %s predates its settings record: continued without comparing them", study.study_name)
        else:
            study.set_user_attr(SETTINGS, problem)
        done = len(study.get_trials(deepcopy=False))
        study.sampler = built(self.sampler, "sampler", **({} if seed is None else {"seed": seed + done}))
        return study

    def sweep(self, arguments: list[str]) -> None:
        import optuna

        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        given = search_space([*(f"{k}={v}" for k, v in self.params.items()), *arguments], self.parser)
        space = {key: distribution(o) for key, o in given.items() if o.is_sweep_override()}
        fixed = [o.input_line for o in given.values() if not o.is_sweep_override()]
        self.check_senses(space)
        objectives = [f"hydra.sweeper.objectives=[{','.join(self.objectives)}]", repr(self.objectives)]
        study = self.study(sweep_dir, {**settings(given, space), "hydra.sweeper.objectives": objectives})
        atomic_write_text(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config))  # as Hydra's basic sweeper
        report = len(self.directions) == 1  # Optuna prunes single-objective studies only (checked in __init__)
        log.info(
            "Optuna study %s (%d trials so far) in %s: %s, %s from iteration %s, %s",
            study.study_name,
            len(study.trials),
            self.where,
            type(study.sampler).__name__,
            type(study.pruner).__name__,
            self.warmup,
            self.directions,
        )
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        pending = [t for t in running if launched_by(t) == "gone"]
        if pending:
            numbers = [t.number for t in pending]
            log.info("trials %s were left running by a sweeper process that is gone: launching them again", numbers)
        launched, failures = 0, []
        while True:
            batch = {t.number: t.params for t in pending[: self.n_jobs]}
            pending = pending[self.n_jobs :]
            room = min(self.n_jobs - len(batch), self.n_trials - len(study.get_trials(deepcopy=False)))
            for _ in range(room):
                trial = study.ask(space)
                batch[trial.number] = trial.params
            if not batch:
                break
            for number in batch:
                self.set_attr(study, number, OWNER, owner())
            overrides = [job_overrides(n, params, fixed, report) for n, params in batch.items()]
            returns = self.launcher.launch(overrides, initial_job_idx=min(batch))
            for number, ret in zip(batch, returns):
                failures += self.tell(study, number, ret)
            launched += len(returns)
            if len(failures) > self.max_failure_rate * launched:
                log.error("%d of %d jobs raised (max_failure_rate=%s)", len(failures), launched, self.max_failure_rate)
                raise failures[-1]
        self.wait_for_the_others(study)
        self.write_results(study, sweep_dir)

    @staticmethod
    def wait_for_the_others(study: Any) -> None:
        """Wait until the trials other sweeper processes of this host run on the same study have ended, so every
        process ends with the whole study in its results and sweep summary."""
        import optuna

        def others() -> list[int]:
            running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
            return [t.number for t in running if launched_by(t) == "alive"]

        if others():
            log.info("waiting for trials %s of other sweeper processes on this study", others())
        while others():
            time.sleep(2)

    def set_attr(self, study: Any, number: int, key: str, value: Any) -> None:
        """Set a user attribute of trial `number` (by number: a trial this process did not ask for too)."""
        study_id = self.store.get_study_id_from_name(study.study_name)
        self.store.set_trial_user_attr(self.store.get_trial_id_from_study_id_trial_number(study_id, number), key, value)

    def tell(self, study: Any, number: int, ret: JobReturn) -> list[Exception]:
        """Tell Optuna how trial `number` ended; [the exception] when its job raised (max_failure_rate counts it)."""
        from optuna.trial import TrialState

        try:
            returned = ret.return_value
        except Exception as e:  # the job raised: a bug, not an error the job reports itself (error.txt)
            self.set_attr(study, number, "error", repr(e))
            study.tell(number, state=TrialState.FAIL)
            return [e]
        out = Path(ret.hydra_cfg.hydra.runtime.output_dir)
        summary = read_json(out / "summary.json") if (out / "summary.json").exists() else {}
        if (out / "error.txt").exists():
            self.set_attr(study, number, "error", (out / "error.txt").read_text().strip())
        if "pruned_at" in summary:
            study.tell(number, state=TrialState.PRUNED)
            return []
        if "objective_name" in summary:
            self.set_attr(study, number, "objective_name", summary["objective_name"])  # the figure's axis
        fields = OmegaConf.create(summary)
        values = [returned if name == "objective" else OmegaConf.select(fields, name) for name in self.objectives]
        absent = object()  # a field that holds null is there: only a name summary.json lacks is a typo
        named = [n for n in self.objectives if n != "objective"]
        missing = [n for n in named if OmegaConf.select(fields, n, default=absent) is absent]
        if summary and not (out / "error.txt").exists() and missing:  # a finished job without it: a typo
            raise ConfigError(
                f"hydra.sweeper.objectives: {missing[0]} is not a field of {out}/summary.json; use objective or "
                f"one of its numeric fields: {', '.join(numeric_fields(summary))}"
            )
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
            study.tell(number, [float(v) for v in values])
        else:  # a failed job has no summary.json: nothing to tell for its other objectives
            log.warning("trial %d has no finite value for every objective %s: %s", number, self.objectives, values)
            study.tell(number, state=TrialState.FAIL)
        return []

    def write_results(self, study: Any, sweep_dir: Path) -> None:
        """optimization_results.yaml (the best trial; several objectives: the Pareto front) and the optimisation
        history figure."""
        import optuna

        states = [t.state.name.lower() for t in study.trials]
        results: dict[str, Any] = {
            "name": "reptile_optuna",
            "study_name": study.study_name,
            "trials": {s: states.count(s) for s in dict.fromkeys(states)},
        }
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        ok = [t for t in complete if "error" not in t.user_attrs]  # a failed job's penalty is no result
        if not ok:
            results.update(best_trial=None, note="no trial completed without an error (see sweep_summary.md)")
            log.warning("no trial of study %s completed without an error", study.study_name)
        elif len(self.directions) == 1:
            best = (min if self.directions[0] == "minimize" else max)(ok, key=lambda t: t.value)
            results.update(best_trial=best.number, best_params=best.params, best_value=best.value)
            log.info("best trial %d: %s = %s, %s", best.number, self.objectives[0], best.value, best.params)
        else:
            front = [t for t in study.best_trials if "error" not in t.user_attrs]
            results["solutions"] = [{"trial": t.number, "params": t.params, "values": t.values} for t in front]
            log.info("Pareto front of %d trials: %s", len(front), [t.number for t in front])
        OmegaConf.save(OmegaConf.create(results), sweep_dir / "optimization_results.yaml")
        self.draw_history(study, sweep_dir / "optimization_history.png")

    def draw_history(self, study: Any, path: Path) -> None:
        """The first objective trial by trial (the jobs that failed and returned the penalty left out), each pruned
        trial at the last value it reported, and the best so far."""
        from optuna.trial import TrialState

        from reptile_exp.plots import pyplot

        trials = [t for t in study.trials if "error" not in t.user_attrs]
        done = [(t.number, t.values[0]) for t in trials if t.state == TrialState.COMPLETE]
        pruned = [(t.number, t.value) for t in trials if t.state == TrialState.PRUNED and t.value is not None]
        if not done:
            return
        sign = 1 if self.directions[0] == "minimize" else -1
        best = [(n, sign * min(sign * v for _, v in done[: i + 1])) for i, (n, _) in enumerate(done)]
        plt = pyplot()
        fig, ax = plt.subplots(figsize=(7, 4))
        ax.scatter(*zip(*done), label="complete")
        if pruned:
            ax.scatter(*zip(*pruned), marker="x", label="pruned (its last reported value)")
        ax.step(*zip(*best), where="post", color="C3", label="best so far")
        name = next((t.user_attrs["objective_name"] for t in trials if "objective_name" in t.user_attrs), "")
        ax.set(xlabel="trial", ylabel=f"{self.objectives[0]} {name}".strip(), title=f"study {study.study_name}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
