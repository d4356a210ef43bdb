"""Bad input through the real command line (issue 7): config values, data files, checkpoints.

Each case runs `python -m reptile_exp.train` in a process of its own and must exit with status 1 and one
line on stderr ("error: ...") naming what to fix, without a traceback, before any training (its run dir holds no
checkpoint and no metrics). The cases run a few at a time in a
module fixture, each forked from one interpreter that has imported the entry point (tests/forked_train.py: a
fresh interpreter spends most of a failing run importing torch); every case is its own test. The console-script
test runs a fresh interpreter.
"""

from __future__ import annotations

import inspect
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, clean_env, run_train, train_cmd
from omegaconf import OmegaConf
from synthetic_data import mini_images, omniglot_pngs, png_bytes, write_mini_csv, write_mini_pickles, write_omniglot

from reptile_exp.config import bool_keys
from reptile_exp.config_checks import annotation_name
from reptile_exp.instantiate import locate

FAST = ["logger.mode=disabled", "progress=false", "device=cpu", "iterations=2", "eval_every=0", "eval_tasks=2"]
OMNIGLOT = ["dataset=omniglot", "model=omniglot_conv", "dataset._target_=synthetic_data.SmallOmniglot"]
MINI = ["dataset=miniimagenet", "model=miniimagenet_conv"]


class Payload:
    """Unpickling this creates `marker` (the pickle stores a call to open): the stand-in for hostile code."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


# (id, overrides with {placeholders} for the files built below, key phrase of the one-line error)
CASES = [
    # composition: the typed schema, unknown keys and group options
    ("type", ["k=abc"], "k='abc' is invalid"),
    ("enum", ["device=gpu"], "expected one of [auto, cpu, cuda]"),
    ("unknown_key", ["kk=3"], "kk is not a config key: did you mean 'k'?"),
    ("unknown_group_key", ["dataset.n_pionts=3"], "did you mean 'n_points'?"),
    ("added_unknown_key", ["+epsilon_fianl=0.1"], "epsilon_fianl is not a config key: did you mean 'epsilon_final'?"),
    ("model_mismatch", ["dataset=omniglot", "model=mlp"], "model=mlp does not fit dataset=omniglot"),
    (
        "experiment_clash",
        ["experiment=omniglot_5w1s", "dataset=sine"],
        "dataset=sine does not fit experiment=omniglot_5w1s, which sets dataset=omniglot and its keys",
    ),
    ("unknown_option", ["dataset=nope"], "choose one of ['miniimagenet', 'omniglot', 'sine']"),
    ("override_syntax", ["k=[1,"], "cannot compose the config"),
    ("bad_target", ["dataset._target_=nope.Nope"], "Error locating target 'nope.Nope'. full_key: dataset; check the"),
    ("bad_activation", ["model.activation=foo"], "model.activation='foo' is invalid: choose one of ['relu', 'tanh']"),
    ("bad_x_sampling", ["dataset.x_sampling=foo"], "dataset.x_sampling='foo' is invalid: choose 'grid' or 'uniform'"),
    ("bad_model_target", ["model._target_=nope.Nope"], "Error locating target 'nope.Nope'. full_key: model"),
    (
        "bad_target_synthetic",
        ["experiment=omniglot_5w1s", "synthetic_data=true", "dataset._target_=nope.Nope"],
        "Error locating target 'nope.Nope'. full_key: dataset; check the _target_ and keys of that config group",
    ),
    # validate(): ranges and cross-field checks
    ("k_zero", ["k=0"], "k=0 is invalid: must be an integer >= 1"),
    ("lr_nan", ["inner_lr=nan"], "inner_lr=nan is invalid: must be a finite number > 0"),
    ("eps_final", ["epsilon_final=0.5"], "epsilon_final=0.5 is invalid: must be between 0 and epsilon=0.1"),
    ("hidden", ["model.hidden=[64,0]"], "model.hidden=[64, 0] is invalid: must be an integer >= 1"),
    ("sine_shots", ["dataset.k_shot=60"], "dataset.k_shot=60 is invalid: must be <= dataset.n_points=50"),
    ("split", ["eval_splits=[dev]"], "eval_splits=['dev'] is invalid: must list one or more of"),
    ("interpolation", ["name=${{nope}}"], "name cannot be resolved"),
    (  # named where it was written, not where a group reads it (inner_optimizer.lr = ${inner_lr})
        "interpolation_read",
        ["inner_lr=${{nope}}"],
        "inner_lr cannot be resolved (read by inner_optimizer.lr): Interpolation key 'nope' not found; set inner_lr",
    ),
    ("interpolation_list", ["model.hidden=[${{nope}}]"], "model.hidden[0] cannot be resolved: Interpolation key"),
    ("list_as_int", ["model.hidden=64"], "model.hidden=64 is invalid: must be a list"),
    ("threads", ["threads=100000"], "threads=100000 is invalid: must be <= the"),
    ("memory_overflow", ["eval_memory_mb=1e308"], "eval_memory_mb=1e+308 is invalid: must be a finite number in"),
    # step sizes and epsilons the run's dtype cannot hold: a traceback from the inner step, or phi silently unchanged
    ("lr_overflow", ["inner_lr=1e308"], "inner_lr=1e+308 is invalid: it overflows to inf in dtype=float32, which"),
    ("lr_underflow", ["inner_lr=1e-50"], "inner_lr=1e-50 is invalid: it underflows (to 0 or a subnormal) in dtype="),
    ("epsilon_underflow", ["epsilon=1e-50"], "epsilon=1e-50 is invalid: it underflows (to 0 or a subnormal)"),
    (
        "inner_eps_overflow",
        ["inner_optimizer=adam", "inner_optimizer.eps=1e39"],
        "inner_optimizer.eps=1e+39 is invalid: it overflows to inf in dtype=float32, which holds 1.18e-38 to 3.4e+38",
    ),
    ("outer_eps_overflow", ["outer_optimizer=adam", "+outer_optimizer.eps=1e39"], "outer_optimizer.eps=1e+39 is inv"),
    # empty paths (an empty run dir, or an empty REPTILE_EXP_* variable: test_an_empty_path_is_refused_before_...)
    ("log_dir_empty", ["paths.log_dir="], "paths.log_dir='' is invalid: an empty path names no folder"),
    ("data_dir_blank", ["paths.data_dir=' '"], "paths.data_dir=' ' is invalid: an empty path names no folder"),
    # a broken conf/local/default.yaml (here in a --config-dir): Hydra read it with a traceback
    ("local_yaml", ["--config-dir={local_yaml}"], "local/default.yaml is not valid YAML (expected the node content"),
    ("local_bytes", ["--config-dir={local_bytes}"], "local/default.yaml is not UTF-8 text (it holds the byte 0xff)"),
    ("float64_bf16", ["dtype=float64", "precision=bf16"], "precision='bf16' is invalid: bf16 and tf32 apply to"),
    ("transductive_sine", ["transductive=true"], "transductive=True is invalid: regression has no transductive"),
    ("nesterov", ["+outer_optimizer.nesterov=true"], "outer_optimizer is invalid: Nesterov momentum requires"),
    (
        "outer_lr",
        ["outer_optimizer.lr=5"],
        "outer_optimizer.lr=5 is invalid: the step size is epsilon=0.1: set epsilon",
    ),
    ("inner_lr_group", ["inner_optimizer.lr=0.5"], "inner_optimizer.lr=0.5 is invalid: the step size is inner_lr=0.02"),
    # the knob a mode reads: not silently ignored
    ("checkpoint_training", ["checkpoint={ckpt}"], "is invalid: read with evaluate_only=true only; resume="),
    (
        "resume_evaluating",
        ["evaluate_only=true", "checkpoint={ckpt}", "resume={ckpt}"],
        "evaluate_only=true reads checkpoint=",
    ),
    (
        "evaluate_in_training_dir",
        ["evaluate_only=true", "checkpoint={ckpt}", "hydra.run.dir={tmp}/ckpt_run"],
        "holds a training run",
    ),
    ("n_way", [*OMNIGLOT, "dataset.root={omniglot}", "dataset.n_way=1"], "dataset.n_way=1 is invalid"),
    # a model no machine holds (4 TB of parameters), refused before any of it is allocated
    ("model_too_big", ["model.hidden=[1000000,1000000]"], "the model (MLP, 1,000,004,000,001 parameters) needs about"),
    ("task_too_big", ["dataset.n_points=1000000000000"], "one training task needs about"),  # not "about 0 fit"
    (  # the periodic evaluation's eval_every_tasks, not eval_tasks, sets its chunk
        "periodic_chunk",
        ["eval_every=1", "eval_every_tasks=1000000000", "eval_chunk=1000000000"],
        "eval_chunk=1000000000: one evaluation chunk of 1000000000 tasks needs about",
    ),
    ("results_too_many", ["eval_tasks=100000000000"], "100000000000 test tasks: their results, kept to the end"),
    (
        "test_task_too_big",  # its 10^9 x 10 minibatch indices (80 GB) were allocated before
        ["protocols=[{{name:long,k_eval:1000000000}}]"],
        "protocol long: k_eval=1000000000, eval_batch=10: one test task needs about",
    ),
    # against the built dataset, before training: the final evaluation must not be what fails
    (
        "split_absent",
        [*OMNIGLOT, "dataset.root={omniglot}", "eval_splits=[val,test]", "objective_split=test"],
        "this dataset has no 'val' split; list only ['test', 'train']; dataset.val_characters > 0 makes one",
    ),
    (
        "protocol_shots",
        [*OMNIGLOT, "dataset.root={omniglot}", "protocols=[{{name:big,k_shot:25}}]"],
        "protocols[0].k_shot=25 is invalid: the 'test' split has",
    ),
    # data files
    ("data_missing", ["dataset=omniglot", "dataset.root={tmp}/nowhere"], "nowhere (which does not exist)"),
    ("root_a_file", [*OMNIGLOT, "dataset.root={omniglot}/images_background.zip"], "zip (a file, not a folder)"),
    ("mini_root_a_file", [*MINI, "dataset.root={mini}/mini-imagenet-cache-train.pkl"], "pkl (a file, not a folder)"),
    ("zip_garbage", [*OMNIGLOT, "dataset.root={zip_garbage}"], "images_background.zip is not a readable zip"),
    ("zip_member", [*OMNIGLOT, "dataset.root={zip_member}"], "images_evaluation.zip is corrupt at"),
    ("png_truncated", [*OMNIGLOT, "dataset.root={png_truncated}"], "cannot decode"),
    ("character_missing", [*OMNIGLOT, "dataset.root={character_missing}"], "39 characters, expected 4 and 40"),
    ("class_too_many", [*MINI, "dataset.root={mini}"], "dataset.n_way=5 exceeds the 4 classes of the 'train'"),
    (
        "query_too_many",
        [*MINI, "dataset.root={mini}", "dataset.n_way=2", "dataset.train_shots=6", "algorithm=maml"],
        "(+1 query) needs 7",
    ),
    ("pickle_hostile", [*MINI, "dataset.root={mini_hostile}"], "refusing to load io.open"),
    ("pickle_size", [*MINI, "dataset.root={mini_size}"], "is not a uint8 array (N, 84, 84, 3)"),
    ("class_empty", [*MINI, "dataset.root={mini_empty}"], "classes have different numbers of images"),
    ("jpeg_missing", [*MINI, "dataset.root={mini_csv}"], "is listed in a csv file but missing"),
    ("csv_row_short", [*MINI, "dataset.root={mini_csv_short}"], "expected 'filename,label', got"),
    ("val_too_few", [*OMNIGLOT, "dataset.root={omniglot}", "dataset.val_characters=1"], "a val task needs"),
    (  # SmallOmniglot's 30 training characters: 29 leave 4 rotated classes
        "val_too_many",
        [*OMNIGLOT, "dataset.root={omniglot}", "dataset.val_characters=29"],
        "dataset.val_characters=29 is invalid: it leaves 4 training classes for dataset.n_way=5; set it <= 28",
    ),
    (  # synthetic_data=true splits and checks as the real data does (Omniglot.split_classes)
        "synthetic_val_too_few",
        ["experiment=omniglot_5w1s", "synthetic_data=true", "dataset.val_characters=1"],
        "dataset.val_characters=1 is invalid: a val task needs dataset.n_way=5 of them",
    ),
    (
        "synthetic_val_absent",
        ["experiment=omniglot_5w1s", "synthetic_data=true", "eval_splits=[val]", "objective_split=val"],
        "this dataset has no 'val' split; list only ['test', 'train']; dataset.val_characters > 0 makes one",
    ),
    (  # the smoke check's random images hold no more examples per class than the real data
        "smoke_shots",
        ["debug=smoke", "dataset=omniglot", "dataset.train_shots=25"],
        "dataset.train_shots=25 needs 25 distinct examples per class but the 'train' split has 20",
    ),
    # an evaluation that diverges: one line, no summary that reads as a result
    (
        "eval_diverges",
        ["evaluate_only=true", "checkpoint=init", "inner_lr=1000", "k_eval=20"],
        "the evaluation diverged: test mse is",
    ),
    # where the run writes
    ("run_dir", ["hydra.run.dir=/proc/nowhere/run"], "cannot write /proc/nowhere (No such file or directory), where"),
    ("wandb_no_key", ["logger.mode=online"], "logger.mode=online: W&B did not start (No API key configured"),
    (
        "wandb_tag",
        ["logger.mode=offline", "logger.tags=['']"],
        "logger.mode=offline: W&B did not start (",  # and the fix: below
    ),
    # checkpoints
    ("ckpt_missing", ["resume={tmp}/nowhere.pt"], "nowhere.pt does not exist"),
    ("ckpt_truncated", ["resume={ckpt_truncated}"], "cannot be loaded"),
    ("ckpt_text", ["resume={ckpt_text}"], "notes.txt is not a checkpoint (it begins b'note', not with the zip header"),
    ("ckpt_hostile", ["resume={ckpt_hostile}"], "refused: loading it could run code"),
    ("ckpt_model", ["resume={ckpt}"], "model.hidden: this run has [64, 64], the checkpoint has [8, 8]"),
    # the same fingerprint, entries that do not fit: renamed weights, a missing entry
    ("ckpt_renamed", ["model.hidden=[8,8]", "resume={ckpt_renamed}"], "does not fit this run (Error(s) in loading"),
    ("ckpt_no_outer", ["model.hidden=[8,8]", "resume={ckpt_no_outer}"], "does not fit this run (no 'outer_optimizer'"),
    ("ckpt_nan", ["model.hidden=[8,8]", "resume={ckpt_nan}"], "holds non-finite weights (0.weight): the run diverged"),
    ("ckpt_nan_eval", ["model.hidden=[8,8]", "evaluate_only=true", "checkpoint={ckpt_nan}"], "non-finite weights"),
    ("ckpt_iteration", ["model.hidden=[8,8]", "resume={ckpt_iteration}"], "has a damaged 'iteration' entry ('ten')"),
    ("ckpt_fingerprint", ["model.hidden=[8,8]", "resume={ckpt_fingerprint}"], "has a damaged 'fingerprint' entry"),
    ("ckpt_rng", ["model.hidden=[8,8]", "resume={ckpt_rng}"], "does not fit this run ("),
    ("ckpt_future", ["model.hidden=[8,8]", "resume={ckpt_future}"], "is at iteration 1000000, past iterations=2"),
    # refused before the data is read or the run dir written (test_refused_before_the_data_and_the_run_dir)
    ("tf32_before_data", ["dataset=omniglot", "dataset.root={tmp}/nowhere", "precision=tf32"], "precision=tf32 is"),
    ("inner_batch", ["inner_batch=1000"], "inner_batch=1000 is invalid: a training task has 50 examples"),
    ("eval_batch_replacement", ["replacement=true", "eval_batch=11"], "eval_batch=11 is invalid with replacement=true"),
    # a damaged file in the run dir
    ("summary_damaged", ["model.hidden=[8,8]", "hydra.run.dir={summary_damaged}"], "summary.json is not valid JSON"),
    ("summary_list", ["model.hidden=[8,8]", "hydra.run.dir={summary_list}"], "summary.json is not a run's results"),
    ("summary_empty", ["model.hidden=[8,8]", "hydra.run.dir={summary_empty}"], "summary.json holds no objective"),
    ("summary_folder", ["model.hidden=[8,8]", "hydra.run.dir={summary_folder}"], "summary.json is in the way (Is a"),
    ("metrics_foreign", ["hydra.run.dir={metrics_foreign}"], "metrics.jsonl line 1 is not a metrics record"),
    ("metrics_bytes", ["model.hidden=[8,8]", "hydra.run.dir={metrics_bytes}"], "metrics.jsonl cannot be read"),
    (
        "config_folder",
        ["model.hidden=[8,8]", "overwrite=true", "hydra.run.dir={config_folder}"],
        "config.yaml is in the way (Is a directory): the run keeps a file there",
    ),
    (
        "checkpoints_file",
        ["model.hidden=[8,8]", "overwrite=true", "hydra.run.dir={checkpoints_file}"],
        "checkpoints is in the way (Not a directory): the run keeps a folder there",
    ),
    ("train_into_evaluation", ["hydra.run.dir={evaluation_dir}"], "holds an evaluate-only run, which training would"),
    (
        "config_damaged",
        ["evaluate_only=true", "checkpoint=init", "hydra.run.dir={config_damaged}"],
        "config.yaml cannot be read",
    ),
]
EARLY = ["tf32_before_data", "eval_batch_replacement"]


def bool_cases() -> list[tuple[str, list[str], str]]:
    """Every key typed bool given 2 (was read as true): the schema's (config.bool_keys) and each group option's, its
    target's parameters annotated bool (or bool | None), chosen with its option; and a schema key given an
    interpolation that resolves to 5 (k's value; read as true too)."""
    cases = [(f"bool_{key}", [f"{key}=2"], f"{key}=2 is invalid: must be true or false") for key in bool_keys()]
    cases.append(("bool_interpolation", ["replacement=${{k}}"], "replacement='${k}' is invalid: it resolves to 5;"))
    for group in ("dataset", "model", "algorithm", "inner_optimizer", "outer_optimizer"):
        for option in sorted((ROOT / "conf" / group).glob("*.yaml")):
            node = OmegaConf.load(option)
            for name, param in inspect.signature(locate(node._target_)).parameters.items():
                if annotation_name(param.annotation).removesuffix(" | None") == "bool":
                    key = f"{group}.{name}"
                    given = [f"{group}={option.stem}", f"{'' if name in node else '+'}{key}=2"]
                    cases.append((f"bool_{key}_{option.stem}", given, f"{key}=2 is invalid: must be true or false"))
    return cases


CASES += bool_cases()


def build_omniglot(base: Path) -> dict[str, Path]:
    """Small Omniglot roots (tests/synthetic_data.SmallOmniglot counts), each damaged in one way."""
    pngs = omniglot_pngs()
    first = min(pngs, key=lambda p: p.split("/")[1:])  # decoded first: its damage is found at once
    roots = {}

    def variant(name: str, files: dict[str, bytes]) -> Path:
        roots[name] = write_omniglot(base / name, files)
        return roots[name]

    variant("omniglot", pngs)
    (variant("zip_garbage", pngs) / "images_background.zip").write_bytes(b"not a zip file " * 64)
    member = variant("zip_member", pngs) / "images_evaluation.zip"
    with zipfile.ZipFile(member) as z:
        info = z.getinfo(first)
    data = bytearray(member.read_bytes())
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len  # the first member's compressed bytes
    data[start : start + 64] = bytes(64)
    member.write_bytes(bytes(data))
    variant("png_truncated", {**pngs, first: pngs[first][:60]})
    variant("png_rgb", {**pngs, first: png_bytes(np.zeros((105, 105, 3), np.uint8))})
    gone = "/".join(first.split("/")[:3])
    variant("character_missing", {p: b for p, b in pngs.items() if not p.startswith(gone + "/")})
    return roots


def build_local_configs(base: Path) -> dict[str, Path]:
    """Config dirs for --config-dir, each with a broken local/default.yaml (this machine's settings): not YAML, and
    not UTF-8 text. The repo's conf/local/ is left alone."""
    dirs = {}
    for name, data in (("local_yaml", b"threads: [1,\n"), ("local_bytes", b"threads: 1\nname: caf\xff\n")):
        (base / name / "local").mkdir(parents=True)
        (base / name / "local" / "default.yaml").write_bytes(data)
        dirs[name] = base / name
    return dirs


def build_mini(base: Path) -> dict[str, Path]:
    """Mini-ImageNet roots with 4/2/3 classes of 6 images: intact pickles, and damaged pickles or jpgs."""
    images = mini_images()
    roots = {name: base / name for name in ("mini", "mini_hostile", "mini_size", "mini_empty", "mini_csv")}
    roots["mini_csv_short"] = base / "mini_csv_short"
    for name in ("mini", "mini_hostile", "mini_size", "mini_empty"):
        write_mini_pickles(roots[name], images)
    train = "mini-imagenet-cache-train.pkl"
    (roots["mini_hostile"] / train).write_bytes(pickle.dumps(Payload(base / "pwned_by_pickle")))
    small = {"image_data": np.zeros((12, 32, 32, 3), np.uint8), "class_dict": {"a": list(range(6)), "b": []}}
    (roots["mini_size"] / train).write_bytes(pickle.dumps(small))
    empty = {"image_data": np.zeros((6, 84, 84, 3), np.uint8), "class_dict": {"a": list(range(6)), "b": []}}
    (roots["mini_empty"] / train).write_bytes(pickle.dumps(empty))
    rows = write_mini_csv(roots["mini_csv"], images)
    (roots["mini_csv"] / "images" / rows["train"][0]["filename"]).unlink()
    write_mini_csv(roots["mini_csv_short"], images)
    with (roots["mini_csv_short"] / "val.csv").open("a") as f:
        f.write("n0000000000000001.jpg\n")  # a row without its label
    return roots


def start_checkpoint_run(base: Path) -> subprocess.Popen:
    """A real checkpoint (MLP 1-8-8-1, two iterations) made by the command line, in the background."""
    cmd = train_cmd(f"hydra.run.dir={base / 'ckpt_run'}", "model.hidden=[8,8]", *FAST, "k_eval=1")
    env = clean_env(base)
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def damaged_checkpoints(base: Path) -> dict[str, Path]:
    """That checkpoint, a truncated copy and a checkpoint whose unpickling would create a marker file."""
    ckpt = next((base / "ckpt_run" / "checkpoints").glob("ckpt-*.pt"))
    paths = {"ckpt": ckpt, "ckpt_truncated": base / "ckpt_truncated.pt", "ckpt_hostile": base / "ckpt_hostile.pt"}
    paths["ckpt_truncated"].write_bytes(ckpt.read_bytes()[: ckpt.stat().st_size // 2])
    paths["ckpt_text"] = base / "notes.txt"  # resume= given the wrong file
    paths["ckpt_text"].write_text("notes of the run\n")
    torch.save({"phi": Payload(base / "pwned_by_checkpoint")}, paths["ckpt_hostile"])
    state = torch.load(ckpt, weights_only=True)
    paths["ckpt_renamed"], paths["ckpt_no_outer"] = base / "ckpt_renamed.pt", base / "ckpt_no_outer.pt"
    torch.save({**state, "phi": {f"x{n}": p for n, p in state["phi"].items()}}, paths["ckpt_renamed"])
    torch.save({k: v for k, v in state.items() if k != "outer_optimizer"}, paths["ckpt_no_outer"])
    edits = {  # entries of the wrong type or value, as a hand edit or another program would leave them
        "ckpt_nan": {"phi": {n: torch.full_like(p, float("nan")) for n, p in state["phi"].items()}},
        "ckpt_iteration": {"iteration": "ten"},
        "ckpt_fingerprint": {"fingerprint": "abc"},
        "ckpt_rng": {"rng": {"tasks": "abc"}},
        "ckpt_future": {"iteration": 1000000},
    }
    for name, edit in edits.items():
        paths[name] = base / f"{name}.pt"
        torch.save({**state, **edit}, paths[name])
    for name, damaged in (("summary_damaged", "summary.json"), ("config_damaged", "config.yaml")):
        paths[name] = shutil.copytree(base / "ckpt_run", base / name)
        (paths[name] / damaged).write_text((paths[name] / damaged).read_text()[:40] + "\n: [")
    for name, text in (("summary_list", "[1]"), ("summary_empty", "{}"), ("summary_folder", None)):
        paths[name] = shutil.copytree(base / "ckpt_run", base / name)
        if text is None:
            (paths[name] / "summary.json").unlink()
            (paths[name] / "summary.json").mkdir()
        else:
            (paths[name] / "summary.json").write_text(text)
    paths["metrics_foreign"] = base / "metrics_foreign"  # a folder of someone else's files
    paths["metrics_foreign"].mkdir()
    (paths["metrics_foreign"] / "metrics.jsonl").write_text('{"mine": 1}\n')
    paths["metrics_bytes"] = shutil.copytree(base / "ckpt_run", base / "metrics_bytes")
    (paths["metrics_bytes"] / "summary.json").unlink()  # unfinished: it would resume and truncate its metrics
    (paths["metrics_bytes"] / "metrics.jsonl").write_bytes(b"\xff\xfe{}\n")
    for name, blocked, becomes_folder in (
        ("config_folder", "config.yaml", True),
        ("checkpoints_file", "checkpoints", False),
    ):
        paths[name] = shutil.copytree(base / "ckpt_run", base / name)  # a folder where a file goes, or the reverse
        (shutil.rmtree if (paths[name] / blocked).is_dir() else Path.unlink)(paths[name] / blocked)
        (paths[name] / blocked).mkdir() if becomes_folder else (paths[name] / blocked).write_text("")
    paths["evaluation_dir"] = base / "evaluation_dir"  # what an evaluate-only run leaves
    paths["evaluation_dir"].mkdir()
    (paths["evaluation_dir"] / "evaluation.json").write_text('{"objective": 0.5}')
    (paths["config_damaged"] / "summary.json").unlink()  # an evaluation's dir: no training results
    shutil.rmtree(paths["config_damaged"] / "checkpoints")
    return paths


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory) -> dict[str, subprocess.CompletedProcess]:
    base = tmp_path_factory.mktemp("bad_inputs")
    checkpoint_run = start_checkpoint_run(base)
    places = {"tmp": base, **build_omniglot(base), **build_mini(base), **build_local_configs(base)}
    assert checkpoint_run.wait(timeout=300) == 0
    places.update(damaged_checkpoints(base))
    # ROOT first: the forked script (tests/forked_train.py) imports this checkout's reptile_exp, not an installed one
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests")])
    env = clean_env(base, PYTHONPATH=path, REPTILE_EXP_CACHE=str(base / "cache"))

    cases = [
        [*FAST, "k_eval=1", f"hydra.run.dir={base / 'runs' / name}", *(o.format(**places) for o in overrides)]
        for name, overrides, _ in CASES
    ]
    cmd = [sys.executable, str(ROOT / "tests" / "forked_train.py"), "--jobs", "3", "--work", str(base / "forked")]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, input=json.dumps(cases), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = {
        name: subprocess.CompletedProcess(args, **outcome)
        for (name, *_), args, outcome in zip(CASES, cases, json.loads(proc.stdout))
    }
    results["_markers"] = [base / "pwned_by_pickle", base / "pwned_by_checkpoint"]
    results["_runs"] = base / "runs"
    return results


def test_at_least_25_cases():
    assert len(CASES) >= 25 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,phrase", [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_fails_with_one_line(outcomes, name, phrase):
    proc = outcomes[name]
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1, output
    assert "Traceback" not in proc.stdout + proc.stderr, output
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and phrase in errors[0], output
    others = [line for line in proc.stderr.splitlines() if "ERROR" in line and line != errors[0]]
    assert not others, f"error lines beside the one: {others}\n{output}"  # e.g. a library's own ERROR log
    run_dir = outcomes["_runs"] / name
    trained = [*run_dir.glob("checkpoints/ckpt-*.pt"), *run_dir.glob("metrics.jsonl")]
    assert not trained, f"refused only after training: {trained}\n{output}"


@pytest.mark.parametrize("name", EARLY)
def test_refused_before_the_data_and_the_run_dir(outcomes, name):
    """Checks that need only the config (or one sampled task) come before the dataset's missing root and before the
    run dir's config.yaml and W&B run."""
    assert not (outcomes["_runs"] / name / "config.yaml").exists(), outcomes[name].stderr
    assert "nowhere" not in outcomes[name].stderr


def test_the_damaged_files_are_left_as_they_were(outcomes):
    runs = outcomes["_runs"].parent
    assert (runs / "summary_damaged" / "summary.json").read_text().endswith(": [")
    assert (runs / "config_damaged" / "config.yaml").read_text().endswith(": [")
    assert not (runs / "config_damaged" / "evaluation.json").exists()
    assert (runs / "summary_list" / "summary.json").read_text() == "[1]"
    assert (runs / "metrics_foreign" / "metrics.jsonl").read_text() == '{"mine": 1}\n'
    assert not (runs / "metrics_foreign" / "config.yaml").exists()
    assert (runs / "metrics_bytes" / "metrics.jsonl").read_bytes() == b"\xff\xfe{}\n"
    evaluation = runs / "evaluation_dir"
    assert (evaluation / "evaluation.json").read_text() == '{"objective": 0.5}'
    assert not [p.name for p in evaluation.iterdir() if p.name in ("config.yaml", "metrics.jsonl", "plots")]


def test_the_refusals_name_their_fix_and_leave_the_training_dir_as_it_was(outcomes):
    assert "fix the logger.* value it names" in outcomes["wandb_tag"].stderr
    training = outcomes["_runs"].parent / "ckpt_run"  # evaluate_in_training_dir pointed its run dir here
    assert "evaluate_only: false" in (training / "config.yaml").read_text()
    assert not (training / "evaluation.json").exists()


def test_hostile_files_ran_no_code(outcomes):
    assert outcomes["pickle_hostile"].returncode == outcomes["ckpt_hostile"].returncode == 1
    for marker in outcomes["_markers"]:
        assert not marker.exists(), f"{marker} was created: the hostile pickle ran"


def test_console_script_reports_one_line_outside_the_repo(tmp_path):
    script = Path(sys.executable).with_name("reptile-train")
    if not script.exists():
        pytest.skip("the reptile-train console script is not installed in this environment")
    proc = subprocess.run(
        [str(script), "dataset=nope"], cwd=tmp_path, env=clean_env(tmp_path), capture_output=True, text=True
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "error: dataset=nope is invalid: no such option; choose one of " + str(
        sorted(p.stem for p in (ROOT / "conf" / "dataset").glob("*.yaml"))
    )


@pytest.mark.parametrize(
    "env,overrides,phrase",
    [
        ({}, ["hydra.run.dir="], "hydra.run.dir='' is invalid: an empty run dir is the current folder, where the run"),
        ({}, ["-m", "hydra.sweep.dir=' '", "k=1,2"], "hydra.sweep.dir=' ' is invalid: an empty sweep dir is the"),
        (  # set but empty: the runs went under /runs (here the run dir is given: it must not be made either)
            {"REPTILE_EXP_OUTPUTS": ""},
            ["hydra.run.dir={run}"],
            "REPTILE_EXP_OUTPUTS='' is invalid: it is set but empty, so paths.log_dir is empty and the paths built",
        ),
        ({}, ["paths.log_dir=a,''", "-m", "hydra.sweep.dir={run}"], "paths.log_dir='' is invalid: an empty path"),
        (  # W&B's settings refuse it: blamed the logger.* values
            {"WANDB_MODE": ""},
            ["logger.mode=offline", "hydra.run.dir={run}"],
            "WANDB_MODE='' is invalid: set but empty, which W&B refuses; unset it, or set online, offline or disabled",
        ),
    ],
    ids=["run_dir", "sweep_dir", "outputs_env", "log_dir_swept", "wandb_mode_env"],
)
def test_an_empty_path_or_variable_is_refused_before_hydra_writes(tmp_path, env, overrides, phrase):
    """Empty run dirs and paths, refused in one line before Hydra makes the run dir (WANDB_MODE: before any work):
    an empty run dir is the current folder (here an empty one, which must stay empty)."""
    work, run = tmp_path / "work", tmp_path / "run"
    work.mkdir()
    given = [o.format(run=run) for o in overrides if o != "-m"]
    cmd = train_cmd(*FAST, "k_eval=1", *given, multirun="-m" in overrides)
    env = clean_env(tmp_path, PYTHONPATH=str(ROOT), **env)
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, timeout=300)
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert proc.returncode == 1 and "Traceback" not in output, output
    assert len(errors) == 1 and phrase in errors[0], output
    assert not list(work.iterdir()), output
    assert not (run / "checkpoints").exists() and (env.get("WANDB_MODE") == "" or not run.exists()), output


def test_a_bad_value_costs_only_its_job_of_a_sweep(tmp_path):
    proc = run_train(tmp_path, "k=0,1", *FAST, "k_eval=1", multirun=True, check=False)
    sweep = next((tmp_path / "outputs" / "multiruns").iterdir())
    assert "k=0 is invalid: must be an integer >= 1" in (sweep / "0" / "error.txt").read_text()
    assert json.loads((sweep / "1" / "summary.json").read_text())["iterations"] == 2, proc.stderr
    # the sweep ran to its end, then says that a job failed: exit status 1, the job named in the last line
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: 1 of 2 jobs failed") and "job 0 (k=0 " in last
