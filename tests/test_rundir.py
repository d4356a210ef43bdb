"""The checkpoint a run starts from, named by the knob the user set (issue 12): a bad `resume=` is reported as
`resume`, a bad `checkpoint=` (evaluate_only=true) as `checkpoint`, in one line, exit status 1; a run's W&B identity
(issue 22)."""

from __future__ import annotations

import pytest
from conftest import ROOT, run_train
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig

import reptile_exp.train  # noqa: F401  (registers the config schema)
from reptile_exp.rundir import run_identity


@pytest.mark.parametrize(
    ("overrides", "knob"),
    [(["resume={tmp}/missing/dir"], "resume"), (["evaluate_only=true", "checkpoint={tmp}/missing/dir"], "checkpoint")],
)
def test_a_missing_checkpoint_is_reported_under_the_knob_that_named_it(tmp_path, overrides, knob):
    args = [o.format(tmp=tmp_path) for o in overrides]
    proc = run_train(tmp_path, f"hydra.run.dir={tmp_path}/run", *args, "logger.mode=disabled", check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stderr
    assert f"error: {knob}={tmp_path}/missing/dir is invalid: {tmp_path}/missing/dir does not exist" in errors[0]
    other = {"resume": "checkpoint", "checkpoint": "resume"}[knob]
    assert f"{other}=" not in errors[0]


@pytest.mark.parametrize(("group", "expected"), [(None, "k_sweep"), ("ablations", "ablations")])
def test_a_sweeps_wandb_group_is_logger_group_when_given_else_the_sweep_dirs_name(tmp_path, group, expected):
    """docs/sweeps.md: every job of a multirun is grouped under the sweep dir's name; `logger.group=...` sets
    another (it used to lose to the sweep dir's name)."""
    overrides = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/k_sweep", "k=2", "seed=1"]
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose(
            "train", overrides=[*overrides, *([f"logger.group={group}"] if group else [])], return_hydra_config=True
        )
    HydraConfig.instance().set_config(cfg)
    try:
        name, run_group, job_type = run_identity(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert (name, run_group, job_type) == ("sine-reptile k=2,seed=1", expected, "sine-reptile")


def _settle_rounds(job_dir: str, rounds: int, barrier) -> None:
    from pathlib import Path

    from reptile_exp.rundir import pending_record, settle_hydra_record

    for i in range(rounds):
        pending = Path(job_dir) / pending_record()  # where Hydra writes it (conf/hydra: hydra.output_subdir)
        pending.mkdir(exist_ok=True)
        for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
            (pending / name).write_text(f"{name} {i}\n")
        barrier.wait()
        settle_hydra_record(Path(job_dir), accepted=True)
        barrier.wait()


def test_ranks_of_one_job_settle_its_hydra_record_side_by_side(tmp_path):
    """torchrun's ranks share a run dir (hydra.run.dir=...), and Hydra writes each one's record of it as the others
    settle theirs: a shared folder was moved or removed under another rank (FileNotFoundError stopped the gpu_check
    rehearsal's two-ranks step)."""
    import multiprocessing

    from reptile_exp.rundir import HYDRA_RECORD

    context = multiprocessing.get_context("spawn")
    ranks, rounds = 4, 40
    barrier = context.Barrier(ranks, timeout=60)  # a rank that died breaks it: the others end too
    procs = [context.Process(target=_settle_rounds, args=(str(tmp_path), rounds, barrier)) for _ in range(ranks)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(600)
    assert [p.exitcode for p in procs] == [0] * ranks
    assert sorted(f.name for f in (tmp_path / HYDRA_RECORD).iterdir()) == [
        "config.yaml",
        "hydra.yaml",
        "overrides.yaml",
    ]
    assert not list(tmp_path.glob(".hydra.pending*"))
