"""The real training step, evaluation and whole run with every tensor on a fake CUDA device (issues 11 and 19;
tests/fake_cuda.py, tests/fake_run.py). No GPU here: what is faked, and why, is said below and in those modules.

Steps: each case builds an experiment on the CPU, as `device=cuda` would build it on a GPU machine but for where the
tensors live, moves its model, inner-optimizer state and data to the fake device, and runs two outer iterations
(train.outer_step: the sampler, the learner's inner loop, the algorithm's meta-gradient, the outer optimizer) and
an evaluation (report.evaluate_split: chunk sizing, task chunks, adaptation, the transductive or
non-transductive read-out). Any CPU tensor meeting a CUDA one fails (FakeTensorDeviceMismatchError), as does a
factory without device= in reptile_exp, a draw across device types or a multi-tensor kernel across devices
(DeviceError). The same steps run for real on the CPU, and the two runs must draw the same random numbers: one seed,
the same tasks on every device. The training steps must not synchronise with the device (what
torch.cuda.set_sync_debug_mode("error") raises for on a GPU: read-outs, blocking host-device copies).

Runs: train.run() end to end (build, meta_train with logging, periodic evaluation and checkpoints, resume, the final
evaluation with protocols, figures, summary.json) through tests/fake_run.py, which fakes only what cannot follow
fake tensors: the build runs on the CPU and is then moved to the fake device; a checkpoint is written by the real
atomic writer with real CPU zeros in place of the fake tensors and loaded by the real weights_only load, its tensors
then made fake CPU tensors; read-outs give 1.0, so the divergence check passes and every metric reads 1.0.

Covered: the forward passes (grouped and vmap), the fused and functional inner updates (fused Adam kernel),
every algorithm's combination of adapted weights, torch.func's transforms (MAML's second order included), the
outer optimizers, inner loops with no steps (FOMAML with k=1, k_eval=0), the training loop's running sums, the
resumed state's devices, the bf16 autocast's device type (asserted through a spy: autocast("cuda") turns itself off
without a driver, so its effect on the numbers is not seen here). Not covered (needs a GPU: the cuda-marked tests
and scripts/gpu_check.py): the backward formulas (autograd's engine needs a real device; fake_cuda stands in for
torch.autograd.grad, checking that the loss and its inputs share a device), the numbers themselves, bf16 rounding,
torch.compile and CUDA graphs, tf32 (a backend flag), multi-GPU ranks.
"""

import json

import pytest
import torch
from conftest import ROOT
from fake_cuda import CUDA, DeviceChecks, DeviceError, FakeCuda, HostSync
from fake_run import FakeRun, state_devices, to_fake_cuda
from hydra import compose, initialize_config_dir
from torch._subclasses.fake_tensor import FakeTensorDeviceMismatchError
from torch.utils import _pytree as pytree

from reptile_exp.experiment import Experiment, build
from reptile_exp.report import evaluate_split
from reptile_exp.train import outer_step, run

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


def _compose(overrides: list[str]):
    """The config of `overrides`, a later value of a key replacing an earlier one."""
    last = {o.split("=", 1)[0]: o for o in overrides}
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        return compose("train", overrides=["logger.mode=disabled", "progress=false", *last.values()])


def _experiment(overrides: list[str]) -> Experiment:
    return build(_compose(["device=cpu", *overrides]))


def _steps(exp: Experiment, syncs: list[str]) -> tuple[torch.Tensor, list[str], dict]:
    """Two outer iterations and an evaluation of 3 test tasks: the last inner-loop losses, the host synchronisations
    the iterations made and the result."""
    losses = [outer_step(exp) for _ in range(2)][-1]
    synced = list(syncs)
    return losses, synced, evaluate_split(exp, "test", 3, seed=5, curve=exp.dataset.kind == "regression")


@pytest.mark.parametrize("overrides", CASES.values(), ids=CASES.keys())
def test_training_and_evaluation_stay_on_the_device_and_draw_the_cpu_tasks(overrides):
    exp = _experiment(overrides)
    with DeviceChecks() as on_cpu:
        cpu_losses, _, cpu_result = _steps(exp, on_cpu.syncs)
    exp = _experiment(overrides)
    with FakeCuda() as fake:
        to_fake_cuda(exp, fake)
        losses, syncs, result = _steps(exp, fake.syncs)
    assert not syncs, "\n".join(syncs)  # the training steps never wait for the device (sync debug mode "error")
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


def test_host_synchronisations_are_recorded_as_sync_debug_mode_reports_them_on_a_gpu():
    """Read-outs of CUDA tensors, blocking copies between the CPU and CUDA, host data put on CUDA and CPU indices
    into CUDA tensors are syncs; non-blocking host-to-device copies, CPU read-outs and moves within a device are not.
    The harness's own moves (fake.cuda) are not recorded."""
    with FakeCuda(package=__name__) as fake:
        x, host = fake.cuda(torch.ones(2, 3, device="cpu")), torch.ones(3, device="cpu")
        no_syncs = [
            lambda: host.to(CUDA, non_blocking=True),
            lambda: host.cuda(non_blocking=True),
            lambda: x[0].copy_(host, non_blocking=True),
            lambda: host.sum().item(),
            lambda: (x.to(CUDA), x.to(torch.float64), x.to(x)),
            lambda: x[torch.zeros(1, dtype=torch.long, device=CUDA)],
        ]
        syncs = [
            lambda: x.sum().item(),
            lambda: x[0, :1].tolist(),
            lambda: bool(x.sum() > 0),
            lambda: float(x[0, 0]),
            lambda: x.cpu(),
            lambda: x.to("cpu"),
            lambda: host.to(CUDA),
            lambda: host.cuda(),
            lambda: x[0].copy_(host),
            lambda: x[torch.zeros(1, dtype=torch.long, device="cpu")],
            lambda: torch.tensor([1.0], device="cuda"),
        ]
        for call in no_syncs:
            call()
        assert fake.syncs == []
        for call in syncs:
            call()
    assert all(s.startswith(f"{__name__}:") for s in fake.syncs)
    assert [s.split(": ", 1)[1] for s in fake.syncs] == [
        "Tensor.item reads a CUDA tensor",
        "Tensor.item reads a CUDA tensor",  # .tolist() reaches the mode as one .item() per element
        "Tensor.__bool__ reads a CUDA tensor",
        "Tensor.__float__ reads a CUDA tensor",
        "Tensor.cpu copies a CUDA tensor to the CPU",
        "Tensor.to copies a CUDA tensor to the CPU",
        "Tensor.to copies a CPU tensor to cuda without non_blocking=True",
        "Tensor.cuda copies a CPU tensor to cuda without non_blocking=True",
        "Tensor.copy_ copies a CPU tensor to cuda without non_blocking=True",
        "a CUDA tensor indexed with a CPU tensor (copied to the device, blocking)",
        "torch.tensor copies host data to cuda",
    ]
    with FakeCuda(sync_debug_mode="error") as fake, pytest.raises(HostSync, match=rf"^{__name__}:\d+: Tensor.item"):
        fake.cuda(torch.ones(3)).sum().item()


def test_a_multi_tensor_kernel_over_two_devices_fails():
    """FakeTensorMode lets torch._foreach_* and torch._fused_* mix devices; a GPU does not."""
    with (
        FakeCuda() as fake,
        pytest.raises(DeviceError, match=r"torch._foreach_add_ over tensors on \['cpu', 'cuda:0'\]"),
    ):
        torch._foreach_add_([fake.cuda(torch.ones(3))], [torch.ones(3, device="cpu")])


def test_an_evaluation_waits_for_the_device_once_not_per_chunk():
    """Its read-outs (mean and confidence interval) at the end, whatever the number of chunks."""
    exp = _experiment([*OMNIGLOT, "eval_chunk=2"])
    syncs = []
    with FakeCuda() as fake:
        to_fake_cuda(exp, fake)
        for num_tasks in (2, 6):  # one chunk, three
            before = len(fake.syncs)
            evaluate_split(exp, "test", num_tasks, seed=0)
            syncs.append(fake.syncs[before:])
    assert syncs[0] == syncs[1] and len(syncs[0]) == 2, syncs


# Whole runs: 4 iterations with a log, a periodic evaluation and a checkpoint every 2, then the final evaluation.
RUN = ["device=cuda", "iterations=4", "log_every=2", "eval_every=2", "eval_every_tasks=2", "checkpoint_every=2"]
RUN += ["keep_checkpoints=3", "eval_tasks=3"]
RUNS = {
    "sine-reptile": ["experiment=sine_reptile", *SMALL],
    "sine-reptile-k_eval0-vmap-unfused": [
        *CASES["sine-reptile-vmap-unfused"],
        "k_eval=0",  # every evaluation adapts with an inner loop of no steps
    ],
    "sine-maml-second-order": CASES["sine-maml"],
    "sine-maml-first-order": CASES["sine-maml-first-order"],
    "sine-bf16-vmap": ["experiment=sine_reptile", *SMALL, "precision=bf16", "grouped_tasks=false"],
    "omniglot-reptile": OMNIGLOT,
    "omniglot-fomaml-k1-unfused": [*OMNIGLOT, "algorithm=fomaml", "k=1", "fused_inner=false"],  # k - 1 = 0 steps
    "omniglot-bf16-transductive": [*OMNIGLOT, "precision=bf16", "transductive=true"],
    "mini-reptile-vmap": [*MINI, "grouped_tasks=false"],
    "paper-omniglot-5w-protocols": [
        "experiment=paper_omniglot_5w",  # 1-shot and 5-shot, each with and without transduction
        "synthetic_data=true",
        *SMALL,
        "dataset.train_shots=5",
        "inner_batch=5",
    ],
}


def _on_device(devices: dict[str, set[str]]) -> bool:
    """phi on the device, and every tensor of the inner and outer optimizer states (when there are any)."""
    return devices["phi"] == {"cuda"} and devices["inner_state"] <= {"cuda"} and devices["outer_optimizer"] <= {"cuda"}


@pytest.mark.filterwarnings("ignore:CUDA is not available or torch_xla is imported. Disabling autocast")
@pytest.mark.parametrize("overrides", RUNS.values(), ids=RUNS.keys())
def test_a_run_trains_evaluates_checkpoints_and_reports_on_the_device(overrides, tmp_path):
    """run() on fake CUDA (tests/fake_run.py): every tensor of phi, the inner state and the outer optimizer stays on
    the device through training, the periodic evaluations and the final one; the checkpoints are written from the
    device's state and load (the real weights_only load) with phi's shapes and dtypes; summary.json, the metrics
    and the figures are written. The numbers are the harness's 1.0: only where they go is checked.
    precision=bf16: autocast("cuda") disables itself without a driver, so a spy on Learner._precision checks that
    the autocast every forward pass opens is on the data's device type with bfloat16."""
    cfg = _compose([*RUN, *overrides])
    with FakeRun() as fake_run:
        objective = run(cfg, tmp_path)
    (exp,) = fake_run.experiments
    assert exp.device == CUDA and exp.iteration == 4 and objective == 1.0
    assert [(s.iteration, _on_device(s.devices)) for s in fake_run.started] == [(0, True)]
    assert _on_device(state_devices(exp)), state_devices(exp)
    assert [(s.iteration, s.device, _on_device(s.devices)) for s in fake_run.saved] == [
        (2, "cuda", True),
        (4, "cuda", True),
    ]
    for iteration in (2, 4):
        saved = torch.load(tmp_path / "checkpoints" / f"ckpt-{iteration:08d}.pt", weights_only=True)
        assert {n: (p.shape, p.dtype) for n, p in saved["phi"].items()} == {
            n: (p.shape, p.dtype) for n, p in exp.phi.items()
        }
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["device"] == "cuda:0" and summary["iterations"] == 4
    names = [p["name"] for p in cfg.protocols] or ["default"]
    assert list(summary["protocols"]) == names and all(
        set(summary["protocols"][n]) >= set(cfg.eval_splits) for n in names
    )
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "train/loss" in r] == [2, 4]
    assert [r["iteration"] for r in records if any(k.startswith("eval/") for k in r)] == [2, 4]
    assert (tmp_path / "plots" / "learning_curve.png").is_file()
    if cfg.precision.value == "bf16":
        assert fake_run.autocasts  # (the input's device type, the autocast's, its dtype) of every forward pass
        assert set(fake_run.autocasts) == {("cuda", "cuda", torch.bfloat16)}
    else:
        assert fake_run.autocasts == []


def test_a_resumed_run_continues_from_its_checkpoint_with_its_state_on_the_device(tmp_path):
    """The first run is cut after its checkpoint of iteration 2 (the later checkpoint and summary removed, as if it
    had been killed); the second, a new FakeRun as a new process, loads that checkpoint (its tensors CPU ones, as
    map_location="cpu" loads them) and must put phi and the Adam states, inner and outer, back on the device before
    training, then continue with the tasks the uninterrupted run drew after that checkpoint."""
    cfg = _compose([*RUN, *OMNIGLOT, "outer_optimizer=adam"])  # the preset's inner Adam, and an outer one: states
    with FakeRun() as first:
        run(cfg, tmp_path)
    (tmp_path / "checkpoints" / "ckpt-00000004.pt").unlink()
    (tmp_path / "summary.json").unlink()
    with FakeRun() as resumed:
        run(cfg, tmp_path)
    (exp,) = resumed.experiments
    (started,) = resumed.started
    assert started.iteration == 2
    assert started.devices == {"phi": {"cuda"}, "inner_state": {"cuda"}, "outer_optimizer": {"cuda"}}
    assert exp.iteration == 4 and state_devices(exp) == started.devices
    assert [(s.iteration, s.devices) for s in resumed.saved] == [(4, started.devices)]
    assert json.loads((tmp_path / "summary.json").read_text())["iterations"] == 4
    after_checkpoint = first.fake.draws[first.saved[0].draws :]
    assert len(after_checkpoint) == len(resumed.fake.draws) > 0
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(after_checkpoint, resumed.fake.draws))


def test_the_training_loop_waits_for_the_device_only_to_log_evaluate_and_checkpoint(tmp_path):
    """Iterations 1 and 5 neither log (every 3), evaluate (every 2) nor checkpoint (every 4, and at the end): they
    must make no host synchronisation, the others make theirs (the loss read-out, the divergence check)."""
    cfg = _compose(["experiment=sine_reptile", *SMALL, *RUN, "iterations=6", "log_every=3", "checkpoint_every=4"])
    with FakeRun() as fake_run:
        run(cfg, tmp_path)
    synced = {it: bool(syncs) for it, syncs in fake_run.syncs_by_iteration().items()}
    assert synced == {1: False, 2: True, 3: True, 4: True, 5: False, 6: True}, fake_run.syncs_by_iteration()
