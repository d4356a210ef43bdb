"""A one-job sweep run as a user runs it, and the checks that a stopped job resumed exactly where it stopped."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from conftest import ROOT, final_phi, train_cmd
from wandb_records import exit_code

# A small sine run that checkpoints every EVERY of its N iterations: the sweep jobs these tests stop and resume.
N, EVERY = 400, 50
SMALL_RUN = [
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


@contextmanager
def sweep_process(env: dict, sweep: Path, *overrides: str) -> Iterator[subprocess.Popen]:
    """A multirun into `sweep`, in its own process group: killed with all it started if the test fails."""
    args = train_cmd(*overrides, f"hydra.sweep.dir={sweep}", multirun=True)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


def wait_until(done: Callable[[], bool], what: str, proc: subprocess.Popen, timeout: float = 300) -> None:
    """Wait until done() while the sweep runs; `what` names the awaited event in the failure message."""
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None, f"the sweep ended before {what}:\n{proc.communicate()[0]}"
        assert time.time() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.01)


def wait_for(path: Path, proc: subprocess.Popen, timeout: float = 300) -> None:
    wait_until(path.exists, str(path), proc, timeout)


def submitit_tasks(sweep: Path) -> list[int]:
    """The pids of the sweep's submitit task processes (python -m submitit.core._submit <sweep>/.submitit/%j):
    one per task, so one per torch.distributed rank of a job launched with several tasks."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[1:4] == [b"-u", b"-m", b"submitit.core._submit"] and str(sweep).encode() in argv[4]:
            pids.append(int(proc.name))
    assert pids, f"no submitit task running for {sweep}"
    return pids


def submitit_task(sweep: Path) -> int:
    """The pid of the submitit task process of a one-task job."""
    return submitit_tasks(sweep)[0]


def job_log(job: Path) -> str:
    """The job's log lines, every incarnation (<job dir>/<Hydra job name>.log)."""
    (log,) = job.glob("*.log")
    return log.read_text()


def check_resumed(job: Path, uninterrupted: dict, iterations: int, every: int) -> list[int]:
    """The job finished all iterations by resuming from checkpoints, with phi, metrics and W&B run as if never
    stopped; returns the iterations it resumed at."""
    log = job_log(job)
    resumed = [
        int(i) for i in re.findall(rf"loaded {re.escape(str(job))}/checkpoints/ckpt-\d+\.pt \(iteration (\d+)\)", log)
    ]
    assert resumed and all(every <= i < iterations for i in resumed), log
    assert json.loads((job / "summary.json").read_text())["iterations"] == iterations
    a, b = uninterrupted, final_phi(job)
    assert all(torch.equal(a[k], b[k]) for k in a), "phi differs from the uninterrupted run"
    logged = [json.loads(line)["iteration"] for line in (job / "metrics.jsonl").read_text().splitlines()]
    assert [i for i in logged if i % every == 0 and i < iterations] == list(range(every, iterations, every))

    run_id = (job / "wandb_run_id").read_text().strip()
    assert torch.load(sorted((job / "checkpoints").glob("*.pt"))[-1], weights_only=True)["wandb_run_id"] == run_id
    files = sorted(job.glob("wandb/offline-run-*/run-*.wandb"))
    assert {f.name for f in files} == {f"run-{run_id}.wandb"} and len(files) > 1  # resumed: the same W&B run id
    assert exit_code(files[-1]) == 0
    return resumed


def stopped_at(job: Path, signame: str) -> list[int]:
    """The iterations whose checkpoint the job wrote on receiving `signame`."""
    pattern = rf"stopped by {signame}; checkpoint \S+ckpt-(\d+)\.pt written"
    return [int(i) for i in re.findall(pattern, job_log(job))]
