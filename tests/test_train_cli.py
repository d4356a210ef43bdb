"""train.py end to end, through the real command line in subprocesses (issue 2 acceptance)."""

import json
import os
import signal
import subprocess
import time

import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from synthetic_data import omniglot_pngs, write_omniglot
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
    """SIGKILL after a checkpoint, re-run the same command: phi equals the uninterrupted run's, and so does every
    logged train/loss (the checkpoint at 300 falls inside the window 280..320, which the resumed run continues)."""
    n = 300
    common = [
        f"iterations={2 * n}",
        "meta_batch=2",
        "inner_optimizer=adam",
        "inner_lr=0.01",
        f"checkpoint_every={n}",
        "log_every=40",
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
    losses = [
        [
            (r["iteration"], r["train/loss"])
            for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
            if "train/loss" in r
        ]
        for d in (straight, resumed)
    ]
    assert [i for i, _ in losses[1]] == list(range(40, 2 * n + 1, 40))
    assert losses[1] == losses[0]


def test_auto_mode_without_credentials_writes_an_offline_run_with_the_metrics(tmp_path):
    """logger.mode=auto (the default) in an environment without credentials: an offline W&B run, no prompt
    (stdin is closed); the mode rule itself is tested in test_tracking.py."""
    run_dir = tmp_path / "run"
    out = run_train(tmp_path, f"hydra.run.dir={run_dir}", "iterations=30", "log_every=10", *FAST)
    files = list(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1
    rows = history(files[0])
    logged = [r["_step"] for r in rows if "train/loss" in r]
    assert logged == [10, 20, 30]
    assert any("final/test_mse" in r for r in rows)
    assert exit_code(files[0]) == 0
    assert "wandb sync" in out.stdout + out.stderr


def test_omniglot_preset_trains_on_zips_on_disk(tmp_path):
    """An image preset end to end on data in the real format: the synthetic Omniglot zips in dataset.root, read by
    the Omniglot loader (tests/synthetic_data.SmallOmniglot: the same code with the small dataset's counts)."""
    root = write_omniglot(tmp_path / "omniglot", omniglot_pngs())
    run_dir, cache = tmp_path / "run", tmp_path / "cache"
    run_train(
        tmp_path,
        f"hydra.run.dir={run_dir}",
        "experiment=omniglot_5w1s",
        "debug=smoke",
        "synthetic_data=false",
        "dataset._target_=synthetic_data.SmallOmniglot",
        f"dataset.root={root}",
        PYTHONPATH=str(ROOT / "tests"),
        REPTILE_EXP_CACHE=str(cache),
    )
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["iterations"] == 6 and summary["objective_name"] == "test/accuracy"
    assert set(summary["results"]) == {"train", "test"}
    assert all(0 <= r["accuracy"] <= 1 for r in summary["results"].values())
    assert (cache / "omniglot-v1.pt").is_file()  # the zips were decoded (synthetic_data=true reads no file)
    assert sorted(p.name for p in root.iterdir()) == ["images_background.zip", "images_evaluation.zip"]


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
