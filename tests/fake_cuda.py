"""A CUDA device without a GPU, for tests that must see device bugs on a CPU-only machine (issue 11).

`FakeCuda` runs code with every "cuda" tensor a FakeTensor (torch._subclasses.fake_tensor): shapes, dtypes and
devices are tracked, no kernel runs and no driver is needed, and an operation on a CPU tensor and a CUDA tensor
raises FakeTensorDeviceMismatchError as on a GPU. `DeviceChecks` (a TorchFunctionMode inside it) adds what a
real GPU would only show as slowness or different numbers:
- a tensor factory (torch.zeros, torch.arange, ...) called by reptile_exp without device= puts its result on the
  CPU; on a GPU that tensor meets CUDA ones (a crash) or is copied at every step: DeviceError;
- a draw with a generator of one device type into a tensor of another (torch.rand(generator=cpu, device=cuda)
  fails on a GPU, and a CUDA generator draws other numbers than a CPU one for the same seed): DeviceError.
Draws from a CPU generator run for real, so the generator advances as it would, and are recorded in `draws`.

Limits (torch 2.14 on a CPU-only machine), each the reason for a choice here:
- modules are built on the CPU and converted afterwards (`cuda(model)`): building inside the mode breaks
  Module.to; `torch.Generator(device="cuda")` needs a driver, so generators stay on the CPU;
- autograd's engine needs a real device: torch.autograd.grad (also under torch.func.grad) is replaced by a
  stand-in that checks that the loss, the tensors it is differentiated with respect to and any grad_outputs are
  on one device and returns zeros of each input's shape, dtype and device. The forward pass and everything that
  consumes gradients runs; the backward formulas themselves do not;
- values are not computed: a read-out (`.item()`, `.tolist()`) gives NaN (so every metric is NaN);
- torch.cuda.is_available() stays False (patching it starts real CUDA initialisation); torch.compile and CUDA
  graphs need the real toolchain.
"""

from __future__ import annotations

import math
import sys

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.overrides import TorchFunctionMode
from torch.utils import _pytree as pytree

CUDA = torch.device("cuda", 0)
FACTORIES = {
    torch.arange,
    torch.empty,
    torch.eye,
    torch.full,
    torch.linspace,
    torch.ones,
    torch.rand,
    torch.randint,
    torch.randn,
    torch.randperm,
    torch.tensor,
    torch.zeros,
}


class DeviceError(AssertionError):
    """A tensor created or drawn on a device other than the one the code meant (see the module docstring)."""


def _caller(package: str) -> str | None:
    """'module:line' of the code that called the torch function DeviceChecks handles if it belongs to `package`,
    else None (torch's own Python code makes CPU tensors on purpose, e.g. torch.optim's step counts)."""
    frame = sys._getframe(3)  # 0: here, 1: a DeviceChecks method, 2: __torch_function__, 3: the caller
    name = frame.f_globals.get("__name__", "")
    return f"{name}:{frame.f_lineno}" if name == package or name.startswith(package + ".") else None


class DeviceChecks(TorchFunctionMode):
    """Flags factories without device= in `package`'s code and draws across device types, records the draws of CPU
    generators; with a FakeTensorMode, also stands in for the backward pass and the read-outs (module docstring)."""

    def __init__(self, fake: FakeTensorMode | None = None, package: str = "reptile_exp"):
        super().__init__()
        self.fake, self.package = fake, package
        self.draws: list[tuple[str, Tensor]] = []  # (function, the real numbers) of every CPU-generator draw

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.fake is not None and func is torch.autograd.grad:
            return self._grad(*args, **kwargs)
        if self.fake is not None and func in (Tensor.item, Tensor.tolist):
            with unset_fake_temporarily():  # the values are unknown
                return torch.full(args[0].shape, math.nan).tolist()
        if func in FACTORIES and "device" not in kwargs:
            self._check_factory(func)
        if kwargs.get("generator") is not None:
            return self._draw(func, args, kwargs)
        return func(*args, **kwargs)

    def _check_factory(self, func) -> None:
        where = _caller(self.package)
        if where is not None:
            raise DeviceError(f"{where}: torch.{func.__name__} without device= makes a CPU tensor; pass device=")

    def _draw(self, func, args, kwargs):
        """A draw from kwargs' generator, which must be on the device drawn on: run for real if on the CPU."""
        generator = kwargs["generator"]
        first = next((a for a in args if isinstance(a, Tensor)), None)  # Tensor.uniform_ and the like
        device = torch.device(kwargs.get("device") or (first.device if first is not None else "cpu"))
        if device.type != generator.device.type:
            raise DeviceError(
                f"{_caller(self.package) or 'torch'}: a {generator.device.type} generator draws into a "
                f"{device.type} tensor (torch.{func.__name__}); draw on the generator's device and move the result"
            )
        with unset_fake_temporarily():
            real = func(*args, **kwargs)
        self.draws.append((func.__name__, real))
        return real if self.fake is None else self.fake.from_tensor(real)

    def _grad(self, outputs, inputs, grad_outputs=None, **_):
        """torch.autograd.grad's stand-in: every tensor involved on one device; zeros like each input."""
        tensors = [t for t in pytree.tree_leaves((outputs, inputs, grad_outputs)) if isinstance(t, Tensor)]
        devices = {t.device for t in tensors if t.dim() > 0 or t.device.type != "cpu"}  # CPU scalars go anywhere
        if len(devices) > 1:
            raise DeviceError(f"torch.autograd.grad over tensors on {sorted(map(str, devices))}")
        inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
        return tuple(torch.zeros_like(x) for x in inputs)


class FakeCuda:
    """`with FakeCuda() as fake:` runs its body with fake CUDA tensors and DeviceChecks; `fake.cuda(x)` is a fake
    CUDA copy of a real tensor, `fake.cuda_module(m, optimizer)` puts m's parameters there."""

    def __init__(self, package: str = "reptile_exp"):
        self.mode = FakeTensorMode()
        self.checks = DeviceChecks(self.mode, package)

    def __enter__(self) -> FakeCuda:
        self.mode.__enter__()
        self.checks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.checks.__exit__(*exc)
        self.mode.__exit__(*exc)

    @property
    def draws(self) -> list[tuple[str, Tensor]]:
        return self.checks.draws

    def cuda(self, x: Tensor) -> Tensor:
        with unset_fake_temporarily():
            x = x.detach()
        return self.mode.from_tensor(x).to(CUDA)

    def cuda_module(self, module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Replace module's parameters by fake CUDA ones, in the optimizer (not stepped yet) too."""
        new = {}
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                new[p] = m._parameters[name] = nn.Parameter(self.cuda(p), p.requires_grad)
        for group in optimizer.param_groups if optimizer is not None else []:
            group["params"] = [new[p] for p in group["params"]]
