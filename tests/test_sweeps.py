"""Multirun sweeps end to end (issue 5 acceptance): the three launchers, one W&B run per job grouped by
sweep, the sweep summary and the launcher presets. The Optuna search: tests/test_optuna_sweeper.py."""

import csv
import json
import math
import shutil
import socket
import subprocess
import sys

import pytest
from conftest import ROOT, clean_env, run_train
from hydra import compose, initialize_config_dir
from wandb_records import exit_code, records

import reptile_exp.train  # noqa: F401  (registers the config schema)

TINY = ["iterations=4", "log_every=2", "checkpoint_every=4", "eval_every=0", "eval_tasks=4", "k_eval=2"]
SMOKE = [
    "debug=smoke",
    "iterations=2",
    "eval_tasks=2",
    "k_eval=1",
    "eval_every=0",
    "logger.mode=disabled",
    "progress=false",
]


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def run_record(path):
    return next(r.run for r in records(path) if r.WhichOneof("record_type") == "run")


def sweep_2x2(tmp_path, *launcher: str):
    """k=1,2 x seed=0,1 with offline W&B runs; returns the sweep dir."""
    sweep = tmp_path / "sweep"
    run_train(
        tmp_path,
        *launcher,
        f"hydra.sweep.dir={sweep}",
        "k=1,2",
        "seed=0,1",
        "logger.mode=offline",
        "progress=false",
        *TINY,
        multirun=True,
    )
    return sweep


def check_2x2(sweep):
    jobs = sorted(p for p in sweep.iterdir() if p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1", "2", "3"]
    files = [sorted(job.glob("wandb/offline-run-*/run-*.wandb")) for job in jobs]
    assert [len(f) for f in files] == [1, 1, 1, 1]  # one W&B run per job
    runs = [run_record(f[0]) for f in files]
    assert len({r.run_id for r in runs}) == 4
    assert {r.run_group for r in runs} == {sweep.name} and {r.job_type for r in runs} == {"sine-reptile"}
    for run, (k, seed) in zip(runs, [(1, 0), (1, 1), (2, 0), (2, 1)]):
        assert run.display_name.startswith("sine-reptile ") and f"k={k}" in run.display_name
        assert f"seed={seed}" in run.display_name
    assert [exit_code(f[0]) for f in files] == [0, 0, 0, 0]  # every run finished

    rows = read_csv(sweep / "sweep_summary.csv")
    assert [(r["job"], r["k"], r["seed"], r["status"]) for r in rows] == [
        ("0", "1", "0", "finished"),
        ("1", "1", "1", "finished"),
        ("2", "2", "0", "finished"),
        ("3", "2", "1", "finished"),
    ]
    assert [r["wandb_run_id"] for r in rows] == [r.run_id for r in runs]
    assert all(r["objective_name"] == "test/mse" and float(r["objective"]) == float(r["test/mse"]) > 0 for r in rows)
    table = (sweep / "sweep_summary.md").read_text().splitlines()
    assert sum(line.startswith("| ") for line in table) == 1 + 4  # header + one row per job
    assert (sweep / "sweep_summary.png").stat().st_size > 0  # two swept knobs: a plot


@pytest.fixture(scope="module")
def basic_sweep(tmp_path_factory):
    return sweep_2x2(tmp_path_factory.mktemp("basic"))


def test_2x2_sweep_with_the_basic_launcher(basic_sweep):
    check_2x2(basic_sweep)


@pytest.mark.parametrize(
    "launcher",
    ["launcher=joblib", pytest.param("hydra/launcher=submitit_local", marks=pytest.mark.slow)],
    ids=["joblib", "submitit_local"],
)
def test_2x2_sweep_with_a_parallel_launcher(tmp_path, launcher):
    check_2x2(sweep_2x2(tmp_path, launcher))


def summarize_script(tmp_path, directory):
    script = ROOT / "scripts" / "summarize_sweep.py"
    env = clean_env(tmp_path)
    return subprocess.run([sys.executable, script, directory], cwd=ROOT, env=env, capture_output=True, text=True)


def test_summary_script_rewrites_the_summary_of_a_sweep_dir(basic_sweep, tmp_path):
    sweep = tmp_path / "copy"
    shutil.copytree(basic_sweep, sweep)
    for name in ("sweep_summary.csv", "sweep_summary.md", "sweep_summary.png"):
        (sweep / name).unlink()
    out = summarize_script(tmp_path, sweep)
    assert out.returncode == 0, out.stderr
    assert (sweep / "sweep_summary.csv").read_text() == (basic_sweep / "sweep_summary.csv").read_text()
    title = f"# Sweep {basic_sweep.name}\n"  # the dir's name; the rest is the table the sweep wrote
    md = (basic_sweep / "sweep_summary.md").read_text()
    assert md.startswith(title) and (sweep / "sweep_summary.md").read_text() == md.replace(title, "# Sweep copy\n", 1)
    assert (sweep / "sweep_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    empty = tmp_path / "empty"
    empty.mkdir()
    bad = summarize_script(tmp_path, empty)
    assert bad.returncode == 1 and "holds no jobs" in bad.stderr and "\n" == bad.stderr[-1]


@pytest.fixture(scope="module")
def smoke_sweep(tmp_path_factory):
    """A finished k=1,2 smoke sweep; a test changes a copy of it (sweep_copy)."""
    sweep = tmp_path_factory.mktemp("smoke") / "sweep"
    run_train(sweep.parent, *SMOKE, "k=1,2", f"hydra.sweep.dir={sweep}", multirun=True)
    return sweep


def sweep_copy(smoke_sweep, tmp_path):
    shutil.copytree(smoke_sweep, tmp_path / "sweep")
    return tmp_path / "sweep"


def sweep_into(tmp_path, sweep, *overrides: str, **env: str):
    """A smoke multirun into `sweep` (k=1,2 when no override is given: the smoke sweep's command)."""
    overrides = overrides or ("k=1,2",)
    args = [*SMOKE, *overrides, f"hydra.sweep.dir={sweep}"]
    return run_train(tmp_path, *args, multirun=True, check=False, **env)


def files(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_another_sweep_into_a_used_sweep_dir_is_refused_before_hydra_writes_a_job_dir(smoke_sweep, tmp_path):
    sweep = sweep_copy(smoke_sweep, tmp_path)
    before = files(sweep)
    out = sweep_into(tmp_path, sweep, "k=3,4")
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.splitlines()[-1] == (
        f"error: hydra.sweep.dir={sweep} holds another sweep (job 0 ran k=1, this sweep gives it k=3); re-run that "
        "sweep's exact command to resume it, or set hydra.sweep.dir to a new folder"
    )
    assert files(sweep) == before  # the jobs' .hydra/overrides.yaml still say what they ran; no error.txt
    swapped = sweep_into(tmp_path, sweep, "k=1", "seed=0,1")  # job 0 the same but for a knob it did not set
    assert swapped.returncode == 1 and "(job 0 ran no seed, this sweep gives it seed=0)" in swapped.stderr


def test_a_resumed_job_that_succeeds_drops_the_error_of_its_failed_try(smoke_sweep, tmp_path):
    sweep = sweep_copy(smoke_sweep, tmp_path)
    (sweep / "0" / "summary.json").unlink()  # job 0 failed before its final evaluation
    (sweep / "0" / "error.txt").write_text("an earlier try's error\n")
    out = sweep_into(tmp_path, sweep)  # the same command again: a resume
    assert out.returncode == 0, out.stderr
    assert not (sweep / "0" / "error.txt").exists()
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["finished", "finished"] and "error" not in rows[0]


def test_a_damaged_summary_is_a_damaged_job_of_a_failed_sweep(smoke_sweep, tmp_path):
    sweep = sweep_copy(smoke_sweep, tmp_path)
    summary = sweep / "1" / "summary.json"
    summary.write_text(summary.read_text()[:40])  # what an interrupted copy leaves
    out = sweep_into(tmp_path, sweep)  # the same command again: job 1 cannot read its result
    assert out.returncode == 1 and "Traceback" not in out.stderr and "UserWarning" not in out.stderr
    assert out.stderr.splitlines()[-1].startswith("error: 1 of 2 jobs failed or did not finish: job 1 (")
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["finished", "damaged"]
    assert rows[1]["error"].startswith(f"{summary} is not valid JSON (Unterminated string")
    assert "2 jobs: 1 finished, 0 failed, 1 damaged, 0 incomplete" in (sweep / "sweep_summary.md").read_text()


DAMAGED_OVERRIDES = {  # .hydra/overrides.yaml as an interrupted copy, a hand edit or another program leaves it
    "unparsable": ("- k=2\n: [\n", "cannot be read (while parsing a block collection)"),
    "a_mapping": ("k: 2\n", "is not a job's overrides (a YAML list of key=value)"),
    "a_number": ("- 2\n", "is not a job's overrides (a YAML list of key=value)"),
}


@pytest.mark.parametrize("text,words", DAMAGED_OVERRIDES.values(), ids=DAMAGED_OVERRIDES)
def test_a_damaged_overrides_record_is_a_damaged_job_of_the_summary(smoke_sweep, tmp_path, text, words):
    """The summary script writes the table with that job as damaged (was a YAML traceback, or an AttributeError),
    and a sweep into that dir is refused in one line before any job runs."""
    sweep = sweep_copy(smoke_sweep, tmp_path)
    record = sweep / "1" / ".hydra" / "overrides.yaml"
    record.write_text(text)
    out = summarize_script(tmp_path, sweep)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["finished", "damaged"] and rows[0]["k"] == "1"
    assert rows[1]["error"] == f"{record} {words}; restore it, or use a new run dir"
    again = sweep_into(tmp_path, sweep)
    assert again.returncode == 1 and "Traceback" not in again.stderr, again.stderr
    assert (
        again.stderr.strip().splitlines()[-1]
        == f"error: hydra.sweep.dir={sweep} holds a damaged job 1: {rows[1]['error']}"
    )
    assert record.read_text() == text


def test_an_error_or_run_id_not_utf8_is_read_and_an_error_folder_is_a_damaged_job(smoke_sweep, tmp_path):
    """error.txt and wandb_run_id are read whatever their bytes (U+FFFD for what is not UTF-8); an error.txt that is a
    folder makes the job damaged, named in its error (were a UnicodeDecodeError and an IsADirectoryError)."""
    sweep = sweep_copy(smoke_sweep, tmp_path)
    run_id = (sweep / "0" / "wandb_run_id").read_text().strip()
    (sweep / "0" / "wandb_run_id").write_bytes(run_id.encode() + b"\xff\n")
    (sweep / "1" / "summary.json").unlink()  # job 1 failed, its message written by other code, not in UTF-8
    (sweep / "1" / "error.txt").write_bytes(b"RuntimeError: caf\xe9 out of memory\n")
    out = summarize_script(tmp_path, sweep)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [(r["status"], r["k"]) for r in rows] == [("finished", "1"), ("failed", "2")]
    assert rows[0]["wandb_run_id"] == run_id + "\ufffd" and rows[1]["error"] == "RuntimeError: caf\ufffd out of memory"
    (sweep / "1" / "error.txt").unlink()
    (sweep / "1" / "error.txt").mkdir()
    out = summarize_script(tmp_path, sweep)
    assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    rows = read_csv(sweep / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["finished", "damaged"] and rows[1]["k"] == "2"
    assert rows[1]["error"] == f"{sweep / '1' / 'error.txt'} is a folder where the job keeps a file; move it away"
    assert "2 jobs: 1 finished, 0 failed, 1 damaged, 0 incomplete" in (sweep / "sweep_summary.md").read_text()


def test_the_summary_script_refuses_a_run_dir(smoke_sweep, tmp_path):
    run_dir = smoke_sweep / "0"
    out = summarize_script(tmp_path, run_dir)
    assert out.returncode == 1 and out.stderr == (
        f"error: {run_dir} is a run dir, not a sweep dir; pass a multirun dir (outputs/multiruns/<date>_<time>)\n"
    )
    assert not list(run_dir.glob("sweep_summary.*"))


def test_a_sweep_summary_that_cannot_be_written_fails_the_sweep(smoke_sweep, tmp_path):
    sweep = sweep_copy(smoke_sweep, tmp_path)
    (sweep / "sweep_summary.md").unlink()
    (sweep / "sweep_summary.md").mkdir()  # Hydra turns a callback's exception into a warning: exit 0
    out = sweep_into(tmp_path, sweep)
    assert out.returncode == 1
    assert out.stderr.splitlines()[-1].startswith(f"error: cannot summarize {sweep} (")


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["k=range(5,1)"],
            "the sweep has no jobs: k=range(5,1) has no values; range(start, stop) counts up and stops before stop: "
            "count down with step=-1",
        ),
        (
            ["k=1,2", "launcher=joblib", "hydra.launcher.n_jobs=0"],
            "hydra.launcher.n_jobs=0 is invalid: give a number of parallel jobs >= 1 (or -1: one per CPU core)",
        ),
    ],
    ids=["empty-range", "joblib-n_jobs=0"],
)
def test_a_sweep_that_cannot_run_is_refused_before_it_writes_anything(tmp_path, overrides, message):
    out = sweep_into(tmp_path, tmp_path / "sweep", *overrides)
    assert out.returncode == 1 and out.stderr.splitlines()[-1] == f"error: {message}", out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "sweep").exists()


def test_a_slurm_sweep_whose_sbatch_reaches_no_controller_ends_in_one_line(tmp_path):
    """The real sbatch (no shim), its slurm.conf naming a controller on a port where none listens."""
    if shutil.which("sbatch") is None:
        pytest.skip("sbatch is not installed (apt-get install slurm-client)")
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "slurm.conf"
    conf.write_text(
        f"ClusterName=none\nSlurmctldHost=localhost\nSlurmctldPort={port}\nGresTypes=gpu\nMessageTimeout=1\n"
    )
    out = sweep_into(tmp_path, tmp_path / "sweep", "k=1,2", "launcher=slurm", SLURM_CONF=str(conf))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    line = out.stderr.splitlines()[-1]
    assert line.startswith("error: launcher=slurm: sbatch failed (sbatch: ") and "Unable to contact" in line
    assert line.endswith(
        "; run on a SLURM login node, with hydra.launcher.* values its cluster accepts, or use launcher=local or "
        "launcher=joblib"
    )


def compose_hydra(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_launcher_presets_compose_and_every_slurm_field_is_overridable():
    assert compose_hydra().hydra.launcher._target_.endswith("BasicLauncher")  # launcher=local is the default
    assert compose_hydra("launcher=joblib").hydra.launcher._target_.endswith("JoblibLauncher")
    slurm = {
        "partition": "gpu",
        "timeout_min": 30,
        "gpus_per_node": 4,
        "cpus_per_task": 8,
        "mem_gb": 64,
        "array_parallelism": 3,
        "max_num_timeout": 5,
        "setup": ["module load cuda"],
    }
    cfg = compose_hydra("launcher=slurm", *(f"hydra.launcher.{k}={v}" for k, v in slurm.items())).hydra.launcher
    assert cfg._target_.endswith("SlurmLauncher")
    assert {k: (list(cfg[k]) if k == "setup" else cfg[k]) for k in slurm} == slurm
    assert cfg.tasks_per_node == 4  # one task (torch.distributed rank) per GPU


def fake_job(sweep, number: int, overrides: str, summary: dict | str | None = None, **files: str):
    """Job dir <sweep>/<number> as a multirun leaves it: .hydra/overrides.yaml (`overrides`: "k=2 seed=0"), the
    summary.json (a dict as JSON, a str as it is) and `files` by name (error.txt, checkpoints/ckpt-00000050.pt)."""
    job = sweep / str(number)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides.split()))
    if summary is not None:
        (job / "summary.json").write_text(summary if isinstance(summary, str) else json.dumps(summary))
    for name, text in files.items():
        (job / name).parent.mkdir(parents=True, exist_ok=True)
        (job / name).write_text(text)
    return job


def finished(name: str, objective: float, **extra) -> dict:
    """A finished job's summary.json, objective `name` (test/accuracy, test/mse); NaN as the run writes it."""
    value = objective if math.isfinite(objective) else str(objective)
    split, metric = name.split("/")
    results = {split: {metric: value}}
    return {"objective_name": name, "objective": value, "results": results, "iterations": 10, "seconds": 1.0, **extra}


@pytest.mark.parametrize(
    "name, objectives, best",
    [
        ("test/accuracy", [0.5, 0.7, 0.6, 0.9], "0.7 (job 2 `k=2`)"),
        ("test/mse", [0.5, 0.7, 0.6, 0.1], "0.5 (job 1 `k=1`)"),
    ],
    ids=["accuracy-highest", "mse-lowest"],
)
def test_the_best_job_is_the_finished_one_with_the_best_objective(tmp_path, name, objectives, best):
    """Accuracy: the highest; mse: the lowest. A diverged job (NaN), a pruned one (its objective from an evaluation
    before its end, here the best of all), a failed and an incomplete one are no candidates."""
    from reptile_exp.sweep import summarize

    sweep = tmp_path / "sweep"
    fake_job(sweep, 0, "k=0", finished(name, math.nan))
    for k, objective in enumerate(objectives[:3], 1):
        fake_job(sweep, k, f"k={k}", finished(name, objective))
    fake_job(sweep, 4, "k=4", finished(name, objectives[3], pruned_at=5))
    fake_job(sweep, 5, "k=5", **{"error.txt": "RuntimeError: out of memory"})
    fake_job(sweep, 6, "k=6")
    md = summarize(sweep)["md"].read_text()
    assert "7 jobs: 4 finished, 1 pruned, 1 failed, 1 incomplete" in md
    assert f"\nBest {name}: {best}\n" in md


def test_a_job_without_an_interval_is_drawn_without_an_error_bar(tmp_path):
    """A job of one test task has no 95% interval, written "nan" in summary.json (tracking.py keeps the file strict
    JSON): the summary reads it back as the float, and the figure draws that job's point without an error bar."""
    from reptile_exp.sweep import summarize

    sweep = tmp_path / "sweep"
    for k in (1, 2):
        summary = finished("test/accuracy", 0.5 + k / 10)
        summary["results"]["test"]["accuracy_ci95"] = "nan"
        fake_job(sweep, k, f"k={k}", summary)
    written = summarize(sweep)
    assert written["png"].stat().st_size > 0
    assert [r["test/accuracy_ci95"] for r in read_csv(written["csv"])] == ["nan", "nan"]


def test_the_jobs_are_in_job_number_order(tmp_path):
    """Job 10 after job 9, not after job 1: the rows follow the sweep's order (Hydra numbers its jobs 0, 1, ...)."""
    from reptile_exp.sweep import job_dirs, summarize

    sweep = tmp_path / "sweep"
    for k in reversed(range(12)):
        fake_job(sweep, k, f"k={k}", finished("test/mse", 1.0 + k))
    assert [d.name for d in job_dirs(sweep)] == [str(k) for k in range(12)]
    rows = read_csv(summarize(sweep)["csv"])
    assert [(r["job"], r["k"]) for r in rows] == [(str(k), str(k)) for k in range(12)]


def test_an_unfinished_job_shows_the_last_iteration_it_checkpointed(tmp_path):
    from reptile_exp.sweep import job_row

    sweep = tmp_path / "sweep"
    checkpoints = {f"checkpoints/ckpt-{i:08d}.pt": "" for i in (150, 50, 100)}
    incomplete = job_row(fake_job(sweep, 0, "k=1", **checkpoints), sweep)
    failed = job_row(fake_job(sweep, 1, "k=2", **checkpoints, **{"error.txt": "Diverged: ..."}), sweep)
    assert (incomplete["status"], incomplete["iteration"]) == ("incomplete", 150)
    assert (failed["status"], failed["iteration"]) == ("failed", 150)
    assert job_row(fake_job(sweep, 2, "k=3"), sweep)["iteration"] == 0  # stopped before its first checkpoint


@pytest.mark.parametrize(
    "text,words",
    [
        ("[1]", "is not a run's results (a JSON object)"),
        ("{}", "lacks objective_name, objective, results, iterations, seconds"),
        ('{"objective_name": "test/mse", "objective": 0.5}', "lacks results, iterations, seconds"),
    ],
)
def test_a_summary_without_a_runs_fields_is_a_damaged_job(tmp_path, text, words):
    """Valid JSON that is not a run's summary (hand-edited, another program's): a damaged row naming what it lacks,
    not a KeyError that ends the sweep summary."""
    from reptile_exp.sweep import job_row

    row = job_row(fake_job(tmp_path / "sweep", 0, "k=2", text), tmp_path / "sweep")
    assert row["status"] == "damaged" and row["k"] == "2" and words in row["error"], row


def test_a_run_id_folder_is_named_in_the_error_and_damages_only_a_job_without_results(tmp_path):
    """A finished job keeps its status and results (the error column names the folder); one without results is
    damaged."""
    from reptile_exp.sweep import job_row

    sweep = tmp_path / "sweep"
    jobs = [fake_job(sweep, 0, "k=1", finished("test/mse", 0.5)), fake_job(sweep, 1, "k=2")]
    for job in jobs:
        (job / "wandb_run_id").mkdir()
    rows = [job_row(job, sweep) for job in jobs]
    assert [(r["status"], r["k"]) for r in rows] == [("finished", "1"), ("damaged", "2")]
    assert rows[0]["objective"] == 0.5
    named = [f"{j / 'wandb_run_id'} is a folder where the job keeps a file; move it away" for j in jobs]
    assert [r["error"] for r in rows] == named
    assert all("wandb_run_id" not in r for r in rows)
