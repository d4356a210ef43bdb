"""The command line's error handling, a helper below the entry point (train.py's `main`).

`run_job` runs one of Hydra's jobs; `command_line` runs Hydra's main. An error the user can fix (ours, a config
Hydra cannot compose, a full disk, device memory exhausted) is printed as one line and exits with status 1. In a
sweep a failed job writes error.txt and reports the penalty instead, so the sweep goes on.
"""

from __future__ import annotations

import argparse
import errno
import logging
import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig

from .atomic import atomic_write_text
from .config_checks import check_given_paths, composition_error
from .errors import ReptileExpError
from .instantiate import target_error
from .report import penalty
from .rundir import HYDRA_RECORD, settle_hydra_record
from .signals import Interrupted, redeliver
from .tracking import shut_down

log = logging.getLogger("reptile_exp")


def user_error(e: Exception) -> str | None:
    """The one-line message of an error the user can fix: ours, a full disk, device memory exhausted."""
    if isinstance(e, ReptileExpError):
        return str(e)
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return (
            f"no space left writing {e.filename or 'a file'} ({e.strerror}); the checkpoints already written are "
            "kept: free disk space (or move paths.log_dir) and re-run the same command to resume"
        )
    if isinstance(e, (IsADirectoryError, NotADirectoryError, FileExistsError)) and e.filename:
        wanted = "file" if isinstance(e, IsADirectoryError) else "folder"
        place = e.filename2 or e.filename  # os.replace(temporary file, its place) names the place second
        return (
            f"{place} is in the way ({e.strerror}): the run keeps a {wanted} there; move it, or use a new run dir "
            "(hydra.run.dir=...)"
        )
    if isinstance(e, InstantiationException) and isinstance(e.__cause__, (ImportError, TypeError)):
        return target_error(e)  # hydra.utils.instantiate called directly (an Optuna pruner)
    if isinstance(e, torch.OutOfMemoryError):
        first = str(e).strip().splitlines()[0] if str(e).strip() else "out of memory"
        return f"out of device memory ({first}); lower meta_batch, or eval_chunk / eval_memory_mb if it was evaluating"
    return None


def run_job(run: Callable[[DictConfig, Path], float], cfg: DictConfig) -> float:
    """One job of Hydra's (a run, or one job of a sweep): run(cfg, its output dir)'s objective; an error the user
    can fix ends it in one line (a sweep's job: error.txt and the penalty instead), a stop signal is re-delivered
    once the run has checkpointed."""
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode.name == "MULTIRUN"
    if not multirun and HydraConfig.get().sweeper.get("params"):  # hparams_search=... without -m
        log.warning("this config holds a search (hydra.sweeper.params), which runs only with -m: one run of its values")
    try:
        if not (out_dir / HYDRA_RECORD).is_dir():  # a new dir: Hydra's record of this job at once
            settle_hydra_record(out_dir, accepted=True)
        objective = run(cfg, out_dir)
    except Interrupted as e:
        log.warning("%s", e)
        shut_down()
        redeliver(e.signum)
    except Exception as e:
        message = user_error(e)
        if message is None:
            raise
        log.error("error: %s", message)
        if multirun:  # the sweep goes on; the sweep summary shows error.txt
            atomic_write_text(out_dir / "error.txt", message + "\n")
            return penalty(cfg)
        sys.exit(1)
    finally:  # refused (or a finished run asked again): the dir keeps the record of the run it holds
        settle_hydra_record(out_dir, accepted=False)
    if multirun:  # it succeeded: an earlier try's error.txt is stale
        (out_dir / "error.txt").unlink(missing_ok=True)
    if multirun and not math.isfinite(objective):  # a NaN would stop an Optuna search
        log.warning("objective %s is not finite; the sweeper gets %s", objective, penalty(cfg))
        return penalty(cfg)
    return objective


def _raised_in_task(e: BaseException) -> bool:
    tb = e.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code is run_job.__code__:
            return True
        tb = tb.tb_next
    return False


def _run_dir_error(e: Exception) -> str | None:
    """One line for a run dir Hydra cannot create or write (before any job runs)."""
    if isinstance(e, OSError) and e.filename:
        return (
            f"cannot write {e.filename} ({e.strerror}), where Hydra puts the run dir; set hydra.run.dir (a sweep: "
            "hydra.sweep.dir) to a writable folder"
        )
    return None


def _launcher_error(e: Exception) -> str | None:
    """One line for a SLURM launcher whose sbatch fails (submitit's error, raised from sbatch's exit status)."""
    cause = e.__cause__
    if isinstance(cause, subprocess.CalledProcessError) and Path(str(cause.cmd[0])).name == "sbatch":
        said = str(cause.stderr or "").strip().splitlines() or [f"exit status {cause.returncode}"]
        return (
            f"launcher=slurm: sbatch failed ({said[-1]}); run on a SLURM login node, with hydra.launcher.* values "
            "its cluster accepts, or use launcher=local or launcher=joblib"
        )
    return None


def _ours(e: Exception) -> str | None:
    """The line of an error of ours raised outside a job (the sweeper's checks), wrapped by Hydra or not."""
    return next((str(err) for err in (e, e.__cause__) if isinstance(err, ReptileExpError)), None)


# Hydra's flags that show something instead of running (--cfg job): the paths are not checked for them.
INFO_FLAGS = {"--help", "-h", "--hydra-help", "--version", "--cfg", "-c", "--info", "-i", "--shell-completion", "-sc"}


def command_line(hydra_main: Callable[[], object]) -> None:
    """Hydra's main (a function decorated with hydra.main), with the errors Hydra and OmegaConf raise while
    composing the config (k=abc, kk=3, dataset=nope), and ours outside a job (a sweeper's settings), printed as one
    line, exit status 1; run()'s bugs keep their traceback. HYDRA_FULL_ERROR=1 shows them all with their traceback."""
    asked = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises composition errors instead of printing a report
    try:
        if not any(w.partition("=")[0] in INFO_FLAGS for w in sys.argv[1:] if w.startswith("-")):
            check_given_paths(sys.argv[1:], os.environ)  # an empty run dir or paths.*: before Hydra makes the run dir
        hydra_main()
    except Exception as e:
        message = (
            None if _raised_in_task(e) else _ours(e) or composition_error(e) or _run_dir_error(e) or _launcher_error(e)
        )
        if message is None or asked == "1":
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        if asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


def at_least(low: float, kind: type = int) -> Callable[[str], float]:
    """An argparse type for the scripts' counts and budgets: a finite kind(text) >= low, else a usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"{text}: give a finite number >= {low}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse
