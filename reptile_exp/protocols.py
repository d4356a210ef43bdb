"""Evaluation protocols: the test-time settings a final evaluation scores phi with (REFERENCE.md section 5).

The paper's 1-shot and 5-shot rows of a dataset (Tables 1 and 2) share one training and differ only
in the test-time K, the eval batch and transduction, so one run can report them all:

    protocols: [{name: 1shot, k_shot: 1}, {name: 5shot_transductive, k_shot: 5, transductive: true}]

A missing field takes the top-level knob (dataset.k_shot, transductive, eval_batch, k_eval);
`protocols: []` is one protocol made of those knobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any

from omegaconf import DictConfig, OmegaConf

from .data.fewshot import too_many_ways
from .errors import ConfigError

NAME = re.compile(r"[A-Za-z0-9_.-]+")  # it names metrics (final/<name>/<split>_accuracy) and table rows


@dataclass(frozen=True)
class Protocol:
    """One test-time setting: K support examples per class, transduction, inner batch and steps."""

    name: str
    k_shot: int
    transductive: bool
    eval_batch: int
    k_eval: int


def default_name(k_shot: int, transductive: bool) -> str:
    return f"{k_shot}shot" + ("_transductive" if transductive else "")


def parse(cfg: DictConfig, dataset=None) -> list[Protocol]:
    """cfg.protocols as Protocols; ConfigError (one line naming the entry and the fix) for a bad entry.

    With the built `dataset`, every split of eval_splits must exist in it and hold n_way classes and each protocol's
    k_shot + 1 examples per class, and so must the split periodic evaluations score (monitor_split) with the top-level
    k_shot (train.run does this before training, so no evaluation fails; a split not evaluated may be smaller).
    """
    splits = getattr(dataset, "splits", None)
    missing = [s for s in cfg.eval_splits if splits is not None and s not in splits]
    if missing:
        val = missing[0] == "val" and "val_characters" in cfg.dataset
        hint = "; dataset.val_characters > 0 makes one" if val else ""
        raise ConfigError(
            f"eval_splits={list(cfg.eval_splits)} is invalid: this dataset has no {missing[0]!r} split; "
            f"list only {sorted(splits)}{hint}"
        )
    defaults = {
        "k_shot": cfg.dataset.k_shot,
        "transductive": cfg.transductive,
        "eval_batch": cfg.eval_batch,
        "k_eval": cfg.k_eval,
    }
    if cfg.transductive and "root" not in cfg.dataset:
        raise ConfigError("transductive=True is invalid: regression has no transductive evaluation; leave it false")
    if dataset is not None and cfg.eval_every and not cfg.evaluate_only:
        _check_examples("dataset", cfg.dataset.k_shot, dataset, [monitor_split(dataset)])
    entries = OmegaConf.to_container(cfg.protocols, resolve=True) or [{"name": "default"}]
    protocols: list[Protocol] = []
    valid = [f.name for f in fields(Protocol)]
    for i, entry in enumerate(entries):
        key = f"protocols[{i}]"
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}={entry!r} is invalid: each protocol is a dict of {', '.join(valid)}")
        unknown = [k for k in entry if k not in valid]
        if unknown:
            raise ConfigError(f"{key}.{unknown[0]} is not a protocol field: valid fields are {', '.join(valid)}")
        values = {**defaults, **{k: v for k, v in entry.items() if k != "name"}}
        _check(f"{key}.k_shot", values["k_shot"], 1)
        _check(f"{key}.eval_batch", values["eval_batch"], 1)
        _check(f"{key}.k_eval", values["k_eval"], 0)
        if not isinstance(values["transductive"], bool):
            raise ConfigError(f"{key}.transductive={values['transductive']!r} is invalid: must be true or false")
        name = entry.get("name", default_name(values["k_shot"], values["transductive"]))
        if not isinstance(name, str) or not NAME.fullmatch(name):
            raise ConfigError(f"{key}.name={name!r} is invalid: use letters, digits, '_', '.' or '-'")
        if any(p.name == name for p in protocols):
            raise ConfigError(f"{key}.name={name!r} is invalid: another protocol has that name; names must differ")
        if "transductive" in entry and entry["transductive"] and "root" not in cfg.dataset:
            raise ConfigError(f"{key}.transductive=True is invalid: regression has no transductive evaluation")
        grid = cfg.dataset.get("n_points") if cfg.dataset.get("x_sampling") == "grid" else None
        if grid is not None and values["k_shot"] > grid:
            raise ConfigError(f"{key}.k_shot={values['k_shot']} is invalid: must be <= dataset.n_points={grid}")
        _check_replacement(cfg, key if "eval_batch" in entry else None, values["k_shot"], values["eval_batch"])
        if dataset is not None:
            _check_examples(key, values["k_shot"], dataset, cfg.eval_splits)
        protocols.append(Protocol(name=name, **values))
    return protocols


def _check(key: str, value: Any, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{key}={value!r} is invalid: must be an integer >= {low}")


def _check_replacement(cfg: DictConfig, key: str | None, k_shot: int, eval_batch: int) -> None:
    """With replacement=true a test task's minibatches are drawn from its support set as in training (REFERENCE.md
    section 2), so eval_batch must fit in it (tasks.minibatch_schedule)."""
    support = k_shot * (cfg.dataset.n_way if "root" in cfg.dataset else 1)
    if cfg.replacement is True and eval_batch > support:
        where = f"{key}.eval_batch" if key else "eval_batch"
        raise ConfigError(
            f"{where}={eval_batch} is invalid with replacement=true: a test task has {support} support examples; "
            f"choose {where} <= {support} or replacement=false"
        )


def monitor_split(dataset) -> str:
    """The split periodic evaluations score: val where the dataset has one, else test."""
    return "val" if "val" in getattr(dataset, "splits", {}) else "test"


def _check_examples(key: str, k_shot: int, dataset, splits) -> None:
    """n_way classes and k_shot support examples + 1 query per class must exist in every evaluated split."""
    for split in splits:
        s = getattr(dataset, "splits", {}).get(split)
        if s is not None and dataset.n_way > s.num_classes:
            raise too_many_ways(dataset.n_way, s.num_classes, split)
        if s is not None and k_shot + 1 > s.examples_per_class:
            raise ConfigError(
                f"{key}.k_shot={k_shot} is invalid: the {split!r} split has {s.examples_per_class} examples per "
                f"class (k_shot + 1 query needed); set it <= {s.examples_per_class - 1}"
            )
