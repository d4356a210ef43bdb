"""All tasks' conv-net layers at once, for models.forward_tasks: activations travel channels last, (T, n, H, W, C).

A convolution of every task is one batched matrix product, tasks as the batch: the im2col columns of its
TensorFlow "same" padded input (kernel order (kh, kw, C), so every copy moves whole rows of channels) times
the task's weights. BatchNorm over each task's batch statistics (REFERENCE.md section 3), fused with the ReLU
that follows it, has its gradient written out. Both keep what their backward needs from the forward pass.
Under autocast the matrix products (forward and backward) run in its dtype, BatchNorm in float32. Issue 21;
on the CPUs measured (float32, and bfloat16 on an AMX Xeon) it is slower than the grouped convolution
(docs/benchmarks.md), so it is opt-in (task_conv=bmm); tests/test_task_layers.py checks each gradient against
finite differences.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int, int]:
    """TensorFlow "same" padding of one dimension: (zeros before, zeros after, output size); the odd one goes after."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2, out


def _compute_dtype(x: Tensor) -> torch.dtype:
    """Autocast's dtype for matrix products where it is on, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _im2col(x: Tensor, kernel: int, stride: int, dtype: torch.dtype) -> Tensor:
    """x (T, n, H, W, C) -> columns (T, n * Ho * Wo, kernel * kernel * C) in dtype, "same" padded."""
    top, bottom, _ = same_padding(x.shape[2], kernel, stride)
    left, right, _ = same_padding(x.shape[3], kernel, stride)
    return _columns(F.pad(x, (0, 0, left, right, top, bottom)), kernel, stride, dtype)


def _columns(padded: Tensor, kernel: int, stride: int, dtype: torch.dtype) -> Tensor:
    """padded (T, n, H, W, C), any strides -> its im2col columns (T, n * Ho * Wo, kernel * kernel * C) in dtype."""
    windows = padded.unfold(2, kernel, stride).unfold(3, kernel, stride)  # (T, n, Ho, Wo, C, k, k)
    tasks, n, out_h, out_w, channels = windows.shape[:5]
    cols = torch.empty(tasks, n, out_h, out_w, kernel, kernel, channels, dtype=dtype, device=padded.device)
    cols.copy_(windows.permute(0, 1, 2, 3, 5, 6, 4))  # one copy: window order and dtype together
    return cols.view(tasks, n * out_h * out_w, -1)


def _weight_grad(cols: Tensor, grad: Tensor, kernel: int, dtype: torch.dtype) -> Tensor:
    """Every task's convolution weight gradient (T, C_out, C, k, k) in dtype from its columns (T, rows, k * k * C)
    and output gradient (T, rows, C_out): one batched matmul."""
    tasks, channels_out = grad.shape[0], grad.shape[-1]
    grad_matrix = torch.bmm(cols.transpose(1, 2), grad.to(cols.dtype)).to(dtype)
    return grad_matrix.view(tasks, kernel, kernel, -1, channels_out).permute(0, 4, 3, 1, 2)


def _col2im(grad_cols: Tensor, shape: torch.Size, kernel: int, stride: int, dtype: torch.dtype) -> Tensor:
    """The adjoint of _im2col: each column's gradient added back onto the input pixel it was copied from."""
    tasks, n, height, width, channels = shape
    top, bottom, out_h = same_padding(height, kernel, stride)
    left, right, out_w = same_padding(width, kernel, stride)
    grad = grad_cols.view(tasks, n, out_h, out_w, kernel, kernel, channels)
    padded = grad_cols.new_zeros(tasks, n, height + top + bottom, width + left + right, channels, dtype=dtype)
    rows, cols = stride * (out_h - 1) + 1, stride * (out_w - 1) + 1
    for i in range(kernel):
        for j in range(kernel):
            padded[:, :, i : i + rows : stride, j : j + cols : stride] += grad[:, :, :, :, i, j]
    return padded[:, :, top : top + height, left : left + width]


class TaskConv(torch.autograd.Function):
    """Every task's "same" convolution: x (T, n, H, W, C), weight (T, C_out, C, k, k), bias (T, C_out)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> tuple[Tensor, Tensor]:
        tasks, n, kernel = x.shape[0], x.shape[1], weight.shape[-1]
        cols = _im2col(x, kernel, stride, _compute_dtype(x))
        matrix = weight.permute(0, 3, 4, 2, 1).reshape(tasks, -1, weight.shape[1]).to(cols.dtype)
        out = torch.baddbmm(bias.unsqueeze(1).to(cols.dtype), cols, matrix)
        out_h, out_w = same_padding(x.shape[2], kernel, stride)[2], same_padding(x.shape[3], kernel, stride)[2]
        return out.view(tasks, n, out_h, out_w, -1), cols, matrix

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, stride = inputs
        ctx.save_for_backward(*output[1:])
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # no zeros for the columns' and matrix's (unused) gradients
        ctx.stride, ctx.shape, ctx.dtype, ctx.weight_shape = stride, x.shape, x.dtype, weight.shape
        ctx.weight_dtype = weight.dtype

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor | None, _grad_cols: None, _grad_matrix: None):
        if grad_out is None:  # only the (non-differentiable) columns were used
            return None, None, None, None
        cols, matrix = ctx.saved_tensors
        tasks, channels_out, channels, kernel = ctx.weight_shape[:4]
        grad = grad_out.reshape(tasks, -1, channels_out)
        # The weight's and bias's gradients whatever needs_input_grad says: under torch.compile (torch 2.14) it
        # wrongly said False for them (tests/test_task_layers.py); x's is skipped for the images, which need none.
        grad_bias = grad.sum(1, dtype=ctx.weight_dtype)
        grad = grad.to(cols.dtype)
        grad_weight = _weight_grad(cols, grad, kernel, ctx.weight_dtype)
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = _col2im(torch.bmm(grad, matrix.transpose(1, 2)), ctx.shape, kernel, ctx.stride, ctx.dtype)
        return grad_x, grad_weight, grad_bias, None


def task_conv(x: Tensor, weight: Tensor, bias: Tensor, stride: int) -> Tensor:
    """Every task's convolution with TF "same" padding: (T, n, H, W, C) -> (T, n, ceil(H / s), ceil(W / s), C_out)."""
    return TaskConv.apply(x, weight, bias, stride)[0]


# grouped_conv's batched-matmul weight gradient pays from this many tasks: on an AMX Xeon in bfloat16 it sped up
# evaluation chunks (100 tasks; docs/benchmarks.md) but not meta-batches of 5 (CHANGELOG.md 2026-12-07)
BMM_WEIGHT_GRAD_TASKS = 32


class GroupedConv(torch.autograd.Function):
    """The grouped convolution of forward_tasks (x (n, T * C, H, W) padded, weight (T * C_out, C, k, k), groups T),
    its weight gradient one batched matmul of x's im2col columns, tasks as the batch, where oneDNN's grouped weight
    gradient is slow (bfloat16, channels last). Input gradient and forward are oneDNN's."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, stride: int, tasks: int) -> Tensor:
        return F.conv2d(x, weight, bias, stride, groups=tasks)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, stride, tasks = inputs
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.tasks = stride, tasks

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        stride, tasks = ctx.stride, ctx.tasks
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [stride] * 2, [0, 0], [1, 1], False, [0, 0], tasks, [True, False, False]
            )[0]
        n, height, width = x.shape[0], x.shape[2], x.shape[3]
        pixels = x.permute(0, 2, 3, 1).reshape(n, height, width, tasks, -1).permute(3, 0, 1, 2, 4)  # (T, n, H, W, C)
        cols = _columns(pixels, weight.shape[-1], stride, x.dtype)
        grad_rows = grad.permute(0, 2, 3, 1).reshape(-1, tasks, weight.shape[0] // tasks).transpose(0, 1)
        grad_weight = _weight_grad(cols, grad_rows, weight.shape[-1], weight.dtype).reshape(weight.shape)
        return grad_x, grad_weight, grad.sum((0, 2, 3)), None, None


def grouped_conv(x: Tensor, weight: Tensor, bias: Tensor, stride: int, tasks: int) -> Tensor:
    """F.conv2d(x, weight, bias, stride, groups=tasks) (x padded already); under bfloat16 autocast on a CPU with at
    least BMM_WEIGHT_GRAD_TASKS tasks, through GroupedConv, in bfloat16 as autocast would."""
    if x.device.type != "cpu" or not torch.is_autocast_enabled("cpu") or tasks < BMM_WEIGHT_GRAD_TASKS:
        return F.conv2d(x, weight, bias, stride, groups=tasks)
    dtype = torch.get_autocast_dtype("cpu")
    with torch.autocast("cpu", enabled=False):
        return GroupedConv.apply(x.to(dtype), weight.to(dtype), bias.to(dtype), stride, tasks)


class TaskBatchNorm(torch.autograd.Function):
    """BatchNorm over (n, H, W) per task and channel, with batch statistics, then ReLU if asked; x (T, n, H, W, C)."""

    @staticmethod
    def forward(x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool) -> tuple[Tensor, Tensor, Tensor]:
        tasks, channels = weight.shape
        dtype = torch.promote_types(x.dtype, torch.float32)
        centred = x.reshape(tasks, -1, channels).to(dtype)
        centred = centred - centred.mean(1, keepdim=True)
        inv_std = torch.rsqrt(centred.square().mean(1, keepdim=True) + eps)
        normed = centred.mul_(inv_std)
        y = torch.addcmul(bias.unsqueeze(1).to(dtype), normed, weight.unsqueeze(1).to(dtype))
        return (y.relu_() if relu else y).view(x.shape), normed, inv_std

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, _, _, relu = inputs
        y, normed, inv_std = output
        ctx.save_for_backward(y if relu else None, normed, inv_std, weight)
        ctx.mark_non_differentiable(normed, inv_std)
        ctx.set_materialize_grads(False)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor | None, _grad_normed: None, _grad_inv_std: None):
        if grad_y is None:
            return None, None, None, None, None
        y, normed, inv_std, weight = ctx.saved_tensors
        tasks, channels = weight.shape
        shape = grad_y.shape
        grad_y = grad_y.reshape(tasks, -1, channels)
        if y is not None:  # ReLU's gradient: zero where it cut
            grad_y = torch.ops.aten.threshold_backward(grad_y, y.view(tasks, -1, channels), 0)
        grad_bias = grad_y.sum(1)
        grad_weight = (grad_y * normed).sum(1)
        rows = normed.shape[1]
        grad_x = grad_y - normed * (grad_weight / rows).unsqueeze(1) - (grad_bias / rows).unsqueeze(1)
        grad_x = grad_x.mul_(inv_std * weight.unsqueeze(1))
        return grad_x.view(shape), grad_weight.to(weight.dtype), grad_bias.to(weight.dtype), None, None


def task_batch_norm(x: Tensor, weight: Tensor, bias: Tensor, eps: float, relu: bool = False) -> Tensor:
    """BatchNorm with each task's batch statistics (weight, bias (T, C)), then ReLU if relu; at least float32."""
    return TaskBatchNorm.apply(x, weight, bias, eps, relu)[0]


def task_max_pool(x: Tensor, pool: torch.nn.MaxPool2d) -> Tensor:
    """pool on each image of x (T, n, H, W, C), channels last throughout."""
    tasks, n = x.shape[:2]
    images = x.flatten(0, 1).permute(0, 3, 1, 2)  # (T * n, C, H, W) with channels-last strides
    out = F.max_pool2d(images, pool.kernel_size, pool.stride, pool.padding, pool.dilation, pool.ceil_mode)
    return out.permute(0, 2, 3, 1).reshape(tasks, n, *out.shape[2:], out.shape[1])
