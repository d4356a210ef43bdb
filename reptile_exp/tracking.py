"""Where a run reports: a JSON-lines metrics file, a JSON summary, and a Weights & Biases run.

W&B mode "auto" is online when credentials exist (WANDB_API_KEY or a netrc entry) and offline
otherwise, so a machine without them never prompts. Every W&B run is finished, with a failure
exit code when the run raised.
"""

from __future__ import annotations

import logging
import netrc
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from . import strict_json
from .atomic import atomic_write_text
from .errors import ConfigError, first_line
from .run_results import MetricsFile

log = logging.getLogger(__name__)


def choose_mode(mode: str, env_mode: str | None, credentials: bool) -> str:
    """The W&B mode rule: an explicit mode is kept; "auto" takes WANDB_MODE (env_mode) when it names a mode,
    else online with credentials and offline without."""
    if mode != "auto":
        return mode
    if env_mode in ("online", "offline", "disabled"):
        return env_mode
    return "online" if credentials else "offline"


def has_credentials(environ: Mapping[str, str]) -> bool:
    """WANDB_API_KEY is set, or the netrc file (NETRC, else ~/.netrc) has an entry for the W&B host."""
    if environ.get("WANDB_API_KEY"):
        return True
    host = environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].rstrip("/")
    try:
        return netrc.netrc(environ.get("NETRC")).authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_mode(mode: str) -> str:
    """Resolve logger.mode "auto" in this process's environment (choose_mode)."""
    return choose_mode(mode, os.environ.get("WANDB_MODE"), has_credentials(os.environ))


class Tracker:
    """Metrics file + W&B run of one job; use as a context manager so the run is always finished."""

    def __init__(
        self,
        cfg: DictConfig,
        out_dir: Path,
        run_id: str,
        name: str,
        group: str | None = None,
        job_type: str | None = None,
    ):
        self.cfg, self.out_dir, self.run_id, self.name = cfg, Path(out_dir), run_id, name
        self.group, self.job_type = group, job_type
        self.metrics = MetricsFile(self.out_dir / "metrics.jsonl")
        self.mode = wandb_mode(cfg.logger.mode)
        self.run = None

    def __enter__(self) -> Tracker:
        if self.mode == "disabled":
            return self
        import wandb

        try:
            self.run = wandb.init(
                project=self.cfg.logger.project,
                entity=self.cfg.logger.entity,
                dir=str(self.out_dir),
                id=self.run_id,
                name=self.name,
                group=self.group or self.cfg.logger.group,
                job_type=self.job_type,
                tags=list(self.cfg.logger.tags),
                config=OmegaConf.to_container(self.cfg, resolve=True, enum_to_str=True),
                mode=self.mode,
                resume="allow",
                settings=wandb.Settings(quiet=True, console="off", init_timeout=120),
            )
        except (wandb.errors.Error, ValueError) as e:  # no API key, no server that answers, a value W&B refuses
            first = first_line(e)
            fix = "fix the logger.* value it names (project, entity, group, tags), or use logger.mode=disabled"
            if self.mode != "offline" and isinstance(e, wandb.errors.Error):
                fix = (
                    "log in (wandb login, or WANDB_API_KEY) and check the network, or use logger.mode=offline and "
                    f"upload later with wandb sync; or {fix}"
                )
            raise ConfigError(f"logger.mode={self.mode}: W&B did not start ({first}); {fix}") from None
        if self.mode == "offline":
            offline_run = Path(self.run.dir).parent  # run.dir is the run's files/ folder
            log.info("W&B offline run in %s; upload it later with: wandb sync %s", offline_run, offline_run)
        return self

    def log(self, record: dict[str, Any]) -> None:
        self.metrics.append(record)
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "iteration"}, step=record["iteration"])

    def log_images(self, images: dict[str, Path], iteration: int) -> None:
        if self.run is not None:
            import wandb

            self.run.log({k: wandb.Image(str(p)) for k, p in images.items()}, step=iteration)

    def log_model(self, path: Path, aliases: list[str]) -> None:
        if self.run is not None and self.cfg.logger.log_model:
            import wandb

            artifact = wandb.Artifact(f"model-{self.run_id}", type="model")
            artifact.add_file(str(path), name="checkpoint.pt")
            self.run.log_artifact(artifact, aliases=aliases)

    def summarize(self, summary: dict[str, Any], path: Path) -> None:
        atomic_write_text(path, strict_json.dumps(summary, indent=2) + "\n")
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if not isinstance(v, (dict, list))})

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.run is not None:
            self.run.finish(exit_code=0 if exc_type is None else 1)
            self.run = None


def shut_down() -> None:
    """Stop W&B's service so it writes out what it holds (the offline run's exit record). Its atexit hook does this
    on a normal exit; a re-delivered SIGTERM ends the process without running atexit hooks."""
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()
