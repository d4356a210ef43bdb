"""Knobs checked where they reach the training loop (issue 13): inner_optimizer.reset through the real training step,
and the periodic evaluation's split through a real in-process run."""

import json

import pytest
import torch
from conftest import ROOT, final_phi
from hydra import compose, initialize_config_dir

from reptile_exp.experiment import build
from reptile_exp.report import evaluate_split
from reptile_exp.train import outer_step, run

BASE = ["logger.mode=disabled", "progress=false", "device=cpu"]


def _cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=[*BASE, *overrides])


def test_inner_adam_reset_starts_every_outer_step_and_test_task_from_a_fresh_state():
    """reset=true equals reset=false with the carried state replaced by a fresh one before every outer step and
    evaluation; reset=false (the paper's) carries the state, which changes both."""
    adam = ["inner_optimizer=adam", "dtype=float64", "meta_batch=3"]
    reset, carried, refreshed = (build(_cfg(*adam, f"inner_optimizer.reset={r}")) for r in ("true", "false", "false"))
    assert reset.learner.inner_optimizer.reset and not carried.learner.inner_optimizer.reset
    fresh = refreshed.learner.inner_optimizer.init
    for _ in range(3):
        refreshed.inner_state = fresh({n: p.detach() for n, p in refreshed.phi.items()})
        for exp in (reset, carried, refreshed):
            outer_step(exp)
    assert (reset.inner_state["step"], carried.inner_state["step"]) == (5, 15)  # k = 5 steps from fresh, or carried
    for n, p in reset.phi.items():
        torch.testing.assert_close(p, refreshed.phi[n], rtol=0, atol=1e-12)
    assert max((p - carried.phi[n]).abs().max().item() for n, p in reset.phi.items()) > 1e-4
    refreshed.inner_state = fresh({n: p.detach() for n, p in refreshed.phi.items()})
    results = [evaluate_split(exp, "test", 8, seed=0) for exp in (reset, refreshed)]
    assert results[0]["mse"] == pytest.approx(results[1]["mse"], rel=1e-12)
    refreshed.inner_state = carried.inner_state  # the same phi, the carried state: another result
    assert evaluate_split(refreshed, "test", 8, seed=0)["mse"] != pytest.approx(results[0]["mse"], rel=1e-6)


@pytest.mark.parametrize(
    ("overrides", "split", "metric"),
    [
        (
            [
                "experiment=omniglot_5w1s",
                "synthetic_data=true",
                "dataset.val_characters=50",
                "meta_batch=2",
                "k=2",
                "k_eval=2",
            ],
            "val",
            "accuracy",
        ),
        (["experiment=sine_reptile"], "test", "mse"),
    ],
    ids=["with-val", "without-val"],
)
def test_the_periodic_evaluation_monitors_val_where_the_dataset_has_one(tmp_path, overrides, split, metric):
    """Omniglot with val_characters (synthetic: train/val/test) logs eval/val_*, sine (no val split) eval/test_*;
    the logged value is an evaluation of that split with the run's phi at that iteration, not another split's under
    a new name."""
    cfg = _cfg(*overrides, "iterations=2", "eval_every=2", "eval_every_tasks=20", "eval_tasks=2", "checkpoint_every=2")
    run(cfg, tmp_path)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert [r["iteration"] for r in logged] == [2]
    assert {k for k in logged[0] if k.startswith("eval/")} == {f"eval/{split}_{metric}", f"eval/{split}_{metric}_ci95"}
    exp = build(cfg)
    exp.learner.model.load_state_dict(final_phi(tmp_path))
    exp.inner_state = torch.load(sorted((tmp_path / "checkpoints").glob("*.pt"))[-1], weights_only=True)["inner_state"]
    expected = evaluate_split(exp, split, 20, cfg.seed + 1)
    assert logged[0] == pytest.approx({"iteration": 2, **{f"eval/{split}_{k}": v for k, v in expected.items()}})
    if split == "val":
        assert evaluate_split(exp, "test", 20, cfg.seed + 1) != expected  # the two splits tell apart
