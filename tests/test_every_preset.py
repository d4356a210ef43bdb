"""Every experiment preset under debug=smoke, as one real Hydra multirun from the command line that every check
here shares (a module fixture; pytest-xdist's --dist loadfile keeps this file on one worker): each preset finishes
its smoke run, and scripts/study.py turns the study presets' jobs into a table and a figure."""

import csv
import json
import shutil

import pytest
from conftest import ROOT, run_train
from test_studies import STUDY_PRESETS, study

from reptile_exp.sweep import job_dirs, overrides

PRESETS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))


@pytest.fixture(scope="module")
def smoke_jobs(tmp_path_factory) -> dict:
    """{preset: job dir} of `python -m reptile_exp.train -m 'experiment=glob(*)' debug=smoke` (README's command)."""
    tmp = tmp_path_factory.mktemp("presets")
    sweep = tmp / "sweep"
    out = run_train(tmp, "experiment=glob(*)", "debug=smoke", f"hydra.sweep.dir={sweep}", multirun=True, timeout=1800)
    jobs = {overrides(job)["experiment"]: job for job in job_dirs(sweep)}
    assert sorted(jobs) == PRESETS, out.stdout + out.stderr
    return jobs


def test_every_preset_runs_in_smoke_mode(smoke_jobs):
    for preset, job in smoke_jobs.items():
        assert json.loads((job / "summary.json").read_text())["iterations"] == 6, preset


def test_study_presets_become_a_learning_curve_table_and_figure(smoke_jobs, tmp_path, capsys):
    """The study presets' jobs, copied into a sweep dir of their own, one of them unfinished."""
    sweep = tmp_path / "studies"
    for preset in STUDY_PRESETS:
        shutil.copytree(smoke_jobs[preset], sweep / smoke_jobs[preset].name, ignore=shutil.ignore_patterns("*.pt"))
    first = job_dirs(sweep)[0]
    (first / "summary.json").unlink()  # a failed or unfinished job is reported, not fatal
    out = study(capsys, str(sweep), "--plot", "learning", "--out", str(tmp_path / "fig" / "learning.png"))
    assert f"job dirs {first.name} (unfinished); skipped" in out
    with open(tmp_path / "fig" / "learning.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(STUDY_PRESETS) - 1 and {"g1+g2", "g4", "(g1+g2+g3)/3"} <= {r["label"] for r in table}
    assert (tmp_path / "fig" / "learning.png").stat().st_size > 0
    assert "| run | algorithm | k | final metric |" in (tmp_path / "fig" / "learning.md").read_text()
