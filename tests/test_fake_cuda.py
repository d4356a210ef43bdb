"""The real training step and evaluation with every tensor on a fake CUDA device (issue 11; tests/fake_cuda.py).

Each case builds an experiment on the CPU, as `device=cuda` would build it on a GPU machine but for where the
tensors live, moves its model, inner-optimizer state and data to the fake device, and runs two outer iterations
(train.outer_step: the sampler, the learner's inner loop, the algorithm's meta-gradient, the outer optimizer) and
an evaluation (report.evaluate_split: chunk sizing, task chunks, adaptation, the transductive or
non-transductive read-out). Any CPU tensor meeting a CUDA one fails (FakeTensorDeviceMismatchError), as does a
factory without device= in reptile_exp or a draw across device types (DeviceError). The same steps run for real on
the CPU, and the two runs must draw the same random numbers: one seed, the same tasks on every device.

Covered: the forward passes (grouped and vmap), the fused and functional inner updates (fused Adam kernel),
every algorithm's combination of adapted weights, torch.func's transforms (MAML's second order included), the
outer optimizers. Not covered (needs a GPU: the cuda-marked tests and scripts/gpu_check.sh): the
backward formulas (autograd's engine needs a real device; fake_cuda stands in for torch.autograd.grad, checking
that the loss and its inputs share a device), the numbers themselves (every metric reads NaN here),
torch.compile and CUDA graphs, precision=bf16 (autocast("cuda") turns itself off without a driver), multi-GPU
ranks.
"""

import pytest
import torch
from conftest import ROOT
from fake_cuda import CUDA, DeviceChecks, DeviceError, FakeCuda
from hydra import compose, initialize_config_dir
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
from torch.utils import _pytree as pytree

from reptile_exp.experiment import Experiment, build
from reptile_exp.report import evaluate_split
from reptile_exp.train import outer_step

SMALL = ["meta_batch=2", "k=2", "k_eval=2"]
OMNIGLOT = ["experiment=omniglot_5w1s", "synthetic_data=true", *SMALL]
MINI = ["experiment=miniimagenet_5w5s", "synthetic_data=true", *SMALL, "dataset.train_shots=2", "dataset.k_shot=1"]
MINI += ["inner_batch=5", "eval_batch=5"]
CASES = {
    "sine-reptile": ["experiment=sine_reptile", *SMALL],
    "sine-reptile-vmap-unfused": ["experiment=sine_reptile", *SMALL, "grouped_tasks=false", "fused_inner=false"],
    "sine-fomaml-tail-float64": ["experiment=sine_finn_fomaml", *SMALL, "dtype=float64"],
    "sine-maml": ["experiment=sine_maml", *SMALL, "inner_optimizer=sgd"],
    "sine-maml-first-order": ["experiment=sine_maml", *SMALL, "algorithm.first_order=true"],
    "omniglot-reptile-adam-outer": [*OMNIGLOT, "outer_optimizer=adam"],
    "omniglot-fomaml-tail-unfused": [*OMNIGLOT, "algorithm=fomaml", "algorithm.tail_shots=2", "fused_inner=false"],
    "mini-reptile-vmap-transductive": [*MINI, "grouped_tasks=false", "transductive=true"],
}


def _experiment(overrides: list[str]) -> Experiment:
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        cfg = compose("train", overrides=["logger.mode=disabled", "progress=false", "device=cpu", *overrides])
    return build(cfg)


def _to_fake_cuda(exp: Experiment, fake: FakeCuda) -> None:
    """What build(device=cuda) would have made: model, outer optimizer, inner state and data on the device."""
    fake.cuda_module(exp.learner.model, exp.outer)
    exp.inner_state = pytree.tree_map_only(torch.Tensor, fake.cuda, exp.inner_state)
    for split in getattr(exp.dataset, "splits", {}).values():
        split.images = fake.cuda(split.images)
    exp.dataset.to(CUDA)  # sine: where it builds its tasks
    exp.device = CUDA


def _steps(exp: Experiment) -> tuple[torch.Tensor, dict]:
    """Two outer iterations and an evaluation of 3 test tasks: the last inner-loop losses and the result."""
    losses = [outer_step(exp) for _ in range(2)][-1]
    return losses, evaluate_split(exp, "test", 3, seed=5, curve=exp.dataset.kind == "regression")


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_training_and_evaluation_stay_on_the_device_and_draw_the_cpu_tasks(overrides):
    exp = _experiment(overrides)
    with DeviceChecks() as on_cpu:
        cpu_losses, cpu_result = _steps(exp)
    exp = _experiment(overrides)
    with FakeCuda() as fake:
        _to_fake_cuda(exp, fake)
        losses, result = _steps(exp)
    assert losses.device == CUDA and losses.shape == cpu_losses.shape
    tensors = [*exp.phi.values(), *pytree.tree_leaves(exp.inner_state), *pytree.tree_leaves(exp.outer.state_dict())]
    assert {t.device for t in tensors if isinstance(t, torch.Tensor) and t.dim() > 0} == {CUDA}
    assert result.keys() == cpu_result.keys()  # the values: NaN on the fake device, numbers on the CPU
    # one seed, the same tasks: every random number drawn (on the CPU generator) is the same on both devices
    assert len(fake.draws) == len(on_cpu.draws) > 0
    for (name, cuda_draw), (cpu_name, cpu_draw) in zip(fake.draws, on_cpu.draws):
        assert name == cpu_name and torch.equal(cuda_draw, cpu_draw)


def test_a_cpu_tensor_meeting_a_cuda_one_fails():
    with FakeCuda() as fake, pytest.raises(FakeTensorDeviceMismatchError):
        fake.cuda(torch.ones(3)) + torch.ones(3, device="cpu")


def test_factories_without_device_are_flagged_in_the_package_only():
    """torch's own code may make CPU tensors (clip_grad_norm_ of no gradients returns torch.tensor(0.0)): not
    flagged; this module's own factory is. The optimizer steps the parameters that cuda_module put on the device."""
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.Adam(model.parameters(), foreach=False)
    with FakeCuda(package=__name__) as fake:
        fake.cuda_module(model, optimizer)
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        optimizer.step()
        assert [s["exp_avg"].device for s in optimizer.state.values()] == [CUDA, CUDA]
        assert set(optimizer.state) == set(model.parameters())
        assert torch.nn.utils.clip_grad_norm_([], 1.0).device.type == "cpu"
        with pytest.raises(DeviceError, match=rf"^{__name__}:\d+: torch.zeros without device="):
            torch.zeros(3)


def test_draws_run_on_the_cpu_generator_and_across_devices_fail():
    g, fresh = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    with FakeCuda() as fake:
        fake_draw = torch.rand(4, generator=g, device="cpu")
        with pytest.raises(DeviceError, match="a cpu generator draws into a cuda tensor"):
            torch.rand(4, generator=g, device="cuda")
    assert fake_draw.device.type == "cpu" and torch.equal(fake.draws[0][1], torch.rand(4, generator=fresh))
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=fresh))  # g advanced as for real


def test_the_backward_stand_in_checks_devices_and_returns_zeros_there():
    with FakeCuda() as fake:
        w = fake.cuda(torch.ones(2, 3)).requires_grad_()
        (grad,) = torch.autograd.grad((w * 2).sum(), [w])
        assert grad.device == CUDA and grad.shape == w.shape
        with pytest.raises(DeviceError, match="cpu"):
            torch.autograd.grad(w.sum(), [w], grad_outputs=[torch.ones(2, 3, device="cpu")])
