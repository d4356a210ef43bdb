"""A job killed without warning (SIGKILL: no chance to checkpoint) resumes from its last periodic checkpoint.

Run through real submitit (`hydra/launcher=submitit_local`); the test then re-runs the job's command with its
environment, as SLURM does when it requeues a job after a node failure. The other stops (the time-limit signal,
pre-emption, scancel) are tested against a real SLURM cluster in tests/test_slurm.py.
"""

import json
import os
import pickle
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, clean_env, final_phi, run_train
from sweep_jobs import EVERY, SMALL_RUN, N, check_resumed, submitit_task, sweep_process, wait_for

COMMON = SMALL_RUN


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    """phi after N iterations of a run nobody stopped."""
    tmp = tmp_path_factory.mktemp("uninterrupted")
    run_train(tmp, f"hydra.run.dir={tmp / 'run'}", *COMMON, "logger.mode=disabled")
    return final_phi(tmp / "run")


def test_killed_job_resubmitted_like_a_requeue_resumes_from_its_checkpoint(tmp_path, uninterrupted):
    """SIGKILL (no chance to checkpoint) of the whole sweep, then the job's own command again: a SLURM requeue.

    SLURM is mocked here: the test re-runs the job's command line with the job's environment (the same
    job id, so submitit loads the same pickled job, whose Hydra config names the same output dir).
    """
    sweep, job = tmp_path / "sweep", tmp_path / "sweep" / "0"
    overrides = ["hydra/launcher=submitit_local", "seed=0", *COMMON, "logger.mode=offline"]
    with sweep_process(clean_env(tmp_path), sweep, *overrides) as proc:
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
    assert len(check_resumed(job, uninterrupted, N, EVERY)) == 1
    result = next((sweep / ".submitit").glob(f"{environ['SUBMITIT_LOCAL_JOB_ID']}/*_result.pkl"))
    status, value = pickle.loads(result.read_bytes())  # submitit recorded the job's result, as for any finished job
    objective = json.loads((job / "summary.json").read_text())["objective"]
    assert status == "success" and value.return_value == objective
