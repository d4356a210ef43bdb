"""Valid but unusual settings run to the end (issue 12): the VALID table, each a smoke-sized run of train.run in
this process (the composition and validation of the command line, then build, meta-training, evaluation and the
summary); and a dataset group chosen alone runs from the real command line, saying nothing is wrong."""

import json
import math

import pytest
from conftest import run_train
from hydra import compose, initialize_config_dir
from test_config import CONF

from reptile_exp.train import run

OMNI, MINI = "experiment=omniglot_5w1s", "experiment=miniimagenet_5w1s"
# Settings at the edge of what is allowed; each must train and evaluate with a finite objective.
VALID = [
    (OMNI, "meta_batch=1"),
    (MINI, "meta_batch=1"),
    ("k=1",),
    (OMNI, "k=1"),
    ("inner_batch=1",),
    ("inner_batch=50",),  # the whole task in one minibatch: one pass per step
    ("eval_chunk=1",),
    (OMNI, "eval_chunk=1", "transductive=true"),
    ("dtype=float64",),
    (OMNI, "dtype=float64"),
    ("k_eval=0",),
    ("eval_batch=1", "eval_tasks=1"),
    ("iterations=1", "eval_every=0", "checkpoint_every=1", "keep_checkpoints=1", "log_every=1"),
    ("epsilon_final=0.1",),  # equal to epsilon: a constant step
    ("replacement=true", "inner_batch=50"),
    ("loss_reduction=sum", "inner_optimizer=adam", "inner_optimizer.reset=true", "outer_optimizer=adam"),
    ("algorithm=maml", "k=1", "algorithm.query_shots=1"),
    ("algorithm=fomaml", "algorithm.tail_shots=1"),
    ("dataset.k_shot=50",),  # every grid point is a support point
    (OMNI, "dataset.n_way=2", "dataset.k_shot=1", "dataset.train_shots=1", "inner_batch=1"),
    (OMNI, "eval_splits=[train,val,test]", "objective_split=val", "dataset.val_characters=5"),
    ("+outer_optimizer.momentum=0.9", "+outer_optimizer.nesterov=true"),
    ("dataset=omniglot", "+model.channels=8"),
    ("fused_inner=false", "grouped_tasks=false", "threads=1"),
]


@pytest.mark.parametrize("overrides", VALID, ids=[" ".join(o) for o in VALID])
def test_an_unusual_valid_setting_runs_to_the_end(overrides, tmp_path):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        cfg = compose("train", overrides=[*overrides, "debug=smoke"])
    objective = run(cfg, tmp_path)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["iterations"] == cfg.iterations and math.isfinite(objective)
    split, metric = summary["objective_name"].split("/")  # the objective is objective_split's, whatever comes first
    assert split == cfg.objective_split and objective == summary["objective"] == summary["results"][split][metric]


def test_a_dataset_group_alone_runs_from_the_command_line(tmp_path):
    proc = run_train(tmp_path, "dataset=omniglot,miniimagenet", "debug=smoke", multirun=True, timeout=1800)
    sweep = next((tmp_path / "outputs" / "multiruns").iterdir())
    for job, model in (("0", "OmniglotConvNet"), ("1", "MiniImageNetConvNet")):
        assert json.loads((sweep / job / "summary.json").read_text())["iterations"] == 6, proc.stderr
        assert f"reptile_exp.models.{model}" in (sweep / job / "config.yaml").read_text()
    complaints = [line for line in proc.stderr.splitlines() if "][reptile_exp" in line and "][INFO]" not in line]
    assert not complaints, proc.stderr  # (matplotlib may warn that it builds its font cache in the fresh HOME)
