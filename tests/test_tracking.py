"""The W&B mode rule (reptile_exp/tracking.py): explicit modes kept; "auto" is online with credentials, offline
without, and WANDB_MODE wins over it. Credentials are read from a real netrc file in tmp_path. The metrics file and
the summary stay valid JSON when a number is not finite."""

import json

import pytest
from omegaconf import OmegaConf

from reptile_exp.tracking import MetricsFile, Tracker, choose_mode, has_credentials

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
