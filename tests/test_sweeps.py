"""Multirun sweeps end to end (issue 5 acceptance): the three launchers, one W&B run per job grouped by
sweep, the sweep summary and the launcher presets. The Optuna search: tests/test_optuna_sweeper.py."""

import csv
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT, clean_env, run_train
from hydra import compose, initialize_config_dir
from wandb_records import exit_code, records

import reptile_exp.train  # noqa: F401  (registers the config schema)

TINY = ["iterations=4", "log_every=2", "checkpoint_every=4", "eval_every=0", "eval_tasks=4", "k_eval=2"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread per process on this shared CPU


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_record(path):
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def sweep_2x2(tmp_path, *launcher: str):
    """k=1,2 x seed=0,1 with offline W&B runs; returns the sweep dir."""
    sweep = tmp_path / "sweep"
    run_train(
        tmp_path,
        *launcher,
        f"hydra.sweep.dir={sweep}",
        "k=1,2",
        "seed=0,1",
        "logger.mode=offline",
        "progress=false",
        *TINY,
        multirun=True,
        **ONE_THREAD,
    )
    return sweep


def check_2x2(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    files = [sorted(job.glob("wandb/offline-run-*/run-*.wandb")) for job in jobs]
    assert [len(f) for f in files] == [1, 1, 1, 1]  # one W&B run per job
    runs = [run_record(f[0]) for f in files]
    assert len({r.run_id for r in runs}) == 4
    assert {r.run_group for r in runs} == {sweep.name} and {r.job_type for r in runs} == {"sine-reptile"}
    for run, (k, seed) in zip(runs, [(1, 0), (1, 1), (2, 0), (2, 1)]):
        assert run.display_name.startswith("sine-reptile ") and f"k={k}" in run.display_name
        assert f"seed={seed}" in run.display_name
    assert [exit_code(f[0]) for f in files] == [0, 0, 0, 0]  # every run finished

    rows = read_csv(sweep / "sweep_summary.csv")
    assert [(r["job"], r["k"], r["seed"], r["status"]) for r in rows] == [
        ("0", "1", "0", "finished"),
        ("1", "1", "1", "finished"),
        ("2", "2", "0", "finished"),
        ("3", "2", "1", "finished"),
    ]
    assert [r["wandb_run_id"] for r in rows] == [r.run_id for r in runs]
    assert all(r["objective_name"] == "test/mse" and float(r["objective"]) == float(r["test/mse"]) > 0 for r in rows)
    table = (sweep / "sweep_summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 1 + 4  # header + one row per job
    assert (sweep / "sweep_summary.png").stat().st_size > 0  # two swept knobs: a plot


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    return sweep_2x2(tmp_path_factory.mktemp("basic"))


def test_2x2_sweep_with_the_basic_launcher(basic_sweep):
    check_2x2(basic_sweep)


@pytest.mark.parametrize(
    "launcher",
    ["launcher=joblib", pytest.param("hydra/launcher=submitit_local", marks=pytest.mark.slow)],
    ids=["joblib", "submitit_local"],
)
def test_2x2_sweep_with_a_parallel_launcher(tmp_path, launcher):
    check_2x2(sweep_2x2(tmp_path, launcher))


def test_summary_script_rewrites_the_summary_of_a_sweep_dir(basic_sweep, tmp_path):
    sweep = tmp_path / "copy"
    shutil.copytree(basic_sweep, sweep)
    for name in ("sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"):
        (sweep / name).unlink()
    script = [sys.executable, str(ROOT / "scripts" / "summarize_sweep.py")]
    out = subprocess.run([*script, str(sweep)], cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (sweep / "sweep_summary.csv").read_text() == (basic_sweep / "sweep_summary.csv").read_text()
    title = f"# Sweep {basic_sweep.name}\n"  # the dir's name; the rest is the table the sweep wrote
    md = (basic_sweep / "sweep_summary.md").read_text()
    assert md.startswith(title) and (sweep / "sweep_summary.md").read_text() == md.replace(title, "# Sweep copy\n", 1)
    assert (sweep / "sweep_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = subprocess.run([*script, str(empty)], cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True)
    assert bad.returncode == 1 and "holds no jobs" in bad.stderr and "\n" == bad.stderr[-1]


def compose_hydra(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_launcher_presets_compose_and_every_slurm_field_is_overridable():
    assert compose_hydra().hydra.launcher._target_.endswith("BasicLauncher")  # launcher=local is the default
    assert compose_hydra("launcher=joblib").hydra.launcher._target_.endswith("JoblibLauncher")
    slurm = {
        "partition": "gpu",
        "timeout_min": 30,
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem_gb": 64,
        "array_parallelism": 3,
        "max_num_timeout": 5,
        "setup": ["module load cuda"],
    }
    cfg = compose_hydra("launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in slurm.items())).hydra.launcher
    assert cfg._target_.endswith("SlurmLauncher")
    assert {k: (list(cfg[k]) if k == "setup" else cfg[k]) for k in slurm} == slurm
    assert cfg.tasks_per_node == 4  # one task (torch.distributed rank) per GPU
