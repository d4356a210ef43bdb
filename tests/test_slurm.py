"""`launcher=slurm` against a real one-node SLURM cluster (slurmctld, slurmd, slurmdbd; tests/slurm_cluster.py).

Nothing is mocked: Hydra submits through hydra-submitit-launcher's sbatch, SLURM runs the jobs, sends the
time-limit signal and requeues through submitit's `scontrol requeue`, `scancel` stops a job. Skipped with the
reason where the cluster cannot start (not root, packages missing). Several nodes and GPUs as gres need more than
this machine and are not tested; the one-task-per-GPU layout is, with CPU ranks (gloo): a job of 2 tasks.
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
import torch
from conftest import clean_env, final_phi
from sweep_jobs import (
    EVERY,
    SMALL_RUN,
    N,
    check_resumed,
    job_log,
    stopped_at,
    submitit_tasks,
    sweep_process,
    wait_for,
    wait_until,
)
from wandb_records import exit_code

COMMON = [*SMALL_RUN, "logger.mode=offline"]
# a CPU-only node: tasks of one CPU
CPU_NODE = [
    "launcher=slurm",
    "device=cpu",
    "hydra.launcher.gpus_per_node=0",
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
]
SLURM = [*CPU_NODE, "hydra.launcher.tasks_per_node=1"]  # one task per job
# the multi-GPU layout (one task, a torch.distributed rank, per GPU) with CPU ranks: 2 tasks, the node's 2 CPUs
TWO_RANKS = [*CPU_NODE, "hydra.launcher.tasks_per_node=2"]


@pytest.fixture(scope="module")
def cluster():
    with slurm_cluster.running() as env:
        yield env


def sacct(cluster: dict, *args: str, steps: bool = False) -> list[list[str]]:
    """sacct's rows for whole jobs (with steps: also their steps), fields split, the state last, once none of them
    is pending or running (a job's result file comes before SLURM records its end)."""
    deadline = time.time() + 60
    while True:
        command = ["sacct", *([] if steps else ["-X"]), "-n", "-P", *args]
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


def finished_sweep(env: dict, sweep_dir: Path, *overrides: str) -> Path:
    """Run a sweep nobody stops to its end; it must succeed."""
    with sweep_process(env, sweep_dir, *overrides) as proc:
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    return sweep_dir


def requeued_at_time_limit(env: dict, sweep_dir: Path, *overrides: str) -> None:
    """Run a one-job sweep whose job's time limit runs out after its first checkpoint: SLURM sends the preset's
    SIGUSR2 (--signal=USR2@120) to every task, the run checkpoints, submitit requeues the job with `scontrol
    requeue`, and the requeued job runs to its end.

    SLURM checks time limits every 30 s, so its signal comes up to 30 s after the limit allows. So that neither
    the run must outlast that (on a fast machine) nor the signal may come before the job installs its handlers
    (on a slow one), the test stops the job's training processes (SIGSTOP, every task; SLURM sends SIGCONT with
    its signal) and then shortens the time limit so that the signal is due; the requeued job gets its long limit
    back.
    """
    job = sweep_dir / "0"
    with sweep_process(env, sweep_dir, *overrides) as proc:
        wait_for(job / "checkpoints" / f"ckpt-{EVERY:08d}.pt", proc)
        for task in submitit_tasks(sweep_dir):
            os.kill(task, signal.SIGSTOP)
        # a limit 1 to 2 minutes away: the signal (120 s before it) is due, the kill at least a minute away
        limit = elapsed_s(env, job_id(sweep_dir)) // 60 + 2
        scontrol(env, "update", f"JobId={job_id(sweep_dir)}", f"TimeLimit={limit}")
        wait_until(lambda: stopped_at(job, "SIGUSR2"), "checkpoint on SIGUSR2", proc)
        scontrol(env, "update", f"JobId={job_id(sweep_dir)}", "TimeLimit=240")
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output
    states = [state for _, state in sacct(env, "-D", "-j", job_id(sweep_dir), "-o", "JobID,State")]
    assert states == ["REQUEUED", "COMPLETED"]  # SLURM requeued the job


@pytest.fixture(scope="module")
def sweep(cluster, tmp_path_factory) -> Path:
    """A 2-job sweep (seed=0,1) nobody stops; its job 0 is the uninterrupted run the other tests compare to."""
    tmp = tmp_path_factory.mktemp("sweep")
    return finished_sweep(clean_env(tmp, **cluster), tmp / "sweep", *SLURM, *COMMON, "seed=0,1")


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
    """The job's time limit runs out: it checkpoints on SLURM's SIGUSR2, submitit requeues it, and it resumes in
    the same W&B run, as if never stopped."""
    job, sweep_dir = tmp_path / "sweep" / "0", tmp_path / "sweep"
    requeued_at_time_limit(clean_env(tmp_path, **cluster), sweep_dir, *SLURM, *COMMON, "seed=0")
    assert check_resumed(job, final_phi(sweep / "0"), N, EVERY) == stopped_at(job, "SIGUSR2")  # where it stopped


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


@pytest.fixture(scope="module")
def two_ranks(cluster, tmp_path_factory) -> Path:
    """seed=0 of the sweep as one job of 2 tasks (tasks_per_node=2, CPU ranks) nobody stops."""
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], env={**os.environ, **cluster}, capture_output=True).stdout)
    if cpus < 2:
        pytest.skip(f"a job of 2 one-CPU tasks needs 2 CPUs; the cluster's one node has {cpus} (this machine's)")
    tmp = tmp_path_factory.mktemp("two_ranks")
    return finished_sweep(clean_env(tmp, **cluster), tmp / "sweep", *TWO_RANKS, *COMMON, "seed=0")


def task_logs(sweep_dir: Path) -> list[str]:
    """The stdout of each task of the sweep's one job (submitit's <job id>_<task>_log.out), in task order."""
    (folder,) = sweep_dir.glob(".submitit/*/")
    return [(folder / f"{folder.name}_{task}_log.out").read_text() for task in (0, 1)]


def test_a_job_of_two_tasks_is_two_ranks_that_train_as_one_process(cluster, sweep, two_ranks):
    """SLURM starts the job's 2 tasks; from SLURM's variables alone (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID and
    SLURM_JOB_NODELIST, exported as torch's env:// variables by submitit) they join one gloo group as ranks 0 and 1
    of 2, share each meta-batch (one task each), and phi ends as in the one-task job of the same config.

    Not bit for bit: each rank adapts a batch of one task where one process adapts a batch of two, and the CPU's
    float32 kernels round differently with the batch size (phi differs by ~3e-8, one rounding, after iteration 1;
    the all-reduce of two sums and their halving add no error). Over N=400 iterations that drifts to ~1.5e-6
    (measured, on a 2-core Xeon); 1e-5 leaves a margin and is far below what a wrong share does (ranks averaging
    only their own tasks: 0.16).
    """
    logs = task_logs(two_ranks)
    for rank, log in enumerate(logs):  # submitit's JobEnvironment, read from SLURM's variables
        assert f"local_rank={rank}(2), node=0(1), global_rank={rank}(2))" in log, log
    assert "rank 0 of 2 (gloo)" in job_log(two_ranks / "0")  # the process group was of both tasks
    (step,) = sacct(cluster, "-j", f"{job_id(two_ranks)}.0", "-o", "NTasks,State", steps=True)  # srun's step, not a job
    assert step == ["2", "COMPLETED"]
    assert json.loads((two_ranks / "0" / "summary.json").read_text())["iterations"] == N
    one, two = final_phi(sweep / "0"), final_phi(two_ranks / "0")
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=1e-5, msg=name)


def test_a_job_of_two_tasks_requeued_at_its_time_limit_resumes_both_ranks(cluster, two_ranks, tmp_path):
    """The 2-task job's time limit runs out: both ranks stop at the same iteration on SLURM's SIGUSR2, rank 0
    checkpoints and submitit's rank 0 requeues the job; both tasks start again and resume from the checkpoint.

    phi ends bit for bit as in the 2-task job nobody stopped: that needs rank 1 to have resumed too (from rank 0's
    checkpoint: rank 1 logs only warnings). A rank 1 starting afresh would share meta-batches from its own phi
    (a different phi at the end) and run more all-reduces than rank 0 (the job would hang or fail).
    """
    job, sweep_dir = tmp_path / "sweep" / "0", tmp_path / "sweep"
    requeued_at_time_limit(clean_env(tmp_path, **cluster), sweep_dir, *TWO_RANKS, *COMMON, "seed=0")
    assert check_resumed(job, final_phi(two_ranks / "0"), N, EVERY) == stopped_at(job, "SIGUSR2")
    for rank, log in enumerate(task_logs(sweep_dir)):  # both tasks ran twice: before and after the requeue
        assert log.count(f"global_rank={rank}(2)") == 2, log
