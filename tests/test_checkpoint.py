"""Checkpoints as untrusted, fallible files (issue 7): hostile pickles, corrupt files, foreign configs,
a full disk, and finished runs that must not be overwritten unless asked."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from hydra import compose, initialize_config_dir

from reptile_exp import checkpoint as ckpt
from reptile_exp.experiment import fingerprint
from reptile_exp.rundir import load_for as _load_for

FAST = ["logger.mode=disabled", "progress=false", "device=cpu", "eval_every=0", "eval_tasks=4", "k_eval=2"]


class Payload:
    """Unpickling this creates `marker` (the pickle stores a call to open): code that must never run."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))


def _one_error_line(proc: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every result file of a run dir (Hydra's own .hydra/, the job log and the lock of the run holding it excepted)."""
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in sorted(run_dir.rglob("*"))
        if p.is_file() and ".hydra" not in p.parts and p.suffix != ".log" and p.name != ".lock"
    }


def test_hostile_checkpoint_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    hostile = tmp_path / "ckpt-00000001.pt"
    torch.save({"phi": Payload(marker), "iteration": 1}, hostile)
    for source in (f"checkpoint={hostile}", f"checkpoint={tmp_path}"):  # the file, or a dir holding it
        proc = run_train(tmp_path, f"hydra.run.dir={tmp_path}/eval", "evaluate_only=true", source, *FAST, check=False)
        assert proc.returncode == 1
        assert "refused: loading it could run code" in _one_error_line(proc)
        assert not marker.exists(), "the checkpoint's code ran"
    torch.load(hostile, weights_only=False)  # the payload is live: an unsafe load does run it
    assert marker.exists()


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        lambda p: p.write_bytes(b""),
        lambda p: p.write_bytes(b"not a checkpoint" * 100),
        lambda p: torch.save([1, 2, 3], p),
    ],
    ids=["truncated", "empty", "garbage", "not_a_checkpoint"],
)
def test_latest_falls_back_to_the_previous_checkpoint(tmp_path, caplog, damage):
    checkpointer = ckpt.Checkpointer(tmp_path, keep=3)
    for it in (1, 2, 3):
        checkpointer.save({"phi": {"w": torch.full((4,), float(it))}, "iteration": it}, it)
    damage(tmp_path / "ckpt-00000003.pt")
    state, path = checkpointer.latest()
    assert path.name == "ckpt-00000002.pt" and state["iteration"] == 2
    assert "falling back to ckpt-00000002.pt" in caplog.text and "ckpt-00000003.pt" in caplog.text
    for it in (1, 2):
        damage(tmp_path / f"ckpt-{it:08d}.pt")
    with pytest.raises(ckpt.CheckpointError, match="ckpt-00000001.pt"):
        checkpointer.latest()


def test_corrupt_latest_checkpoint_resumes_from_the_previous_one_bit_exact(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "iterations=4", "checkpoint_every=2", "inner_optimizer=adam", *FAST]
    run_train(tmp_path, *args)
    latest = run_dir / "checkpoints" / "ckpt-00000004.pt"
    expected = torch.load(latest, weights_only=True)["phi"]
    latest.write_bytes(latest.read_bytes()[:1000])  # a damaged copy, and no summary: as if stopped before the end
    (run_dir / "summary.json").unlink()
    proc = run_train(tmp_path, *args)
    assert "ckpt-00000004.pt cannot be loaded" in proc.stderr and "falling back to ckpt-00000002.pt" in proc.stderr
    assert "loaded" in proc.stderr and "ckpt-00000002.pt (iteration 2)" in proc.stderr
    phi = final_phi(run_dir)
    assert all(torch.equal(phi[k], expected[k]) for k in expected)


@pytest.mark.parametrize(
    "theirs,named",
    [
        (["model.hidden=[32,32]"], "model.hidden: this run has [64, 64], the checkpoint has [32, 32]"),
        (["model.activation=relu"], "model.activation: this run has 'tanh', the checkpoint has 'relu'"),
        (["dataset.n_points=40"], "dataset.n_points: this run has 50, the checkpoint has 40"),
        (["dataset.x_sampling=uniform"], "dataset.x_sampling"),
        (["inner_optimizer=adam"], "inner_optimizer._target_"),
        (["inner_lr=0.5"], "inner_optimizer.lr: this run has 0.02, the checkpoint has 0.5"),
        (["algorithm=fomaml"], "algorithm._target_"),
        (["dtype=float64"], "dtype: this run has 'float32', the checkpoint has 'float64'"),
        (["synthetic_data=true"], "synthetic_data: this run has False, the checkpoint has True"),
        # the restored eps schedule would silently ignore these, so they must match too
        (["epsilon=0.5"], "training.epsilon: this run has 0.1, the checkpoint has 0.5"),
        (["iterations=99"], "training.iterations: this run has 30000, the checkpoint has 99"),
        (["meta_batch=3"], "training.meta_batch"),
    ],
)
def test_checkpoint_of_another_config_is_refused_naming_the_difference(tmp_path, theirs, named):
    path = tmp_path / "ckpt-00000001.pt"
    torch.save({"phi": {}, "iteration": 1, "fingerprint": fingerprint(_compose(*theirs))}, path)
    mine = _compose(f"resume={path}")
    with pytest.raises(ckpt.CheckpointError) as err:
        _load_for(mine, ckpt.Checkpointer(tmp_path / "none"), evaluate_only=False)
    assert named in str(err.value) and "\n" not in str(err.value)


def test_checkpoint_of_the_same_model_and_data_is_accepted(tmp_path):
    """Where the data lives and the evaluation knobs may differ on resume."""
    path = tmp_path / "ckpt-00000001.pt"
    theirs = _compose("dataset=omniglot", "model=omniglot_conv", "dataset.root=/elsewhere", "dataset.cache=false")
    torch.save({"phi": {}, "iteration": 1, "fingerprint": fingerprint(theirs)}, path)
    mine = _compose("dataset=omniglot", "model=omniglot_conv", f"resume={path}", "eval_tasks=7", "k_eval=7")
    state, found = _load_for(mine, ckpt.Checkpointer(tmp_path / "none"), evaluate_only=False)
    assert found == path and state["iteration"] == 1


def test_a_run_dirs_own_newer_checkpoint_wins_over_resume(tmp_path):
    """resume=<elsewhere> starts a run dir; the same command again (a requeue) continues from the run dir's own
    newer checkpoint instead of going back to the resumed one."""
    mine = _compose()
    source, own = tmp_path / "source" / "ckpt-00000002.pt", ckpt.Checkpointer(tmp_path / "run" / "checkpoints")
    source.parent.mkdir()
    torch.save({"phi": {}, "iteration": 2, "fingerprint": fingerprint(mine)}, source)
    state = {"phi": {}, "fingerprint": fingerprint(mine)}
    assert _load_for(_compose(f"resume={source}"), own, evaluate_only=False)[1] == source  # nothing of its own yet
    own.save({**state, "iteration": 5}, 5)
    assert _load_for(_compose(f"resume={source}"), own, evaluate_only=False)[0]["iteration"] == 5
    own.save({**state, "iteration": 1}, 1)  # older than the source: the source, as asked
    for stale in own.paths()[:-1]:
        stale.unlink()
    assert _load_for(_compose(f"resume={source}"), own, evaluate_only=False)[1] == source
    for damaged in own.paths():  # every checkpoint of the run dir damaged: resume= still rescues it
        damaged.write_bytes(b"not a checkpoint")
    assert _load_for(_compose(f"resume={source}"), own, evaluate_only=False)[1] == source
    with pytest.raises(ckpt.CheckpointError, match="ckpt-00000001.pt is not a checkpoint"):  # the damage is named
        _load_for(mine, own, evaluate_only=False)


def _user_namespace_tmpfs_works(tmp_path: Path) -> bool:
    mount = tmp_path / "probe"
    mount.mkdir()
    probe = f"mount -t tmpfs -o size=64k tmpfs {mount}"
    return shutil.which("unshare") is not None and (
        subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", probe]).returncode == 0
    )


BIG = ["model.hidden=[512,512]", "iterations=4", "checkpoint_every=2", *FAST]  # a checkpoint is 1.07 MB


def test_full_disk_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    """A real full disk: a 1.6 MB tmpfs in a user + mount namespace holds ckpt-2 but not ckpt-4 beside it."""
    if not _user_namespace_tmpfs_works(tmp_path):
        pytest.skip("cannot mount a tmpfs in a user namespace here (unshare --user --map-root-user --mount)")
    disk, copy = tmp_path / "disk", tmp_path / "copy"
    disk.mkdir()
    first = subprocess.list2cmdline(train_cmd(f"hydra.run.dir={disk}/run", *BIG))
    script = (
        f"mount -t tmpfs -o size=1600k tmpfs {disk} && {first} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc; "
        f"cp -r {disk}/run {copy}; mount -o remount,size=8m {disk} && {first} 2> {tmp_path}/second.err; "
        f"echo $? > {tmp_path}/second.rc; cp -r {disk}/run {tmp_path}/after"
    )
    subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script],
        cwd=ROOT,
        env=clean_env(tmp_path),
        check=True,
        timeout=600,
    )
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "1", first_err
    line = _one_error_line(subprocess.CompletedProcess([], 1, "", first_err))
    assert "could not write checkpoint" in line and "ckpt-00000004.pt: No space left on device" in line
    assert "the previous checkpoint is kept" in line
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["ckpt-00000002.pt"]  # no temporary file
    assert torch.load(copy / "checkpoints" / "ckpt-00000002.pt", weights_only=True)["iteration"] == 2
    assert not (copy / "summary.json").exists()
    # space freed: the same command resumes from the kept checkpoint and finishes
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    assert "ckpt-00000002.pt (iteration 2)" in (tmp_path / "second.err").read_text()
    assert json.loads((tmp_path / "after" / "summary.json").read_text())["iterations"] == 4


def _limit_file_size(limit: int):
    def preexec():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return preexec


def test_file_size_limit_fails_the_save_and_keeps_the_previous_checkpoint(tmp_path):
    """The same without namespaces: RLIMIT_FSIZE makes writing a checkpoint past 512 KB fail (EFBIG)."""
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", *BIG]
    run_train(tmp_path, *args)
    kept = run_dir / "checkpoints" / "ckpt-00000002.pt"
    before = kept.read_bytes()
    (run_dir / "checkpoints" / "ckpt-00000004.pt").unlink()  # as if stopped right after iteration 2
    (run_dir / "summary.json").unlink()
    proc = subprocess.run(
        train_cmd(*args),
        cwd=ROOT,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_limit_file_size(512 * 1024),
    )
    assert proc.returncode == 1, proc.stderr
    line = _one_error_line(proc)
    assert "could not write checkpoint" in line and "ckpt-00000004.pt: File too large" in line
    assert sorted(p.name for p in kept.parent.iterdir()) == ["ckpt-00000002.pt"]
    assert kept.read_bytes() == before


def test_a_finished_run_is_not_overwritten_unless_asked(tmp_path):
    run_dir = tmp_path / "run"
    args = [f"hydra.run.dir={run_dir}", "checkpoint_every=2", "log_every=1", *FAST]
    run_train(tmp_path, *args, "iterations=4")
    finished = _snapshot(run_dir)

    again = run_train(tmp_path, *args, "iterations=4")  # the same command (a requeue, a re-run sweep): a no-op
    assert "this run already finished" in again.stderr
    assert _snapshot(run_dir) == finished

    # another schedule: refused (the checkpoint's eps schedule would be continued), nothing touched
    longer = run_train(tmp_path, *args, "iterations=6", check=False)
    assert longer.returncode == 1
    assert "training.iterations: this run has 6, the checkpoint has 4" in _one_error_line(longer)
    assert _snapshot(run_dir) == finished

    run_train(tmp_path, *args, "iterations=4", "overwrite=true", "eval_tasks=5")  # asked: the results are redone
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "train/loss" in r] == [1, 2, 3, 4]
    (final,) = [r for r in records if "final/test_mse" in r]  # one final record: the recomputed results'
    assert summary["iterations"] == final["iteration"] == 4
    assert final["final/test_mse"] == summary["results"]["test"]["mse"]
    assert summary["results"] != json.loads(finished["summary.json"])["results"]  # 5 test tasks now, 4 before
