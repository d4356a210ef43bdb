"""What a checkpoint carries across devices (issue 11, defects 1, 3 and 7), on a CPU machine.

No GPU exists here: a CUDA task generator's state is stood in for by its 16-byte Philox layout, and a GPU
node by patching torch.cuda's queries. The runs themselves are real (sine, built from the real config).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd
from hydra import compose, initialize_config_dir
from test_faults import _kill_when, _logged

from reptile_exp import checkpoint as ckpt
from reptile_exp.experiment import CUBLAS_WORKSPACE, build
from reptile_exp.train import outer_step

SINE = ["logger.mode=disabled", "progress=false", "device=cpu", "meta_batch=2", "model.hidden=[8,8]"]


def _experiment(*overrides: str):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return build(compose("train", overrides=[*SINE, *overrides]))


def _phi(exp) -> dict:
    return {n: p.detach().clone() for n, p in exp.phi.items()}


@pytest.fixture
def trained(tmp_path):
    """A checkpoint after 2 outer iterations, saved and loaded as files, and the experiment that wrote it."""
    exp = _experiment()
    for _ in range(2):
        outer_step(exp)
    path = ckpt.Checkpointer(tmp_path).save(exp.state_dict("run", finished=False), exp.iteration)
    return exp, ckpt.load(path)


def test_a_cpu_run_saves_only_the_task_generator_and_never_touches_cuda(monkeypatch, tmp_path):
    """On a GPU node torch.cuda.is_available() is true; a device=cpu run must still not ask CUDA for anything
    (that would initialise it). No GPU exists here: the node is stood in for by patched queries."""
    exp = _experiment()
    outer_step(exp)
    touched = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: touched.append("is_available") or True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: touched.append("get_rng_state_all") or [])
    state = ckpt.load(ckpt.Checkpointer(tmp_path).save(exp.state_dict("run", finished=False), 1))
    assert touched == []
    assert state["rng"].keys() == {"tasks"} and state["device"] == "cpu"
    assert torch.equal(state["rng"]["tasks"], exp.task_generator.get_state())


def test_an_older_checkpoints_cuda_and_global_rng_states_are_ignored(monkeypatch, trained):
    """Older checkpoints stored every visible GPU's RNG, restored where fewer GPUs are visible: IndexError.
    Stood in for here by a GPU node (patched query) whose set_rng_state_all would fail."""
    exp, state = trained
    state = {**state, "rng": {**state["rng"], "torch": torch.zeros(5056, dtype=torch.uint8), "cuda": [b""] * 8}}
    del state["device"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: pytest.fail("restored a CUDA RNG state"))
    resumed = _experiment()
    global_rng = torch.get_rng_state()
    resumed.load_state_dict(state)
    assert torch.equal(torch.get_rng_state(), global_rng)
    outer_step(exp), outer_step(resumed)
    assert all(torch.equal(a, b) for a, b in zip(_phi(exp).values(), _phi(resumed).values(), strict=True))


def test_a_gpu_task_generator_state_resumes_with_one_rederived_from_seed_and_iteration(caplog, trained):
    """An older GPU run's checkpoint holds a CUDA generator's 16-byte Philox state (seed, offset), which a CPU
    generator cannot take; no CUDA generator can exist here, so 16 bytes of that layout stand in for it."""
    _, state = trained
    state = {**state, "rng": {"tasks": torch.tensor([7, 0, 0, 0, 0, 0, 0, 0, 64, 0, 0, 0, 0, 0, 0, 0]).byte()}}
    del state["device"]
    phis, generators = [], []
    for iteration in (2, 2, 3):
        resumed = _experiment()
        with caplog.at_level(logging.WARNING, logger="reptile_exp"):
            resumed.load_state_dict({**state, "iteration": iteration})
        generators.append(resumed.task_generator.get_state())
        outer_step(resumed)
        phis.append(_phi(resumed))
    lines = [r.getMessage() for r in caplog.records if "re-derived" in r.getMessage()]
    assert len(lines) == 3 and "16 bytes" in lines[0] and "iteration 2" in lines[0] and "seed=0" in lines[0]
    assert all(torch.equal(phis[0][n], phis[1][n]) for n in phis[0])  # the same seed and iteration: the same tasks
    # re-derived, not left as a fresh run's generator, and from the iteration: another iteration, other tasks
    fresh = _experiment().task_generator.get_state()
    assert not torch.equal(generators[0], fresh) and not torch.equal(generators[0], generators[2])


def test_a_gpu_runs_checkpoint_continues_the_same_tasks_on_the_cpu(caplog, trained):
    """A checkpoint of today's GPU runs: a CPU task generator state and device 'cuda' (stood in for: no GPU here)."""
    exp, state = trained
    resumed = _experiment()
    with caplog.at_level(logging.INFO, logger="reptile_exp"):
        resumed.load_state_dict({**state, "device": "cuda"})
    assert "resuming on cpu a run trained on cuda: the same tasks follow" in caplog.text
    assert "re-derived" not in caplog.text
    outer_step(exp), outer_step(resumed)
    assert all(torch.equal(a, b) for a, b in zip(_phi(exp).values(), _phi(resumed).values(), strict=True))


@pytest.fixture
def restore_flags():
    flags = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic = flags[1]


def test_the_deterministic_knob_sets_torch_cudnn_and_cublas_and_false_restores_them(monkeypatch, restore_flags):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    _experiment("deterministic=true")
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == CUBLAS_WORKSPACE == ":4096:8"
    _experiment("deterministic=false")  # a later job of the same multirun process
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the user's own choice stays
    _experiment("deterministic=true")
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


def test_a_deterministic_run_killed_and_resumed_ends_bit_identical(tmp_path):
    n = 12
    common = [f"iterations={n}", "log_every=1", "checkpoint_every=4", "eval_every=0", "eval_tasks=4", "k_eval=2"]
    common += [*SINE, "inner_optimizer=adam", "deterministic=true"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_train(tmp_path, f"hydra.run.dir={straight}", *common)
    _kill_when(train_cmd(f"hydra.run.dir={resumed}", *common), clean_env(tmp_path), lambda pid: _logged(resumed) >= 6)
    out = run_train(tmp_path, f"hydra.run.dir={resumed}", *common)
    assert "ckpt-00000004.pt (iteration 4)" in out.stderr or "ckpt-00000008.pt (iteration 8)" in out.stderr
    a, b = final_phi(straight), final_phi(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
