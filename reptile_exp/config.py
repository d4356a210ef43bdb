"""The typed schema of conf/train.yaml and the checks run after composition, before any work.

The schema (a dataclass in Hydra's ConfigStore, first in the defaults list) makes `k=abc` or a
misspelt top-level key fail at composition with the key's name; `validate` then checks ranges
and cross-field constraints and raises ConfigError with one line naming key, value and range.
"""

from __future__ import annotations

import difflib
import inspect
import math
import re
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.errors import HydraException, MissingConfigException
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException


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


def _fail(key: str, value: Any, allowed: str) -> None:
    value = OmegaConf.to_object(value) if isinstance(value, ListConfig) else value
    raise ConfigError(f"{key}={value!r} is invalid: {allowed}")


def _check_range(key: str, value: Any, allowed: Range) -> None:
    values = list(value) if isinstance(value, (list, ListConfig)) else [value]
    if not all(v in allowed for v in values):
        _fail(key, value, f"must be {allowed}")


def validate(cfg: DictConfig) -> None:
    """Resolution, range and cross-field checks, after composition and before any work (issue 7).

    Raises ConfigError with one line naming the key, its value and the allowed range; the checks
    that need the data (n_way against the classes of a split, shots against the examples per class)
    are the data layer's, at construction and sampling.
    """
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        if (e.full_key or "").startswith("model."):
            _check_model_fits_dataset(cfg)  # a model made for another dataset reads keys this one lacks
        raise ConfigError(f"{e.full_key or 'config'} cannot be resolved: {_first_line(e)}") from None
    for key, allowed in RANGES.items():
        _check_range(key, cfg[key], allowed)
    for group, ranges in GROUP_RANGES.items():
        for key, allowed in ranges.items():
            if key in cfg[group]:
                _check_range(f"{group}.{key}", cfg[group][key], allowed)
    _check_known_keys(cfg)
    dataset = cfg.dataset
    for key in INTERVALS:
        value = dataset.get(key)
        if value is not None and (not isinstance(value, ListConfig) or len(value) != 2 or value[0] > value[1]):
            _fail(f"dataset.{key}", value, "must be a pair [low, high] with low <= high")
    for group in ("inner_optimizer", "outer_optimizer"):
        betas = cfg[group].get("betas")
        if betas is not None and (not isinstance(betas, ListConfig) or len(betas) != 2):
            _fail(f"{group}.betas", betas, "must be a pair")
    if cfg.epsilon_final > cfg.epsilon:
        _fail("epsilon_final", cfg.epsilon_final, f"must be between 0 and epsilon={cfg.epsilon}")
    if dataset.get("x_sampling") == "grid":
        if dataset.k_shot > dataset.n_points:
            _fail("dataset.k_shot", dataset.k_shot, f"must be <= dataset.n_points={dataset.n_points}")
        for key in ("query_shots", "tail_shots"):  # held out of the grid: the inner loop needs the rest
            if cfg.algorithm.get(key, 0) >= dataset.n_points:
                _fail(f"algorithm.{key}", cfg.algorithm[key], f"must be < dataset.n_points={dataset.n_points}")
    if cfg.logger.mode not in WANDB_MODES:
        _fail("logger.mode", cfg.logger.mode, f"choose one of {list(WANDB_MODES)}")
    splits = list(cfg.eval_splits)
    if not splits or any(split not in SPLITS for split in splits) or len(set(splits)) < len(splits):
        _fail("eval_splits", splits, f"must list one or more of {list(SPLITS)}, each once")
    if cfg.objective_split not in SPLITS:
        _fail("objective_split", cfg.objective_split, f"choose from {list(SPLITS)}")
    if cfg.objective_split not in splits:
        _fail("objective_split", cfg.objective_split, f"must be one of eval_splits={splits}")
    _check_model_fits_dataset(cfg)
    from .protocols import parse  # protocols.py imports ConfigError from here

    parse(cfg)


HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# An annotation of a _target_'s parameter -> (test of a value, what it must be).
TYPES = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
}


def unknown_key(key: str, name: str, valid: list[str]) -> str:
    """The one line for a key that is not in the config: the closest known key and the valid ones."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{key} is not a config key: {hint}valid keys here: {', '.join(sorted(valid))}"


def _check_known_keys(cfg: DictConfig) -> None:
    """Keys added with +key= or ++key= must exist: top-level and logger/paths keys in the schema, a group's keys
    among its _target_'s parameters, each of the type its annotation names (bool, int, float, str)."""
    _known(cfg, "", [f.name for f in fields(TrainConfig)])
    for group in ("logger", "paths"):
        _known(cfg[group], f"{group}.", [f.name for f in fields(OmegaConf.get_type(cfg[group]))])
    for group in ("dataset", "model", "algorithm", "inner_optimizer", "outer_optimizer"):
        node = cfg[group]
        params = _parameters(node)
        if params is None:
            continue
        _known(node, f"{group}.", [*params, *(k for k in HYDRA_KEYS if k in node)])
        for name in node:
            annotation = params[name].annotation if name in params else ""
            annotation = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", "")
            test, kind = TYPES.get(annotation.removesuffix(" | None"), (None, ""))
            value = node[name]
            if test is not None and not test(value) and not (value is None and annotation.endswith(" | None")):
                _fail(f"{group}.{name}", value, f"must be {kind}")


def _parameters(node: DictConfig) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of a config node's _target_; None when it has none, is not found or takes **kwargs."""
    try:
        params = inspect.signature(get_object(node._target_)).parameters
    except (ImportError, ValueError, TypeError, OmegaConfBaseException):
        return None  # instantiate reports a target it cannot find
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p for n, p in params.items() if p.kind is not p.VAR_POSITIONAL}


def _known(node: DictConfig, prefix: str, valid: list[str]) -> None:
    for name in node:
        if name not in valid:
            raise ConfigError(unknown_key(f"{prefix}{name}", str(name), valid))


def _choice(group: str) -> str | None:
    """The option of a config group this run chose (None outside a Hydra run)."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def _check_model_fits_dataset(cfg: DictConfig) -> None:
    """The model must take the dataset's inputs and give its outputs (one per class; regression: one value).

    Checked by a forward pass on two zero inputs of the dataset's shape, before any data is read.
    """
    import torch

    from .experiment import instantiate

    try:
        data = get_object(cfg.dataset._target_)
    except ImportError:
        return  # instantiate reports a target it cannot find
    shape = getattr(data, "image_shape", None) or getattr(data, "input_shape", None)
    if shape is None:
        return
    outputs = 1 if data.kind == "regression" else cfg.dataset.n_way
    try:
        with torch.no_grad():
            got = tuple(instantiate(cfg.model)(torch.zeros(2, *shape)).shape[1:])
    except (RuntimeError, OmegaConfBaseException):  # a shape mismatch, or a key of another dataset's model
        got = None
    if got == (outputs,):
        return
    dataset, model = _choice("dataset"), _choice("model")
    fitting = _dataset_model(dataset) if dataset else None
    if model and model.startswith("for_dataset/"):
        model = fitting
    needs = f"take inputs of shape {list(shape)}"
    if got is not None:
        needs = f"give {outputs} output{'s' if outputs != 1 else ''} per example, not {got[0]}"
    changed = [o for o in HydraConfig.get().overrides.task if o.lstrip("+").startswith("model.")] if model else []
    if fitting and model != fitting:
        fix = f"choose model={fitting} (or leave model out: it follows the dataset)"
    else:
        fix = f"undo {' '.join(changed)}" if changed else "choose a model made for this dataset"
    model_name = f"model={model}" if model else f"model._target_={cfg.model._target_}"
    dataset_name = f"dataset={dataset}" if dataset else f"dataset._target_={cfg.dataset._target_}"
    raise ConfigError(f"{model_name} does not fit {dataset_name}: the model must {needs}; {fix}")


def _dataset_model(dataset: str) -> str | None:
    """The model option conf/model/for_dataset/<dataset>.yaml selects (None when there is no such file)."""
    path = Path(__file__).resolve().parents[1] / "conf" / "model" / "for_dataset" / f"{dataset}.yaml"
    if not path.exists():
        return None
    return str(OmegaConf.load(path).defaults[0]).rpartition("/")[2].partition("@")[0]


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def composition_error(e: Exception) -> str | None:
    """One line for an error Hydra/OmegaConf raise while composing the config (k=abc, kk=3, dataset=nope):
    the override, what is wrong and what is allowed. None when `e` is not a composition error."""
    if isinstance(e, MissingConfigException) and e.options is not None:
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        return f"{group or 'config'}={option} is invalid: no such option; choose one of {sorted(e.options)}"
    cause = e.__cause__ if isinstance(e.__cause__, OmegaConfBaseException) else e
    if isinstance(cause, OmegaConfBaseException) and cause.full_key:
        key = cause.full_key
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.parent_node is not None:
            node = cause.parent_node
            params = _parameters(node) if "_target_" in node else None
            if params and cause.key in params:
                return f"{key} is not set by this config group option: write +{key}=... to pass it to {node._target_}"
            valid = {str(k) for k in node.keys() if k != "hydra"} | set(params or ())
            return unknown_key(key, str(cause.key), sorted(valid))
        allowed = RANGES.get(key) or GROUP_RANGES.get(key.partition(".")[0], {}).get(key.partition(".")[2])
        reason = _first_line(cause).rstrip(".")
        return f"{key}={cause.value!r} is invalid: {reason}" + (f"; must be {allowed}" if allowed else "")
    added = re.match(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", str(e))
    if added:  # +experiment=X where the defaults list already has the group
        group, option = added.groups()
        return f"+{group}={option} is invalid: {group} is already a config group here; write {group}={option}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return f"cannot compose the config: {' '.join(str(e).split())}"
    return None
