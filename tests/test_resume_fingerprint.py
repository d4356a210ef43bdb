"""Resuming with another training config is refused in one line (issue 22: `outer_optimizer=adam` on an SGD run's
checkpoint passed the check and died with KeyError 'betas').

The keys are enumerated, not copied: every top-level key of the schema (config.TrainConfig) is classified once in
experiment.py (the groups and knobs that shape training, and NOT_TRAINING), and every leaf of every training group
of several presets is taken from the composed config. Each is changed in turn and the resume (build + state_dict +
rundir.load_for, in-process) must be refused naming the key (or the group key it reaches through an interpolation)
with both values; each key that does not shape training must be accepted, and a short training shows it leaves phi
bit for bit unchanged. Older checkpoints (without the fingerprint entries added here) still load where nothing
differs, with a warning, and another outer optimizer's state is refused in one line when it is loaded.
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import logging
import re
from pathlib import Path

import pytest
import torch
from conftest import ROOT, final_phi, run_train
from hydra import compose, initialize_config_dir
from omegaconf import Container, OmegaConf
from omegaconf.errors import InterpolationKeyError

from reptile_exp import checkpoint as ckpt
from reptile_exp import rundir
from reptile_exp.config import TrainConfig
from reptile_exp.experiment import (
    ADDED,
    DATASET_LOCATION,
    NOT_TRAINING,
    THROUGH_GROUPS,
    TRAINING_GROUPS,
    TRAINING_KEYS,
    TRAINING_TOP,
    build,
)
from reptile_exp.train import run

QUIET = ["device=cpu", "logger.mode=disabled", "progress=false"]
# presets whose groups between them hold every option's keys: inner/outer SGD and Adam, Reptile, FOMAML's tail
# shots, MAML's query shots and order, the MLP on grid and uniform sine, both image datasets with their conv nets
BASES = {
    "sine": ["experiment=sine_reptile"],
    "sine_finn_fomaml": ["experiment=sine_finn_fomaml"],
    "sine_maml": ["experiment=sine_maml"],
    "omniglot": ["experiment=omniglot_5w1s", "synthetic_data=true"],
    "miniimagenet": ["experiment=miniimagenet_5w1s", "synthetic_data=true"],
}
SHAPING = (*TRAINING_KEYS, *TRAINING_TOP, *THROUGH_GROUPS)  # the top-level knobs that shape training
STEERS_THE_LOAD = ("resume", "checkpoint", "evaluate_only")  # they choose what load_for loads: not changed here
MESSAGE = re.compile(r"was made with another config \(([\w.]+): this run has (.*), the checkpoint has (.*)\); ")


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=[*QUIET, *overrides])


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """Per base: its config and a checkpoint of its build, as a run writes it."""
    made = {}
    for name, overrides in BASES.items():
        cfg = compose_cfg(*overrides)
        exp = build(cfg)
        made[name] = cfg, ckpt.Checkpointer(tmp_path_factory.mktemp(name)).save(exp.state_dict("run", False), 1)
    return made


def other(value):
    """A different value of the same kind."""
    if isinstance(value, enum.Enum):
        return next(member for member in type(value) if member != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return [other(value[0]), *value[1:]] if value else ["other"]
    assert value is None, value
    return "other"


def changed(cfg, key: str, value):
    cfg = copy.deepcopy(cfg)
    OmegaConf.update(cfg, key, value, merge=False)
    return cfg


def resume(cfg, path: Path):
    """rundir.load_for as train.run calls it, resuming `path`: (state, path), or CheckpointError."""
    cfg = changed(cfg, "resume", str(path))
    return rundir.load_for(cfg, ckpt.Checkpointer(path.parent / "none"), evaluate_only=False)


def refusal(cfg, path: Path) -> str:
    with pytest.raises(ckpt.CheckpointError) as info:
        resume(cfg, path)
    message = str(info.value)
    assert "\n" not in message and "start a new run dir (hydra.run.dir=...)" in message, message
    return message


def value_at(cfg, key: str):
    """The resolved value of a dotted key as the message prints it (training.<knob> is the top-level knob)."""
    value = OmegaConf.select(cfg, key.removeprefix("training."))
    if isinstance(value, Container):
        return OmegaConf.to_container(value, resolve=True)
    return value.value if isinstance(value, enum.Enum) else value


def reached_through(cfg, key: str) -> set[str]:
    """The group keys whose value is the interpolation ${key} (inner_optimizer.lr = ${inner_lr})."""
    found = set()
    for group in TRAINING_GROUPS:
        for leaf, value in leaves(OmegaConf.to_container(cfg[group], resolve=False)):
            if value == "${" + key + "}":
                found.add(f"{group}.{leaf}")
    return found


def leaves(tree: dict, prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def check_refused(base, path: Path, key: str, cfg) -> None:
    """Resuming base's checkpoint with cfg (base with `key` changed) is refused, naming `key` (or a key it reaches
    through an interpolation) with this run's value and the checkpoint's."""
    message = refusal(cfg, path)
    named = MESSAGE.search(message)
    assert named, message
    allowed = {key, f"training.{key}", *reached_through(base, key)}
    assert named[1] in allowed, message
    assert (named[2], named[3]) == (repr(value_at(cfg, named[1])), repr(value_at(base, named[1]))), message


def test_every_top_level_key_is_classified_exactly_once():
    """A knob added to the schema fails here until experiment.py says whether it shapes training."""
    schema = sorted(f.name for f in dataclasses.fields(TrainConfig))
    assert sorted([*TRAINING_GROUPS, *SHAPING, *NOT_TRAINING]) == schema


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("key", SHAPING)
def test_a_knob_that_shapes_training_refuses_a_resume_with_another_value(checkpoints, base, key):
    cfg, path = checkpoints[base]
    check_refused(cfg, path, key, changed(cfg, key, other(cfg[key])))


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("group", TRAINING_GROUPS)
def test_every_key_of_a_training_group_refuses_a_resume_with_another_value(checkpoints, base, group):
    cfg, path = checkpoints[base]
    keys = [leaf for leaf, _ in leaves(OmegaConf.to_container(cfg[group])) if leaf not in DATASET_LOCATION]
    assert keys
    for leaf in keys:
        key = f"{group}.{leaf}"
        check_refused(cfg, path, key, changed(cfg, key, other(value_at(cfg, key))))
    if group == "dataset":  # where the data lives is no part of it
        for location in DATASET_LOCATION:
            if location in cfg.dataset:
                assert resume(changed(cfg, f"dataset.{location}", other(cfg.dataset[location])), path)[1] == path


# sine's other models are conv nets, which do not resolve without n_way: the omniglot base tries the model group
@pytest.mark.parametrize(
    ("base", "group"), [(b, g) for b in ("sine", "omniglot") for g in TRAINING_GROUPS if (b, g) != ("sine", "model")]
)
def test_another_option_of_a_training_group_refuses_a_resume(checkpoints, base, group):
    cfg, path = checkpoints[base]
    options = sorted(p.stem for p in (ROOT / "conf" / group).glob("*.yaml"))
    tried = unfit = 0
    for option in options:
        mine = compose_cfg(*BASES[base], f"{group}={option}")
        if OmegaConf.to_container(mine[group]) == OmegaConf.to_container(cfg[group]):
            continue  # the base's own option
        try:
            OmegaConf.to_container(mine, resolve=True)
        except InterpolationKeyError:  # a conv net's n_way on sine: validate refuses it before any resume
            unfit += 1
            continue
        tried += 1
        message = refusal(mine, path)
        named = MESSAGE.search(message)
        assert named and named[1].split(".")[0] in ({group, "model"} if group == "dataset" else {group}), message
        assert (named[2], named[3]) == (repr(value_at(mine, named[1])), repr(value_at(cfg, named[1]))), message
    assert tried >= 1 and tried + unfit == len(options) - 1


@pytest.mark.parametrize("base", ["sine", "omniglot"])
@pytest.mark.parametrize("key", [k for k in NOT_TRAINING if k not in STEERS_THE_LOAD])
def test_a_key_that_does_not_shape_training_may_change_on_resume(checkpoints, base, key):
    cfg, path = checkpoints[base]
    if isinstance(cfg[key], Container) and key in ("logger", "paths"):  # the groups: every key of them
        for leaf, value in leaves(OmegaConf.to_container(cfg[key], resolve=True)):
            assert resume(changed(cfg, f"{key}.{leaf}", other(value)), path)[1] == path
    else:
        value = OmegaConf.to_container(cfg[key]) if isinstance(cfg[key], Container) else cfg[key]
        assert resume(changed(cfg, key, other(value)), path)[1] == path


# How each key of NOT_TRAINING is changed in a short training whose phi must not change at all ...
CHANGED_IN_TRAINING = {
    "name": "name=other",
    "logger": "logger.project=other",
    "paths": "paths.data_dir=elsewhere",  # synthetic images: nothing is read there
    "progress": "progress=true",
    "log_every": "log_every=1",
    "checkpoint_every": "checkpoint_every=2",
    "keep_checkpoints": "keep_checkpoints=5",
    "overwrite": "overwrite=true",
    "k_eval": "k_eval=3",
    "eval_batch": "eval_batch=7",
    "eval_tasks": "eval_tasks=3",
    "eval_splits": "eval_splits=[train,test]",
    "eval_chunk": "eval_chunk=1",
    "eval_memory_mb": "eval_memory_mb=64",
    "transductive": "transductive=true",
    "protocols": "protocols=[{name: a, k_eval: 2}, {name: b, k_shot: 2, transductive: true}]",
    "eval_every": "eval_every=1",
    "eval_every_tasks": "eval_every_tasks=3",
    "objective_split": "objective_split=train",
    "keep_host_memory": "keep_host_memory=false",
}
# ... and where the others are shown not to shape it
ELSEWHERE = {
    **dict.fromkeys(STEERS_THE_LOAD, "they choose the checkpoint loaded (rundir.load_for)"),
    "device": "the same tasks, other rounding: tests/test_cross_device.py",
    **dict.fromkeys(
        ("threads", "deterministic", "compile", "precision", "fused_inner", "grouped_tasks", "task_conv"),
        "the plain phi up to rounding: tests/test_fast_paths.py, tests/test_cross_device.py",
    ),
}


def test_the_keys_that_do_not_shape_training_leave_phi_unchanged(tmp_path):
    """What NOT_TRAINING claims, in a real training (Omniglot's conv net on random images, periodic evaluations
    of every kind in between): phi bit for bit. A key moved there must be changed here or shown elsewhere."""
    assert sorted([*CHANGED_IN_TRAINING, *ELSEWHERE]) == sorted(NOT_TRAINING)
    common = ["experiment=omniglot_5w1s", "synthetic_data=true", "iterations=4", "meta_batch=2", "k=2"]
    quiet = ["eval_every=0", "eval_tasks=2", "k_eval=1", "checkpoint_every=4", "log_every=4"]
    run(compose_cfg(*common, *quiet), tmp_path / "plain")
    run(compose_cfg(*common, *quiet, *CHANGED_IN_TRAINING.values()), tmp_path / "busy")
    plain, busy = final_phi(tmp_path / "plain"), final_phi(tmp_path / "busy")
    assert all(torch.equal(plain[k], busy[k]) for k in plain)
    initial = build(compose_cfg(*common)).learner.model.state_dict()
    assert not all(torch.equal(plain[k], initial[k]) for k in plain)  # it did train


def test_a_checkpoint_older_than_the_new_entries_loads_where_nothing_differs(checkpoints, tmp_path, caplog):
    cfg, path = checkpoints["sine_finn_fomaml"]
    state = torch.load(path, weights_only=True)
    older = tmp_path / "ckpt-00000001.pt"
    del state["fingerprint"]["outer_optimizer"], state["fingerprint"]["training"]["loss_reduction"]
    torch.save(state, older)
    assert sorted(ADDED) == ["outer_optimizer", "training.loss_reduction"]
    with caplog.at_level(logging.WARNING, logger="reptile_exp"):
        loaded, found = resume(cfg, older)
    assert found == older and "predates the check of outer_optimizer, training.loss_reduction" in caplog.text
    exp = build(cfg)
    exp.load_state_dict(loaded)  # the same outer optimizer: it loads
    assert exp.outer.param_groups[0]["betas"] == (0.9, 0.999)
    # a key recorded before is still compared
    assert "training.k: this run has 6, the checkpoint has 5" in refusal(changed(cfg, "k", 6), older)


@pytest.mark.parametrize(
    "trained,resumed,phrase",
    [
        ("sine", ["outer_optimizer=adam"], "outer optimizer state has no betas, eps: it was trained with another"),
        ("sine_finn_fomaml", ["outer_optimizer=sgd"], "outer optimizer state has no dampening, momentum"),
        (
            "sine_finn_fomaml",
            ["outer_optimizer.betas=[0.5,0.999]"],
            "outer_optimizer.betas: this run has [0.5, 0.999], the checkpoint has [0.9, 0.999]",
        ),
    ],
)
def test_an_older_checkpoint_of_another_outer_optimizer_is_refused_in_one_line_when_loaded(
    checkpoints, tmp_path, trained, resumed, phrase
):
    """Without the fingerprint's outer_optimizer entry, the load itself refuses a state it cannot continue
    (instead of KeyError 'betas' at the first step) or whose hyperparameters torch would silently restore."""
    _, path = checkpoints[trained]
    state = torch.load(path, weights_only=True)
    del state["fingerprint"]["outer_optimizer"]
    older = tmp_path / "ckpt-00000001.pt"
    torch.save(state, older)
    cfg = compose_cfg(*BASES[trained], *resumed)
    loaded, _ = resume(cfg, older)
    with pytest.raises(ckpt.CheckpointError) as info:
        build(cfg).load_state_dict(loaded)
    assert phrase in str(info.value) and "\n" not in str(info.value)


def test_resuming_an_sgd_run_with_outer_adam_is_one_line_and_exit_1(tmp_path):
    """The issue's command, end to end: a debug=smoke checkpoint resumed with outer_optimizer=adam."""
    path = ckpt.Checkpointer(tmp_path / "smoke" / "checkpoints").save(
        build(compose_cfg("debug=smoke")).state_dict("run", False), 3
    )
    proc = run_train(
        tmp_path,
        "debug=smoke",
        f"hydra.run.dir={tmp_path / 'y'}",
        f"resume={path}",
        "outer_optimizer=adam",
        check=False,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "KeyError" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stderr
    assert (
        f"checkpoint {path} was made with another config (outer_optimizer._target_: this run has 'torch.optim.Adam', "
        "the checkpoint has 'torch.optim.SGD'); resume with the checkpoint's settings" in errors[0]
    )
