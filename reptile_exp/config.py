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
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


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


class Compile(Enum):
    none = "none"
    inductor = "inductor"
    cudagraphs = "cudagraphs"


class Precision(Enum):
    highest = "highest"
    tf32 = "tf32"
    bf16 = "bf16"


@dataclass
class LoggerConfig:
    mode: str = MISSING
    project: str = MISSING
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    log_model: bool = True


@dataclass
class PathsConfig:
    data_dir: str = MISSING
    cache_dir: str = MISSING
    log_dir: str = MISSING


@dataclass
class TrainConfig:
    dataset: Any = MISSING  # the groups with a _target_: their keys are checked against its parameters
    model: Any = MISSING
    algorithm: Any = MISSING
    inner_optimizer: Any = MISSING
    outer_optimizer: Any = MISSING
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
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
    protocols: list[Any] = field(default_factory=list)
    eval_chunk: int = 0
    eval_memory_mb: float = 2048.0
    transductive: bool = False
    compile: Compile = Compile.none
    precision: Precision = Precision.highest
    fused_inner: bool = True
    grouped_tasks: bool = True
    threads: int = 0
    keep_host_memory: bool = True
    deterministic: bool = False
    eval_every: int = 1000
    eval_every_tasks: int = 100
    objective_split: str = "test"
    synthetic_data: bool = False
    log_every: int = 100
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    resume: str | None = None
    overwrite: bool = False
    evaluate_only: bool = False
    checkpoint: str | None = None
    progress: bool = True


def register_schema() -> None:
    ConfigStore.instance().store(name="train_schema", node=TrainConfig)


@dataclass(frozen=True)
class Range:
    """The allowed values of a numeric knob: [low, high] (open ends when low_open/high_open), finite."""

    low: float | None = None
    high: float | None = None
    integer: bool = False
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        if self.integer and value != int(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a finite number"
        if self.low is not None and self.high is not None:
            return f"{kind} in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {self.low}"
        return kind


POSITIVE_INT, NATURAL, POSITIVE = Range(1, integer=True), Range(0, integer=True), Range(0, low_open=True)
# Every numeric top-level knob of TrainConfig and its range (issue 7).
RANGES = {
    "seed": Range(0, 2**63 - 1, integer=True),
    "k": POSITIVE_INT,
    "inner_batch": POSITIVE_INT,
    "inner_lr": POSITIVE,
    "epsilon": POSITIVE,
    "epsilon_final": Range(0),
    "meta_batch": POSITIVE_INT,
    "iterations": POSITIVE_INT,
    "k_eval": NATURAL,
    "eval_batch": POSITIVE_INT,
    "eval_tasks": POSITIVE_INT,
    "eval_chunk": NATURAL,
    "eval_memory_mb": POSITIVE,
    "eval_every": NATURAL,
    "eval_every_tasks": POSITIVE_INT,
    "log_every": POSITIVE_INT,
    "checkpoint_every": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "threads": NATURAL,
}
# Numeric knobs of the group options, checked wherever an option has them (lists: every element).
GROUP_RANGES = {
    "dataset": {
        "n_way": Range(2, integer=True),
        "k_shot": POSITIVE_INT,
        "train_shots": POSITIVE_INT,
        "val_characters": NATURAL,
        "n_points": POSITIVE_INT,
        "amplitude": Range(),
        "phase": Range(),
        "x_range": Range(),
    },
    "model": {
        "in_features": POSITIVE_INT,
        "out_features": POSITIVE_INT,
        "hidden": POSITIVE_INT,
        "in_channels": POSITIVE_INT,
        "channels": POSITIVE_INT,
        "n_way": Range(2, integer=True),
    },
    "algorithm": {"query_shots": POSITIVE_INT, "tail_shots": NATURAL},
    "inner_optimizer": {"lr": POSITIVE, "betas": Range(0, 1, high_open=True), "eps": POSITIVE},
    "outer_optimizer": {
        "lr": POSITIVE,
        "betas": Range(0, 1, high_open=True),
        "eps": POSITIVE,
        "momentum": Range(0),
        "weight_decay": Range(0),
    },
}
INTERVALS = ("amplitude", "phase", "x_range")  # dataset knobs that are [low, high] pairs
SPLITS = ("train", "val", "test")
WANDB_MODES = ("auto", "online", "offline", "disabled")


def fail(key: str, value: Any, allowed: str) -> None:
    value = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _check_range(key: str, value: Any, allowed: Range) -> None:
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    if not all(v in allowed for v in values):
        fail(key, value, f"must be {allowed}")


def validate(cfg: DictConfig) -> None:
    """Resolution, range and cross-field checks, after composition and before any work (issue 7).

    Raises ConfigError with one line naming the key, its value and the allowed range; the checks
    that need the data (n_way against the classes of a split, shots against the examples per class)
    are the data layer's, at construction and sampling.
    """
    # config_checks.py and protocols.py import ConfigError and the schema from here
    from .config_checks import check_known_keys, check_model_fits_dataset, first_line
    from .protocols import parse

    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        if (e.full_key or "").startswith("model."):
            check_model_fits_dataset(cfg)  # a model made for another dataset reads keys this one lacks
        raise ConfigError(f"{e.full_key or 'config'} cannot be resolved: {first_line(e)}") from None
    for key, allowed in RANGES.items():
        _check_range(key, cfg[key], allowed)
    for group, ranges in GROUP_RANGES.items():
        for key, allowed in ranges.items():
            if key in cfg[group]:
                _check_range(f"{group}.{key}", cfg[group][key], allowed)
    check_known_keys(cfg)
    dataset = cfg.dataset
    for key in INTERVALS:
        value = dataset.get(key)
        if value is not None and (not isinstance(value, ListConfig) or len(value) != 2 or value[0] > value[1]):
            fail(f"dataset.{key}", value, "must be a pair [low, high] with low <= high")
    for group in ("inner_optimizer", "outer_optimizer"):
        betas = cfg[group].get("betas")
        if betas is not None and (not isinstance(betas, ListConfig) or len(betas) != 2):
            fail(f"{group}.betas", betas, "must be a pair")
    if cfg.epsilon_final > cfg.epsilon:
        fail("epsilon_final", cfg.epsilon_final, f"must be between 0 and epsilon={cfg.epsilon}")
    if dataset.get("x_sampling") == "grid":
        if dataset.k_shot > dataset.n_points:
            fail("dataset.k_shot", dataset.k_shot, f"must be <= dataset.n_points={dataset.n_points}")
        for key in ("query_shots", "tail_shots"):  # held out of the grid: the inner loop needs the rest
            if cfg.algorithm.get(key, 0) >= dataset.n_points:
                fail(f"algorithm.{key}", cfg.algorithm[key], f"must be < dataset.n_points={dataset.n_points}")
    if cfg.logger.mode not in WANDB_MODES:
        fail("logger.mode", cfg.logger.mode, f"choose one of {list(WANDB_MODES)}")
    splits = list(cfg.eval_splits)
    if not splits or any(split not in SPLITS for split in splits) or len(set(splits)) < len(splits):
        fail("eval_splits", splits, f"must list one or more of {list(SPLITS)}, each once")
    if cfg.objective_split not in SPLITS:
        fail("objective_split", cfg.objective_split, f"choose from {list(SPLITS)}")
    if cfg.objective_split not in splits:
        fail("objective_split", cfg.objective_split, f"must be one of eval_splits={splits}")
    check_model_fits_dataset(cfg)
    parse(cfg)
