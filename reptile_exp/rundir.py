"""The run dir: its W&B identity, the checkpoint a run starts from, and whether it already finished.

Resuming is the run dir's job: a requeued or re-run command finds its newest checkpoint and W&B run
id there (docs/sweeps.md); a finished run is not silently redone.
"""

from __future__ import annotations

import json
import logging
import uuid
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from . import checkpoint as ckpt
from .atomic import atomic_write_text
from .errors import ConfigError
from .experiment import ADDED, fingerprint

log = logging.getLogger("reptile_exp")


def run_identity(cfg: DictConfig) -> tuple[str, str | None, str | None]:
    """W&B run name, group and job type, from the chosen groups (and a sweep's overrides); a sweep's group is
    logger.group when set, else the sweep dir's name."""
    hydra_cfg = HydraConfig.get() if HydraConfig.initialized() else None
    choices = hydra_cfg.runtime.choices if hydra_cfg else {}
    name = cfg.name or f"{choices.get('dataset', 'run')}-{choices.get('algorithm', '')}".rstrip("-")
    if hydra_cfg is not None and hydra_cfg.mode.name == "MULTIRUN":
        overrides = [o for o in hydra_cfg.overrides.task if not o.startswith(("hydra", "logger"))]
        return f"{name} {','.join(overrides)}".strip(), cfg.logger.group or Path(hydra_cfg.sweep.dir).name, name
    return name, None, name


def run_id(out_dir: Path, state: dict | None) -> str:
    """The W&B run id: the checkpoint's, else the one this output dir already used, else new."""
    path = out_dir / "wandb_run_id"
    if state is not None:
        return state["wandb_run_id"]
    if path.exists():
        return path.read_text().strip()
    new = uuid.uuid4().hex[:12]
    atomic_write_text(path, new + "\n")
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
        raise ckpt.CheckpointError(
            f"checkpoint {path} was made with another config ({diff}); resume with the checkpoint's settings or "
            "start a new run dir (hydra.run.dir=...)"
        )
    return state, path


def refuse_training_dir(cfg: DictConfig, out_dir: Path) -> None:
    """evaluate_only=true must not write into a training run's dir: its config.yaml, metrics and W&B run would be
    the evaluation's."""
    if not cfg.evaluate_only:
        return
    written = out_dir / "config.yaml"  # a training run's from its start (an evaluation's dir has one too)
    trained = (out_dir / "summary.json").exists() or ckpt.Checkpointer(out_dir / "checkpoints").paths()
    if trained or (written.exists() and not OmegaConf.load(written).get("evaluate_only", False)):
        raise ConfigError(
            f"hydra.run.dir={out_dir} holds a training run, which evaluate_only=true would overwrite; set "
            f"hydra.run.dir to a new folder (checkpoint={out_dir} evaluates this run)"
        )


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
    summary = json.loads(summary_path.read_text())
    pruned = state is not None and summary.get("pruned_at") == state["iteration"]
    if pruned or (state is not None and state["finished"] and state["iteration"] == cfg.iterations):
        log.info(
            "this run already %s; its results are in %s (overwrite=true to redo them)",
            "was pruned" if pruned else "finished",
            summary_path,
        )
        return summary["objective"]
    found = f"its newest checkpoint is at iteration {state['iteration']}" if state else "it has no checkpoint"
    raise ConfigError(
        f"overwrite=false is invalid here: {out_dir} holds a finished run's results (summary.json) and {found}, "
        f"iterations={cfg.iterations}; set overwrite=true to continue and replace them, or use a new hydra.run.dir"
    )
