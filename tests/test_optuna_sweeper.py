"""The project's Optuna sweeper (issue 20; hydra_plugins/reptile_optuna_sweeper, reptile_exp/pruning.py), through the
real command line with the real launchers: pruning, a diverging trial, a continued study, several objectives, the
search space's grammar, and plugin discovery in an editable and a wheel install.

The sweeps run from a directory outside the repository, so Hydra finds the plugin through the installed project
(the README's `pip install -e ".[dev]"` in CI), not through the working directory on sys.path."""

import csv
import json
import os
import socket
import subprocess
import sys
import venv
from pathlib import Path

import optuna
import pytest
import yaml
from conftest import ROOT, clean_env, run_train, train_cmd
from hydra import compose, initialize_config_dir
from hydra._internal.config_loader_impl import ConfigLoaderImpl
from hydra._internal.utils import create_config_search_path
from hydra.core.override_parser.overrides_parser import OverridesParser
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState
from wandb_records import records

import reptile_exp.train  # noqa: F401  (registers the config schema)
from hydra_plugins.reptile_optuna_sweeper.sweeper import distribution
from reptile_exp.pruning import Trial, prune_now, storage, study_name

# sine, seconds per trial: 20 outer iterations, a periodic evaluation every 5 (10 adaptation steps, so the inner lr
# shows in the metric), one inner step per task
TINY = [
    "hparams_search=sine",
    "iterations=20",
    "eval_every=5",
    "eval_every_tasks=10",
    "log_every=1",
    "checkpoint_every=10",
    "eval_tasks=4",
    "k_eval=10",
    "k=1",
    "epsilon=0.5",
    "meta_batch=1",
    "progress=false",
]


def sweep(tmp_path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m reptile_exp.train -m ...` with the sweep dir tmp_path/sweep, run from tmp_path."""
    proc = subprocess.run(
        train_cmd(f"hydra.sweep.dir={tmp_path / 'sweep'}", *overrides, multirun=True),
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert not check or proc.returncode == 0, proc.stderr
    return proc


def study_of(sweep_dir):
    """The study as optuna-dashboard would open it: from the journal file the sweep left."""
    return optuna.load_study(study_name=sweep_dir.name, storage=storage(None, sweep_dir))


def rows(sweep_dir) -> list[dict]:
    with open(sweep_dir / "sweep_summary.csv") as f:
        return list(csv.DictReader(f))


def test_a_pruned_trial_stops_early_and_a_diverging_one_gets_the_penalty_under_submitit(tmp_path):
    """Three trials of inner_lr in {1e30, 0.02, 1e-6} with the sine preset's TPE (seed 2 draws them in this order),
    each a submitit job of two ranks (CPU, gloo): 1e30 diverges and hands Optuna the finite penalty; 0.02 completes;
    1e-6 barely adapts, is worse than 0.02 at the first periodic evaluation and the median pruner stops it there
    (rank 0 asks, both ranks stop): it ran 5 of 20 iterations, kept its checkpoint, and summary.json, W&B, the sweep
    summary and the study all say pruned. Only the diverged job makes the command exit 1."""
    proc = sweep(
        tmp_path,
        *TINY,
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        "meta_batch=2",
        "device=cpu",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.sampler.seed=2",
        "hydra.sweeper.pruner.n_startup_trials=1",
        "hydra.sweeper.warmup=0",
        "inner_lr=choice(0.02,1e-6,1e30)",
        "logger.mode=offline",
        check=False,
    )
    sweep_dir = tmp_path / "sweep"
    trials = study_of(sweep_dir).trials
    assert [t.params["inner_lr"] for t in trials] == [1e30, 0.02, 1e-6], "the sampler's draws changed: pick a seed"
    assert [t.state for t in trials] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert trials[0].value == 1e6 and "diverged at iteration" in trials[0].user_attrs["error"]  # finite: the worst
    assert 0 < trials[1].value < 1e6 and trials[2].intermediate_values.keys() == {5}
    assert trials[2].value == trials[2].intermediate_values[5] > trials[1].intermediate_values[5]

    pruned = sweep_dir / "2"
    summary = json.loads((pruned / "summary.json").read_text())
    assert summary["pruned_at"] == summary["iterations"] == 5 and summary["objective_name"] == "eval/test_mse"
    assert [p.name for p in (pruned / "checkpoints").iterdir()] == ["ckpt-00000005.pt"]
    (run_file,) = pruned.glob("wandb/offline-run-*/run-*.wandb")
    told = [json.loads(i.value_json) for r in records(run_file) if r.HasField("summary") for i in r.summary.update]
    assert any(v == 5 for v in told) and b"pruned_at" in run_file.read_bytes()

    assert [(r["job"], r["inner_lr"], r["status"], r["iteration"]) for r in rows(sweep_dir)] == [
        ("0", "1e+30", "failed", "0"),
        ("1", "0.02", "finished", "20"),
        ("2", "1e-06", "pruned", "5"),
    ]
    assert "3 jobs: 1 finished, 1 pruned, 1 failed, 0 incomplete" in (sweep_dir / "sweep_summary.md").read_text()
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and last.startswith("error: 1 of 3 jobs failed or did not finish: job 0 "), last
    best = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())
    assert best["best_trial"] == 1 and best["best_params"] == {"inner_lr": 0.02}
    assert best["trials"] == {"complete": 2, "pruned": 1}
    assert (sweep_dir / "optimization_history.png").read_bytes()[:4] == b"\x89PNG"
    recorded = yaml.safe_load((sweep_dir / "multirun.yaml").read_text())  # the sweep's config, as Hydra's sweeper
    assert recorded["hydra"]["sweeper"]["n_trials"] == 3 and recorded["meta_batch"] == 2
    second_ranks = sorted(sweep_dir.glob(".submitit/*/*_1_log.err"))
    assert len(second_ranks) == 3 and all("Job completed successfully" in p.read_text() for p in second_ranks)


def test_the_same_command_continues_the_study_under_joblib(tmp_path):
    """Two trials at once with the joblib launcher; then a trial left RUNNING by a sweeper process that is gone; then
    the same command with n_trials=4 launches that trial again and one new one, and never the two that finished."""
    space = ["inner_lr=tag(log,interval(0.001,0.1))", "launcher=joblib", "hydra.sweeper.n_jobs=2"]
    sweep(tmp_path, *TINY, *space, "logger.mode=disabled", "hydra.sweeper.n_trials=2")
    sweep_dir = tmp_path / "sweep"
    finished = {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in ("0", "1")}
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = study_of(sweep_dir).ask({"inner_lr": FloatDistribution(0.001, 0.1, log=True)})
    orphan.set_user_attr("sweeper", f"{socket.gethostname()}:{dead.pid}")

    proc = sweep(tmp_path, *TINY, *space, "logger.mode=disabled", "hydra.sweeper.n_trials=4")
    assert "trials [2] were left running by a sweeper process that is gone" in proc.stdout  # Hydra's log: stdout
    trials = study_of(sweep_dir).trials
    assert [(t.number, t.state) for t in trials] == [(n, TrialState.COMPLETE) for n in range(4)]
    assert trials[2].params == orphan.params  # relaunched with its own parameters
    # its job re-attached to trial 2 by the number in its overrides, as a requeued SLURM job does
    assert [list(t.intermediate_values) for t in trials] == [[5, 10, 15, 20]] * 4
    assert {n: (sweep_dir / n / "summary.json").stat().st_mtime_ns for n in ("0", "1")} == finished
    table = rows(sweep_dir)
    assert [(r["job"], r["status"]) for r in table] == [(str(n), "finished") for n in range(4)]
    assert [float(r["inner_lr"]) for r in table] == [t.params["inner_lr"] for t in trials]
    assert [float(r["objective"]) for r in table] == [t.value for t in trials]


def test_two_sweeper_processes_share_one_study(tmp_path):
    """Two sweeper processes started together on one sweep dir (its journal), each launching one trial at a time
    with its own sampler seed: 3 trials in all (4 when both asked for the last at once: docs/sweeps.md), each run once
    in its own dir, and both processes end with the whole study in their summary (the first to run out of trials
    waits for the other's)."""
    args = [*TINY, "inner_lr=tag(log,interval(0.001,0.1))", "logger.mode=disabled", "hydra.sweeper.n_trials=3"]
    procs = [
        subprocess.Popen(
            train_cmd(
                f"hydra.sweep.dir={tmp_path / 'sweep'}", *args, f"hydra.sweeper.sampler.seed={seed}", multirun=True
            ),
            cwd=tmp_path,
            env=clean_env(tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (0, 1)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in outs]
    sweep_dir = tmp_path / "sweep"
    trials = study_of(sweep_dir).trials
    assert len(trials) in (3, 4) and [(t.number, t.state) for t in trials] == [
        (n, TrialState.COMPLETE) for n in range(len(trials))
    ]
    assert [r["job"] for r in rows(sweep_dir)] == [str(t.number) for t in trials]
    assert all((sweep_dir / str(t.number) / "train.log").read_text().count("results in") == 1 for t in trials)


def test_several_objectives_return_a_pareto_front(tmp_path):
    """Minimise the test MSE and the training time, the study in a sqlite database (an RDB URL):
    optimization_results.yaml holds the trials no other trial beats on both, as the study says."""
    database = f"sqlite:///{tmp_path / 'optuna.db'}"
    sweep(
        tmp_path,
        *TINY,
        "inner_lr=choice(0.001,0.02)",
        "k=choice(1,3)",
        "logger.mode=disabled",
        "hydra/sweeper/pruner=none",
        "hydra.sweeper.n_trials=3",
        "hydra.sweeper.direction=[minimize,minimize]",
        "hydra.sweeper.objectives=[objective,seconds]",
        f"hydra.sweeper.storage={database}",
    )
    sweep_dir = tmp_path / "sweep"
    assert not (sweep_dir / "optuna_journal.log").exists()
    study = optuna.load_study(study_name="sweep", storage=database)
    front = yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["solutions"]
    assert front and [s["trial"] for s in front] == [t.number for t in study.best_trials]
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(done) == 3 and all(len(t.values) == 2 for t in done)
    for s in front:
        assert not any(all(a <= b for a, b in zip(t.values, s["values"])) and t.values != s["values"] for t in done)
    seconds = {r["job"]: float(r["seconds"]) for r in rows(sweep_dir)}
    assert all(abs(t.values[1] - seconds[str(t.number)]) < 0.1 for t in done)


@pytest.mark.parametrize(
    ("overrides", "phrase"),
    [
        (["hydra.sweeper.n_jobs=0"], "hydra.sweeper.n_jobs=0 is invalid: must be an integer >= 1"),
        (
            ["hydra.sweeper.direction=[minimize,minimize]", "hydra.sweeper.objectives=[objective,seconds]"],
            "is invalid with a pruner: Optuna prunes single-objective studies only; add hydra/sweeper/pruner=none",
        ),  # hparams_search=sine chooses the median pruner
        (  # a typo: found once the first job has written its summary.json, not after every trial ran
            [
                "hydra/sweeper/pruner=none",
                "hydra.sweeper.objectives=[results.val.accuracy]",
                "hydra.sweeper.n_trials=3",
            ],
            "hydra.sweeper.objectives: results.val.accuracy is not a field of",
        ),
    ],
    ids=["n_jobs", "pruner_with_two_objectives", "objective_typo"],
)
def test_a_bad_sweeper_setting_is_one_line(tmp_path, overrides, phrase):
    proc = sweep(tmp_path, *TINY, "k=choice(1,3)", "logger.mode=disabled", *overrides, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and phrase in last, proc.stderr
    assert len(list((tmp_path / "sweep").glob("*/summary.json"))) <= 1  # one job at most ran
    if "pruner" in phrase:  # refused before the study was created
        assert not (tmp_path / "sweep" / "optuna_journal.log").exists()


# the tiniest sweep job: debug=smoke, two outer iterations, two test tasks of one step each
SMOKE = ["debug=smoke", "iterations=2", "eval_every=1", "eval_tasks=2", "k_eval=1", "logger.mode=disabled"]
SINE = "hparams_search=sine"
STORAGE = "hydra.sweeper.storage="


@pytest.mark.parametrize(
    ("overrides", "line"),
    [
        (
            [SINE, "hydra.sweeper.direction=maximize"],
            "hydra.sweeper.direction=maximize is invalid for the objective test/mse (lower is better): use minimize",
        ),
        (
            ["hparams_search=omniglot", "experiment=omniglot_5w1s", "hydra.sweeper.direction=minimize"],
            "hydra.sweeper.direction=minimize is invalid for the objective val/accuracy (higher is better): use "
            "maximize",
        ),
        (
            [SINE, "hydra.sweeper.direction=maximise"],
            "hydra.sweeper.direction='maximise' is invalid: give minimize or maximize (a list of them: one per "
            "objective)",
        ),
        ([SINE, "k=range(10,1)"], "k=range(10,1) is an invalid search range (`low <= high` must hold, but got"),
        ([SINE, "epsilon=interval(1,0)"], "epsilon=interval(1,0) is an invalid search range (`low <= high` must"),
        ([SINE, "inner_lr=tag(log,interval(0,1))"], "inner_lr=tag(log,interval(0,1)) is an invalid search range"),
        (
            [SINE, STORAGE + "foo://bar"],
            "hydra.sweeper.storage=foo://bar cannot be opened (Can't load plugin: sqlalchemy.dialects:foo): give a "
            "journal file (a new one or a sweep's) in a writable folder, or a database URL",
        ),
        ([SINE, STORAGE + "/proc/nope/j.log"], "hydra.sweeper.storage=/proc/nope/j.log cannot be opened ("),
        ([SINE, STORAGE + "{notes}"], "hydra.sweeper.storage={notes} is not an Optuna journal file (Expecting value"),
        (  # a sampler set by _target_ keeps the default TPE's other keys
            [SINE, "hydra.sweeper.sampler={{_target_: optuna.samplers.RandomSampler, seed: 0}}"],
            "hydra.sweeper.sampler.n_startup_trials is invalid: optuna.samplers.RandomSampler takes no "
            "n_startup_trials; drop it with '~hydra.sweeper.sampler.n_startup_trials'",
        ),
        (
            [SINE, "+hydra.sweeper.pruner.patience=2"],
            "hydra.sweeper.pruner.patience is invalid: optuna.pruners.MedianPruner takes no patience; drop it with",
        ),
        (
            [SINE, "hydra.sweeper.sampler._target_=optuna.samplers.Tpe"],
            "hydra.sweeper.sampler._target_=optuna.samplers.Tpe cannot be imported: give an Optuna sampler class",
        ),
    ],
    ids=[
        *("maximize_mse", "minimize_accuracy", "maximise", "range", "interval", "log", "url", "unwritable", "notes"),
        *("sampler_argument", "pruner_argument", "sampler_target"),
    ],
)
def test_a_bad_search_setting_is_one_line_before_any_trial(tmp_path, overrides, line):
    """A direction against the objective (a failed job's penalty would be the best), a misspelt direction, an empty
    or log-invalid range, a storage that cannot be opened or is not a journal, and a sampler or pruner its _target_
    cannot build: refused in one line before the study is opened or any job runs; a file given as the storage is left
    as it was."""
    notes = tmp_path / "notes.log"
    notes.write_text("my notes\n")
    overrides = [o.format(notes=notes) for o in overrides]
    proc = sweep(tmp_path, *SMOKE, *overrides, check=False)
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert last.startswith("error: " + line.format(notes=notes)), last
    assert not list((tmp_path / "sweep").glob("*/summary.json")) and not list(tmp_path.rglob("optuna_journal.log"))
    assert notes.read_text() == "my notes\n"


def test_a_sweep_whose_jobs_all_fail_names_no_best_trial(tmp_path):
    """Every job refuses inner_lr=-1 and returns the penalty: optimization_results.yaml names no best trial."""
    proc = sweep(tmp_path, *SMOKE, SINE, "inner_lr=-1", "hydra.sweeper.n_trials=2", check=False)
    assert proc.returncode == 1 and "inner_lr=-1.0 is invalid" in (tmp_path / "sweep/0/error.txt").read_text()
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["trials"] == {"complete": 2} and results["best_trial"] is None and "best_params" not in results
    assert results["note"] == "no trial completed without an error (see sweep_summary.md)"


def test_a_continued_study_keeps_its_overrides_and_search_space(tmp_path):
    """Continuing a study with another fixed override, a knob left at its default or another range is refused
    before any job, naming the first difference, and the sweep dir is left as it was; progress=false continues
    it. A study made before the study kept its settings continues, with a warning."""
    args = [*SMOKE, SINE, "k=range(1,3)"]
    sweep(tmp_path, *args, "hydra.sweeper.n_trials=1")
    sweep_dir = tmp_path / "sweep"
    journal = sweep_dir / "optuna_journal.log"
    written = {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p != journal}
    study = journal.read_bytes()
    for extra, change in [
        (["iterations=3"], "iterations=2; this command gives iterations=3"),
        (["k=range(1,4)"], "k=range(1,3); this command gives k=range(1,4)"),
        (["dataset.n_points=40"], "dataset.n_points=<default>; this command gives dataset.n_points=40"),
    ]:
        proc = sweep(tmp_path, *args, *extra, "hydra.sweeper.n_trials=2", check=False)
        last = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert last == (
            f"error: study sweep in {journal} was run with {change}: use another "
            "hydra.sweep.dir or hydra.sweeper.study_name, or the study's settings"
        )
    assert {p: p.stat().st_mtime_ns for p in sweep_dir.rglob("*") if p != journal} == written
    assert journal.read_bytes().startswith(study) and len(study_of(sweep_dir).trials) == 1  # Optuna appends on load
    sweep(tmp_path, *args, "progress=false", "hydra.sweeper.n_trials=2")
    assert [t.state for t in study_of(sweep_dir).trials] == [TrialState.COMPLETE] * 2

    old = optuna.create_study(study_name="old", storage=storage(None, sweep_dir))
    old.add_trial(optuna.trial.create_trial(params={"k": 1}, distributions={"k": IntDistribution(1, 3)}, value=1.0))
    proc = sweep(tmp_path, *args, "iterations=3", "hydra.sweeper.study_name=old", "hydra.sweeper.n_trials=2")
    assert "study old predates its settings record: continued without comparing them" in proc.stdout + proc.stderr
    assert len(optuna.load_study(study_name="old", storage=storage(None, sweep_dir)).trials) == 2


def space(override: str):
    loader = ConfigLoaderImpl(config_search_path=create_config_search_path(str(ROOT / "conf")))
    (parsed,) = OverridesParser.create(config_loader=loader).parse_overrides([override])
    return distribution(parsed)


def test_a_trial_reports_at_its_iteration_and_a_pruned_runs_summary_stops_there(tmp_path):
    """pruning.Trial on a real study in its default journal: the evaluation is reported at its iteration, the median
    pruner stops a trial worse than the median there (prune_now, one process), and the pruned run's summary.json says
    it ran to that iteration with that metric as its objective."""
    pruner = optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0)
    study = optuna.create_study(study_name=study_name(None, tmp_path), storage=storage(None, tmp_path), pruner=pruner)
    done = study.ask()
    done.report(1.0, 5)
    study.tell(done, 1.0)
    trial = Trial(study.ask())
    assert prune_now(trial, 5, "eval/test_mse", 2.0) and not prune_now(None, 5, "eval/test_mse", 2.0)
    assert study_of(tmp_path).trials[1].intermediate_values == {5: 2.0}
    summary = trial.summary(5, "cpu", 0.0)
    assert summary["pruned_at"] == summary["iterations"] == 5
    assert (summary["objective"], summary["objective_name"]) == (2.0, "eval/test_mse")


def test_search_space_grammar_and_range_includes_its_end():
    assert space("k=range(1,10)") == IntDistribution(1, 10)  # 10 included, unlike Hydra's basic sweeper
    assert space("k=range(2,10,4)") == IntDistribution(2, 10, step=4)
    assert space("k=tag(log,range(1,64))") == IntDistribution(1, 64, log=True)
    assert space("epsilon=interval(0.1,1.0)") == FloatDistribution(0.1, 1.0)
    assert space("inner_lr=tag(log,interval(1e-4,1e-2))") == FloatDistribution(1e-4, 1e-2, log=True)
    assert space("epsilon=range(0.1,0.5,0.1)") == FloatDistribution(0.1, 0.5, step=0.1)
    assert space("meta_batch=choice(1,5,10)") == CategoricalDistribution([1, 5, 10])
    assert space("algorithm=reptile,fomaml") == CategoricalDistribution(["reptile", "fomaml"])
    presets = ["sine_finn_fomaml", "sine_finn_joint", "sine_finn_maml", "sine_finn_reptile"]
    assert space("experiment=glob(sine_finn_*)") == CategoricalDistribution(presets)


def test_search_presets_compose_with_the_sweeper_and_their_pruner():
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        omniglot = compose("train", ["experiment=omniglot_5w1s", "hparams_search=omniglot"], return_hydra_config=True)
        sine = compose("train", ["hparams_search=sine", "hydra/sweeper/pruner=hyperband"], return_hydra_config=True)
    assert omniglot.objective_split == "val" and list(omniglot.eval_splits) == ["val"]
    assert omniglot.dataset.val_characters > 0
    swept = omniglot.hydra.sweeper
    assert swept._target_ == "hydra_plugins.reptile_optuna_sweeper.sweeper.ReptileOptunaSweeper"
    assert swept.direction == "maximize" and set(swept.params) == {"inner_lr", "k", "epsilon", "meta_batch"}
    assert swept.sampler._target_ == "optuna.samplers.TPESampler" and swept.sampler.seed == 0
    assert swept.pruner._target_ == "optuna.pruners.MedianPruner" and swept.pruner.n_warmup_steps == 5000
    assert sine.hydra.sweeper.direction == "minimize" and sine.hydra.sweeper.n_trials == 16
    assert sine.hydra.sweeper.pruner._target_ == "optuna.pruners.HyperbandPruner"
    assert sine.hydra.sweeper.pruner.min_resource == 1000 and sine.hydra.sweeper.pruner.max_resource == 5000


DISCOVER = """
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
print([f"{c.__module__}.{c.__name__}" for c in Plugins.instance().discover(Sweeper)])
print(ConfigStore.instance().load("hydra/sweeper/reptile_optuna.yaml").node._target_)
"""


@pytest.mark.parametrize("install", ["editable", "wheel"])
def test_hydra_finds_the_sweeper_in_an_editable_and_a_wheel_install(tmp_path, install):
    """The project (its package files, no dependencies: this environment's through a .pth) installed into a new
    venv by pip, as the README says (`pip install -e .`, setuptools' PEP 660 editable wheel) or as a wheel; from a
    directory outside the project, Hydra's scan of the hydra_plugins namespace finds the sweeper and its config."""
    project = tmp_path / "project"
    project.mkdir()
    for name in ("pyproject.toml", "README.md", "reptile_exp", "hydra_plugins"):
        src = ROOT / name
        if src.is_dir():
            subprocess.run(["cp", "-r", str(src), str(project)], check=True)
        else:
            (project / name).write_bytes(src.read_bytes())
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = subprocess.check_output([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"])
    here = [p for p in sys.path if p.endswith("site-packages")]
    (Path(site.decode().strip()) / "deps.pth").write_text("\n".join(here) + "\n")
    target = ["-e", str(project)] if install == "editable" else [str(project)]
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", *target]
    built = subprocess.run(pip, capture_output=True, text=True, env={**os.environ, "PIP_NO_INPUT": "1"})
    assert built.returncode == 0, built.stderr
    out = subprocess.run([str(python), "-c", DISCOVER], cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    found, target_line = out.stdout.strip().splitlines()
    assert "hydra_plugins.reptile_optuna_sweeper.sweeper.ReptileOptunaSweeper" in found
    assert target_line == "hydra_plugins.reptile_optuna_sweeper.sweeper.ReptileOptunaSweeper"


def test_a_missing_plugin_is_an_error_not_another_sweeper(tmp_path):
    """With the plugin's modules unimportable, hparams_search=sine stops before any job, naming the sweeper."""
    blocked = "import sys; sys.modules['hydra_plugins.reptile_optuna_sweeper'] = None; "
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            blocked + "from reptile_exp.train import main; main()",
            "-m",
            f"hydra.sweep.dir={tmp_path / 'sweep'}",
            *TINY,
        ],
        cwd=tmp_path,
        env=clean_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "hydra/sweeper=reptile_optuna is invalid: no such option" in last, proc.stderr
    assert not (tmp_path / "sweep").exists()  # no job ran under another sweeper


def test_a_search_preset_without_multirun_says_it_runs_once(tmp_path):
    """hparams_search=sine without -m is one plain run of the preset's values, which says so (it was silent)."""
    proc = run_train(tmp_path, SINE, *SMOKE, f"hydra.run.dir={tmp_path / 'once'}")
    assert "holds a search (hydra.sweeper.params), which runs only with -m" in proc.stderr
    assert (tmp_path / "once" / "summary.json").exists() and not list(tmp_path.rglob("optuna_journal.log"))
    plain = run_train(tmp_path, *SMOKE, f"hydra.run.dir={tmp_path / 'plain'}")
    assert "runs only with -m" not in plain.stderr
