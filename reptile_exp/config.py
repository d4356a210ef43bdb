"""The typed schema of conf/train.yaml and the allowed ranges of its values.

The schema (a dataclass in Hydra's ConfigStore, first in the defaults list) makes `k=abc` or a
misspelt top-level key fail at composition with the key's name; config_checks.validate then checks
the ranges below and the cross-field constraints.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields, is_dataclass
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, OmegaConf


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
    auto = "auto"


class TaskConv(Enum):
    grouped = "grouped"
    bmm = "bmm"


class Precision(Enum):
    highest = "highest"
    tf32 = "tf32"
    bf16 = "bf16"
    auto = "auto"


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
    task_conv: TaskConv = TaskConv.grouped
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


def bool_keys(schema: type = TrainConfig, prefix: str = "") -> list[str]:
    """The schema's keys typed bool, dotted (logger.log_model); the groups' are their targets' parameters."""
    hints = typing.get_type_hints(schema)
    keys = []
    for f in fields(schema):
        if hints[f.name] is bool:
            keys.append(prefix + f.name)
        elif is_dataclass(hints[f.name]):
            keys += bool_keys(hints[f.name], f"{prefix}{f.name}.")
    return keys


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
    "iterations": Range(1, 2**63 - 1, integer=True),  # an int64 step counter: a larger count would never end
    "k_eval": NATURAL,
    "eval_batch": POSITIVE_INT,
    "eval_tasks": POSITIVE_INT,
    "eval_chunk": NATURAL,
    "eval_memory_mb": Range(0, 2**30, low_open=True),  # up to a petabyte: MB x 2**20 must stay a finite byte count
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
        # sine intervals: float32 curves (a wider x_range overflowed; a huge amplitude was reported as divergence)
        "amplitude": Range(-1e6, 1e6),
        "phase": Range(-1e6, 1e6),
        "x_range": Range(-1e6, 1e6),
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
        "momentum": Range(0, 1, high_open=True),  # from 1 on, the heavy ball's steps grow without bound
        "dampening": Range(0, 1),
        "weight_decay": Range(0),
    },
}
INTERVALS = ("amplitude", "phase", "x_range")  # dataset knobs that are [low, high] pairs
SPLITS = ("train", "val", "test")
WANDB_MODES = ("auto", "online", "offline", "disabled")
# Step sizes and epsilons, checked against the run's dtype (config_checks.check_float_limits): a positive value below
# torch.finfo(dtype).tiny underflows (to 0 or a subnormal), one above .max overflows to inf; either way phi stays put
# or the first step fails. The groups' keys are checked where their option has them.
DTYPE_KNOBS = ("inner_lr", "epsilon", "epsilon_final")
DTYPE_GROUP_KNOBS = {"inner_optimizer": ("lr", "eps"), "outer_optimizer": ("lr", "eps")}
RUN_DIRS = ("hydra.run.dir", "hydra.sweep.dir")  # Hydra's run dirs: like paths.*, never empty (the current folder)


def given_overrides() -> list[str]:
    """The command line's overrides as typed ([] outside a Hydra run), their ${...} unresolved: reading one through
    the Hydra config would resolve it, and `model.hidden=[${nope}]` would fail where it is read."""
    return OmegaConf.to_container(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
