"""Faults through the real command line (issue 7): SIGKILL at random moments, divergence, stop signals.

Nothing already written may be lost, and a resumed run must end exactly where an uninterrupted one does.
"""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from hydra import compose, initialize_config_dir
from hydra.experimental.callback import Callback
from wandb_records import exit_code

from reptile_exp.report import penalty

N = 28  # outer iterations of the fault test
FAULTED = [
    f"iterations={N}",
    "log_every=1",
    "checkpoint_every=4",
    "eval_every=7",
    "eval_every_tasks=4",
    "eval_tasks=8",
    "k_eval=2",
    "meta_batch=2",
    "model.hidden=[256,256]",  # a 1.3 MB checkpoint: its write lasts long enough to be caught
    "inner_optimizer=adam",
    "outer_optimizer=adam",
    "logger.mode=disabled",
    "progress=false",
    "device=cpu",
]


class RecordReturns(Callback):
    """Hydra callback appending each job's return value (what a sweeper receives) to a JSON-lines file."""

    def __init__(self, path: str):
        self.path = path

    def on_job_end(self, config, job_return, **kwargs) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"overrides": job_return.overrides, "value": job_return.return_value}) + "\n")


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written
            pass
    return records


def _logged(run_dir: Path) -> int:
    return max((r["iteration"] for r in _records(run_dir) if "train/loss" in r), default=0)


def _writing_checkpoint(run_dir: Path, pid: int) -> bool:
    """Process pid is writing a checkpoint: its temporary file .ckpt-<iteration>.pt.tmp-<pid> exists."""
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(p.name.endswith(f".pt.tmp-{pid}") for p in os.scandir(folder))


def _kill_when(cmd: list[str], env: dict, moment, poll: float = 0.001) -> None:
    """Start the run, SIGKILL it as soon as moment(pid) is true; the moment must come before the run ends."""
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline and not moment(proc.pid):
        time.sleep(poll)
    proc.kill()
    _, err = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"the run ended (rc {proc.returncode}) before the moment:\n{err}"


def test_sigkill_at_five_random_moments_then_resume_is_bit_exact(tmp_path):
    env = clean_env(tmp_path)
    straight_dir, faulted_dir = tmp_path / "straight", tmp_path / "faulted"
    straight = subprocess.Popen(
        train_cmd(f"hydra.run.dir={straight_dir}", *FAULTED), cwd=ROOT, env=env, stderr=subprocess.DEVNULL
    )
    cmd = train_cmd(f"hydra.run.dir={faulted_dir}", *FAULTED)
    rng = random.Random(7)
    done = 0
    for kind in ("iteration", "checkpoint write", "iteration", "iteration"):
        target = done + rng.randint(1, 6)
        if kind == "iteration":
            _kill_when(cmd, env, lambda pid, t=target: _logged(faulted_dir) >= t)
        else:  # polled without pause: a checkpoint write lasts milliseconds

            def writing(pid: int, t: int = target) -> bool:
                return _writing_checkpoint(faulted_dir, pid) and _logged(faulted_dir) >= t

            _kill_when(cmd, env, writing, poll=0)
        done = _logged(faulted_dir)
        assert done < N
    final = faulted_dir / "checkpoints" / f"ckpt-{N:08d}.pt"  # the fifth: during the final evaluation
    _kill_when(cmd, env, lambda pid: final.exists())
    assert not (faulted_dir / "summary.json").exists()
    run_train(tmp_path, f"hydra.run.dir={faulted_dir}", *FAULTED)
    assert straight.wait(timeout=600) == 0

    a, b = final_phi(straight_dir), final_phi(faulted_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summaries = [json.loads((d / "summary.json").read_text()) for d in (straight_dir, faulted_dir)]
    assert summaries[0]["results"] == summaries[1]["results"]
    records, reference = _records(faulted_dir), _records(straight_dir)
    for key, iterations in (("train/loss", range(1, N + 1)), ("eval/test_mse", range(7, N + 1, 7))):
        assert [r["iteration"] for r in records if key in r] == list(iterations), key
        assert [r[key] for r in records if key in r] == [r[key] for r in reference if key in r], key
    assert [r["iteration"] for r in records if "final/test_mse" in r] == [N]
    assert not [p.name for p in (faulted_dir / "checkpoints").iterdir() if p.name.startswith(".")]


DIVERGING = ["log_every=1", "checkpoint_every=2", "eval_every=0", "eval_tasks=4", "k_eval=2", "progress=false"]


def test_divergence_stops_the_run_keeps_the_last_good_checkpoint_and_fails_wandb(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "inner_lr=0.3", "iterations=100", *DIVERGING, "logger.mode=offline"]
    proc = run_train(tmp_path, *args, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1 and "diverged at iteration 4: the inner-loop loss (inf) is not finite" in errors[0]
    kept = run_dir / "checkpoints" / "ckpt-00000002.pt"
    assert f"last good checkpoint {kept} kept" in errors[0]
    assert [p.name for p in kept.parent.iterdir()] == [kept.name]
    assert all(torch.isfinite(p).all() for p in torch.load(kept, weights_only=True)["phi"].values())
    assert not (run_dir / "summary.json").exists()
    assert exit_code(next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1


def _sweep(tmp_path, *overrides: str) -> tuple[subprocess.CompletedProcess, dict, Path]:
    """A multirun from the command line: its process, what the sweeper got per job (first override -> value) and the
    sweep dir."""
    returns = tmp_path / "returns.jsonl"
    proc = run_train(
        tmp_path,
        *overrides,
        "+hydra.callbacks.record._target_=test_faults.RecordReturns",
        f"+hydra.callbacks.record.path={returns}",
        multirun=True,
        check=False,
        PYTHONPATH=str(ROOT / "tests"),
    )
    values = {r["overrides"][0]: r["value"] for r in map(json.loads, returns.read_text().splitlines())}
    return proc, values, next((tmp_path / "outputs" / "multiruns").iterdir())


def test_a_value_that_cannot_be_composed_refuses_the_whole_sweep_up_front(tmp_path):
    proc = run_train(tmp_path, "k=1,abc", "debug=smoke", multirun=True, check=False)
    assert proc.returncode == 1 and proc.stderr.strip().splitlines()[-1].startswith("error: k='abc' is invalid")
    assert list((tmp_path / "outputs").glob("**/.hydra/overrides.yaml")) == []  # no job ran


def test_divergence_costs_one_job_of_a_sweep_and_returns_a_finite_penalty(tmp_path):
    proc, values, sweep = _sweep(tmp_path, "inner_lr=0.3,0.02", "iterations=20", *DIVERGING, "logger.mode=disabled")
    assert values["inner_lr=0.3"] == 1e6  # the worst MSE a sweeper can see, not NaN
    assert 0 < values["inner_lr=0.02"] < 1e6
    assert "diverged at iteration" in (sweep / "0" / "error.txt").read_text()
    assert (sweep / "1" / "summary.json").exists(), proc.stderr
    # after every job and the summary, the command fails and its last line names the failed job
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: 1 of 2 jobs failed") and "job 0 (inner_lr=0.3 " in last
    assert (sweep / "sweep_summary.md").exists()


def test_an_evaluation_that_diverges_costs_one_job_and_the_sweep_summary_shows_it(tmp_path):
    """Training stays finite (k=1) but the evaluation's 60 steps at inner_lr=1 diverge: the job ends in one line
    (error.txt, no summary.json that would read as a result), the sweeper gets the finite penalty (a NaN would stop
    an Optuna search), and the sweep's summary is still written, the other job best."""
    proc, values, sweep = _sweep(tmp_path, "inner_lr=1.0,0.02", "debug=smoke", "k=1", "k_eval=60")
    assert values["inner_lr=1.0"] == 1e6 and 0 < values["inner_lr=0.02"] < 1e6
    assert "the evaluation diverged: " in (sweep / "0" / "error.txt").read_text()
    assert not (sweep / "0" / "summary.json").exists() and (sweep / "0" / "checkpoints").is_dir()
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(r["inner_lr"], r["status"]) for r in rows] == [("1.0", "failed"), ("0.02", "finished")]
    assert "(job 1 `inner_lr=0.02`)" in (sweep / "sweep_summary.md").read_text()
    assert "Callback SweepSummary.on_multirun_end raised" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "job 0 (inner_lr=1.0 " in last


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGUSR1], ids=["SIGINT", "SIGUSR1"])
def test_stop_signal_checkpoints_and_finishes_wandb(tmp_path, sig):
    """SIGTERM is covered in test_train_cli.py."""
    run_dir = tmp_path / "run"
    cmd = train_cmd(f"hydra.run.dir={run_dir}", "iterations=100000", "checkpoint_every=100000", "log_every=5")
    proc = subprocess.Popen(
        [*cmd, "logger.mode=offline", "progress=false", "eval_every=0"],
        cwd=ROOT,
        env=clean_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 120
    while _logged(run_dir) < 10 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in (-sig, 128 + sig), output
    assert f"stopped by {signal.Signals(sig).name}" in output
    (checkpoint,) = (run_dir / "checkpoints").glob("ckpt-*.pt")
    assert torch.load(checkpoint, weights_only=True)["iteration"] >= 10
    assert exit_code(next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1


def test_stop_signal_during_the_final_evaluation_stops_it_and_the_rerun_evaluates(tmp_path):
    """The final evaluation is as pre-emptible as training: a stop signal ends it between chunks of test tasks."""
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "iterations=20", "eval_every=0", "logger.mode=disabled", "device=cpu"]
    cmd = train_cmd(*args, "eval_tasks=1000000", "eval_chunk=10")  # about an hour of evaluation
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    final = run_dir / "checkpoints" / "ckpt-00000020.pt"  # written as training ends, before the evaluation
    deadline = time.time() + 120
    while not final.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), output
    assert "stopped by SIGTERM; evaluation not finished" in output
    assert final.exists() and not (run_dir / "summary.json").exists()
    trained = [r for r in _records(run_dir) if "train/loss" in r]
    rerun = run_train(tmp_path, *args, "eval_tasks=50")  # the same run dir: resumes at iteration 20, evaluates only
    assert f"loaded {final} (iteration 20)" in rerun.stderr
    assert [r for r in _records(run_dir) if "train/loss" in r] == trained  # no iteration trained (nor logged) again
    assert [r["iteration"] for r in _records(run_dir) if "final/test_mse" in r] == [20]
    assert json.loads((run_dir / "summary.json").read_text())["iterations"] == 20


@pytest.mark.parametrize("dataset,worst", [("sine", 1e6), ("omniglot", 0.0), ("miniimagenet", 0.0)])
def test_a_failed_job_reports_the_worst_value_of_its_metric(dataset, worst):
    """A sweeper must rank a failed job last: MSE 1e6 (lower is better), accuracy 0 (higher is better)."""
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        assert penalty(compose("train", overrides=[f"dataset={dataset}"])) == worst
