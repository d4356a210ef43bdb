"""The paper's networks: the sine MLP (section 8) and the two 4-block conv nets (REFERENCE.md section 3).

BatchNorm always uses batch statistics (no running buffers), as the official code does; this also
keeps every model a pure function of its parameters for `torch.func.functional_call` and `vmap`.
Weights are Glorot-uniform with zero biases (TensorFlow's defaults).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .errors import ConfigError
from .task_layers import grouped_conv, same_padding, task_batch_norm, task_conv, task_max_pool

ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def glorot_init(module: nn.Module) -> nn.Module:
    """Glorot-uniform weights and zero biases for every conv and linear layer (TF defaults)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class MLP(nn.Sequential):
    """Fully connected regressor, 1-64-64-1 tanh by default (REFERENCE.md section 8).

    What `auto` picks for it (hardware.resolve): float32, bfloat16 ran slower (sine, Xeon, one thread: training
    0.57x, evaluation 0.67x); compiled with inductor on a CPU (training 1.77x on the Xeon, 1.81x on Zen 3;
    docs/benchmarks.md)."""

    auto_bf16 = False
    auto_inductor_on_cpu = ("highest",)

    def __init__(
        self, in_features: int = 1, hidden: tuple[int, ...] = (64, 64), out_features: int = 1, activation: str = "tanh"
    ):
        if activation not in ACTIVATIONS:
            raise ConfigError(f"model.activation={activation!r} is invalid: choose one of {sorted(ACTIVATIONS)}")
        layers: list[nn.Module] = []
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), ACTIVATIONS[activation]()]
            width = h
        layers.append(nn.Linear(width, out_features))
        super().__init__(*layers)
        glorot_init(self)


class Conv2dSame(nn.Conv2d):
    """3x3 convolution with TensorFlow's "same" padding (the extra row/column goes at the end)."""

    def same_padding(self, x: Tensor) -> list[int]:
        """F.pad's [left, right, top, bottom] for x (..., H, W)."""
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            pads += same_padding(size, k, s)[:2]
        return pads

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.same_padding(x)), self.weight, self.bias, self.stride)


class BatchStatsNorm2d(nn.BatchNorm2d):
    """BatchNorm over the batch statistics, written out in elementary ops. Same values as the native op, but
    its second derivatives stay correct under vmap, which second-order MAML needs: the native op's batching
    rule gets d(grad)/d(input) wrong (pytorch/functorch#534; tests/test_algorithms.py)."""

    def forward(self, x: Tensor) -> Tensor:
        h = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # float32 statistics, as the native kernel
        mean = h.mean(dim=(0, 2, 3), keepdim=True)
        var = (h - mean).square().mean(dim=(0, 2, 3), keepdim=True)
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return ((h - mean) * scale + self.bias.view(1, -1, 1, 1)).to(x.dtype)


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    return BatchStatsNorm2d(channels, eps=1e-3, affine=True, track_running_stats=False)


class OmniglotConvNet(nn.Sequential):
    """4 x [conv 64 3x3 stride 2 same -> BN -> ReLU], 28-14-7-4-2, then linear N (113,221 params, 5-way).

    auto_inductor_on_cpu: inductor over eager in bfloat16, training 1.18x (Xeon), 1.23x (Zen 5), evaluation 0.93x to
    1.04x; in float32 its evaluation was 0.75x to 0.87x, a net loss on Zen 3 (docs/benchmarks.md)."""

    auto_inductor_on_cpu = ("bf16",)

    def __init__(self, n_way: int = 5, in_channels: int = 1, channels: int = 64):
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                Conv2dSame(in_channels if i == 0 else channels, channels, 3, stride=2),
                _batch_norm(channels),
                nn.ReLU(),
            ]
        layers += [nn.Flatten(), nn.Linear(2 * 2 * channels, n_way)]
        super().__init__(*layers)
        glorot_init(self)


class MiniImageNetConvNet(nn.Sequential):
    """4 x [conv 32 3x3 same -> BN -> maxpool 2x2 same -> ReLU], 84-42-21-11-6, then linear N (34,661, 5-way).

    channels_last_on_cpu: forward_tasks' grouped images are channels last on a CPU, where the grouped convolutions
    and max pooling of 84 x 84 images ran faster so (docs/benchmarks.md, Mini-ImageNet shapes); Omniglot's small
    images did not in float32 (its evaluation ran slower), only under bfloat16 autocast (forward_tasks). Not compiled
    by compile=auto: inductor ran its bfloat16 training 0.67x, evaluation 0.78x (Xeon, docs/benchmarks.md)."""

    channels_last_on_cpu = True

    def __init__(self, n_way: int = 5, in_channels: int = 3, channels: int = 32):
        layers: list[nn.Module] = []
        for i in range(4):
            layers += [
                Conv2dSame(in_channels if i == 0 else channels, channels, 3, stride=1),
                _batch_norm(channels),
                nn.MaxPool2d(2, 2, ceil_mode=True),
                nn.ReLU(),
            ]
        layers += [nn.Flatten(), nn.Linear(6 * 6 * channels, n_way)]
        super().__init__(*layers)
        glorot_init(self)


ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.MaxPool2d)  # act on each channel of each image alone
TASK_CONV = ("grouped", "bmm")  # forward_tasks' two ways of convolving every task at once


def _task_layer(m: nn.Module) -> bool:
    """Whether forward_tasks computes layer m for all tasks at once."""
    if isinstance(m, Conv2dSame):  # what both ways compute: square kernel and stride, no dilation or groups
        square = m.kernel_size[0] == m.kernel_size[1] and m.stride[0] == m.stride[1]
        return square and m.dilation == (1, 1) and m.groups == 1
    return isinstance(m, (BatchStatsNorm2d, nn.Flatten, nn.Linear, *ELEMENTWISE))


def task_batchable(model: nn.Module) -> bool:
    """Whether forward_tasks knows every layer of model."""
    return isinstance(model, nn.Sequential) and all(_task_layer(m) for m in model.children())


def forward_tasks(model: nn.Sequential, params: dict[str, Tensor], x: Tensor, conv: str = "grouped") -> Tensor:
    """Every task's model on its own inputs, without vmap: params task-stacked (T, ...), x (T, n, ...) -> (T, n, ...).

    conv "grouped": images travel as (n, T * C, H, W), channels last in memory on a CPU where the model says
    channels_last_on_cpu or under bfloat16 autocast (oneDNN's bfloat16 convolutions work channels last: Omniglot
    1.17x to 1.21x in training, 1.17x in evaluation on an AMX Xeon, CHANGELOG.md 2026-12-07); each task's channels
    form one group of a grouped convolution, and BatchNorm's statistics per channel over (n, H, W) are per task
    and channel, so the native kernel computes them. conv
    "bmm": images travel channels last, (T, n, H, W, C), through task_layers (each convolution one batched matmul
    over the tasks, BatchNorm fused with the ReLU after it). Linear layers are one batched matmul. The values of
    vmap(functional_call) up to rounding. Not for differentiating twice (the native BatchNorm, see
    BatchStatsNorm2d; task_layers' gradients are written once): the Learner keeps vmap there.
    """
    if conv not in TASK_CONV:
        raise ValueError(f"task_conv={conv!r}: choose one of {TASK_CONV}")
    layers, fused_relu = list(model.named_children()), False
    tasks, n = x.shape[:2]
    if x.dim() == 5 and conv == "grouped":
        h = x.transpose(0, 1).flatten(1, 2)
        if x.device.type == "cpu" and (
            getattr(model, "channels_last_on_cpu", False) or torch.is_autocast_enabled("cpu")
        ):
            h = h.contiguous(memory_format=torch.channels_last)
    else:
        h = x.movedim(2, -1) if x.dim() == 5 else x
    for i, (name, m) in enumerate(layers):
        weight, bias = params.get(f"{name}.weight"), params.get(f"{name}.bias")
        if fused_relu:  # bmm: applied with the BatchNorm before it
            fused_relu = False
        elif isinstance(m, nn.Linear):
            h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        elif conv == "grouped":
            h = _grouped_layer(m, h, weight, bias, tasks, n)
        elif isinstance(m, Conv2dSame):
            h = task_conv(h, weight, bias, m.stride[0])
        elif isinstance(m, BatchStatsNorm2d):
            fused_relu = i + 1 < len(layers) and isinstance(layers[i + 1][1], nn.ReLU)
            h = task_batch_norm(h, weight, bias, m.eps, relu=fused_relu)
        elif isinstance(m, nn.MaxPool2d):
            h = task_max_pool(h, m)
        elif isinstance(m, nn.Flatten):  # nn.Flatten's (C, H, W) order
            h = h.movedim(-1, 2).flatten(2) if h.dim() == 5 else h
        else:
            h = m(h)
    return h


def _grouped_layer(m: nn.Module, h: Tensor, weight: Tensor, bias: Tensor, tasks: int, n: int) -> Tensor:
    """Layer m of every task on h (n, T * C, H, W): forward_tasks' grouped way."""
    if isinstance(m, Conv2dSame):
        return grouped_conv(F.pad(h, m.same_padding(h)), weight.flatten(0, 1), bias.flatten(), m.stride[0], tasks)
    if isinstance(m, BatchStatsNorm2d):
        return F.batch_norm(h, None, None, weight.flatten(), bias.flatten(), training=True, momentum=0.0, eps=m.eps)
    if isinstance(m, nn.Flatten):
        return h.reshape(n, tasks, -1).transpose(0, 1)
    return m(h)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
