"""Every field of an evaluation protocol reaches the evaluation (issue 22): a protocol whose field differs from the
top-level knob scores exactly what a single-protocol run with that value as the top-level knob scores, and the value
changes the score (so an ignored field fails here). The final evaluation runs in-process (report.final_evaluation on
a fresh build: the same phi and the same test tasks), on sine (a continuous MSE) and on random Omniglot-shaped
images (the classification paths: test-time K, eval batch, steps, transduction)."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reptile_exp import report
from reptile_exp.experiment import build
from reptile_exp.protocols import Protocol
from reptile_exp.signals import StopSignals
from reptile_exp.tracking import Tracker

# untrained phi; on the random images a large inner step (lr 0.1) makes 3 and 6 steps classify differently
BASES = {
    "sine": ["experiment=sine_reptile", "debug=smoke", "eval_tasks=6"],
    "omniglot": [
        "experiment=omniglot_5w1s",
        "debug=smoke",
        "eval_tasks=10",
        "eval_splits=[train,test]",
        "inner_lr=0.1",
    ],
}
FIELDS = [f.name for f in dataclasses.fields(Protocol) if f.name != "name"]
KNOB = {"k_shot": "dataset.k_shot"}  # the top-level knob a field defaults to, where it is not the field's name
# (field, base, top-level value, the protocol's value)
CASES = [
    ("k_shot", "sine", 10, 5),
    ("eval_batch", "sine", 10, 4),
    ("k_eval", "sine", 3, 5),
    ("k_shot", "omniglot", 1, 5),
    ("eval_batch", "omniglot", 5, 3),
    ("k_eval", "omniglot", 3, 6),
    ("transductive", "omniglot", False, True),
]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest.one_thread


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))


def final_scores(out_dir, *overrides: str) -> dict:
    """{protocol name: {split: result}} of the final evaluation of a fresh build (the untrained phi)."""
    cfg = compose_cfg(*overrides)
    exp = build(cfg)
    out_dir.mkdir()
    with Tracker(cfg, out_dir, "run", "run") as tracker:
        results = report.final_evaluation(exp, tracker, out_dir, StopSignals())
    return {name: {split: r[split] for split in cfg.eval_splits} | {"settings": r} for name, r in results.items()}


def test_every_protocol_field_is_tried_and_defaults_to_a_top_level_knob():
    assert sorted({field for field, *_ in CASES}) == sorted(FIELDS)
    for base in BASES.values():
        cfg = compose_cfg(*base)
        assert all(OmegaConf.select(cfg, KNOB.get(field, field)) is not None for field in FIELDS)


@pytest.mark.parametrize("field,base,top,value", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_a_protocol_field_scores_as_a_single_run_with_that_top_level_value(tmp_path, field, base, top, value):
    knob = KNOB.get(field, field)
    entry = f"protocols=[{{name: p, {field}: {str(value).lower()}}}]"
    protocol = final_scores(tmp_path / "protocol", *BASES[base], f"{knob}={top}", entry)["p"]
    single = final_scores(tmp_path / "single", *BASES[base], f"{knob}={value}")["default"]
    plain = final_scores(tmp_path / "plain", *BASES[base], f"{knob}={top}")["default"]
    splits = [split for split in single if split != "settings"]
    assert protocol["settings"][field] == value == single["settings"][field]
    assert {s: protocol[s] for s in splits} == {s: single[s] for s in splits}
    assert {s: plain[s] for s in splits} != {s: single[s] for s in splits}  # the value matters: an ignored field fails
