"""scripts/paper_table.py (issue 14): the paper's Tables 1 and 2 rendered from run, evaluation and sweep dirs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, run_train, script

from reptile_exp import paper
from reptile_exp.evaluate import ci95

SCRIPT = ROOT / "scripts" / "paper_table.py"


def _render(*args: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


def test_tables_from_a_seed_sweep_a_training_run_and_a_legacy_evaluation(tmp_path):
    sweep, train20, eval20, out = tmp_path / "sweep", tmp_path / "train20", tmp_path / "eval20", tmp_path / "table"
    run_train(
        tmp_path,
        "experiment=paper_omniglot_5w",
        "debug=smoke",
        "seed=0,1",
        "eval_tasks=8",
        f"hydra.sweep.dir={sweep}",
        multirun=True,
    )
    run_train(tmp_path, "experiment=omniglot_20w1s", "debug=smoke", "eval_splits=[test]", f"hydra.run.dir={train20}")
    run_train(
        tmp_path,
        "experiment=omniglot_20w5s",
        "debug=smoke",
        "eval_splits=[test]",
        "transductive=true",
        "evaluate_only=true",
        f"checkpoint={train20}",
        "precision=bf16",  # emulated on a CPU without bfloat16 instructions: slower, still bfloat16
        f"hydra.run.dir={eval20}",
    )
    # an evaluation written before protocols existed: no "protocols" entry, the protocol is config.yaml's knobs
    legacy = json.loads((eval20 / "evaluation.json").read_text())
    del legacy["protocols"]
    (eval20 / "evaluation.json").write_text(json.dumps(legacy))

    proc = _render(sweep, train20, eval20, "--out", out)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader((out / "paper_tables.csv").open()))
    assert len(rows) == sum(len(paper.columns(t)) for t in paper.TITLES) * len(paper.ROWS) == 24
    cell = {(r["table"], r["setting"], r["method"]): r for r in rows}

    # the sweep: each 5-way cell pools the two seeds' test tasks
    jobs = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/summary.json"))]
    assert len(jobs) == 2
    for shot, method, protocol in [
        (1, "Reptile", "1shot"),
        (1, "Reptile + transduction", "1shot_transductive"),
        (5, "Reptile", "5shot"),
        (5, "Reptile + transduction", "5shot_transductive"),
    ]:
        r = cell[(paper.TABLE1, f"{shot}-shot 5-way", method)]
        accuracies = [100 * j["protocols"][protocol]["test"]["accuracy"] for j in jobs]
        assert r["runs"] == "2" and r["seeds"] == "0 1" and r["tasks"] == "16"
        assert math.isclose(float(r["ours_mean"]), sum(accuracies) / 2, abs_tol=1e-3)
        reported = paper.RESULTS[(paper.TABLE1, method)][0 if shot == 1 else 1][0]
        assert math.isclose(float(r["difference"]), float(r["ours_mean"]) - reported, abs_tol=1e-3)
        assert r["schedule"] == "6 iterations (shortened: the paper's is 100,000)"
        assert "k_eval 3 (paper 50)" in r["differs"] and "synthetic data" in r["differs"]

    # the 20-way training run (1-shot) and the legacy evaluation of its checkpoint (5-shot, transductive)
    one = cell[(paper.TABLE1, "1-shot 20-way", "Reptile")]
    assert float(one["ours_mean"]) == round(100 * json.loads((train20 / "summary.json").read_text())["objective"], 4)
    five = cell[(paper.TABLE1, "5-shot 20-way", "Reptile + transduction")]
    assert float(five["ours_mean"]) == round(100 * legacy["results"]["test"]["accuracy"], 4)
    assert five["schedule"] == "6 iterations (shortened: the paper's is 200,000)"
    assert five["source"] == str(eval20) and "eval " in five["wall_time"]
    # arithmetic other than the paper's float32 is named; the float32 rows say nothing of it
    assert "precision: training highest, evaluation bf16" in five["differs"]
    assert (
        "precision" not in one["differs"]
        and "precision" not in cell[(paper.TABLE1, "1-shot 5-way", "Reptile")]["differs"]
    )
    assert not five["wall_time"].startswith("train unknown")  # the training time comes from the checkpoint's run dir

    # rows not run say so, in the user's terms (what the run dirs given lack), not the developers' machines'
    not_run = "not run: none of the run dirs given holds this omniglot row"
    assert cell[(paper.TABLE1, "1-shot 20-way", "Reptile + transduction")]["status"] == not_run
    assert cell[(paper.TABLE1, "1-shot 5-way", "MAML + transduction")]["status"] == not_run
    assert all(
        r["status"] == "not run: none of the run dirs given holds this miniimagenet row"
        for r in rows
        if r["table"] == "Table 2"
    )
    md = (out / "paper_tables.md").read_text()
    table1, table2 = md.split("## Table 2: Mini-ImageNet 5-way")
    assert "## Table 1: Omniglot" in table1 and table1.count("| 1-shot 5-way | Reptile | ") == 1
    assert "| 5-shot 5-way | MAML + transduction | not run: none of the run dirs given" in table2


def test_pooled_interval_equals_the_interval_over_all_tasks():
    table = script("paper_table")
    g = torch.Generator().manual_seed(0)
    per_task = [(torch.rand(n, generator=g) < p).double() for n, p in ((50, 0.6), (80, 0.8), (30, 0.7))]
    found = [
        table.Entry(**{f: None for f in table.Entry.__dataclass_fields__})
        for _ in per_task  # only the counts, means and intervals matter here
    ]
    for entry, values in zip(found, per_task):
        entry.tasks, entry.accuracy, entry.ci95 = values.numel(), values.mean().item(), ci95(values)
    mean, ci, n = table.pooled(found)
    everything = torch.cat(per_task)
    assert n == 160 and math.isclose(mean, everything.mean().item()) and math.isclose(ci, ci95(everything))


def test_a_dir_without_results_is_one_line_and_exit_1(tmp_path):
    proc = _render(tmp_path)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "holds no results" in proc.stderr


def test_an_out_that_cannot_be_written_is_refused_before_reading_the_runs(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{")  # not read: the refusal comes first
    (tmp_path / "file").write_text("")
    proc = _render(run, "--out", tmp_path / "file" / "out")
    assert proc.returncode == 2, proc.stderr
    assert f"--out {tmp_path / 'file' / 'out'}: cannot create or write it (Not a directory)" in proc.stderr


@pytest.mark.parametrize(
    "text,words",
    [('{"iterations": 6', "is not valid JSON"), ("[1]", "is not a run's results"), ("{}", "lacks results")],
)
def test_a_damaged_summary_is_one_line_and_exit_1(tmp_path, text, words):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(text)  # cut short, or not a run's summary
    proc = _render(run)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert proc.stderr.startswith(f"error: {run / 'summary.json'} {words}"), proc.stderr
