"""train.py end to end, through the real command line in subprocesses (issue 2 acceptance)."""

import json
import os
import signal
import subprocess
import time

import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from wandb_records import exit_code, history

FAST = ["k_eval=4", "eval_tasks=16", "eval_every=0", "progress=false"]


def test_default_run_writes_every_output(tmp_path):
    run_dir = tmp_path / "run"
    run_train(
        tmp_path,
        f"hydra.run.dir={run_dir}",
        "iterations=40",
        "log_every=10",
        "checkpoint_every=20",
        "eval_every=20",
        "eval_every_tasks=8",
        "k_eval=32",
        "eval_tasks=16",
        "logger.mode=disabled",
    )
    for name in [
        "config.yaml",
        "metrics.jsonl",
        "summary.json",
        "plots/learning_curve.png",
        "plots/sine_fit.png",
        "checkpoints/ckpt-00000040.pt",
        ".hydra/config.yaml",
    ]:
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "train/loss" in r] == [10, 20, 30, 40]
    assert [r["iteration"] for r in records if "eval/test_mse" in r] == [20, 40]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["objective_name"] == "test/mse"
    assert len(summary["results"]["test"]["mse_curve"]) == 33
    assert summary["objective"] == summary["results"]["test"]["mse"] > 0


def test_kill_and_resume_is_bit_exact(tmp_path):
    """SIGKILL after a checkpoint, re-run the same command: phi equals the uninterrupted run's."""
    n = 300
    common = [
        f"iterations={2 * n}",
        "meta_batch=2",
        "inner_optimizer=adam",
        "inner_lr=0.01",
        f"checkpoint_every={n}",
        "log_every=50",
        "logger.mode=disabled",
        *FAST,
    ]
    straight = tmp_path / "straight"
    run_train(tmp_path, f"hydra.run.dir={straight}", *common)

    resumed = tmp_path / "resumed"
    args = train_cmd(f"hydra.run.dir={resumed}", *common)
    proc = subprocess.Popen(
        args, cwd=ROOT, env=clean_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = resumed / "checkpoints" / f"ckpt-{n:08d}.pt"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (resumed / "summary.json").exists(), "the run finished before it could be killed"
    assert first.exists()

    out = run_train(tmp_path, f"hydra.run.dir={resumed}", *common)
    assert f"ckpt-{n:08d}.pt (iteration {n})" in out.stdout + out.stderr
    a, b = final_phi(straight), final_phi(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    iterations = [
        json.loads(line)["iteration"]
        for line in (resumed / "metrics.jsonl").read_text().splitlines()
        if "train/loss" in line
    ]
    assert iterations == list(range(50, 2 * n + 1, 50))


def test_wandb_offline_run_on_disk_has_the_metrics(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train(tmp_path, f"hydra.run.dir={run_dir}", "iterations=30", "log_every=10", "logger.mode=offline", *FAST)
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = history(files[0])
    logged = [r["_step"] for r in rows if "train/loss" in r]
    assert logged == [10, 20, 30]
    assert any("final/test_mse" in r for r in rows)
    assert exit_code(files[0]) == 0
    assert "wandb sync" in out.stdout + out.stderr


def test_auto_mode_without_credentials_goes_offline_without_prompting(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train(tmp_path, f"hydra.run.dir={run_dir}", "iterations=10", "log_every=5", *FAST, timeout=300)
    assert list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert "offline" in out.stdout + out.stderr


def test_every_preset_runs_in_smoke_mode(tmp_path):
    presets = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    out = run_train(tmp_path, "experiment=glob(*)", "debug=smoke", multirun=True, timeout=900)
    sweep = next((tmp_path / "outputs" / "multiruns").iterdir())
    summaries = sorted(sweep.glob("*/summary.json"))
    assert len(summaries) == len(presets), out.stdout + out.stderr
    for s in summaries:
        assert json.loads(s.read_text())["iterations"] == 6


def test_resume_refuses_a_checkpoint_from_another_model(tmp_path):
    run_dir = tmp_path / "run"
    run_train(tmp_path, f"hydra.run.dir={run_dir}", "iterations=4", "logger.mode=disabled", *FAST)
    other = tmp_path / "other"
    out = run_train(
        tmp_path,
        f"hydra.run.dir={other}",
        f"resume={run_dir}",
        "model.hidden=[32,32]",
        "iterations=8",
        "logger.mode=disabled",
        *FAST,
        check=False,
    )
    assert out.returncode == 1
    assert "model.hidden" in out.stderr + out.stdout


def test_evaluate_only_leaves_the_checkpoint_alone(tmp_path):
    run_dir = tmp_path / "run"
    run_train(tmp_path, f"hydra.run.dir={run_dir}", "iterations=4", "logger.mode=disabled", *FAST)
    ckpt = sorted((run_dir / "checkpoints").glob("*.pt"))[-1]
    before = ckpt.read_bytes()
    eval_dir = tmp_path / "eval"
    run_train(
        tmp_path,
        f"hydra.run.dir={eval_dir}",
        "evaluate_only=true",
        f"checkpoint={ckpt}",
        "k_eval=8",
        "logger.mode=disabled",
        "eval_tasks=10",
        "progress=false",
    )
    result = json.loads((eval_dir / "evaluation.json").read_text())
    assert result["iterations"] == 4 and len(result["results"]["test"]["mse_curve"]) == 9
    assert ckpt.read_bytes() == before


def test_sigterm_checkpoints_and_finishes_wandb(tmp_path):
    run_dir = tmp_path / "run"
    args = train_cmd(
        f"hydra.run.dir={run_dir}",
        "iterations=1000000",
        "checkpoint_every=1000000",
        "log_every=10",
        "logger.mode=offline",
        *FAST,
    )
    proc = subprocess.Popen(
        args, cwd=ROOT, env=clean_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = run_dir / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode in (-signal.SIGTERM, 128 + signal.SIGTERM), output
    assert "stopped by SIGTERM" in output
    assert list((run_dir / "checkpoints").glob("ckpt-*.pt"))
    assert exit_code(next(run_dir.glob("wandb/offline-run-*/run-*.wandb"))) == 1
