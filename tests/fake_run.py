"""train.run() end to end on a fake CUDA device (issue 19): the harness around the real run (tests/fake_cuda.py).

`with FakeRun() as fake_run: run(cfg, out_dir)` runs the real run() -- build, resume, meta_train with its logging,
periodic evaluation and checkpoints, the final evaluation, figures and summary -- with every tensor of the
experiment a fake CUDA tensor, under DeviceChecks. It replaces only what cannot follow fake tensors (no GPU here),
and records what the tests check:
- train.build: the real build on the CPU (what device=cuda builds on a GPU machine but for where the tensors live;
  device=cuda itself refuses to build where torch.cuda.is_available() is False), then model, outer optimizer,
  inner-optimizer state and data moved to the fake device (`to_fake_cuda`) and exp.device = cuda; exp.cfg is the
  run's own config (device=cuda). The task generator stays the real CPU generator, as on a GPU.
- Checkpointer.save: the real save and atomic write, of the state with every fake tensor replaced by real CPU zeros
  of its shape and dtype (torch.save cannot serialize a FakeTensor; such a file loads as CPU tensors with
  map_location="cpu", and the values are unknown here). The devices of the state's tensors are recorded first.
- checkpoint.load: the real load (weights_only=True, map_location="cpu"), its tensors then made fake CPU tensors so
  that they can meet the fake CUDA ones as real CPU tensors meet CUDA ones; the task generator's state stays real
  (the CPU generator it restores runs for real here).
- read-outs (.item(), bool(), numpy for the figures) give 1.0 (FakeCuda(readout=1.0)): finite, so check_finite sees
  no divergence; every metric, summary value and plotted point is that 1.0.
- the CUDA driver's memory queries (no driver here): the memory available on the device (memory.available_bytes,
  read by the checks of fits.py, whose arithmetic runs) is an H100's 80 GiB, and the run's peak device memory
  (report.run_peak_memory_mb, in summary.json) is 0; on the CPU both are the real functions;
- spies that call the real functions: meta_train (the iteration and the devices of the state it starts from, i.e.
  after a resume's load_state_dict), outer_step (which host synchronisations each iteration made) and
  Learner._precision (the autocast the forward passes open).
Everything else is the real code: validate, rundir, Tracker (logger.mode=disabled), the metrics file, evaluation,
protocols, figures (matplotlib, Agg) and summary.json.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import pytest
import torch
from fake_cuda import CUDA, FakeCuda
from torch import Tensor
from torch.utils import _pytree as pytree

from reptile_exp import checkpoint as ckpt
from reptile_exp import fits, memory, report, train
from reptile_exp.experiment import Experiment
from reptile_exp.meta.learner import Learner

REAL_BUILD, REAL_META_TRAIN, REAL_OUTER_STEP = train.build, train.meta_train, train.outer_step
REAL_SAVE, REAL_LOAD, REAL_PRECISION = ckpt.Checkpointer.save, ckpt.load, Learner._precision


def to_fake_cuda(exp: Experiment, fake: FakeCuda) -> None:
    """What build(device=cuda) would have made: model, outer optimizer, inner state and data on the device."""
    fake.cuda_module(exp.learner.model, exp.outer)
    exp.inner_state = pytree.tree_map_only(Tensor, fake.cuda, exp.inner_state)
    for split in getattr(exp.dataset, "splits", {}).values():
        split.images = fake.cuda(split.images)
    exp.dataset.to(CUDA)  # sine: where it builds its tasks
    exp.device = CUDA


def _on_cuda(real, value):
    """real(device), or `value` where the device is CUDA (a driver query a fake device cannot answer)."""
    return lambda device: value if device.type == "cuda" else real(device)


def tensor_devices(tree) -> set[str]:
    """Device types of the tensors in a nested dict/list (CPU scalars left out: torch.optim keeps step counts there)."""
    return {t.device.type for t in pytree.tree_leaves(tree) if isinstance(t, Tensor) and t.dim() > 0}


def state_devices(exp: Experiment) -> dict[str, set[str]]:
    """Device types of phi, the inner-optimizer state and the outer optimizer's state."""
    return {
        "phi": tensor_devices(exp.phi),
        "inner_state": tensor_devices(exp.inner_state),
        "outer_optimizer": tensor_devices(exp.outer.state_dict()["state"]),
    }


@dataclass
class Saved:
    """A checkpoint as meta_train handed it to Checkpointer.save."""

    iteration: int
    device: str  # its "device" entry
    devices: dict[str, set[str]]  # device types of its phi, inner_state and outer_optimizer tensors
    draws: int  # CPU-generator draws made by then


@dataclass
class Started:
    """The experiment as meta_train received it."""

    iteration: int
    devices: dict[str, set[str]]


class FakeRun:
    """The patches and spies of the module docstring while inside; `fake` is the FakeCuda the run used."""

    def __init__(self) -> None:
        self.fake = FakeCuda(readout=1.0)
        self.experiments: list[Experiment] = []
        self.started: list[Started] = []
        self.saved: list[Saved] = []
        self.autocasts: list[tuple[str, str, torch.dtype]] = []  # (the input's device, autocast's device, dtype)
        self._marks: list[tuple[int, int]] = []  # (exp.iteration, syncs so far) before each step, after the loop
        self._patch = pytest.MonkeyPatch()

    def __enter__(self) -> FakeRun:
        self._patch.setattr(train, "build", self._build)
        self._patch.setattr(train, "meta_train", self._meta_train)
        self._patch.setattr(train, "outer_step", self._outer_step)
        self._patch.setattr(ckpt.Checkpointer, "save", self._save())
        self._patch.setattr(ckpt, "load", self._load)
        self._patch.setattr(Learner, "_precision", self._precision())
        available = _on_cuda(memory.available_bytes, 80 * 2**30)
        self._patch.setattr(memory, "available_bytes", available)
        self._patch.setattr(fits, "available_bytes", available)
        self._patch.setattr(report, "run_peak_memory_mb", _on_cuda(report.run_peak_memory_mb, 0.0))
        self.fake.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.fake.__exit__(*exc)
        finally:
            self._patch.undo()

    def syncs_by_iteration(self) -> dict[int, list[str]]:
        """The host synchronisations of each outer iteration (by the iteration it ends): its step's, and what the
        loop did after it (logging, evaluation, checkpoint)."""
        marks = self._marks
        return {iteration + 1: self.fake.syncs[start:end] for (iteration, start), (_, end) in zip(marks, marks[1:])}

    def _build(self, cfg):
        cpu = copy.deepcopy(cfg)
        cpu.device = "cpu"
        with self.fake.host():
            exp = REAL_BUILD(cpu)
        exp.cfg = cfg
        to_fake_cuda(exp, self.fake)
        self.experiments.append(exp)
        return exp

    def _meta_train(self, exp: Experiment, *args) -> None:
        self.started.append(Started(exp.iteration, state_devices(exp)))
        try:
            REAL_META_TRAIN(exp, *args)
        finally:
            self._marks.append((exp.iteration, len(self.fake.syncs)))

    def _outer_step(self, exp: Experiment) -> Tensor:
        self._marks.append((exp.iteration, len(self.fake.syncs)))
        return REAL_OUTER_STEP(exp)

    def _save(self):
        def save(checkpointer: ckpt.Checkpointer, state: dict, iteration: int):
            parts = {k: tensor_devices(state[k]) for k in ("phi", "inner_state", "outer_optimizer")}
            self.saved.append(Saved(iteration, state["device"], parts, len(self.fake.draws)))
            real = pytree.tree_map_only(Tensor, self.fake.real, state)
            with self.fake.host():
                return REAL_SAVE(checkpointer, real, iteration)

        return save

    def _load(self, path) -> dict:
        with self.fake.host():
            state = REAL_LOAD(path)
        return {**pytree.tree_map_only(Tensor, self.fake.fake_cpu, state), "rng": state["rng"]}

    def _precision(self):
        def precision(learner: Learner, x: Tensor):
            context = REAL_PRECISION(learner, x)
            if isinstance(context, torch.autocast):
                self.autocasts.append((x.device.type, context.device, context.fast_dtype))
            return context

        return precision
