"""task_conv=bmm (reptile_exp/task_layers.py): its hand-written gradients against finite differences and against
autograd of the one-task model, under torch.func and torch.compile, in bfloat16, and that a run uses it."""

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck
from torch.func import functional_call, grad, grad_and_value, vmap
from torch.profiler import ProfilerActivity, profile

from reptile_exp import task_layers
from reptile_exp.models import BatchStatsNorm2d, Conv2dSame, MiniImageNetConvNet, OmniglotConvNet, forward_tasks
from reptile_exp.task_layers import (
    BMM_WEIGHT_GRAD_TASKS,
    GroupedConv,
    same_padding,
    task_batch_norm,
    task_conv,
    task_max_pool,
)

F64 = torch.float64


@pytest.mark.parametrize("size,stride,channels", [(7, 1, 3), (8, 1, 1), (7, 2, 1), (8, 2, 3)])
def test_task_conv_gradient_is_the_finite_difference_one(size, stride, channels):
    """Odd and even sizes put TF's extra padding row at the end or split it (stride 2: (1, 1) and (0, 1)); each
    stride with one and with several input channels. float64 finite differences (gradcheck's fast mode: one random
    projection of the Jacobian), and every entry of the gradients against autograd of each task's Conv2dSame,
    which a fault in a few entries cannot pass."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, size, size, channels, dtype=F64, requires_grad=True)
    weight = torch.randn(2, 4, channels, 3, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(2, 4, dtype=F64, requires_grad=True)
    assert gradcheck(lambda *a: task_conv(*a, stride), (x, weight, bias), fast_mode=True)
    out = task_conv(x, weight, bias, stride)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), grad_out)
    conv = Conv2dSame(channels, 4, 3, stride=stride).double()
    out = torch.stack(
        [functional_call(conv, {"weight": weight[t], "bias": bias[t]}, (x[t].permute(0, 3, 1, 2),)) for t in range(2)]
    )
    expected = torch.autograd.grad(out, (x, weight, bias), grad_out.permute(0, 1, 4, 2, 3))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("relu", [False, True])
def test_task_batch_norm_gradient_is_the_finite_difference_one(relu):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 4, 5, dtype=F64, requires_grad=True)
    weight = (torch.rand(2, 5, dtype=F64) + 0.5).requires_grad_()
    bias = torch.randn(2, 5, dtype=F64, requires_grad=True)
    assert gradcheck(lambda *a: task_batch_norm(*a, 1e-3, relu), (x, weight, bias))


@pytest.mark.parametrize("stride", [1, 2])
def test_task_conv_is_each_tasks_conv2d_same(stride):
    """Channels-last task_conv against Conv2dSame (F.pad + F.conv2d) of each task, NCHW. Height 8 and width 9: at
    stride 2 TF pads (0, 1) rows and (1, 1) columns, so swapped sides or swapped axes show."""
    torch.manual_seed(0)
    x, weight, bias = torch.randn(3, 2, 8, 9, 4, dtype=F64), torch.randn(3, 5, 4, 3, 3, dtype=F64), torch.randn(3, 5)
    conv = Conv2dSame(4, 5, 3, stride=stride).double()
    for t in range(3):
        expected = functional_call(conv, {"weight": weight[t], "bias": bias[t].double()}, (x[t].permute(0, 3, 1, 2),))
        got = task_conv(x, weight, bias.double(), stride)[t].permute(0, 3, 1, 2)
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    assert same_padding(28, 3, 2) == (0, 1, 14) and same_padding(7, 3, 2) == (1, 1, 4)


def test_task_max_pool_is_each_images_pool():
    x = torch.randn(2, 3, 21, 21, 4)
    pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True)
    expected = pool(x.flatten(0, 1).permute(0, 3, 1, 2)).permute(0, 2, 3, 1).reshape(2, 3, 11, 11, 4)
    assert torch.equal(task_max_pool(x, pool), expected)


def _losses(model, conv):
    """Summed cross-entropy of every task's model through forward_tasks with task_conv=conv."""

    def total(params, x, y):
        out = forward_tasks(model, params, x, conv)
        return F.cross_entropy(out.flatten(0, 1), y.flatten(), reduction="sum")

    return total


@pytest.mark.parametrize(
    "model,example",
    [(OmniglotConvNet(), (4, 1, 28, 28)), (MiniImageNetConvNet(), (2, 3, 84, 84))],
    ids=["omniglot", "mini"],
)
@pytest.mark.parametrize("conv", ["grouped", "bmm"])
def test_forward_tasks_gradients_are_each_tasks_own(model, example, conv):
    """Every task's gradient from one backward pass of the summed losses through forward_tasks (task_layers, or
    the grouped convolutions: channels last for the Mini-ImageNet net on a CPU) equals vmap(grad) of the one-task
    model (float64), via autograd and via torch.func (the compiled path's)."""
    torch.manual_seed(0)
    model, tasks = model.double(), 3
    params = {n: p.detach() + 0.1 * torch.randn(tasks, *p.shape, dtype=F64) for n, p in model.named_parameters()}
    x, y = torch.randn(tasks, *example, dtype=F64), torch.randint(0, 5, (tasks, example[0]))

    def one(p, xt, yt):
        return F.cross_entropy(functional_call(model, p, (xt,)), yt, reduction="sum")

    expected = vmap(grad(one))(params, x, y)
    leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
    autograd = dict(zip(leaves, torch.autograd.grad(_losses(model, conv)(leaves, x, y), list(leaves.values()))))
    func = grad(_losses(model, conv))(params, x, y)
    for name in expected:
        torch.testing.assert_close(autograd[name], expected[name], rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(func[name], expected[name], rtol=1e-9, atol=1e-9)


def test_bmm_gradients_under_torch_compile():
    """torch.compile (compile=inductor, cudagraphs) traces task_layers' backward; there torch 2.14's
    ctx.needs_input_grad said False for the weights of every conv after the first: all their gradients came out
    zero until the backward stopped asking (a small two-conv net keeps the compile short)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        Conv2dSame(1, 4, 3, stride=2),
        BatchStatsNorm2d(4, eps=1e-3, affine=True, track_running_stats=False),
        torch.nn.ReLU(),
        Conv2dSame(4, 4, 3, stride=2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 2 * 2, 3),
    )
    params = {n: p.detach() + 0.1 * torch.randn(2, *p.shape) for n, p in model.named_parameters()}
    x, y = torch.randn(2, 3, 1, 8, 8), torch.randint(0, 3, (2, 3))
    eager, _ = grad_and_value(_losses(model, "bmm"))(params, x, y)
    compiled, _ = torch.compile(grad_and_value(_losses(model, "bmm")))(params, x, y)
    for name in eager:
        assert eager[name].abs().max() > 0
        torch.testing.assert_close(compiled[name], eager[name], rtol=1e-4, atol=1e-5)


def test_bmm_under_bf16_autocast_multiplies_in_bfloat16_and_rounds_like_it():
    """Under autocast(bfloat16) the columns are bfloat16 and the outputs stay within bf16's rounding (8 bits of
    mantissa: relative 2^-8 per product, a few times that after BatchNorm and four layers) of float32's, and not
    equal to them (float32 silently kept would pass the closeness alone)."""
    torch.manual_seed(0)
    model = OmniglotConvNet()
    params = {n: p.detach() + 0.1 * torch.randn(3, *p.shape) for n, p in model.named_parameters()}
    x = torch.randn(3, 4, 1, 28, 28)
    full = forward_tasks(model, params, x, "bmm")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = forward_tasks(model, params, x, "bmm").float()
    error = ((half - full).abs().max() / full.abs().max()).item()
    assert 1e-4 < error < 0.05


def _conv_ops(task_conv: str) -> set[str]:
    model = OmniglotConvNet()
    params = {
        n: p.detach().unsqueeze(0).repeat(2, *[1] * p.dim()).requires_grad_() for n, p in model.named_parameters()
    }
    x, y = torch.randn(2, 3, 1, 28, 28), torch.randint(0, 5, (2, 3))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        _losses(model, task_conv)(params, x, y).backward()
    return {e.name for e in prof.events()}


def test_task_conv_bmm_is_in_effect_when_asked():
    """task_conv=bmm convolves with batched matmuls of im2col columns and no convolution kernel runs, forward or
    backward; grouped runs the convolution kernels."""
    bmm, grouped = _conv_ops("bmm"), _conv_ops("grouped")
    assert {"TaskConv", "TaskConvBackward", "TaskBatchNorm"} <= bmm
    assert not {n for n in bmm if "convolution" in n}
    assert {"aten::convolution", "aten::convolution_backward"} <= grouped and "TaskConv" not in grouped


# ------------------------------------------------------------------- GroupedConv: the grouped path's weight gradient


@pytest.mark.parametrize("height,width,stride,channels", [(7, 8, 1, 3), (8, 9, 2, 1), (9, 7, 2, 3)])
def test_grouped_conv_gradient_is_the_finite_difference_one(height, width, stride, channels):
    """The batched-matmul weight gradient (and oneDNN's input gradient) of every task's grouped convolution; height
    and width differ so swapped axes show. float64 finite differences (gradcheck's fast mode), and every entry
    against autograd of F.conv2d with groups."""
    torch.manual_seed(0)
    tasks = 3
    x = torch.randn(2, tasks * channels, height, width, dtype=F64).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(tasks * 4, channels, 3, 3, dtype=F64, requires_grad=True)
    bias = torch.randn(tasks * 4, dtype=F64, requires_grad=True)
    inputs = (x.requires_grad_(), weight, bias)
    assert gradcheck(lambda *a: GroupedConv.apply(*a, stride, tasks), inputs, fast_mode=True)
    out = F.conv2d(x, weight, bias, stride, groups=tasks)
    grad_out = torch.randn_like(out)
    got = torch.autograd.grad(GroupedConv.apply(*inputs, stride, tasks), inputs, grad_out)
    expected = torch.autograd.grad(out, inputs, grad_out)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("tasks", [BMM_WEIGHT_GRAD_TASKS - 1, BMM_WEIGHT_GRAD_TASKS])
def test_grouped_conv_is_used_under_bf16_from_enough_tasks_and_agrees(tasks, monkeypatch):
    """forward_tasks' grouped convolutions go through GroupedConv under bfloat16 autocast on a CPU from
    BMM_WEIGHT_GRAD_TASKS tasks (evaluation chunks), not below (meta-batches); its gradients equal oneDNN's to
    bfloat16 rounding (8 bits of mantissa: 2% of each gradient's largest entry)."""
    torch.manual_seed(0)
    model = OmniglotConvNet()
    params = {n: p.detach().expand(tasks, *p.shape).clone().requires_grad_() for n, p in model.named_parameters()}
    x, y = torch.randn(tasks, 5, 1, 28, 28), torch.randint(0, 5, (tasks, 5))

    def gradients():
        with torch.autocast("cpu", torch.bfloat16):
            loss = _losses(model, "grouped")(params, x, y)
        names, seen = set(), [loss.grad_fn]
        while seen:
            node = seen.pop()
            names.add(type(node).__name__)
            seen += [n for n, _ in node.next_functions if n is not None]
        return torch.autograd.grad(loss, list(params.values())), names

    got, names = gradients()
    assert ("GroupedConvBackward" in names) == (tasks >= BMM_WEIGHT_GRAD_TASKS)
    monkeypatch.setattr(task_layers, "BMM_WEIGHT_GRAD_TASKS", 10**9)
    expected, names = gradients()
    assert "GroupedConvBackward" not in names
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0.02 * e.abs().max().item())
