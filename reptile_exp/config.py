"""The typed schema of conf/train.yaml and the checks run after composition, before any work.

The schema (a dataclass in Hydra's ConfigStore, first in the defaults list) makes `k=abc` or a
misspelt top-level key fail at composition with the key's name; `validate` then checks ranges
and cross-field constraints and raises ConfigError with one line naming key, value and range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig


class ReptileExpError(Exception):
    """An error the user can fix; the entry point prints it as one line, without a traceback."""


class ConfigError(ReptileExpError, ValueError):
    """A config value out of range or inconsistent with another."""


class Device(Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DType(Enum):
    float32 = "float32"
    float64 = "float64"


class Reduction(Enum):
    mean = "mean"
    sum = "sum"


@dataclass
class TrainConfig:
    dataset: Any = MISSING
    model: Any = MISSING
    algorithm: Any = MISSING
    inner_optimizer: Any = MISSING
    outer_optimizer: Any = MISSING
    logger: Any = MISSING
    paths: Any = MISSING
    name: str | None = None
    seed: int = 0
    device: Device = Device.auto
    dtype: DType = DType.float32
    k: int = 5
    inner_batch: int = 10
    inner_lr: float = 0.02
    replacement: bool = False
    loss_reduction: Reduction = Reduction.mean
    epsilon: float = 0.1
    epsilon_final: float = 0.0
    meta_batch: int = 1
    iterations: int = 30000
    k_eval: int = 32
    eval_batch: int = 10
    eval_tasks: int = 1000
    eval_splits: list[str] = field(default_factory=lambda: ["test"])
    eval_chunk: int = 0
    eval_memory_mb: float = 2048.0
    transductive: bool = False
    eval_every: int = 1000
    eval_every_tasks: int = 100
    objective_split: str = "test"
    synthetic_data: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str | None = None
    evaluate_only: bool = False
    checkpoint: str | None = None
    progress: bool = True


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


# key: (lowest allowed, whether the bound is inclusive). Every value must also be finite.
LOWER_BOUNDS = {
    "k": (1, True),
    "inner_batch": (1, True),
    "inner_lr": (0, False),
    "epsilon": (0, False),
    "epsilon_final": (0, True),
    "meta_batch": (1, True),
    "iterations": (1, True),
    "k_eval": (0, True),
    "eval_batch": (1, True),
    "eval_tasks": (1, True),
    "eval_chunk": (0, True),
    "eval_memory_mb": (0, False),
    "eval_every": (0, True),
    "eval_every_tasks": (1, True),
    "log_every": (1, True),
    "checkpoint_every": (1, True),
    "keep_checkpoints": (1, True),
}
SPLITS = ("train", "val", "test")


def _fail(key: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Range and cross-field checks (issue 7); one ConfigError line per problem found first."""
    for key, (low, inclusive) in LOWER_BOUNDS.items():
        value = cfg[key]
        ok = math.isfinite(value) and (value >= low if inclusive else value > low)
        if not ok:
            _fail(key, value, f"must be {'>=' if inclusive else '>'} {low} and finite")
    if cfg.epsilon_final > cfg.epsilon:
        _fail("epsilon_final", cfg.epsilon_final, f"must be between 0 and epsilon={cfg.epsilon}")
    for split in [*cfg.eval_splits, cfg.objective_split]:
        if split not in SPLITS:
            _fail("eval_splits/objective_split", split, f"choose from {list(SPLITS)}")
    if cfg.objective_split not in cfg.eval_splits:
        _fail("objective_split", cfg.objective_split, f"must be one of eval_splits={list(cfg.eval_splits)}")
