"""The study presets (issue 4) and scripts/study.py: presets say what REFERENCE.md says, every one runs under
debug=smoke as part of the every-preset multirun (test_every_preset.py), and the script turns multiruns into tables and
figures."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_train, script
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reptile_exp.config import register_schema
from reptile_exp.pruning import Trial

register_schema()
STUDY_PRESETS = sorted(
    p.stem for prefix in ("gradcomb_", "samek_", "sine_") for p in (ROOT / "conf/experiment").glob(f"{prefix}*.yaml")
)
# REFERENCE.md section 6: curve -> (algorithm, k, train shots, eps_0)
GRADIENT_COMBINATIONS = {
    "g1": ("Reptile", 1, 5, 0.25),
    "sum2": ("Reptile", 2, 10, 0.25),
    "mean2": ("Reptile", 2, 10, 0.125),
    "last2": ("FOMAML", 2, 10, 0.25),
    "sum3": ("Reptile", 3, 15, 0.25),
    "mean3": ("Reptile", 3, 15, 0.08325),
    "last3": ("FOMAML", 3, 15, 0.25),
    "sum4": ("Reptile", 4, 20, 0.25),
    "mean4": ("Reptile", 4, 20, 0.0625),
    "last4": ("FOMAML", 4, 20, 0.25),
}


LIGHT = ("iterations=2", "eval_every=1", "eval_every_tasks=2", "eval_tasks=4", "k_eval=2", "log_every=1")


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("curve", sorted(GRADIENT_COMBINATIONS))
def test_gradient_combination_presets_follow_the_paper(curve):
    algorithm, k, shots, eps = GRADIENT_COMBINATIONS[curve]
    cfg = _compose(f"experiment=gradcomb_{curve}")
    assert (cfg.algorithm._target_.rsplit(".", 1)[1], cfg.k, cfg.dataset.train_shots, cfg.epsilon) == (
        algorithm,
        k,
        shots,
        eps,
    )
    shared = (cfg.dataset.n_way, cfg.dataset.k_shot, cfg.meta_batch, cfg.inner_batch, cfg.inner_lr, cfg.iterations)
    assert shared == (5, 5, 1, 25, 0.003, 40000)
    assert cfg.inner_optimizer._target_.endswith("optim.SGD") and cfg.loss_reduction.value == "sum"
    assert (cfg.epsilon_final, cfg.eval_batch, cfg.k_eval) == (0.0, 25, 5)
    assert cfg.dataset.train_shots == 5 * cfg.k  # every inner step sees new examples


def test_sine_presets_differ_only_where_documented():
    """The MAML-protocol presets share every setting but the algorithm (and joint training's k); the Reptile-protocol
    FOMAML and MAML presets change only the algorithm and eps relative to sine_reptile."""

    def settings(experiment):
        cfg = OmegaConf.to_container(_compose(f"experiment={experiment}"), resolve=True)
        return {k: v for k, v in cfg.items() if k not in ("name", "algorithm")}

    finn = settings("sine_finn_reptile")
    assert finn["dataset"]["x_sampling"] == "uniform" and finn["dataset"]["phase"][1] == pytest.approx(3.14159265)
    assert (finn["model"]["hidden"], finn["model"]["activation"], finn["meta_batch"]) == ([40, 40], "relu", 25)
    assert finn["outer_optimizer"]["_target_"] == "torch.optim.Adam" and finn["epsilon"] == finn["epsilon_final"]
    assert settings("sine_finn_fomaml") == settings("sine_finn_maml") == settings("samek_sine") == finn
    assert settings("sine_finn_joint") == {**finn, "k": 1}
    grid = settings("sine_reptile")
    for experiment, eps in (("sine_fomaml", 0.1), ("sine_maml", 0.002)):
        assert settings(experiment) == {
            **grid,
            "epsilon": eps,
            "outer_optimizer": {**grid["outer_optimizer"], "lr": eps},
        }
    assert _compose("experiment=sine_finn_fomaml").algorithm.tail_shots == 10


study_script = script("study")


def study(capsys, *args: str) -> str:
    """scripts/study.py's main, in this process; what it printed."""
    capsys.readouterr()
    assert study_script.main(list(args)) == 0
    return capsys.readouterr().out


def _csv(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def test_same_k_multirun_becomes_a_table_and_plots(tmp_path, capsys):
    sweep = tmp_path / "samek"
    run_train(
        tmp_path,
        "experiment=samek_sine",
        "algorithm=reptile,fomaml,maml",
        "k=1,2",
        "debug=smoke",
        *LIGHT,
        "hydra/launcher=basic",
        f"hydra.sweep.dir={sweep}",
        multirun=True,
    )
    out = study(capsys, str(sweep), "--plot", "k", "--out", str(tmp_path / "k.png"))
    table = _csv(tmp_path / "k.csv")
    assert sorted((r["algorithm"], r["k"]) for r in table) == [
        (a, k) for a in ("fomaml", "maml", "reptile") for k in ("1", "2")
    ]
    assert all(r["metric"] == "mse" and float(r["value"]) > 0 for r in table)
    for r in table:  # each row is its own job's result: its knobs, its final test MSE and MSE after 0 steps
        job = sweep / r["job"]
        overrides = set(yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        assert {f"algorithm={r['algorithm']}", f"k={r['k']}"} <= overrides
        result = json.loads((job / "summary.json").read_text())["results"]["test"]
        assert (float(r["value"]), float(r["mse_after_0"])) == (result["mse"], result["mse_curve"][0]), r["label"]
    assert {r["label"] for r in table} >= {"algorithm=maml,k=2", "algorithm=reptile,k=1"}
    assert "MSE after 0" in out and (tmp_path / "k.png").exists()
    study(capsys, str(sweep), "--plot", "steps")  # default output next to the sweep
    assert (sweep / "study.png").exists() and (sweep / "study.md").exists()
    # a job an Optuna pruner stopped (summary.json as pruning.Trial writes it) is a row of the table, not a point
    trial = Trial(None)
    trial.last = ("eval/test_mse", 0.5)
    pruned = table[0]["job"]
    (sweep / pruned / "summary.json").write_text(json.dumps(trial.summary(3, "cpu", 0.0)))
    for kind in ("k", "steps", "learning"):
        study(capsys, str(sweep), "--plot", kind, "--out", str(tmp_path / f"pruned_{kind}.png"))
        rows = {r["job"]: r for r in _csv(tmp_path / f"pruned_{kind}.csv")}
        assert rows[pruned]["status"] == "pruned at iteration 3" and rows[pruned]["value"] == ""
        assert all(r["status"] == "finished" and r["value"] for job, r in rows.items() if job != pruned)


@pytest.fixture(scope="module")
def sine_sweep(tmp_path_factory):
    """A finished two-job multirun (reptile, k=1,2); a test damages a copy of it."""
    sweep = tmp_path_factory.mktemp("sine") / "sweep"
    jobs = ("experiment=samek_sine", "algorithm=reptile", "k=1,2", "debug=smoke", *LIGHT, "hydra/launcher=basic")
    run_train(sweep.parent, *jobs, f"hydra.sweep.dir={sweep}", multirun=True)
    return sweep


def _copy(sweep: Path, tmp_path: Path) -> Path:
    shutil.copytree(sweep, tmp_path / "sweep")
    return tmp_path / "sweep"


DAMAGED_HYDRA = {  # a job's .hydra/hydra.yaml (where study.py reads the algorithm) left out, cut short or edited
    "missing": (None, "is missing; restore it, or use a new run dir"),
    "unparsable": ("hydra:\n  runtime: [\n", "cannot be read (while parsing a flow node); restore it"),
    "no_choice": ("hydra: {runtime: {choices: {}}}\n", "names no algorithm (hydra.runtime.choices.algorithm); restore"),
}


@pytest.mark.parametrize("text,words", DAMAGED_HYDRA.values(), ids=DAMAGED_HYDRA)
def test_a_damaged_hydra_record_is_one_line_and_exit_1(sine_sweep, tmp_path, capsys, text, words):
    """Was a FileNotFoundError, a YAML traceback or an omegaconf error."""
    sweep = _copy(sine_sweep, tmp_path)
    record = sweep / "1" / ".hydra" / "hydra.yaml"
    record.unlink() if text is None else record.write_text(text)
    with pytest.raises(SystemExit) as exit:
        study_script.main([str(sweep), "--plot", "k", "--out", str(tmp_path / "k.png")])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and err.count("\n") == 1, err
    assert f"error: {record} {words}" in err, err


def test_an_error_not_utf8_is_read_and_an_error_folder_is_one_line(sine_sweep, tmp_path, capsys):
    """A failed job's error.txt that is not UTF-8 is its row's status, U+FFFD for the odd bytes (was a
    UnicodeDecodeError); an error.txt that is a folder is one line and exit 1 (was an IsADirectoryError)."""
    sweep = _copy(sine_sweep, tmp_path)
    (sweep / "1" / "summary.json").unlink()
    (sweep / "1" / "error.txt").write_bytes(b"RuntimeError: caf\xe9 out of memory\n")
    study(capsys, str(sweep), "--plot", "k", "--out", str(tmp_path / "k.png"))
    rows = {r["job"]: r for r in _csv(tmp_path / "k.csv")}
    assert rows["1"]["status"] == "failed: RuntimeError: caf\ufffd out of memory" and rows["0"]["status"] == "finished"
    (sweep / "1" / "error.txt").unlink()
    (sweep / "1" / "error.txt").mkdir()
    with pytest.raises(SystemExit) as exit:
        study_script.main([str(sweep), "--plot", "k", "--out", str(tmp_path / "k.png")])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and err.count("\n") == 1, err
    assert f"error: {sweep / '1' / 'error.txt'} is a folder where the job keeps a file; move it away" in err


def _damaged_multirun(sweep: Path) -> None:
    """A multirun of one job as Hydra leaves it (config: what study.py reads), its summary.json cut short."""
    hydra = sweep / "0" / ".hydra"
    hydra.mkdir(parents=True)
    (hydra / "overrides.yaml").write_text("- k=1\n")
    (hydra / "config.yaml").write_text("name: null\nk: 1\nalgorithm: {}\n")
    (hydra / "hydra.yaml").write_text("hydra: {runtime: {choices: {algorithm: reptile}}}\n")
    (sweep / "0" / "summary.json").write_text('{"iterations": 2')


def test_a_bad_out_or_a_single_run_dir_is_refused_before_any_job_is_read(tmp_path, capsys):
    sweep, run = tmp_path / "sweep", tmp_path / "run"
    _damaged_multirun(sweep)
    (run / ".hydra").mkdir(parents=True)
    (run / "summary.json").write_text("{}")
    (tmp_path / "file").write_text("")
    (tmp_path / "fig.csv").mkdir()  # where the table beside the figure goes
    multirun = "pass the multirun dir that holds its jobs (outputs/multiruns/<date>_<time>)"
    for args, message in (
        ([sweep, "--out", tmp_path / "st3.txt"], f"--out {tmp_path / 'st3.txt'}: the figure path must end in "),
        ([sweep, "--out", tmp_path / "file" / "x.png"], f"{tmp_path / 'file'} cannot be created or written ("),
        ([sweep, "--out", tmp_path / "fig.png"], f"--out {tmp_path / 'fig.png'}: {tmp_path / 'fig.csv'} is a folder;"),
        ([run], f"{run} is a single run dir; {multirun}"),
    ):
        with pytest.raises(SystemExit) as exit:
            study_script.main([*map(str, args), "--plot", "learning"])
        err = capsys.readouterr().err
        assert exit.value.code == 2 and message in err.splitlines()[-1], err


def test_a_damaged_overrides_record_is_one_line_and_exit_1(tmp_path, capsys):
    _damaged_multirun(tmp_path / "sweep")
    record = tmp_path / "sweep" / "0" / ".hydra" / "overrides.yaml"
    record.write_text("- k=1\n: [\n")
    with pytest.raises(SystemExit) as exit:
        study_script.main([str(tmp_path / "sweep"), "--plot", "learning"])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and err.count("\n") == 1
    assert f"error: {record} cannot be read (while parsing a block collection); restore it" in err


def test_a_damaged_summary_is_one_line_and_exit_1(tmp_path, capsys):
    _damaged_multirun(tmp_path / "sweep")
    with pytest.raises(SystemExit) as exit:
        study_script.main([str(tmp_path / "sweep"), "--plot", "learning"])
    err = capsys.readouterr().err
    assert exit.value.code == 1 and err.count("\n") == 1
    assert f"error: {tmp_path / 'sweep' / '0' / 'summary.json'} is not valid JSON" in err
