"""The run dir: its lock, its W&B identity, the checkpoint a run starts from, and whether it already finished.

Resuming is the run dir's job: a requeued or re-run command finds its newest checkpoint and W&B run
id there (docs/sweeps.md); a finished run or evaluation is not silently redone, nor answered for other settings.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path

import yaml
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .atomic import atomic_write_text
from .config import given_overrides
from .errors import ConfigError, first_line
from .experiment import ADDED, DATASET_LOCATION, fingerprint
from .run_results import DamagedFile, objective_of, read_json, read_yaml

# The knobs a final evaluation's results depend on besides the trained phi (a finished run re-run with others is
# refused, not answered with the old results); `replacement` also draws the test tasks' minibatches
FINAL_EVALUATION = (
    *("eval_tasks", "k_eval", "eval_batch", "eval_splits", "transductive", "protocols", "objective_split"),
    "replacement",
)

log = logging.getLogger("reptile_exp")


def run_identity(cfg: DictConfig) -> tuple[str, str | None, str | None]:
    """W&B run name, group and job type, from the chosen groups (and a sweep's overrides); a sweep's group is
    logger.group when set, else the sweep dir's name."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = hydra_cfg.runtime.choices if hydra_cfg else {}
    name = cfg.name or f"{choices.get('dataset', 'run')}-{choices.get('algorithm', '')}".rstrip("-")
    if hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN":
        overrides = [o for o in given_overrides() if not o.startswith(("hydra", "logger"))]
        return f"{name} {','.join(overrides)}".strip(), cfg.logger.group or Path(hydra_cfg.sweep.dir).name, name
    return name, None, name


_claimed: int | None = None  # the lock's file descriptor


def claim(out_dir: Path) -> None:
    """Hold an exclusive lock on out_dir for the rest of this process: a second run started in the same run dir (two
    commands launched in the same second, the same command twice) is refused instead of mixing both runs' files. The
    lock goes with the process, however it ends, or with the next claim (a sweep's jobs in one process run one after
    another); a file system without locks is warned about and not locked."""
    global _claimed
    if _claimed is not None:
        os.close(_claimed)
        _claimed = None
    try:
        fd = os.open(out_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:  # a folder, or a link to nowhere
        raise ConfigError(
            f"{out_dir / '.lock'} cannot be opened ({e.strerror}): the run locks its dir with that file; remove it, "
            "or use a new run dir (hydra.run.dir=...)"
        ) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 200).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(
            f"hydra.run.dir={out_dir} is in use by another run ({holder}); wait for it to end, or set hydra.run.dir "
            "to another folder"
        ) from None
    except OSError as e:
        log.warning("cannot lock %s (%s): nothing stops a second run from writing into it", out_dir, first_line(e))
        os.close(fd)
        return
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
    _claimed = fd  # kept open (and locked) until the process ends or claims the next run dir


def run_id(out_dir: Path, state: dict | None, path: Path | None = None) -> str:
    """The W&B run id: that of the checkpoint `state` (from `path`) when it is this run dir's own, else the one this
    run dir already used, else new: a run resumed from another run dir's checkpoint gets its own W&B run."""
    own_checkpoint = path is not None and Path(path).resolve().parent == (out_dir / "checkpoints").resolve()
    if state is not None and (path is None or own_checkpoint):
        return state["wandb_run_id"]
    recorded = out_dir / "wandb_run_id"
    if recorded.exists() and recorded.read_text().strip():
        return recorded.read_text().strip()
    new = uuid.uuid4().hex[:12]
    atomic_write_text(recorded, new + "\n")
    return new


def load_for(cfg: DictConfig, checkpointer: ckpt.Checkpointer, evaluate_only: bool):
    """The checkpoint to start from (resume=, checkpoint=, or this run's newest), checked against cfg."""
    knob = "checkpoint" if evaluate_only else "resume"
    source = cfg[knob]
    if evaluate_only and source == "init":
        log.info("evaluating the untrained initialisation (seed=%d)", cfg.seed)
        return None, None
    own = None
    if not evaluate_only:
        try:
            own = checkpointer.latest()
        except ckpt.CheckpointError as e:  # every checkpoint of the run dir is damaged: resume= is the way out
            if source is None:
                raise
            log.warning("%s; starting from resume=%s", e, source)
    loaded = own
    if source is not None:
        try:
            path = ckpt.resolve(source)
            loaded = (ckpt.load(path), path)
        except ckpt.CheckpointError as e:
            raise ckpt.CheckpointError(f"{knob}={source} is invalid: {e}") from None
        if own is not None and own[0]["iteration"] > loaded[0]["iteration"]:  # a requeue, or the same command again
            log.warning("%s is newer than resume=%s: continuing from it", own[1], source)
            loaded = own
    if loaded is None:
        if evaluate_only:
            raise ConfigError("checkpoint=None is invalid: evaluate_only=true needs checkpoint=<file or run dir>")
        return None, None
    state, path = loaded
    if not evaluate_only and state["iteration"] > cfg.iterations:
        raise ckpt.CheckpointError(
            f"checkpoint {path} is at iteration {state['iteration']}, past iterations={cfg.iterations}; resume with "
            "the iterations it was trained to, or pass another checkpoint"
        )
    mine, theirs = fingerprint(cfg), state.get("fingerprint", {})
    if evaluate_only:
        mine, theirs = {"model": mine["model"]}, {"model": theirs.get("model")}
    else:
        _skip_unrecorded(mine, theirs, path)
    # in the fingerprint's order: the top-level knobs first, so the one a user sets is named
    sections = [*mine, *(key for key in theirs if key not in mine)]
    diffs = (ckpt.first_difference(mine.get(key), theirs.get(key), f"{key}.") for key in sections)
    diff = next(filter(None, diffs), None)
    if diff:
        key, ours, stored = diff
        raise ckpt.CheckpointError(
            f"checkpoint {path} was made with another config ({key}: this run has {ours!r}, the checkpoint has "
            f"{stored!r}); resume with the checkpoint's settings or start a new run dir (hydra.run.dir=...)"
        )
    return state, path


def restore(exp, state: dict, path: Path, training: bool) -> None:
    """exp.load_state_dict(state), with a checkpoint whose fingerprint matches but whose entries do not fit this run
    (renamed or resized weights, a missing entry) refused in one line."""
    try:
        exp.load_state_dict(state, training=training)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        words = " ".join(str(e).split())  # torch's state_dict errors put their reason on the second line
        reason = f"no {e} entry" if isinstance(e, KeyError) else words[:160] + "..." * (len(words) > 160)
        raise ckpt.CheckpointError(
            f"checkpoint {path} does not fit this run ({reason}); pass a checkpoint this config wrote, or start a new "
            "run dir (hydra.run.dir=...)"
        ) from None


HYDRA_RECORD = ".hydra"


def pending_record() -> str:
    """This process's folder for Hydra's record of its job (hydra.output_subdir, conf/hydra): the ranks of one job
    (torchrun, a submitit or SLURM job of several tasks) share its dir, and each writes and settles its own."""
    return f"{HYDRA_RECORD}.pending-{os.getpid()}"


OmegaConf.register_new_resolver("reptile_exp.pending_record", pending_record, replace=True)  # conf/hydra


def settle_hydra_record(job_dir: Path, accepted: bool) -> None:
    """Hydra writes a job's record (config.yaml, hydra.yaml, overrides.yaml) into .hydra.pending-<pid>/ before the
    job runs; it becomes the dir's .hydra/ where there is none yet or once the run is accepted (its checks passed), and
    is dropped otherwise: a refused command leaves another run's record as it was (sweeps read a job's overrides there).
    """
    pending, record = job_dir / pending_record(), job_dir / HYDRA_RECORD
    if not pending.is_dir():
        return
    try:
        if accepted or not record.is_dir():
            _not_in_the_way(record, folder=True)
            record.mkdir(exist_ok=True)
            for f in pending.iterdir():
                os.replace(f, record / f.name)  # atomic: ranks settling side by side leave one whole file each
    finally:
        shutil.rmtree(pending, ignore_errors=True)


# What a run writes into its dir (README "What a run writes"): a file or folder of the other kind in one of these
# places would stop the run only when it writes there, perhaps after its training (train.log: Hydra opens it first)
RUN_FOLDERS = ("checkpoints", "plots", "wandb")
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "evaluation.json", "wandb_run_id", "error.txt")


def refuse_blocked(out_dir: Path) -> None:
    """A file where the run keeps a folder, or a folder where it writes a file: refused now, in cli.user_error's
    one line ("... is in the way"), not after the training it would lose."""
    for name in RUN_FOLDERS:
        _not_in_the_way(out_dir / name, folder=True)
    for name in RUN_FILES:
        _not_in_the_way(out_dir / name, folder=False)


def _not_in_the_way(path: Path, folder: bool) -> None:
    if folder and (path.exists() or path.is_symlink()) and not path.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if not folder and path.is_dir():
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))


def refuse_other_kind(cfg: DictConfig, out_dir: Path) -> None:
    """A training and an evaluate-only run never share a dir: the one would overwrite the other's config.yaml,
    metrics, plots and W&B run; nor does a run take a dir whose config.yaml is no run's (a file of someone else's)."""
    written = out_dir / "config.yaml"  # from a run's start, training or evaluation
    if _foreign_config(written):
        raise ConfigError(
            f"hydra.run.dir={out_dir} holds a config.yaml that is not a run's, which this run would overwrite; set "
            "hydra.run.dir to a new folder"
        )
    if cfg.evaluate_only:
        trained = (out_dir / "summary.json").exists() or ckpt.Checkpointer(out_dir / "checkpoints").paths()
        if trained or (written.exists() and not read_yaml(written).get("evaluate_only", False)):
            raise ConfigError(
                f"hydra.run.dir={out_dir} holds a training run, which evaluate_only=true would overwrite; set "
                f"hydra.run.dir to a new folder (checkpoint={out_dir} evaluates this run)"
            )
    elif (out_dir / "evaluation.json").exists() or _says_evaluate_only(written):
        raise ConfigError(
            f"hydra.run.dir={out_dir} holds an evaluate-only run, which training would overwrite; set hydra.run.dir "
            "to a new folder"
        )


def _foreign_config(config: Path) -> bool:
    """Whether config.yaml reads as YAML but not as a run's config (a damaged one, which the run rewrites, is not)."""
    try:
        loaded = yaml.safe_load(config.read_text()) if config.is_file() else None
    except (yaml.YAMLError, UnicodeDecodeError):
        return False
    return loaded is not None and not (isinstance(loaded, dict) and {"dataset", "model", "iterations"} <= loaded.keys())


def _says_evaluate_only(config: Path) -> bool:
    """Whether a run dir's config.yaml is an evaluate-only run's; a damaged one (training rewrites it) is not."""
    try:
        return config.exists() and bool(read_yaml(config).get("evaluate_only"))
    except DamagedFile:
        return False


def finished_evaluation(cfg: DictConfig, out_dir: Path) -> float | None:
    """An evaluate-only run dir that holds a finished evaluation: the same evaluation again returns its objective;
    another one is refused unless overwrite=true (it would replace evaluation.json)."""
    result = out_dir / "evaluation.json"
    if not cfg.evaluate_only or cfg.overwrite or not result.exists():
        return None
    diff = _changed(cfg, out_dir, ("checkpoint", "seed", "dataset", "model", *FINAL_EVALUATION))
    if diff:
        raise ConfigError(
            f"hydra.run.dir={out_dir} holds another evaluation ({diff}); set hydra.run.dir to a new folder, or "
            "overwrite=true to replace it"
        )
    log.info("this evaluation already finished; its results are in %s (overwrite=true to redo it)", result)
    return objective_of(read_json(result), result)


def _changed(cfg: DictConfig, out_dir: Path, keys: tuple[str, ...]) -> str | None:
    """The first of `keys` whose value in cfg differs from the run dir's config.yaml ("key: this command gives <cfg's>,
    the run dir has <recorded>"), the dataset's location aside; None when they agree or there is no config.yaml."""
    written = out_dir / "config.yaml"
    if not written.exists():
        return None
    recorded = read_yaml(written)
    for key in keys:
        mine = OmegaConf.to_container(OmegaConf.masked_copy(cfg, [key]), resolve=True, enum_to_str=True)[key]
        theirs = recorded.get(key)
        if key == "dataset":
            mine, theirs = ({k: v for k, v in d.items() if k not in DATASET_LOCATION} for d in (mine, theirs or {}))
        diff = ckpt.first_difference(mine, theirs, f"{key}.")
        if diff:
            return f"{diff[0]}: this command gives {diff[1]!r}, the run dir has {diff[2]!r}"
    return None


def _skip_unrecorded(mine: dict, theirs: dict, path: Path) -> None:
    """Drop from `mine` the entries an older checkpoint's fingerprint does not hold yet (experiment.ADDED), with a
    warning: they cannot be compared. A checkpoint without a fingerprint stays refused."""
    if not theirs:
        return
    skipped = []
    for dotted in ADDED:
        *parents, key = dotted.split(".")
        here, there = mine, theirs
        for parent in parents:
            here, there = here.get(parent, {}), there.get(parent, {})
        if key in here and isinstance(there, dict) and key not in there:
            del here[key]
            skipped.append(dotted)
    if skipped:
        log.warning(
            "checkpoint %s predates the check of %s: not compared; resume with the settings it was trained with",
            path,
            ", ".join(skipped),
        )


def finished_objective(cfg: DictConfig, out_dir: Path, state: dict | None) -> float | None:
    """The objective of this run dir's finished run when there is nothing left to do, else None.

    A run dir with a summary.json and unfinished training is refused unless overwrite=true; a run an Optuna pruner
    stopped (summary.json's `pruned_at`: pruning.py) has nothing left to do either, so its trial's job, launched again
    by a sweeper that did not learn its end, returns it.
    """
    summary_path = out_dir / "summary.json"
    if cfg.evaluate_only or cfg.overwrite or not summary_path.exists():
        return None
    summary = read_json(summary_path)
    pruned = state is not None and summary.get("pruned_at") == state["iteration"]
    finished = state is not None and state["finished"] and state["iteration"] == cfg.iterations
    diff = None if pruned or not finished else _changed(cfg, out_dir, FINAL_EVALUATION)
    if diff:
        raise ConfigError(
            f"{out_dir} holds a finished run evaluated otherwise ({diff}); evaluate its checkpoint in a new folder "
            f"(evaluate_only=true checkpoint={out_dir} hydra.run.dir=<new folder>), or set overwrite=true to redo its "
            "final evaluation here"
        )
    if pruned or finished:
        log.info(
            "this run already %s; its results are in %s (overwrite=true to redo them)",
            "was pruned" if pruned else "finished",
            summary_path,
        )
        return objective_of(summary, summary_path)
    found = f"its newest checkpoint is at iteration {state['iteration']}" if state else "it has no checkpoint"
    raise ConfigError(
        f"overwrite=false is invalid here: {out_dir} holds a finished run's results (summary.json) and {found}, "
        f"iterations={cfg.iterations}; set overwrite=true to continue and replace them, or use a new hydra.run.dir"
    )
