"""The W&B mode rule (reptile_exp/tracking.py): explicit modes kept; "auto" is online with credentials, offline
without, and WANDB_MODE wins over it. Credentials are read from a real netrc file in tmp_path. Every JSON file a run
writes is strict JSON when a number is not finite, at any depth, and reads back as that number."""

import json
import math

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from test_config import CONF

from reptile_exp.run_results import entries, read_json
from reptile_exp.tracking import MetricsFile, Tracker, choose_mode, has_credentials
from reptile_exp.train import run

MODES = ("online", "offline", "disabled")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("env_mode", [None, *MODES])
@pytest.mark.parametrize("credentials", [False, True])
def test_an_explicit_mode_is_kept(mode, env_mode, credentials):
    assert choose_mode(mode, env_mode, credentials) == mode


@pytest.mark.parametrize("env_mode", [None, "", "dryrun"])
def test_auto_is_online_with_credentials_and_offline_without(env_mode):
    assert choose_mode("auto", env_mode, credentials=True) == "online"
    assert choose_mode("auto", env_mode, credentials=False) == "offline"


@pytest.mark.parametrize("env_mode", MODES)
@pytest.mark.parametrize("credentials", [False, True])
def test_auto_takes_wandb_mode_from_the_environment(env_mode, credentials):
    assert choose_mode("auto", env_mode, credentials) == env_mode


def netrc_file(tmp_path, host: str) -> str:
    path = tmp_path / "netrc"
    path.write_text(f"machine {host}\n  login user\n  password 0123456789abcdef\n")
    return str(path)


def test_credentials_come_from_the_api_key_or_a_netrc_entry_for_the_wandb_host(tmp_path):
    assert has_credentials({"WANDB_API_KEY": "0123456789abcdef", "NETRC": str(tmp_path / "none")})
    assert has_credentials({"NETRC": netrc_file(tmp_path, "api.wandb.ai")})
    local = {"NETRC": netrc_file(tmp_path, "wandb.example.org"), "WANDB_BASE_URL": "https://wandb.example.org/"}
    assert has_credentials(local)


def test_no_credentials_without_key_or_matching_netrc_entry(tmp_path):
    assert not has_credentials({"NETRC": str(tmp_path / "none"), "WANDB_API_KEY": ""})
    assert not has_credentials({"NETRC": netrc_file(tmp_path, "wandb.example.org")})
    (tmp_path / "broken").write_text("machine\n")
    assert not has_credentials({"NETRC": str(tmp_path / "broken")})


def _strict_json(text: str):
    """json.loads refusing NaN and Infinity, which Python writes but JSON has not (jq, JavaScript reject them)."""
    return json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in {text!r}"))


def test_numbers_that_are_not_finite_are_written_as_strings(tmp_path):
    """A diverged loss (nan), an mse that overflowed (inf, -inf): the metrics record and the summary stay valid
    JSON, those values as "nan", "inf", "-inf", every other value as it was."""
    record = {"iteration": 3, "train/loss": float("nan"), "eval/mse": float("inf"), "eval/neg": -float("inf")}
    kept = {"train/eps": 0.5, "tasks": 2, "final": True, "name": "x", "none": None}
    written = {"iteration": 3, "train/loss": "nan", "eval/mse": "inf", "eval/neg": "-inf", **kept}
    metrics = MetricsFile(tmp_path / "metrics.jsonl")
    metrics.append({**record, **kept})
    assert [_strict_json(line) for line in metrics.path.read_text().splitlines()] == [written]
    with Tracker(OmegaConf.create({"logger": {"mode": "disabled"}}), tmp_path, "id", "run") as tracker:
        tracker.summarize({**record, **kept}, tmp_path / "summary.json")
    assert _strict_json((tmp_path / "summary.json").read_text()) == written


NOT_FINITE = {"loss": math.nan, "mse": math.inf, "neg": -math.inf}


def test_what_is_written_reads_back_as_the_numbers(tmp_path):
    """NaN and +-inf at the top, in a nested result and in a list are the same floats once read back (run_results
    .read_json, MetricsFile.read); every other value is as it was."""
    summary = {"objective": math.nan, "results": {"test": {**NOT_FINITE, "curve": [1.0, math.inf]}}, "name": "nan?"}
    with Tracker(OmegaConf.create({"logger": {"mode": "disabled"}}), tmp_path, "id", "run") as tracker:
        tracker.summarize(summary, tmp_path / "summary.json")
        tracker.log({"iteration": 1, **NOT_FINITE})
    read, (record,) = read_json(tmp_path / "summary.json"), tracker.metrics.read()
    assert math.isnan(read["objective"]) and math.isnan(read["results"]["test"]["loss"]) and math.isnan(record["loss"])
    assert read["results"]["test"]["curve"] == [1.0, math.inf] and read["name"] == "nan?"
    assert (read["results"]["test"]["mse"], read["results"]["test"]["neg"]) == (math.inf, -math.inf)
    assert (record["mse"], record["neg"]) == (math.inf, -math.inf)


def test_every_json_file_of_a_run_and_of_its_evaluation_is_strict(tmp_path):
    """One test task (eval_tasks=1) has no 95% interval: the NaN lies deep in summary.json's results and
    evaluation.json's protocols, and is still written as "nan" (json.loads refusing NaN reads every file and line);
    the results read back (run_results.entries) hold it as the float."""
    train, evaluation = tmp_path / "train", tmp_path / "eval"
    smoke = ["experiment=omniglot_5w1s", "debug=smoke", "eval_tasks=1", "eval_every_tasks=1", "eval_splits=[test]"]
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        run(compose("train", overrides=smoke), train)
        run(compose("train", overrides=[*smoke, "evaluate_only=true", f"checkpoint={train}"]), evaluation)
    written = [*tmp_path.glob("*/*.json"), *tmp_path.glob("*/*.jsonl")]
    assert {p.name for p in written} == {"summary.json", "evaluation.json", "metrics.jsonl"}
    for path in written:
        for line in path.read_text().splitlines() if path.suffix == ".jsonl" else [path.read_text()]:
            _strict_json(line)
    assert _strict_json((train / "summary.json").read_text())["results"]["test"]["accuracy_ci95"] == "nan"
    for run_dir in (train, evaluation):
        (found,) = entries(run_dir)
        assert found.tasks == 1 and math.isnan(found.ci95), run_dir
