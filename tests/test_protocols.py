"""Evaluation protocols (issue 14): one training reports every protocol, each equal to a single-row evaluation;
bad protocol entries fail with one line naming the entry."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
import yaml
from conftest import run_train
from hydra import compose, initialize_config_dir

from reptile_exp import protocols, report
from reptile_exp.config import register_schema
from reptile_exp.data.sine import Sine
from reptile_exp.errors import ConfigError, Diverged
from reptile_exp.experiment import build_dataset

CONF = Path(__file__).resolve().parents[1] / "conf"
register_schema()


def _compose(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=list(overrides))


def test_one_training_reports_every_protocol_and_each_equals_its_single_row_evaluation(tmp_path):
    train = tmp_path / "train"
    out = run_train(tmp_path, "experiment=paper_omniglot_5w", "debug=smoke", f"hydra.run.dir={train}")
    summary = json.loads((train / "summary.json").read_text())
    names = ["1shot", "1shot_transductive", "5shot", "5shot_transductive"]
    assert list(summary["protocols"]) == names
    # the console: one line per protocol, saying what it is and that random images give no result
    for name in names:
        result = summary["protocols"][name]["test"]
        line = (
            f"{name}: test accuracy {100 * result['accuracy']:.4g}% (95% CI +-{100 * result['accuracy_ci95']:.2g} "
            f"points over 4 tasks, {name[0]}-shot, 3 steps{', transductive' if 'trans' in name else ''}) "
            "[synthetic random images: not a result]"
        )
        assert line in out.stderr
    assert summary["results"] == {"test": summary["protocols"]["1shot"]["test"]}
    assert summary["objective"] == summary["protocols"]["1shot"]["test"]["accuracy"]
    logged = {k for line in (train / "metrics.jsonl").read_text().splitlines() for k in json.loads(line)}
    assert {f"final/{n}/test_accuracy" for n in names} <= logged

    # the single-row presets, evaluate-only on the same checkpoint and seed: one multirun, four jobs
    sweep = tmp_path / "single"
    run_train(
        tmp_path,
        "experiment=omniglot_5w1s,omniglot_5w5s",
        "transductive=false,true",
        "debug=smoke",
        "eval_splits=[test]",
        "evaluate_only=true",
        f"checkpoint={train}",
        f"hydra.sweep.dir={sweep}",
        multirun=True,
    )
    with open(sweep / "sweep_summary.csv") as f:  # evaluate-only jobs (evaluation.json) are finished jobs
        assert [row["status"] for row in csv.DictReader(f)] == ["finished"] * 4
    evaluations = {}
    for job in sorted(sweep.glob("*/evaluation.json")):
        cfg = yaml.safe_load((job.parent / "config.yaml").read_text())
        name = protocols.default_name(cfg["dataset"]["k_shot"], cfg["transductive"])
        evaluations[name] = json.loads(job.read_text())["results"]["test"]
    assert sorted(evaluations) == sorted(names)
    for name in names:
        protocol = summary["protocols"][name]
        assert protocol["test"] == evaluations[name], name
        assert protocol["k_shot"] == (1 if name.startswith("1") else 5)
        assert protocol["transductive"] == name.endswith("transductive")


def test_evaluate_only_accepts_the_protocol_list(tmp_path):
    train, evaluation = tmp_path / "train", tmp_path / "eval"
    common = ["experiment=sine_reptile", "debug=smoke", "protocols=[{name: a, k_eval: 2}, {name: b, k_shot: 5}]"]
    run_train(tmp_path, *common, f"hydra.run.dir={train}")
    run_train(tmp_path, *common, "evaluate_only=true", f"checkpoint={train}", f"hydra.run.dir={evaluation}")
    trained = json.loads((train / "summary.json").read_text())["protocols"]
    evaluated = json.loads((evaluation / "evaluation.json").read_text())["protocols"]
    assert list(evaluated) == ["a", "b"]
    without_time = lambda ps: {n: {k: v for k, v in p.items() if k != "seconds"} for n, p in ps.items()}  # noqa: E731
    assert without_time(evaluated) == without_time(trained)
    assert len(evaluated["a"]["test"]["mse_curve"]) == 3 and evaluated["b"]["k_shot"] == 5


def test_no_protocols_is_one_protocol_of_the_top_level_knobs():
    cfg = _compose("experiment=omniglot_5w5s", "transductive=true")
    assert protocols.parse(cfg) == [protocols.Protocol("default", 5, True, 5, 50)]


@pytest.mark.parametrize(
    "entries,phrase",
    [
        ("[{name: a, shots: 1}]", "protocols[0].shots is not a protocol field"),
        ("[{name: a, k_shot: 0}]", "protocols[0].k_shot=0 is invalid"),
        ("[{name: a, k_shot: abc}]", "protocols[0].k_shot='abc' is invalid"),
        ("[{name: a, k_shot: true}]", "protocols[0].k_shot=True is invalid: must be an integer >= 1"),
        ("[{name: a, eval_batch: 1.5}]", "protocols[0].eval_batch=1.5 is invalid"),
        ("[{name: a, eval_batch: true}]", "protocols[0].eval_batch=True is invalid: must be an integer >= 1"),
        ("[{name: a, k_eval: false}]", "protocols[0].k_eval=False is invalid: must be an integer >= 0"),
        ("[{name: a, k_eval: -1}]", "protocols[0].k_eval=-1 is invalid"),
        ("[{name: a, transductive: maybe}]", "protocols[0].transductive='maybe' is invalid"),
        ("[{name: a}, {name: a, k_shot: 5}]", "protocols[1].name='a' is invalid"),
        ("[{k_shot: 1}, {k_shot: 1, eval_batch: 10}]", "protocols[1].name='1shot' is invalid"),
        ("[{name: 'a b'}]", "protocols[0].name='a b' is invalid"),
        ("[5]", "protocols[0]=5 is invalid"),
    ],
)
def test_bad_protocol_entries_give_one_line(entries, phrase):
    cfg = _compose("experiment=omniglot_5w1s", f"protocols={entries}")
    with pytest.raises(ConfigError) as e:
        protocols.parse(cfg)
    assert str(e.value).startswith(phrase) and "\n" not in str(e.value)


def test_protocols_share_an_adaptation_only_when_they_differ_in_transduction_alone():
    """report.shared_adaptation: every other field changes the adaptation, so it separates the protocols."""
    first = protocols.Protocol("a", 1, False, 5, 3)
    for field in dataclasses.fields(protocols.Protocol)[1:]:
        value = getattr(first, field.name)
        other = dataclasses.replace(
            first, name="b", **{field.name: not value if isinstance(value, bool) else value + 1}
        )
        shared = field.name == "transductive"
        assert report.shared_adaptation([first, other]) == ([[first, other]] if shared else [[first], [other]])


def test_a_protocol_k_shot_holds_while_it_is_evaluated_and_the_dataset_k_shot_comes_back():
    """report.shots, also when the evaluation raises (a diverged protocol)."""
    dataset = Sine()
    k_shot = dataset.k_shot
    with report.shots(dataset, k_shot + 3):
        assert dataset.k_shot == k_shot + 3
    assert dataset.k_shot == k_shot
    with pytest.raises(Diverged), report.shots(dataset, k_shot + 3):
        raise Diverged("the evaluation diverged")
    assert dataset.k_shot == k_shot


def test_protocols_that_cannot_be_evaluated_give_one_line():
    with pytest.raises(ConfigError, match=r"^protocols\[0\]\.transductive=True is invalid: regression"):
        protocols.parse(_compose("protocols=[{transductive: true}]"))
    with pytest.raises(ConfigError, match=r"^protocols\[1\]\.k_shot=51 is invalid: must be <= dataset.n_points=50"):
        protocols.parse(_compose("protocols=[{k_shot: 50}, {k_shot: 51}]"))
    cfg = _compose("experiment=omniglot_5w1s", "synthetic_data=true", "protocols=[{k_shot: 19}, {k_shot: 20}]")
    dataset = build_dataset(cfg)  # synthetic Omniglot: at most the real data's 20 examples per class
    protocols.parse(cfg)  # the examples per class are only known from the data
    with pytest.raises(ConfigError, match=r"^protocols\[1\]\.k_shot=20 is invalid: the 'train' split has 20 examples"):
        protocols.parse(cfg, dataset)


def test_only_the_evaluated_splits_must_hold_n_way_classes():
    """Mini-ImageNet's val split has 16 classes, test 20: 18-way tasks are refused where val is evaluated (in
    eval_splits, or by the periodic evaluations, which score val) and accepted where only test is (it was refused
    whatever was evaluated)."""
    base = ["experiment=miniimagenet_5w1s", "synthetic_data=true", "dataset.n_way=18", "model.n_way=18"]
    cfg = _compose(*base, "eval_splits=[test]", "eval_every=0")
    dataset = build_dataset(cfg)
    assert [p.name for p in protocols.parse(cfg, dataset)] == ["default"]
    for given in (["eval_splits=[val,test]", "eval_every=0"], ["eval_splits=[test]", "eval_every=100"]):
        with pytest.raises(ConfigError, match=r"^dataset.n_way=18 exceeds the 16 classes of the 'val' split"):
            protocols.parse(_compose(*base, *given), dataset)
    assert protocols.parse(_compose(*base, "eval_splits=[test]", "evaluate_only=true"), dataset)  # no periodic ones


def test_a_bad_protocol_on_the_command_line_is_one_line_and_exit_1(tmp_path):
    out = run_train(tmp_path, "debug=smoke", "protocols=[{k_eval: -1}]", f"hydra.run.dir={tmp_path / 'r'}", check=False)
    assert out.returncode == 1
    errors = [line for line in out.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "protocols[0].k_eval=-1 is invalid" in errors[0], out.stderr
    assert "Traceback" not in out.stderr
