"""`python -m reptile_exp.train --help` is the project's own help (conf/hydra/default.yaml, issue 22), and what it
says is true: the options it lists are the config groups' files, the defaults it quotes are the config's, and its
example commands compose."""

import re
import subprocess
import sys

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reptile_exp.config import register_schema
from reptile_exp.config_checks import validate

register_schema()  # the schema conf/train.yaml's defaults list names first


@pytest.fixture(scope="module")
def help_text() -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "reptile_exp.train", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _section(text: str, title: str) -> str:
    """The lines under the heading `== title ... ==`."""
    return text.split(f"== {title}", 1)[1].split("\n", 1)[1].split("\n== ", 1)[0]


def test_help_is_the_projects_and_hides_internal_groups(help_text):
    assert help_text.startswith("reptile_exp: Reptile")
    assert "powered by Hydra" not in help_text and "for_dataset" not in help_text
    for title in ("Choose", "Main knobs", "Examples", "Results"):
        assert f"== {title}" in help_text


def test_the_options_listed_are_the_groups_files(help_text):
    listed = re.findall(r"(\w+)\s{2,}(\w+(?: \| \w+)+)", _section(help_text, "Choose"))
    assert {group for group, _ in listed} >= {"dataset", "algorithm", "inner_optimizer", "outer_optimizer", "model"}
    for group, options in listed:
        files = {p.stem for p in (ROOT / "conf" / group).glob("*.yaml")}
        assert set(options.split(" | ")) == files, group


def test_the_defaults_quoted_are_the_configs(help_text):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = OmegaConf.to_container(compose("train"), enum_to_str=True)
    quoted = re.findall(r"\b(\w+)=([\w.]+)\b", _section(help_text, "Main knobs"))
    assert len(quoted) >= 12
    for key, value in quoted:
        assert str(cfg[key]).lower() == value.lower(), key


def test_the_examples_compose_and_pass_the_checks(help_text):
    examples = [line.split("#")[0].split()[3:] for line in _section(help_text, "Examples").splitlines() if line]
    assert len(examples) == 3
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        for overrides in examples:
            overrides = [o for o in overrides if o != "-m"]
            if any("," in o for o in overrides):  # a sweep: each of its first values
                overrides = [o.split(",")[0] for o in overrides]
            validate(compose("train", overrides=overrides))  # the checks a run makes before any work
