"""Pre-emption-safe resume of sweep jobs through real submitit (issue 5 acceptance).

Only the SLURM controller cannot exist here, and only it is mocked: with `launcher=slurm` by
tests/fake_slurm.py (sbatch, srun, scontrol requeue), and for a killed `hydra/launcher=submitit_local`
job by the test itself, which re-runs the job's command with its environment as a requeue does.
submitit's job runner, its signal handlers and requeue logic, Hydra and the training run are real.
"""

import csv
import json
import os
import re
import signal
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

import fake_slurm
import pytest
import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from wandb_records import exit_code

N, EVERY = 400, 50
COMMON = [
    f"iterations={N}",
    f"checkpoint_every={EVERY}",
    f"log_every={EVERY}",
    "meta_batch=2",
    "inner_optimizer=adam",
    "inner_lr=0.01",
    "eval_every=0",
    "eval_tasks=4",
    "k_eval=3",
    "progress=false",
]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # tiny models: one thread per process on this shared CPU


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """phi after N iterations of a run nobody stopped."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_train(tmp, f"hydra.run.dir={tmp / 'run'}", *COMMON, "logger.mode=disabled", **ONE_THREAD)
    return final_phi(tmp / "run")


@contextmanager
def one_job_sweep(env: dict, sweep: Path, *launcher: str):
    """A one-job multirun, in its own process group: killed with all it started if the test fails."""
    args = train_cmd(*launcher, f"hydra.sweep.dir={sweep}", "seed=0", *COMMON, "logger.mode=offline", multirun=True)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the sweep ended before {path} appeared:\n{proc.communicate()[0]}"
        assert time.time() < deadline, f"{path} did not appear in {timeout} s"
        time.sleep(0.01)


def submitit_task(sweep: Path) -> int:
    """The pid of the submitit task process (python -m submitit.core._submit <sweep>/.submitit/%j)."""
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-u", b"-m", b"submitit.core._submit"] and str(sweep).encode() in argv[4]:
            return int(proc.name)
    raise AssertionError(f"no submitit task running for {sweep}")


def check_resumed(job: Path, uninterrupted: dict) -> int:
    """The job finished all N iterations by resuming from a checkpoint; returns the iteration it resumed at."""
    log = (job / "train.log").read_text()
    loaded = re.findall(rf"loaded {re.escape(str(job))}/checkpoints/ckpt-\d+\.pt \(iteration (\d+)\)", log)
    assert len(loaded) == 1, log
    resumed_at = int(loaded[0])
    assert EVERY <= resumed_at < N
    assert json.loads((job / "summary.json").read_text())["iterations"] == N
    a, b = uninterrupted, final_phi(job)
    assert all(torch.equal(a[k], b[k]) for k in a), "phi differs from the uninterrupted run"
    logged = [json.loads(line)["iteration"] for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [i for i in logged if i % EVERY == 0 and i < N] == list(range(EVERY, N, EVERY))  # each once, in order

    run_id = (job / "wandb_run_id").read_text().strip()
    assert torch.load(sorted((job / "checkpoints").glob("*.pt"))[-1], weights_only=True)["wandb_run_id"] == run_id
    files = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert [f.name for f in files] == [f"run-{run_id}.wandb"] * 2  # the resumed W&B run has the same id
    assert exit_code(files[-1]) == 0
    return resumed_at


def test_slurm_preset_job_preempted_by_sigusr2_checkpoints_requeues_and_resumes(tmp_path, uninterrupted):
    """launcher=slurm end to end with the SLURM controller mocked (tests/fake_slurm.py): the batch script
    submitit writes from the preset, then SLURM's pre-emption signal (SIGUSR2, --signal=USR2@120) to the
    running task -> our checkpoint -> submitit's handler -> `scontrol requeue` -> the job runs again and
    resumes in the same dir and W&B run."""
    env = clean_env(tmp_path, **ONE_THREAD, **fake_slurm.install(tmp_path))
    state = Path(env["FAKE_SLURM_STATE"])
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    launcher = {
        "partition": "debug",
        "timeout_min": 30,
        "gpus_per_node": 0,
        "tasks_per_node": 1,
        "cpus_per_task": 1,
        "mem_gb": 2,
        "setup": "['export FROM_SETUP=1']",
    }
    overrides = ["launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in launcher.items())]
    with one_job_sweep(env, sweep, *overrides) as proc:
        wait_for(job / "checkpoints" / f"ckpt-{EVERY:08d}.pt", proc)
        os.kill(submitit_task(sweep), signal.SIGUSR2)
        output, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, output + (state / "runner.log").read_text()

    script = (state / f"{fake_slurm.JOB_ID}.sh").read_text()
    for line in [
        "#SBATCH --partition=debug",
        "#SBATCH --time=30",
        "#SBATCH --cpus-per-task=1",
        "#SBATCH --mem=2GB",
        "#SBATCH --ntasks-per-node=1",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "export FROM_SETUP=1",
    ]:
        assert line in script.splitlines(), script
    assert (state / "requeued.log").read_text().split() == [str(fake_slurm.JOB_ID)]
    stopped = re.search(r"stopped by SIGUSR2; checkpoint \S+ckpt-(\d+)\.pt written", (job / "train.log").read_text())
    assert stopped
    assert check_resumed(job, uninterrupted) == int(stopped[1])  # resumed exactly where it stopped
    first_run = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))[0]
    assert exit_code(first_run) == 1  # the interrupted W&B run was finished, marked failed
    with open(sweep / "sweep_summary.csv") as f:
        assert [row["status"] for row in csv.DictReader(f)] == ["finished"]


def test_killed_job_resubmitted_like_a_requeue_resumes_from_its_checkpoint(tmp_path, uninterrupted):
    """SIGKILL (no chance to checkpoint) of the whole sweep, then the job's own command again: a SLURM requeue.

    SLURM is mocked here: the test re-runs the job's command line with the job's environment (the same
    job id, so submitit loads the same pickled job, whose Hydra config names the same output dir).
    """
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    with one_job_sweep(clean_env(tmp_path, **ONE_THREAD), sweep, "hydra/launcher=submitit_local") as proc:
        wait_for(job / "checkpoints" / f"ckpt-{EVERY:08d}.pt", proc)
        task = submitit_task(sweep)
        argv = [a.decode() for a in Path(f"/proc/{task}/cmdline").read_bytes().split(b"\0") if a]
        environ = dict(
            item.decode().split("=", 1) for item in Path(f"/proc/{task}/environ").read_bytes().split(b"\0") if item
        )
        os.killpg(proc.pid, signal.SIGKILL)  # the sweep, submitit's controller and the task
        proc.communicate()
    assert not (job / "summary.json").exists(), "the job finished before it could be killed"
    assert len(list(job.glob("wandb/offline-run-*/run-*.wandb"))) == 1

    requeued = subprocess.run(argv, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=600)
    assert requeued.returncode == 0, requeued.stdout + requeued.stderr
    check_resumed(job, uninterrupted)
    result = next((sweep / ".submitit").glob(f"{environ['SUBMITIT_LOCAL_JOB_ID']}/*_result.pkl"))
    assert result.exists()  # submitit recorded the job's result, as for any finished job
