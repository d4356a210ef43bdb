"""`launcher=slurm` against a real one-node SLURM cluster (slurmctld, slurmd, slurmdbd; tests/slurm_cluster.py).

Nothing is mocked: Hydra submits through hydra-submitit-launcher's sbatch, SLURM runs the jobs, sends the
time-limit signal and requeues through submitit's `scontrol requeue`, `scancel` stops a job. Skipped with the
reason where the cluster cannot start (not root, packages missing). Several nodes and GPUs as gres need more than
this machine and are not tested.
"""

import csv
import json
import os
import re
import signal
import subprocess
import time
from datetime import datetime
from pathlib import Path

import pytest
import slurm_cluster
from conftest import clean_env, final_phi
from sweep_jobs import (
    EVERY,
    SMALL_RUN,
    N,
    check_resumed,
    stopped_at,
    submitit_task,
    sweep_process,
    wait_for,
    wait_until,
)
from wandb_records import exit_code

COMMON = [*SMALL_RUN, "logger.mode=offline"]
# a CPU-only node: one task of one CPU per job
SLURM = [
    "launcher=slurm",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.tasks_per_node=1",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster.running() as env:
        yield env


def sacct(cluster: dict, *args: str) -> list[list[str]]:
    """sacct's rows for whole jobs (not their steps), fields split, once none of them is pending or running
    (a job's result file comes before SLURM records its end)."""
    deadline = time.time() + 60
    while True:
        command = ["sacct", "-X", "-n", "-P", *args]
        out = subprocess.run(command, env={**os.environ, **cluster}, capture_output=True, text=True, check=True)
        rows = [line.split("|") for line in out.stdout.splitlines()]
        if not {"PENDING", "RUNNING", "COMPLETING"} & {row[-1] for row in rows} or time.time() > deadline:
            return rows
        time.sleep(0.5)


def scontrol(env: dict, *args: str) -> str:
    return subprocess.run(["scontrol", *args], env=env, capture_output=True, text=True, check=True).stdout


def elapsed_s(env: dict, job: str) -> int:
    """How long the job has been running, in seconds."""
    start = re.search(r"StartTime=(\S+)", scontrol(env, "show", "job", job))[1]
    return int((datetime.now() - datetime.fromisoformat(start)).total_seconds())


def job_id(sweep: Path) -> str:
    """The SLURM job id of the sweep (of its job array: submitit's job folders are then <job id>_<task>)."""
    (job,) = {p.parent.name.split("_")[0] for p in sweep.glob(".submitit/*/*_submitted.pkl")}
    return job


@pytest.fixture(scope="module")
def sweep(cluster, tmp_path_factory) -> Path:
    """A 2-job sweep (seed=0,1) nobody stops; its job 0 is the uninterrupted run the other tests compare to."""
    tmp = tmp_path_factory.mktemp("sweep")
    with sweep_process(clean_env(tmp, **cluster), tmp / "sweep", *SLURM, *COMMON, "seed=0,1") as proc:
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return tmp / "sweep"


def test_two_job_sweep_runs_as_a_slurm_job_array_and_each_job_writes_its_run(cluster, sweep):
    array = job_id(sweep)
    assert sorted(sacct(cluster, "-j", array, "-o", "JobID,State")) == [[f"{array}_{i}", "COMPLETED"] for i in "01"]
    for job in ("0", "1"):
        assert json.loads((sweep / job / "summary.json").read_text())["iterations"] == N
        assert json.loads((sweep / job / "metrics.jsonl").read_text().splitlines()[-1])["iteration"] == N
        (wandb_run,) = (sweep / job).glob("wandb/offline-run-*/run-*.wandb")
        assert exit_code(wandb_run) == 0
    with open(sweep / "sweep_summary.csv") as f:
        assert [(row["seed"], row["status"]) for row in csv.DictReader(f)] == [("0", "finished"), ("1", "finished")]


def test_time_limit_signal_checkpoints_and_submitit_requeues_the_job_which_resumes(cluster, sweep, tmp_path):
    """The job's time limit runs out: SLURM sends the preset's SIGUSR2 (--signal=USR2@120), the run checkpoints,
    submitit requeues the job with `scontrol requeue`, and it resumes in the same W&B run, as if never stopped.

    SLURM checks time limits every 30 s, so its signal comes up to 30 s after the limit allows. So that neither
    the run must outlast that (on a fast machine) nor the signal may come before the job installs its handlers
    (on a slow one), the test stops the training process (SIGSTOP; SLURM sends SIGCONT with its signal) and then
    shortens the time limit so that the signal is due; the requeued job gets its long limit back.
    """
    env, job, sweep_dir = clean_env(tmp_path, **cluster), tmp_path / "sweep" / "0", tmp_path / "sweep"
    with sweep_process(env, sweep_dir, *SLURM, *COMMON, "seed=0") as proc:
        wait_for(job / "checkpoints" / f"ckpt-{EVERY:08d}.pt", proc)
        os.kill(submitit_task(sweep_dir), signal.SIGSTOP)
        # a limit 1 to 2 minutes away: the signal (120 s before it) is due, the kill at least a minute away
        limit = elapsed_s(env, job_id(sweep_dir)) // 60 + 2
        scontrol(env, "update", f"JobId={job_id(sweep_dir)}", f"TimeLimit={limit}")
        wait_until(lambda: stopped_at(job, "SIGUSR2"), "checkpoint on SIGUSR2", proc)
        scontrol(env, "update", f"JobId={job_id(sweep_dir)}", "TimeLimit=240")
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert check_resumed(job, final_phi(sweep / "0"), N, EVERY) == stopped_at(job, "SIGUSR2")  # where it stopped
    states = [state for _, state in sacct(cluster, "-D", "-j", job_id(sweep_dir), "-o", "JobID,State")]
    assert states == ["REQUEUED", "COMPLETED"]  # SLURM requeued the job


def test_scancel_leaves_a_checkpoint_and_a_resubmission_continues_from_it(cluster, sweep, tmp_path):
    """scancel of the running job, then the same command again: it continues from the newest checkpoint left."""
    env, job = clean_env(tmp_path, **cluster), tmp_path / "sweep" / "0"
    with sweep_process(env, tmp_path / "sweep", *SLURM, *COMMON, "seed=0") as proc:
        wait_for(job / "checkpoints" / f"ckpt-{EVERY:08d}.pt", proc)
        subprocess.run(["scancel", job_id(tmp_path / "sweep")], env=env, check=True)
        output, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0, output  # the sweep reports the cancelled job
    assert not (job / "summary.json").exists(), "the job finished before it could be cancelled"
    left = int(sorted((job / "checkpoints").glob("ckpt-*.pt"))[-1].stem.split("-")[1])

    with sweep_process(env, tmp_path / "sweep", *SLURM, *COMMON, "seed=0") as proc:  # the same command again
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    assert check_resumed(job, final_phi(sweep / "0"), N, EVERY) == [left]
