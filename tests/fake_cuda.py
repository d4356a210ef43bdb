"""A CUDA device without a GPU, for tests that must see device bugs on a CPU-only machine (issue 11).

`FakeCuda` runs code with every "cuda" tensor a FakeTensor (torch._subclasses.fake_tensor): shapes, dtypes and
devices are tracked, no kernel runs and no driver is needed, and an operation on a CPU tensor and a CUDA tensor
raises FakeTensorDeviceMismatchError as on a GPU. `DeviceChecks` (a TorchFunctionMode inside it) adds what a
real GPU would only show as slowness or different numbers:
- a tensor factory (torch.zeros, torch.arange, ...) called by reptile_exp without device= puts its result on the
  CPU; on a GPU that tensor meets CUDA ones (a crash) or is copied at every step: DeviceError;
- a draw with a generator of one device type into a tensor of another (torch.rand(generator=cpu, device=cuda)
  fails on a GPU, and a CUDA generator draws other numbers than a CPU one for the same seed): DeviceError;
- a multi-tensor (torch._foreach_*) or fused (torch._fused_*) kernel given tensors on two devices (a GPU raises;
  FakeTensorMode does not check these): DeviceError;
- a host synchronisation, which torch.cuda.set_sync_debug_mode("error") turns into an error on a GPU: a read-out
  of a CUDA tensor (`.item()`, `.tolist()`, `bool()`, `float()`, `int()`, numpy), a copy between the CPU and a CUDA
  tensor without non_blocking=True (Tensor.to, .cuda(), .cpu(), copy_), host data put on a CUDA tensor
  (torch.tensor(data, device=cuda)), a CUDA tensor indexed with a CPU tensor (the index is copied with a blocking
  copy): recorded in `syncs` as "module:line: what" (the nearest reptile_exp frame), or raised as HostSync with
  sync_debug_mode="error".
Draws from a CPU generator run for real, so the generator advances as it would, and are recorded in `draws`.

Limits (torch 2.14 on a CPU-only machine), each the reason for a choice here:
- modules are built on the CPU and converted afterwards (`cuda(model)`): building inside the mode breaks
  Module.to; `torch.Generator(device="cuda")` needs a driver, so generators stay on the CPU;
- autograd's engine needs a real device: torch.autograd.grad (also under torch.func.grad) is replaced by a
  stand-in that checks that the loss, the tensors it is differentiated with respect to and any grad_outputs are
  on one device and returns zeros of each input's shape, dtype and device. The forward pass and everything that
  consumes gradients runs; the backward formulas themselves do not;
- values are not computed: a read-out (`.item()`, `.tolist()`, `bool()`, numpy) gives `readout` for every
  element: NaN by default (so every metric is NaN), a finite number where code that checks its numbers (a
  training run's divergence check) must go on;
- torch.cuda.is_available() stays False (patching it starts real CUDA initialisation); torch.compile and CUDA
  graphs need the real toolchain.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode, unset_fake_temporarily
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
READOUTS = {  # a value of the tensor on the host: on a GPU, the host waits for the device
    Tensor.item,
    Tensor.tolist,
    Tensor.__bool__,
    Tensor.__float__,
    Tensor.__int__,
    Tensor.__index__,
    Tensor.__array__,
    Tensor.numpy,
}


class DeviceError(AssertionError):
    """A tensor created or drawn on a device other than the one the code meant (see the module docstring)."""


class HostSync(AssertionError):
    """A host synchronisation under sync_debug_mode="error" (see the module docstring)."""


def _caller(package: str) -> str | None:
    """'module:line' of the code that called the torch function DeviceChecks handles if it belongs to `package`,
    else None (torch's own Python code makes CPU tensors on purpose, e.g. torch.optim's step counts)."""
    frame = sys._getframe(3)  # 0: here, 1: a DeviceChecks method, 2: __torch_function__, 3: the caller
    name = frame.f_globals.get("__name__", "")
    return f"{name}:{frame.f_lineno}" if name == package or name.startswith(package + ".") else None


def _origin(package: str) -> str:
    """'module:line' of the nearest frame of `package` on the stack, else of the nearest frame outside torch and
    this module (a test calling torch itself)."""
    frame, outside = sys._getframe(1), None
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if name == package or name.startswith(package + "."):
            return f"{name}:{frame.f_lineno}"
        if outside is None and name != __name__ and name.split(".")[0] != "torch":
            outside = f"{name}:{frame.f_lineno}"
        frame = frame.f_back
    return outside or "?"


def _copy(source: torch.device, target: torch.device | None, non_blocking: bool, how: str) -> str | None:
    """The synchronisation a copy from `source` to `target` makes on a GPU, in words, or None."""
    if target is None or non_blocking:  # non-blocking: host-to-device is safe from pageable memory, no wait
        return None
    if source.type == "cpu" and target.type == "cuda":
        return f"{how} copies a CPU tensor to {target.type} without non_blocking=True"
    if source.type == "cuda" and target.type == "cpu":
        return f"{how} copies a CUDA tensor to the CPU"
    return None


def _sync(func, args, kwargs) -> str | None:
    """The host synchronisation torch function `func` makes on a GPU, in words, or None."""
    first = args[0] if args and isinstance(args[0], Tensor) else None
    if func in READOUTS:
        return f"Tensor.{func.__name__} reads a CUDA tensor" if first.device.type == "cuda" else None
    if func is Tensor.to:
        options = {k: v for k, v in kwargs.items() if k != "copy"}
        target, _, non_blocking, _ = torch._C._nn._parse_to(*args[1:], **options)
        return _copy(first.device, target, non_blocking, "Tensor.to")
    if func is Tensor.cuda:
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return _copy(first.device, CUDA, non_blocking, "Tensor.cuda")
    if func is Tensor.cpu:
        return _copy(first.device, torch.device("cpu"), False, "Tensor.cpu")
    if func is Tensor.copy_:
        non_blocking = kwargs.get("non_blocking", args[2] if len(args) > 2 else False)
        return _copy(args[1].device, first.device, non_blocking, "Tensor.copy_")
    if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None:
        device = torch.device(kwargs["device"])
        host_data = not any(isinstance(t, Tensor) for t in pytree.tree_leaves(args[:1]))
        return f"torch.{func.__name__} copies host data to {device}" if host_data and device.type == "cuda" else None
    if func in (Tensor.__getitem__, Tensor.__setitem__) and first.device.type == "cuda":
        index = [t for t in pytree.tree_leaves(args[1]) if isinstance(t, Tensor) and t.device.type == "cpu"]
        return "a CUDA tensor indexed with a CPU tensor (copied to the device, blocking)" if index else None
    return None


class DeviceChecks(TorchFunctionMode):
    """Flags factories without device= in `package`'s code, draws across device types and multi-tensor kernels across
    devices, records the draws of CPU generators and the host synchronisations; with a FakeTensorMode, also stands
    in for the backward pass and the read-outs (module docstring). `active = False` lets every call through."""

    def __init__(
        self,
        fake: FakeTensorMode | None = None,
        package: str = "reptile_exp",
        readout: float = math.nan,
        sync_debug_mode: str = "warn",
    ):
        super().__init__()
        if sync_debug_mode not in ("warn", "error"):
            raise ValueError(f"sync_debug_mode={sync_debug_mode!r}: choose 'warn' (record) or 'error' (raise)")
        self.fake, self.package, self.readout, self.sync_debug_mode = fake, package, readout, sync_debug_mode
        self.draws: list[tuple[str, Tensor]] = []  # (function, the real numbers) of every CPU-generator draw
        self.syncs: list[str] = []  # "module:line: what" of every host synchronisation
        self.active = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if not self.active:
            return func(*args, **kwargs)
        sync = _sync(func, args, kwargs)
        if sync is not None:
            self._record_sync(sync)
        if self.fake is not None and func is torch.autograd.grad:
            return self._grad(*args, **kwargs)
        if self.fake is not None and func in READOUTS:
            return self._readout(func, args[0])
        if func in FACTORIES and "device" not in kwargs:
            self._check_factory(func)
        if getattr(func, "__name__", "").startswith(("_foreach_", "_fused_")):
            self._check_multi_tensor(func, args, kwargs)
        if kwargs.get("generator") is not None:
            return self._draw(func, args, kwargs)
        return func(*args, **kwargs)

    def _record_sync(self, what: str) -> None:
        entry = f"{_origin(self.package)}: {what}"
        if self.sync_debug_mode == "error":
            raise HostSync(entry)
        self.syncs.append(entry)

    def _readout(self, func, tensor: Tensor):
        """What a read-out of a fake tensor gives: `readout` for every element (the values are unknown), in the
        tensor's dtype where it holds it (NaN in a float)."""
        exact = tensor.is_floating_point() or math.isfinite(self.readout)
        with unset_fake_temporarily():
            values = torch.full(tensor.shape, self.readout, dtype=tensor.dtype if exact else torch.float32)
            if func in (Tensor.__array__, Tensor.numpy):
                return values.numpy()
            return func(values) if func is not Tensor.__index__ else int(values)

    def _check_multi_tensor(self, func, args, kwargs) -> None:
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, Tensor)]
        devices = {t.device for t in tensors if t.dim() > 0 or t.device.type != "cpu"}  # CPU scalars go anywhere
        if len(devices) > 1:
            where = _origin(self.package)
            raise DeviceError(f"{where}: torch.{func.__name__} over tensors on {sorted(map(str, devices))}")

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
    CUDA copy of a real tensor, `fake.cuda_module(m, optimizer)` puts m's parameters there, `fake.fake_cpu(x)` and
    `fake.real(x)` cross between real and fake CPU tensors, and `with fake.host():` runs real code (no fake tensors,
    no checks). The harness's own moves are not recorded as synchronisations."""

    def __init__(self, package: str = "reptile_exp", readout: float = math.nan, sync_debug_mode: str = "warn"):
        self.mode = FakeTensorMode()
        self.checks = DeviceChecks(self.mode, package, readout, sync_debug_mode)

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

    @property
    def syncs(self) -> list[str]:
        return self.checks.syncs

    @contextmanager
    def unchecked(self) -> Iterator[None]:
        """The body's torch calls pass DeviceChecks unchecked and unrecorded (the harness's own moves)."""
        saved, self.checks.active = self.checks.active, False
        try:
            yield
        finally:
            self.checks.active = saved

    @contextmanager
    def host(self) -> Iterator[None]:
        """The body runs for real on the CPU: no fake tensors, no checks (building, writing files)."""
        with unset_fake_temporarily(), self.unchecked():
            yield

    def cuda(self, x: Tensor) -> Tensor:
        with unset_fake_temporarily():
            x = x.detach()
        with self.unchecked():
            return self.mode.from_tensor(x).to(CUDA)

    def fake_cpu(self, x: Tensor) -> Tensor:
        """A fake CPU tensor of a real one, e.g. of what torch.load(map_location="cpu") returned."""
        with self.unchecked():
            return self.mode.from_tensor(x)

    def real(self, x: Tensor) -> Tensor:
        """A real CPU tensor for a fake one, of its shape and dtype (zeros: its values are unknown), what a file
        written from it would load as with map_location="cpu"; a real tensor as it is."""
        if not isinstance(x, FakeTensor):
            return x
        with self.host():
            return torch.zeros(x.shape, dtype=x.dtype)

    def cuda_module(self, module: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Replace module's parameters by fake CUDA ones, in the optimizer (not stepped yet) too."""
        new = {}
        for m in module.modules():
            for name, p in m.named_parameters(recurse=False):
                new[p] = m._parameters[name] = nn.Parameter(self.cuda(p), p.requires_grad)
        for group in optimizer.param_groups if optimizer is not None else []:
            group["params"] = [new[p] for p in group["params"]]
