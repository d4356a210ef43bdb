"""Every config group option composes; the typed schema rejects wrong types and unknown keys."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from reptile_exp.config import ConfigError, register_schema, validate

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUPS = [
    "dataset",
    "model",
    "algorithm",
    "inner_optimizer",
    "outer_optimizer",
    "logger",
    "paths",
    "debug",
    "experiment",
]
COMPANIONS = {
    ("model", "omniglot_conv"): ["dataset=omniglot"],
    ("model", "miniimagenet_conv"): ["dataset=miniimagenet"],
}
register_schema()


def _options(group):
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def _compose(*overrides):
    with initialize_config_dir(version_base="1.3", config_dir=str(CONF)):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize("group,option", [(g, o) for g in GROUPS for o in _options(g)])
def test_every_group_option_composes_and_resolves(group, option):
    cfg = _compose(f"{group}={option}", *COMPANIONS.get((group, option), []))
    container = OmegaConf.to_container(cfg, resolve=True)
    assert container["dataset"]["_target_"]
    validate(cfg)


def test_outer_lr_is_epsilon():
    cfg = _compose("epsilon=0.37", "outer_optimizer=adam")
    assert cfg.outer_optimizer.lr == 0.37
    assert cfg.outer_optimizer._target_ == "torch.optim.Adam"


@pytest.mark.parametrize(
    "override,key", [("k=abc", "k"), ("epsilon=fast", "epsilon"), ("device=gpu", "device"), ("dtype=float16", "dtype")]
)
def test_schema_rejects_wrong_types_naming_the_key(override, key):
    with pytest.raises(ConfigCompositionException) as info:
        _compose(override)
    assert key in str(info.value) + str(info.value.__cause__)


@pytest.mark.parametrize("override", ["kk=3", "dataset.n_pionts=3"])
def test_unknown_keys_are_rejected(override):
    with pytest.raises(ConfigCompositionException):
        _compose(override)


@pytest.mark.parametrize(
    "override,phrase",
    [
        ("k=0", "k=0"),
        ("epsilon_final=0.5", "epsilon_final=0.5"),
        ("inner_lr=-1", "inner_lr=-1"),
        ("eval_splits=[dev]", "dev"),
    ],
)
def test_validate_names_key_and_value(override, phrase):
    with pytest.raises(ConfigError, match=phrase):
        validate(_compose(override))
