"""Every field of an evaluation protocol reaches the evaluation (issue 22): a protocol whose field differs from the
top-level knob scores exactly what a single-protocol run with that value as the top-level knob scores, and the value
changes the score (so an ignored field fails here). The final evaluation runs in-process (report.final_evaluation on
a fresh build: the same phi and the same test tasks), on sine (a continuous MSE) and on random Omniglot-shaped
images (the classification paths: test-time K, eval batch, steps, transduction). A protocol list scores each
protocol so, in the order listed; each protocol's test tasks are sized and chunked by its own fields."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import ROOT
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import reptile_exp.meta.learner as learner_module
from reptile_exp import models, report
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


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=list(overrides))


def final_run(out_dir, *overrides: str):
    """A fresh build (the untrained phi) and {protocol name: {split: result}} of its final evaluation."""
    cfg = compose_cfg(*overrides)
    exp = build(cfg)
    out_dir.mkdir()
    with Tracker(cfg, out_dir, "run", "run") as tracker:
        results = report.final_evaluation(exp, tracker, out_dir, StopSignals())
    return exp, {name: {split: r[split] for split in cfg.eval_splits} | {"settings": r} for name, r in results.items()}


def final_scores(out_dir, *overrides: str) -> dict:
    """{protocol name: {split: result, "settings": its fields}} of final_run."""
    return final_run(out_dir, *overrides)[1]


def scores(protocol: dict) -> dict:
    """A protocol's results without its settings."""
    return {split: result for split, result in protocol.items() if split != "settings"}


@pytest.fixture
def model_batches(monkeypatch) -> list[tuple[int, int]]:
    """(tasks, inputs per task) of every batch the learner puts through the model (models.forward_tasks, still run)."""
    seen = []

    def forward_tasks(model, params, x, conv="grouped"):
        seen.append(tuple(x.shape[:2]))
        return models.forward_tasks(model, params, x, conv)

    monkeypatch.setattr(learner_module, "forward_tasks", forward_tasks)
    return seen


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


@pytest.mark.parametrize("field,base,top,value", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_split_i_is_scored_as_the_periodic_evaluation_with_seed_plus_2_plus_i(tmp_path, field, base, top, value):
    """report.final_evaluation's docstring: split i under seed + 2 + i; the periodic evaluation (evaluate_split,
    train.py) scores the top-level knobs, every one of them, as the final evaluation does."""
    exp, final = final_run(tmp_path / "run", *BASES[base], f"{KNOB.get(field, field)}={str(value).lower()}")
    cfg, tasks = exp.cfg, exp.cfg.eval_tasks
    for i, split in enumerate(cfg.eval_splits):
        assert final["default"][split] == report.evaluate_split(exp, split, tasks, cfg.seed + 2 + i, curve=True)
    if len(cfg.eval_splits) > 1:  # a split scored with another's seed differs, so a shared seed fails here
        last = cfg.eval_splits[-1]
        assert final["default"][last] != report.evaluate_split(exp, last, tasks, cfg.seed + 2, curve=True)


def test_a_protocol_list_scores_each_protocol_as_its_own_single_run_in_the_order_listed(tmp_path):
    """One protocol per field, each changing that field of the top-level knobs, after a plain one: the transductive
    protocol shares the plain one's adaptation, each other needs its own (report.shared_adaptation); every protocol
    scores what a single run with its value scores, and the results keep the listed order."""
    cases = [(field, top, value) for field, base, top, value in CASES if base == "omniglot"]
    tops = [f"{KNOB.get(field, field)}={str(top).lower()}" for field, top, _ in cases]
    listed = ", ".join(f"{{name: {field}, {field}: {str(value).lower()}}}" for field, _, value in cases)
    final = final_scores(tmp_path / "list", *BASES["omniglot"], *tops, f"protocols=[{{name: plain}}, {listed}]")
    assert list(final) == ["plain", *(field for field, *_ in cases)]
    assert scores(final["plain"]) == scores(final_scores(tmp_path / "plain", *BASES["omniglot"], *tops)["default"])
    for field, _, value in cases:
        single = final_scores(
            tmp_path / field, *BASES["omniglot"], *tops, f"{KNOB.get(field, field)}={str(value).lower()}"
        )
        assert scores(final[field]) == scores(single["default"]), field


# a protocol's field that changes a test task's memory estimate (report.eval_task_bytes), and a value that does
SIZED = [("eval_batch", 500), ("k_eval", 2000)]


@pytest.mark.parametrize("field,value", SIZED, ids=[field for field, _ in SIZED])
def test_a_protocol_evaluation_is_chunked_by_its_own_test_task_size(field, value, model_batches):
    """eval_memory_mb holds 2.5 of the protocol's test tasks: chunks of 2, where its top-level knobs give others."""
    exp = build(compose_cfg(*BASES["sine"]))
    protocol = dataclasses.replace(report.top_level(exp), name="p", **{field: value})
    exp.cfg.eval_memory_mb = 2.5 * report.eval_task_bytes(exp, protocol.eval_batch, protocol.k_eval) / 2**20
    assert report.eval_chunk(exp, 6) != 2 == report.eval_chunk(exp, 6, protocol.eval_batch, protocol.k_eval)
    report.evaluate_protocols(exp, "test", 6, 0, [protocol])
    assert {tasks for tasks, _ in model_batches} == {2}


# (base, field, value): the most inputs at once are the inner minibatch, the support set plus a query, or the grid
EXAMPLES = [
    ("omniglot", "eval_batch", 2),
    ("omniglot", "eval_batch", 40),
    ("omniglot", "k_shot", 3),
    ("omniglot", "transductive", True),
    ("sine", "eval_batch", 5),
    ("sine", "eval_batch", 80),
]


@pytest.mark.parametrize("base,field,value", EXAMPLES, ids=[f"{b}-{f}-{v}" for b, f, v in EXAMPLES])
def test_the_inputs_a_test_task_counts_are_the_most_its_evaluation_puts_through_the_model(
    base, field, value, model_batches
):
    """report.eval_examples under a protocol's fields: at least the most inputs one task's evaluation puts through the
    model at once (measured), and no more than that or the task's own examples (its support and a query per class)."""
    exp = build(compose_cfg(*BASES[base]))
    protocol = dataclasses.replace(report.top_level(exp), name="p", **{field: value})
    with report.shots(exp.dataset, protocol.k_shot):
        report.evaluate_protocols(exp, "test", 2, 0, [protocol])
        counted = report.eval_examples(exp, protocol.eval_batch)
        data = exp.dataset
        own = data.n_way * (data.k_shot + 1) if data.kind == "classification" else 0
    most = max(inputs for _, inputs in model_batches)
    assert most <= counted <= max(most, own)
