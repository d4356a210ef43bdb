"""Knobs checked where they reach the loop, in-process through train.run on the sine task: the eps schedule
(logged train/eps, also across a resume), keep_checkpoints, and evaluate_only (which weights it evaluates,
which checkpoints it refuses)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from reptile_exp import report
from reptile_exp.checkpoint import CheckpointError
from reptile_exp.experiment import build
from reptile_exp.train import outer_step, run

QUIET = ["logger.mode=disabled", "progress=false", "device=cpu", "eval_every=0", "eval_tasks=4", "k_eval=2"]
# eps anneals from 0.5 to 0.1 over 10 iterations; checkpoints at 2, 4, ..., 10 of which 3 are kept
SCHEDULE = ["iterations=10", "epsilon=0.5", "epsilon_final=0.1", "log_every=1", "checkpoint_every=2"]


def compose_cfg(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=[*QUIET, *overrides])


def checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


def logged_eps(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["iteration"]: r["train/eps"] for r in records if "train/eps" in r}


def scheduled(i: int, eps_0: float = 0.5, eps_final: float = 0.1, iterations: int = 10) -> float:
    """REFERENCE.md section 2: eps_i = (i/M) eps_final + (1 - i/M) eps_0 at outer iteration i = 0..M-1."""
    return (i / iterations) * eps_final + (1 - i / iterations) * eps_0


def test_eps_follows_the_linear_schedule_in_the_loop_and_across_a_resume(tmp_path):
    """The step that ends iteration n is outer iteration i = n - 1: train/eps logged at n is eps_(n-1). The
    resume starts from the checkpoint of iteration 6 (the later ones deleted, as if killed right after it)."""
    cfg = compose_cfg(*SCHEDULE, "keep_checkpoints=5")
    run_dir = tmp_path / "run"
    run(cfg, run_dir)
    eps = logged_eps(run_dir)
    assert sorted(eps) == list(range(1, 11))
    for n in (1, 5, 6, 10):  # first, middle, last
        assert eps[n] == pytest.approx(scheduled(n - 1), rel=1e-12)
    assert eps[1] == 0.5 and eps[10] == pytest.approx(0.9 * 0.1 + 0.1 * 0.5)
    final = torch.load(run_dir / "checkpoints" / "ckpt-00000010.pt", weights_only=True)
    assert final["outer_optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.1)  # eps_M = eps_final

    for name in ("ckpt-00000008.pt", "ckpt-00000010.pt", "summary.json"):
        (run_dir / ("checkpoints" if name.startswith("ckpt") else "") / name).unlink()
    run(cfg, run_dir)
    resumed = logged_eps(run_dir)
    assert sorted(resumed) == list(range(1, 11)) and all(resumed[n] == eps[n] for n in range(1, 7))
    for n in (7, 8, 10):  # logged by the resumed run
        assert resumed[n] == pytest.approx(scheduled(n - 1), rel=1e-12)
    again = torch.load(run_dir / "checkpoints" / "ckpt-00000010.pt", weights_only=True)
    assert all(torch.equal(again["phi"][k], final["phi"][k]) for k in final["phi"])


def test_keep_checkpoints_keeps_exactly_the_newest(tmp_path):
    run(compose_cfg(*SCHEDULE, "keep_checkpoints=3"), tmp_path / "run")  # writes 5 checkpoints
    assert checkpoints(tmp_path / "run") == ["ckpt-00000006.pt", "ckpt-00000008.pt", "ckpt-00000010.pt"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """The newest checkpoint of a 20-iteration run with its own training schedule (eps, k, meta-batch)."""
    run_dir = tmp_path_factory.mktemp("trained")
    run(compose_cfg("iterations=20", "epsilon=0.5", "k=3", "meta_batch=2", "checkpoint_every=20"), run_dir)
    return run_dir / "checkpoints" / "ckpt-00000020.pt"


EVAL = ["evaluate_only=true", "eval_tasks=6", "k_eval=4"]  # the default schedule: iterations=30000, eps=0.1, k=5


def evaluated(cfg, phi: dict) -> dict:
    """The final evaluation's test result, computed here: a fresh build with phi loaded."""
    exp = build(cfg)
    exp.learner.model.load_state_dict(phi)
    result = report.evaluate_split(exp, "test", cfg.eval_tasks, cfg.seed + 2, curve=True)
    return json.loads(json.dumps(result))


def initial_phi() -> dict:
    """The phi a training run with the same seed starts from."""
    return build(compose_cfg()).learner.model.state_dict()


def test_evaluate_only_evaluates_the_checkpoints_phi(trained, tmp_path):
    """A checkpoint of another training schedule is accepted; its phi is what gets evaluated."""
    before = trained.read_bytes()
    cfg = compose_cfg(*EVAL, f"checkpoint={trained}")
    run(cfg, tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["iterations"] == 20 and result["checkpoint"] == str(trained)
    assert len(result["results"]["test"]["mse_curve"]) == 5
    assert result["results"]["test"] == evaluated(cfg, torch.load(trained, weights_only=True)["phi"])
    assert result["results"]["test"]["mse"] != evaluated(cfg, initial_phi())["mse"]  # so the line above can fail
    assert trained.read_bytes() == before and not (tmp_path / "eval" / "checkpoints").exists()
    run(cfg, tmp_path / "eval")  # the same evaluation again in its own dir: not a training dir, allowed
    assert json.loads((tmp_path / "eval" / "evaluation.json").read_text())["results"] == result["results"]


def test_evaluate_only_init_evaluates_the_untrained_initialisation(trained, tmp_path):
    cfg = compose_cfg(*EVAL, "checkpoint=init")
    run(cfg, tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["iterations"] == 0 and result["checkpoint"] is None
    assert result["results"]["test"] == evaluated(cfg, initial_phi())
    assert result["results"]["test"] != evaluated(cfg, torch.load(trained, weights_only=True)["phi"])


def test_evaluate_only_refuses_a_checkpoint_of_another_model(trained, tmp_path):
    cfg = compose_cfg(*EVAL, f"checkpoint={trained}", "model.hidden=[32,32]")
    with pytest.raises(CheckpointError, match=r"model\.hidden: this run has \[32, 32\], the checkpoint has \[64, 64\]"):
        run(cfg, tmp_path / "eval")
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_evaluate_only_with_another_inner_optimizer_starts_its_state_fresh(trained, tmp_path):
    """The checkpoint trained with inner SGD (no state), evaluated with inner Adam: Adam's own fresh state, the same
    result as a fresh build with the checkpoint's phi (it raised KeyError: 'step')."""
    cfg = compose_cfg(*EVAL, f"checkpoint={trained}", "inner_optimizer=adam")
    run(cfg, tmp_path / "eval")
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert result["results"]["test"] == evaluated(cfg, torch.load(trained, weights_only=True)["phi"])


def test_each_outer_step_moves_phi_by_its_own_iterations_eps():
    """phi <- phi - eps_i * g at iteration i with eps_i the schedule's at i (eps 1 -> 0 over 4: 1, 0.75, 0.5, 0.25):
    the first update replaces phi by the tasks' mean weights (REFERENCE.md section 2). The meta-gradient is a fixed g;
    the outer optimizer and its schedule are the run's own."""
    exp = build(compose_cfg("iterations=4", "epsilon=1.0", "epsilon_final=0.0", "outer_optimizer=sgd"))
    g = {n: torch.full_like(p, 0.5) for n, p in exp.phi.items()}
    exp.algorithm.meta_gradient = lambda learner, phi, tasks, state: (g, state, torch.zeros(1, 1))
    for i in range(4):
        before = {n: p.detach().clone() for n, p in exp.phi.items()}
        outer_step(exp)
        for n, p in exp.phi.items():
            torch.testing.assert_close(p.detach(), before[n] - (1 - i / 4) * g[n], rtol=0, atol=1e-7)
