"""The paper's networks (REFERENCE.md section 3): parameter counts, shapes, TF "same" padding."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, vmap
from torch.utils._python_dispatch import TorchDispatchMode

from reptile_exp.models import (
    MLP,
    Conv2dSame,
    MiniImageNetConvNet,
    OmniglotConvNet,
    forward_tasks,
    num_parameters,
    task_batchable,
)


@pytest.mark.parametrize(
    "model,count,shape",
    [
        (OmniglotConvNet(5), 113_221, (7, 1, 28, 28)),
        (OmniglotConvNet(20), 117_076, (7, 1, 28, 28)),
        (MiniImageNetConvNet(5), 34_661, (7, 3, 84, 84)),
        (MLP(), 4_353, (7, 1)),
    ],
)
def test_parameter_counts_and_output_shapes(model, count, shape):
    assert num_parameters(model) == count
    out = model(torch.rand(shape))
    assert out.shape == (7, model[-1].out_features)


def test_feature_map_sizes_follow_the_paper():
    sizes = []
    x = torch.rand(2, 1, 28, 28)
    for layer in OmniglotConvNet(5):
        x = layer(x)
        if isinstance(layer, Conv2dSame):
            sizes.append(x.shape[-1])
    assert sizes == [14, 7, 4, 2]
    sizes, x = [], torch.rand(2, 3, 84, 84)
    for layer in MiniImageNetConvNet(5):
        x = layer(x)
        if isinstance(layer, torch.nn.MaxPool2d):
            sizes.append(x.shape[-1])
    assert sizes == [42, 21, 11, 6]


def test_same_padding_puts_the_extra_row_at_the_end_like_tensorflow():
    conv = Conv2dSame(1, 1, 3, stride=2, bias=False)
    x = torch.rand(1, 1, 28, 28)
    # TF: 28 -> 14 needs 1 pixel of padding in total, all of it after the image.
    expected = F.conv2d(F.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), expected)


def test_batchnorm_uses_batch_statistics_in_eval_mode_too():
    model = OmniglotConvNet(5).eval()
    x = torch.rand(6, 1, 28, 28)
    assert all(m.running_mean is None for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    # with batch statistics the outputs of one example depend on the rest of the batch
    assert not torch.allclose(model(x)[:1], model(x[:1].repeat(6, 1, 1, 1))[:1])


@pytest.mark.parametrize(
    "make,layers", [(MLP, 3), (OmniglotConvNet, 5), (MiniImageNetConvNet, 5)], ids=["mlp", "omniglot", "miniimagenet"]
)
def test_glorot_uniform_weights_and_zero_biases(make, layers):
    """Every conv and linear layer (not only the first): weights within the Glorot bound sqrt(6 / (fan_in + fan_out))
    and reaching near it (torch's default init has another bound), biases zero."""
    torch.manual_seed(0)
    weighted = [m for m in make().modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert len(weighted) == layers
    for m in weighted:
        receptive = m.weight[0, 0].numel()  # kernel size (1 for a linear layer)
        bound = (6 / ((m.weight.shape[0] + m.weight.shape[1]) * receptive)) ** 0.5
        assert bound * 0.8 < m.weight.abs().max() <= bound, m
        assert torch.count_nonzero(m.bias) == 0, m


@pytest.mark.parametrize(
    "model,example",
    [(MLP(), (10, 1)), (OmniglotConvNet(), (6, 1, 28, 28)), (MiniImageNetConvNet(), (3, 3, 84, 84))],
    ids=["mlp", "omniglot", "miniimagenet"],
)
def test_forward_tasks_is_vmap_of_each_tasks_model(model, example):
    """The grouped layout (tasks' channels as groups, BatchNorm per task and channel) gives every task its own
    model's outputs on its own inputs, with different weights per task."""
    torch.manual_seed(0)
    model = model.double()
    tasks = 3
    params = {n: p.detach() + 0.1 * torch.randn(tasks, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
    x = torch.randn(tasks, *example, dtype=torch.float64)
    expected = vmap(lambda p, xt: functional_call(model, p, (xt,)))(params, x)
    torch.testing.assert_close(forward_tasks(model, params, x), expected, rtol=0, atol=1e-10)
    assert task_batchable(model)


class ConvInputs(TorchDispatchMode):
    """Records whether each convolution's input is channels last in memory."""

    def __init__(self):
        super().__init__()
        self.channels_last = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.convolution.default:
            self.channels_last.append(args[0].is_contiguous(memory_format=torch.channels_last))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "model,example,bf16,channels_last",
    [
        (OmniglotConvNet(), (6, 1, 28, 28), False, False),
        (OmniglotConvNet(), (6, 1, 28, 28), True, True),
        (MiniImageNetConvNet(), (3, 3, 84, 84), False, True),
        (MiniImageNetConvNet(), (3, 3, 84, 84), True, True),
    ],
    ids=["omniglot", "omniglot-bf16", "miniimagenet", "miniimagenet-bf16"],
)
def test_the_grouped_layout_is_channels_last_on_a_cpu_where_the_model_asks_or_under_bf16(
    model, example, bf16, channels_last
):
    """MiniImageNetConvNet.channels_last_on_cpu: its grouped convolutions (and pooling) ran faster channels last
    on a CPU; Omniglot's did so only under bfloat16 autocast (oneDNN's bfloat16 convolutions). Every convolution of
    the grouped path gets its input in that layout."""
    params = {n: p.detach().expand(3, *p.shape) for n, p in model.named_parameters()}
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16), ConvInputs() as seen:
        forward_tasks(model, params, torch.randn(3, *example))
    assert seen.channels_last == [channels_last] * 4


def test_a_model_with_an_unknown_layer_is_not_task_batchable():
    assert not task_batchable(torch.nn.Sequential(torch.nn.Linear(1, 4), torch.nn.Dropout(0.1)))


def _same_conv(x: torch.Tensor, conv: torch.nn.Conv2d) -> torch.Tensor:
    """TensorFlow "same" convolution written out: pad (extra row and column at the end), then convolve."""
    k, s = conv.kernel_size[0], conv.stride[0]
    pads = [max((-(-n // s) - 1) * s + k - n, 0) for n in x.shape[-2:]]
    x = F.pad(x, (pads[1] // 2, pads[1] - pads[1] // 2, pads[0] // 2, pads[0] - pads[0] // 2))
    return F.conv2d(x, conv.weight, conv.bias, s)


def _batch_norm(h: torch.Tensor, norm: torch.nn.Module) -> torch.Tensor:
    """BatchNorm over the batch statistics with eps 1e-3 (REFERENCE.md section 3), the formula written out."""
    mean, var = h.mean((0, 2, 3), keepdim=True), h.var((0, 2, 3), unbiased=False, keepdim=True)
    return (h - mean) / torch.sqrt(var + 1e-3) * norm.weight.view(1, -1, 1, 1) + norm.bias.view(1, -1, 1, 1)


@pytest.mark.parametrize("net,pool", [(OmniglotConvNet, False), (MiniImageNetConvNet, True)])
def test_the_conv_nets_compute_the_papers_blocks(net, pool):
    """Each block is conv (same) -> BatchNorm (batch statistics, eps 1e-3) -> [max-pool 2x2, same] -> ReLU, then the
    linear layer (REFERENCE.md section 3: BatchNorm before the pooling, not after as in the paper's first version).
    Inputs scaled so that the channels' variances are near eps, where another eps shows."""
    torch.manual_seed(0)
    model = net(5).double()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(0.02)
    x = torch.rand(6, model[0].in_channels, *((28, 28) if net is OmniglotConvNet else (84, 84)), dtype=torch.float64)
    h, layers = x, list(model)
    for block in range(4):
        conv, norm = layers[block * (4 if pool else 3)], layers[block * (4 if pool else 3) + 1]
        h = _batch_norm(_same_conv(h, conv), norm)
        h = F.relu(F.max_pool2d(h, 2, 2, ceil_mode=True) if pool else h)
    expected = layers[-1](h.flatten(1))
    torch.testing.assert_close(model(x), expected, rtol=1e-9, atol=1e-12)
