"""What a run dir already holds is not lost to a later command (reptile_exp/rundir.py), through the real command line:
a run dir in use by another process, runs started in the same second, a finished run or evaluation asked for
another evaluation, and a run resumed from another run dir's checkpoint (its own W&B run)."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, clean_env, run_train, train_cmd
from hydra import compose, initialize_config_dir

from reptile_exp import checkpoint as ckpt
from reptile_exp import rundir
from reptile_exp.errors import ConfigError

TINY = ["debug=smoke", "iterations=2", "eval_every=0", "eval_tasks=2", "k_eval=1", "progress=false"]


def one_error(proc: subprocess.CompletedProcess) -> str:
    """The single `error: ...` line of a refused run (exit 1, no traceback)."""
    output = f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, output
    errors = [line for line in proc.stderr.splitlines() if "error: " in line]
    assert len(errors) == 1, output
    return errors[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished tiny training run."""
    base = tmp_path_factory.mktemp("guards")
    run_train(base, *TINY, "logger.mode=disabled", f"hydra.run.dir={base / 'trained'}")
    return base / "trained"


def test_a_run_dir_in_use_is_refused_and_left_alone(tmp_path):
    run_dir = tmp_path / "busy"
    run_dir.mkdir()
    with open(run_dir / ".lock", "w") as held:  # what a running process holds (rundir.claim)
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on elsewhere\n")
        held.flush()
        proc = run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
        assert "is in use by another run (pid 4242 on elsewhere)" in one_error(proc)
        assert not (run_dir / "config.yaml").exists() and not (run_dir / "checkpoints").exists()
    run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}")  # released: it runs
    assert (run_dir / "summary.json").exists()


def test_runs_started_together_get_a_run_dir_each(tmp_path):
    """Seeds launched at once with the default run dir: each keeps its own files (the dir name has microseconds)."""
    env = clean_env(tmp_path)
    procs = [
        subprocess.Popen(train_cmd(*TINY, "logger.mode=disabled", f"seed={seed}"), cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for seed in range(3)
    ]  # fmt: skip
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    run_dirs = sorted((tmp_path / "outputs" / "runs" / "sine-reptile").iterdir())
    seeds = sorted(int(line.split(": ")[1]) for d in run_dirs for line in (d / "config.yaml").read_text().splitlines()
                   if line.startswith("seed: "))  # fmt: skip
    assert seeds == [0, 1, 2]


def test_a_finished_run_asked_for_another_evaluation_is_refused(trained, tmp_path):
    summary = (trained / "summary.json").read_bytes()
    record = {f.name: f.read_bytes() for f in (trained / ".hydra").iterdir()}  # Hydra's config and overrides
    assert "overrides.yaml" in record
    proc = run_train(tmp_path, *TINY, "logger.mode=disabled", "eval_tasks=3", f"hydra.run.dir={trained}", check=False)
    error = one_error(proc)
    assert "holds a finished run evaluated otherwise (eval_tasks: this command gives 3, the run dir has 2)" in error
    assert f"evaluate_only=true checkpoint={trained}" in error
    assert (trained / "summary.json").read_bytes() == summary
    # the refused command's overrides do not relabel the run (a sweep summary reads them there)
    assert {f.name: f.read_bytes() for f in (trained / ".hydra").iterdir()} == record
    assert not list(trained.glob(".hydra.pending*"))
    again = run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={trained}")
    assert "this run already finished" in again.stderr


def test_an_evaluation_is_not_replaced_by_another(trained, tmp_path):
    run_dir = tmp_path / "evaluated"
    evaluate = [*TINY, "logger.mode=disabled", "evaluate_only=true", f"hydra.run.dir={run_dir}"]
    run_train(tmp_path, *evaluate, f"checkpoint={trained}")
    written = {name: (run_dir / name).read_bytes() for name in ("evaluation.json", "metrics.jsonl", "config.yaml")}
    proc = run_train(tmp_path, *evaluate, "checkpoint=init", check=False)
    assert f"holds another evaluation (checkpoint: this command gives 'init', the run dir has '{trained}')" in (
        one_error(proc)
    )
    assert {name: (run_dir / name).read_bytes() for name in written} == written
    assert "this evaluation already finished" in run_train(tmp_path, *evaluate, f"checkpoint={trained}").stderr
    run_train(tmp_path, *evaluate, "checkpoint=init", "overwrite=true")
    assert '"checkpoint": null' in (run_dir / "evaluation.json").read_text()


def test_a_run_resumed_from_another_run_dirs_checkpoint_logs_to_its_own_wandb_run(trained, tmp_path):
    fork = tmp_path / "fork"
    run_train(tmp_path, *TINY, "logger.mode=offline", f"resume={trained / 'checkpoints'}", f"hydra.run.dir={fork}")
    source_id, fork_id = ((d / "wandb_run_id").read_text().strip() for d in (trained, fork))
    assert fork_id != source_id
    offline_runs = [p.name for p in (fork / "wandb").glob("offline-run-*")]
    assert offline_runs and all(name.endswith(fork_id) for name in offline_runs), offline_runs


def test_a_process_holds_one_run_dirs_lock_at_a_time(tmp_path):
    """A sweep's jobs run one after another in one process (the basic launcher): claiming the next run dir releases
    the last one, so a long sweep holds one lock and one file descriptor, not one per job."""
    first, second = tmp_path / "job0", tmp_path / "job1"
    for d in (first, second):
        d.mkdir()
    rundir.claim(first)
    with open(first / ".lock") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held
    rundir.claim(second)
    with open(first / ".lock") as other:
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # released
    assert (second / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"


CHANGED = {  # one other value for each knob a final evaluation depends on
    "eval_tasks": "eval_tasks=3",
    "k_eval": "k_eval=2",
    "eval_batch": "eval_batch=3",
    "eval_splits": "eval_splits=[train,test]",
    "transductive": "transductive=true",
    "protocols": "protocols=[{name:a}]",
    "objective_split": "objective_split=train",
    "replacement": "replacement=true",
}


@pytest.mark.parametrize("key", rundir.FINAL_EVALUATION)
def test_every_evaluation_knob_of_a_finished_run_is_compared(trained, key):
    """rundir.finished_objective, in-process, with each knob of FINAL_EVALUATION changed alone."""
    assert set(CHANGED) == set(rundir.FINAL_EVALUATION)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=[*TINY, "logger.mode=disabled", CHANGED[key]])
    state = ckpt.load(ckpt.resolve(trained))
    with pytest.raises(ConfigError, match=rf"evaluated otherwise \({key}(\.|:)"):
        rundir.finished_objective(cfg, trained, state)
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        same = compose("train", overrides=[*TINY, "logger.mode=disabled"])
    assert rundir.finished_objective(same, trained, state) is not None


def test_a_run_dir_claimed_by_a_running_process_is_refused(tmp_path):
    """The lock rundir.claim takes, held by another process, refuses a real run (an exclusive lock: two runs cannot
    share it)."""
    run_dir = tmp_path / "held"
    run_dir.mkdir()
    hold = (
        "import sys, time; from pathlib import Path; from reptile_exp.rundir import claim; "
        "claim(Path(sys.argv[1])); print('held', flush=True); time.sleep(120)"
    )
    holder = subprocess.Popen([sys.executable, "-c", hold, str(run_dir)], cwd=ROOT, env=clean_env(tmp_path),
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
        assert f"is in use by another run (pid {holder.pid} on" in one_error(proc)
        assert not (run_dir / "config.yaml").exists()
    finally:
        holder.kill()
        holder.wait()


BLOCKERS = {  # a place of the run dir -> what is in its way
    **{name: "file" for name in rundir.RUN_FOLDERS},
    **{name: "folder" for name in rundir.RUN_FILES},
    ".hydra": "file",
    ".lock": "link to nowhere",
}


@pytest.mark.parametrize("name", BLOCKERS)
def test_a_file_or_folder_in_the_way_is_refused_before_any_work(tmp_path, name):
    """A file where the run keeps a folder (plots/ was found only after the training, whose results were lost), a
    folder where it writes a file, a .lock that cannot be opened: one line naming it before the run trains or writes
    anything of its own, the blocker left as it was and no pending Hydra record behind."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    blocker = run_dir / name
    if BLOCKERS[name] == "file":
        blocker.write_text("mine\n")
    elif BLOCKERS[name] == "folder":
        blocker.mkdir()
        (blocker / "mine.txt").write_text("mine\n")
    else:
        blocker.symlink_to(tmp_path / "nowhere" / "lock")
    proc = run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    line = one_error(proc)
    assert f"{blocker} is in the way" in line or f"{blocker} cannot be opened" in line, line
    written = {p.name for p in run_dir.iterdir()} - {name, ".hydra", ".lock", "train.log"}
    assert written == set(), f"written before the refusal: {written}"
    if BLOCKERS[name] == "file":
        assert blocker.read_text() == "mine\n"
    elif BLOCKERS[name] == "folder":
        assert [p.name for p in blocker.iterdir()] == ["mine.txt"]


def test_a_config_yaml_that_is_no_runs_is_not_overwritten(tmp_path):
    """A folder holding someone's config.yaml (no metrics.jsonl) was taken and the file replaced; a damaged run's
    config.yaml (unreadable YAML) is still rewritten by the run it belongs to."""
    run_dir = tmp_path / "theirs"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text("mine: 1\n")
    proc = run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}", check=False)
    assert "holds a config.yaml that is not a run's, which this run would overwrite" in one_error(proc)
    assert (run_dir / "config.yaml").read_text() == "mine: 1\n" and not (run_dir / "checkpoints").exists()
    (run_dir / "config.yaml").write_text("{torn: [\n")
    run_train(tmp_path, *TINY, "logger.mode=disabled", f"hydra.run.dir={run_dir}")
    assert (run_dir / "summary.json").exists()
