"""The checks run after composition, before any work, each ending in one line that names the key, its value and
what is allowed (issues 7, 12): `validate` (resolution, ranges, cross-field constraints, unknown keys and keys of
the wrong type, a model that does not fit the dataset, the protocols); the entry point turns an error Hydra raises
while composing into one line with `composition_error`.
"""

from __future__ import annotations

import difflib
import inspect
import os
import re
import typing
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException, MissingConfigException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException

from .config import (
    DTYPE_GROUP_KNOBS,
    DTYPE_KNOBS,
    GROUP_RANGES,
    INTERVALS,
    RANGES,
    RUN_DIRS,
    SPLITS,
    WANDB_MODES,
    PathsConfig,
    Range,
    TrainConfig,
    bool_keys,
    given_overrides,
)
from .errors import ConfigError, fail, first_line
from .instantiate import instantiate, locate, parameter_count
from .memory import available_bytes
from .protocols import parse

CONF = Path(__file__).resolve().parents[1] / "conf"
# The variable each paths.* key's default reads (conf/paths/*.yaml: `log_dir: ${oc.env:REPTILE_EXP_OUTPUTS,outputs}`).
PATH_ENV = {
    key: found[1]
    for option in sorted((CONF / "paths").glob("*.yaml"))
    for key, value in OmegaConf.to_container(OmegaConf.load(option)).items()
    if (found := re.match(r"\$\{oc\.env:(\w+)", str(value)))
}
HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")
# An annotation of a _target_'s parameter -> (test of a value, what it must be).
TYPES = {
    "bool": (lambda v: isinstance(v, bool), "true or false"),
    "int": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer"),
    "float": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool), "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "sequence": (lambda v: isinstance(v, (list, tuple, ListConfig)), "a list, e.g. [64,64]"),
}


def unknown_key(key: str, name: str, valid: list[str]) -> str:
    """The one line for a key that is not in the config: the closest known key and the valid ones."""
    close = difflib.get_close_matches(name, valid, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{key} is not a config key: {hint}valid keys here: {', '.join(sorted(valid))}"


def check_known_keys(cfg: DictConfig) -> None:
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
        try:
            _known(node, f"{group}.", [*params, *(k for k in HYDRA_KEYS if k in node)])
        except ConfigError as e:
            raise ConfigError(_experiment_clash(group) or str(e)) from None
        for name in node:
            annotation = annotation_name(params[name].annotation) if name in params else ""
            if annotation.startswith(("tuple[", "list[")):
                annotation = "sequence" + (" | None" if annotation.endswith(" | None") else "")
            test, kind = TYPES.get(annotation.removesuffix(" | None"), (None, ""))
            value = node[name]
            if test is not None and not test(value) and not (value is None and annotation.endswith(" | None")):
                fail(f"{group}.{name}", value, f"must be {kind}")


def annotation_name(annotation: Any) -> str:
    """A parameter's annotation as written in a module with postponed annotations: 'bool', 'bool | None' (torch's
    optimizers annotate with the types themselves: bool, bool | None)."""
    if isinstance(annotation, str):
        return annotation
    args = typing.get_args(annotation)
    if type(None) in args and len(args) == 2:
        return f"{annotation_name(next(a for a in args if a is not type(None)))} | None"
    return getattr(annotation, "__name__", "")


def _parameters(node: DictConfig) -> dict[str, inspect.Parameter] | None:
    """The keyword parameters of a config node's _target_; None when it has none, is not found or takes **kwargs."""
    try:
        params = inspect.signature(locate(node._target_)).parameters
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


def check_model_fits_dataset(cfg: DictConfig) -> None:
    """The model must take the dataset's inputs and give its outputs (one per class; regression: one value).

    Checked by a forward pass on two zero inputs of the dataset's shape on the CPU, before any data is read; a model
    whose parameters alone exceed the memory is left to experiment.build_model, which refuses it naming its size.
    """
    try:
        data = locate(cfg.dataset._target_)
    except ImportError:
        return  # instantiate reports a target it cannot find
    shape = getattr(data, "image_shape", None) or getattr(data, "input_shape", None)
    if shape is None:
        return
    outputs = 1 if data.kind == "regression" else cfg.dataset.n_way
    params = parameter_count(cfg.model)
    if params is not None and 4 * params > available_bytes(torch.device("cpu")):
        return
    try:
        with torch.no_grad():
            got = tuple(instantiate(cfg.model)(torch.zeros(2, *shape, device="cpu")).shape[1:])  # any device: CPU
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
    changed = [o for o in given_overrides() if o.lstrip("+").startswith("model.")] if model else []
    if fitting and model != fitting:
        fix = f"choose model={fitting} (or leave model out: it follows the dataset)"
    else:
        fix = f"undo {' '.join(changed)}" if changed else "choose a model made for this dataset"
    model_name = f"model={model}" if model else f"model._target_={cfg.model._target_}"
    dataset_name = f"dataset={dataset}" if dataset else f"dataset._target_={cfg.dataset._target_}"
    raise ConfigError(f"{model_name} does not fit {dataset_name}: the model must {needs}; {fix}")


def _experiment_clash(group: str) -> str | None:
    """The line for a group option the command line gave against the chosen experiment's (experiment=omniglot_5w1s
    dataset=sine: the preset's dataset keys then land on another dataset), or None."""
    experiment, chosen = _choice("experiment"), _choice(group)
    path = CONF / "experiment" / f"{experiment}.yaml"
    if not experiment or not path.exists():
        return None
    entries = [d for d in OmegaConf.load(path).get("defaults", []) if isinstance(d, DictConfig)]
    wanted = next((v for d in entries for k, v in d.items() if str(k).endswith(f"/{group}")), None)
    if wanted is None or wanted == chosen:
        return None
    return (
        f"{group}={chosen} does not fit experiment={experiment}, which sets {group}={wanted} and its keys; drop "
        f"{group}={chosen} or choose another experiment"
    )


def _dataset_model(dataset: str) -> str | None:
    """The model option conf/model/for_dataset/<dataset>.yaml selects (None when there is no such file)."""
    path = CONF / "model" / "for_dataset" / f"{dataset}.yaml"
    if not path.exists():
        return None
    return str(OmegaConf.load(path).defaults[0]).rpartition("/")[2].partition("@")[0]


def composition_error(e: Exception) -> str | None:
    """One line for an error Hydra/OmegaConf raise while composing the config (k=abc, kk=3, dataset=nope):
    the override, what is wrong and what is allowed. None when `e` is not a composition error."""
    if isinstance(e, (yaml.YAMLError, UnicodeDecodeError)):
        return _unreadable_config(e)
    if isinstance(e, MissingConfigException) and e.options is not None:
        group, _, option = (e.missing_cfg_file or "").rpartition("/")
        return f"{group or 'config'}={option} is invalid: no such option; choose one of {sorted(e.options)}"
    source = re.match(r"In '([^']+)': \w+ raised while composing config", str(e))
    if source and isinstance(e.__context__, OmegaConfBaseException):  # a key inside a config file
        line = composition_error(e.__context__)
        return f"conf/{source[1]}.yaml: {line}" if line else None
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
        reason = first_line(cause).rstrip(".")
        return f"{key}={cause.value!r} is invalid: {reason}" + (f"; must be {allowed}" if allowed else "")
    added = re.match(r"Multiple values for (\S+)\. To override a value use 'override \S+: (\S+)'", str(e))
    if added:  # +experiment=X where the defaults list already has the group
        group, option = added.groups()
        return f"+{group}={option} is invalid: {group} is already a config group here; write {group}={option}"
    if isinstance(e, (HydraException, OmegaConfBaseException)):
        return f"cannot compose the config: {' '.join(str(e).split())}"
    return None


def _unreadable_config(e: yaml.YAMLError | UnicodeDecodeError) -> str | None:
    """The line for a config file Hydra cannot read (most often conf/local/default.yaml, this machine's settings):
    not YAML (yaml names the file), or not UTF-8 text (the file Hydra's FileConfigSource.load_config was reading, its
    `full_path`). None when no config file is named (not an error of composing the config)."""
    mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
    read, tb = [], e.__traceback__
    while tb is not None:
        read.append(tb.tb_frame.f_locals.get("full_path"))
        tb = tb.tb_next
    path = getattr(mark, "name", None) or getattr(e, "name", None) or next((p for p in reversed(read) if p), None)
    if not isinstance(path, str) or path.startswith("<"):  # yaml's "<unicode string>": no file
        return None
    shown = os.path.abspath(path)
    shown = os.path.relpath(shown, CONF.parent) if Path(shown).is_relative_to(CONF.parent) else shown
    if isinstance(e, UnicodeDecodeError):
        return (
            f"{shown} is not UTF-8 text (it holds the byte 0x{e.object[e.start]:02x}); save it as UTF-8, or move it "
            "away"
        )
    where = f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    problem = getattr(e, "problem", None) or first_line(e)
    return f"{shown} is not valid YAML ({problem}{where}); correct {'that line' if where else 'it'}, or move it away"


def _holding(cfg: DictConfig, missing: str) -> str | None:
    """The first key whose own value holds the interpolation ${missing} (the key a user wrote it in), or None."""

    def leaves(node: Any, key: str):
        if isinstance(node, dict):
            for name, value in node.items():
                yield from leaves(value, f"{key}.{name}" if key else str(name))
        elif isinstance(node, list):
            for i, value in enumerate(node):
                yield from leaves(value, f"{key}[{i}]")
        else:
            yield key, node

    wanted = "${" + missing + "}"
    return next((k for k, v in leaves(OmegaConf.to_container(cfg), "") if isinstance(v, str) and wanted in v), None)


def check_bool_overrides(cfg: DictConfig) -> None:
    """A schema key typed bool takes true or false only: OmegaConf reads replacement=2 or progress=yes as true, so
    the command line's values are checked as typed, and a value given by interpolation (replacement=${k}, also in a
    config file) as it resolves, before the schema converts it (a group's bool keys: check_known_keys)."""
    typed = set(bool_keys())
    for override in OverridesParser.create().parse_overrides(given_overrides()):
        key, value = override.key_or_group, override.value()
        interpolation = isinstance(value, str) and "${" in value  # checked below, as it resolves
        if key in typed and not override.is_delete() and not interpolation and not isinstance(value, bool):
            fail(key, value, "must be true or false")
    plain = None  # the config without its schema: an interpolation resolves there to what it points at
    for key in typed:
        parent, _, name = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not OmegaConf.is_interpolation(node, name):
            continue
        if plain is None:
            plain = OmegaConf.create(OmegaConf.to_container(cfg, enum_to_str=True))
        resolved = OmegaConf.select(plain, key)
        if not isinstance(resolved, bool) and str(resolved).lower() not in ("true", "false"):  # oc.env gives text
            raw = OmegaConf.to_container(node)[name]
            fail(key, raw, f"it resolves to {resolved!r}; must be true or false")


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
    try:
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as e:
        missing = re.match(r"Interpolation key '([^']+)' not found", first_line(e))
        if (e.full_key or "").startswith("model.") and (not missing or missing[1].startswith("dataset.")):
            check_model_fits_dataset(cfg)  # a model made for another dataset reads keys this one lacks
        read = e.full_key or "config"
        key = (missing and _holding(cfg, missing[1])) or read  # inner_lr=${nope}, read by inner_optimizer.lr
        fix = f"set {key} to a value, or point its ${{...}} at an existing key"
        by = f" (read by {read})" if key != read else ""
        raise ConfigError(f"{key} cannot be resolved{by}: {first_line(e)}; {fix}") from None
    check_bool_overrides(cfg)
    for key, allowed in RANGES.items():
        _check_range(key, cfg[key], allowed)
    for group, ranges in GROUP_RANGES.items():
        for key, allowed in ranges.items():
            if key in cfg[group]:
                _check_range(f"{group}.{key}", cfg[group][key], allowed)
    check_known_keys(cfg)
    check_float_limits(cfg)
    check_paths(cfg)
    dataset = cfg.dataset
    for key in INTERVALS:
        value = dataset.get(key)
        if value is not None and (not isinstance(value, ListConfig) or len(value) != 2 or value[0] > value[1]):
            fail(f"dataset.{key}", value, "must be a pair [low, high] with low <= high")
    for group in ("inner_optimizer", "outer_optimizer"):
        betas = cfg[group].get("betas")
        if betas is not None and (not isinstance(betas, ListConfig) or len(betas) != 2):
            fail(f"{group}.betas", betas, "must be a pair")
    for group, knob in (("inner_optimizer", "inner_lr"), ("outer_optimizer", "epsilon")):
        if cfg[group].get("lr", cfg[knob]) != cfg[knob]:  # the schedule and the resume check read the knob
            fail(f"{group}.lr", cfg[group].lr, f"the step size is {knob}={cfg[knob]}: set {knob} instead")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if cfg.threads > cpus:
        fail("threads", cfg.threads, f"must be <= the {cpus} CPUs this process may use (0: torch's default)")
    if cfg.dtype.value == "float64" and cfg.precision.value in ("bf16", "tf32"):
        fail("precision", cfg.precision.value, "bf16 and tf32 apply to float32 only: leave dtype=float32 or precision")
    if cfg.evaluate_only and cfg.resume is not None:
        fail("resume", cfg.resume, "evaluate_only=true reads checkpoint=<file or run dir>; resume= continues training")
    if not cfg.evaluate_only and cfg.checkpoint is not None:
        fail("checkpoint", cfg.checkpoint, "read with evaluate_only=true only; resume= continues training from it")
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
    env_mode = os.environ.get("WANDB_MODE")
    if env_mode is not None and not env_mode.strip():  # W&B's settings refuse it, whatever logger.mode says
        fail("WANDB_MODE", env_mode, "set but empty, which W&B refuses; unset it, or set online, offline or disabled")
    if env_mode and env_mode not in ("online", "offline", "disabled", "dryrun", "run", "shared"):  # wandb's own
        fail("WANDB_MODE", env_mode, "unset it, or set online, offline or disabled (logger.mode sets it per run)")
    splits = list(cfg.eval_splits)
    if not splits or any(split not in SPLITS for split in splits) or len(set(splits)) < len(splits):
        fail("eval_splits", splits, f"must list one or more of {list(SPLITS)}, each once")
    if cfg.objective_split not in SPLITS:
        fail("objective_split", cfg.objective_split, f"choose from {list(SPLITS)}")
    if cfg.objective_split not in splits:
        fail("objective_split", cfg.objective_split, f"must be one of eval_splits={splits}")
    check_model_fits_dataset(cfg)
    check_outer_optimizer(cfg.outer_optimizer)
    parse(cfg)


def check_float_limits(cfg: DictConfig) -> None:
    """Step sizes and epsilons must survive the run's dtype: a positive value above torch.finfo(dtype).max overflows
    to inf (the inner step's `lr * g` fails, an Adam eps of inf stops every step), one below .tiny underflows to 0 or
    a subnormal (phi does not move). A large finite step size that merely diverges (inner_lr=1e30) is left to the
    run, which reports the divergence."""
    info = torch.finfo(getattr(torch, cfg.dtype.value))
    knobs = [(key, cfg[key]) for key in DTYPE_KNOBS]
    knobs += [(f"{g}.{k}", cfg[g][k]) for g, keys in DTYPE_GROUP_KNOBS.items() for k in keys if k in cfg[g]]
    for key, value in knobs:
        numbers = [v for v in (value if isinstance(value, ListConfig) else [value]) if isinstance(v, (int, float))]
        if any(v > 0 and not info.tiny <= v <= info.max for v in numbers):
            why = "overflows to inf" if max(numbers) > info.max else "underflows (to 0 or a subnormal)"
            other = ", or dtype=float64" if cfg.dtype.value == "float32" else ""
            fail(
                key,
                value,
                f"it {why} in dtype={cfg.dtype.value}, which holds {info.tiny:.3g} to {info.max:.3g}; choose a value "
                f"in that range{other}",
            )


def _empty(value: Any) -> bool:
    return isinstance(value, str) and not value.strip()


ROOTED = "the paths built on it would start at the filesystem root (/runs, /omniglot)"


def _empty_env(env: str, value: str, key: str) -> None:
    fail(env, value, f"it is set but empty, so {key} is empty and {ROOTED}; unset {env}, or set it to a folder")


def _empty_path(key: str, value: str) -> None:
    """Refuse an empty or blank paths.* key or run dir."""
    if key in RUN_DIRS:
        kind = key.split(".")[1]
        why = f"an empty {kind} dir is the current folder, where the {kind} would write its files"
        fail(key, value, f"{why}; give a folder, or leave it out for a new one under paths.log_dir")
    fail(key, value, f"an empty path names no folder: {ROOTED}; give a folder, or leave it out for its default")


def check_paths(cfg: DictConfig) -> None:
    """paths.* and Hydra's run dir (a sweep's: its sweep dir) must not be empty or blank: `REPTILE_EXP_OUTPUTS=` put
    the runs under /runs, `hydra.run.dir=''` into the current folder. check_given_paths refuses those of the command
    line and the environment before Hydra makes the run dir; this also catches those of a config file."""
    given = {o.lstrip("+~").partition("=")[0] for o in given_overrides()}
    for name in cfg.paths:
        key, value, env = f"paths.{name}", cfg.paths[name], PATH_ENV.get(name)
        if _empty(value) and env is not None and key not in given and os.environ.get(env) == value:
            _empty_env(env, value, key)  # the default read it from the environment
        if _empty(value):
            _empty_path(key, value)
    if HydraConfig.initialized():
        hydra = HydraConfig.get()
        key = RUN_DIRS[1] if getattr(hydra.get("mode"), "name", None) == "MULTIRUN" else RUN_DIRS[0]
        run_dir = OmegaConf.select(hydra, key.removeprefix("hydra."))
        if _empty(run_dir):
            _empty_path(key, run_dir)


def check_given_paths(argv: list[str], environ: Mapping[str, str]) -> None:
    """Before Hydra makes the run dir (the entry point calls this first): an empty or blank paths.*, hydra.run.dir or
    hydra.sweep.dir on the command line (each value of a sweep), or an empty variable that a paths.* key reads
    (PATH_ENV) where the command line does not set that key, is refused in one line (check_paths: the composed
    config's)."""
    keys = {*RUN_DIRS, *(f"paths.{f.name}" for f in fields(PathsConfig))}
    given, parser = set(), OverridesParser.create()
    for word in argv:
        if word.startswith("-") or "=" not in word:  # a flag, or a flag's value (--config-dir DIR)
            continue
        try:
            (override,) = parser.parse_overrides([word])
        except HydraException:
            continue  # Hydra reports it in its own line
        if override.key_or_group not in keys or override.is_delete():
            continue
        given.add(override.key_or_group)
        for value in override.sweep_iterator() if override.is_choice_sweep() else [override.value()]:
            value = getattr(value, "text", value)  # a quoted value of a sweep (a,'')
            if _empty(value):
                _empty_path(override.key_or_group, value)
    for name, env in PATH_ENV.items():
        if f"paths.{name}" not in given and _empty(environ.get(env, "-")):
            _empty_env(env, environ[env], f"paths.{name}")


def check_outer_optimizer(node: DictConfig) -> None:
    """The outer optimizer's own checks (nesterov without momentum, fused with foreach, ...) and one step of it on a
    zero gradient of one parameter (an optimizer that needs a closure, sparse gradients or CUDA states fails there),
    before any data is read. It must descend: phi moves towards the adapted weights (Reptile's outer step)."""
    phi = torch.zeros(1, device="cpu", requires_grad=True)
    try:
        optimizer = instantiate(node)([phi])
        phi.grad = torch.zeros_like(phi)
        optimizer.step()
    except (ValueError, RuntimeError, TypeError, AssertionError) as e:
        raise ConfigError(f"outer_optimizer is invalid: {first_line(e)}; change the outer_optimizer.* values") from None
    if optimizer.defaults.get("maximize"):
        fail("outer_optimizer.maximize", True, "phi must descend the meta-gradient; leave it false")
