"""What a run says on the console explains itself (issue 22): the final results name the split, metric, interval,
tasks and steps; periodic evaluations show up; runs on random images say so; a dataset.root that is not read is
named; the W&B offline hint gives a path `wandb sync` accepts."""

import json
import re
from pathlib import Path

from conftest import run_train

from reptile_exp.protocols import Protocol
from reptile_exp.report import describe


def test_a_smoke_run_says_what_its_numbers_are_and_what_it_does_not_read(tmp_path):
    run_dir = tmp_path / "run"
    out = run_train(
        tmp_path,
        "experiment=omniglot_5w1s",
        "debug=smoke",
        "dataset.root=/data/omniglot",
        "logger.mode=offline",
        f"hydra.run.dir={run_dir}",
    )
    lines = out.stderr.splitlines()
    assert any("dataset.root=/data/omniglot is not read" in line and "synthetic_data=false" in line for line in lines)
    periodic = [line for line in lines if re.search(r"iteration \d+: test accuracy", line)]  # no val split
    assert [re.search(r"iteration (\d+)", line)[1] for line in periodic] == ["3", "6"]  # eval_every=3 of 6
    finals = [line for line in lines if re.search(r"\] - (train|test) accuracy", line)]
    assert len(finals) == 2
    for line in periodic + finals:
        assert line.endswith("[synthetic random images: not a result]") and "95% CI +-" in line
    (hint,) = [line for line in lines if "wandb sync " in line]
    synced = Path(hint.rsplit("wandb sync ", 1)[1])
    assert synced.is_dir() and synced.name.startswith("offline-run-") and list(synced.glob("*.wandb"))


def test_the_final_line_states_the_metric_its_interval_tasks_and_steps(tmp_path):
    run_dir = tmp_path / "run"
    args = ["iterations=4", "eval_every=0", "eval_tasks=6", "k_eval=3", "logger.mode=disabled", "progress=false"]
    out = run_train(tmp_path, *args, f"hydra.run.dir={run_dir}")
    result = json.loads((run_dir / "summary.json").read_text())["results"]["test"]
    line = f"test MSE {result['mse']:.4g} (95% CI +-{result['mse_ci95']:.2g} over 6 tasks, 3 steps)"
    assert any(entry.endswith("] - " + line) for entry in out.stderr.splitlines()), out.stderr


def test_one_task_has_no_interval_instead_of_a_nan_one():
    one_shot = Protocol("1shot", k_shot=1, transductive=False, eval_batch=5, k_eval=50)
    result = {"accuracy": 0.8, "accuracy_ci95": float("nan")}  # ci95 of a single value
    line = describe("test", result, "accuracy", 1, one_shot, named=False, synthetic=False)
    assert line == "test accuracy 80% (1 task, no CI, 1-shot, 50 steps)"
    two = describe("test", {**result, "accuracy_ci95": 0.1}, "accuracy", 2, one_shot, named=False, synthetic=False)
    assert two == "test accuracy 80% (95% CI +-10 points over 2 tasks, 1-shot, 50 steps)"
