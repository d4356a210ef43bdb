"""The task-batched engine against the plain serial reference (issue 2 acceptance)."""

import copy

import pytest
import torch
import torch.nn.functional as F
from conftest import GPU
from torch.func import functional_call

from reptile_exp.data.sine import Sine
from reptile_exp.data.tasks import TaskBatch, minibatch_schedule
from reptile_exp.meta.algorithms import Reptile
from reptile_exp.meta.learner import Learner
from reptile_exp.meta.optim import SGD, Adam
from reptile_exp.meta.reference import SerialReptile
from reptile_exp.models import MLP, OmniglotConvNet


def _sine_tasks(steps=5, meta_batch=5, outer_steps=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [Sine().sample_train(meta_batch, steps, 10, g) for _ in range(outer_steps)]


def _image_tasks(steps=3, meta_batch=3, outer_steps=3, seed=0, n_way=5, shots=2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(outer_steps):
        x = (torch.rand(meta_batch, n_way * shots, 1, 28, 28, generator=g) > 0.5).float()
        y = torch.arange(n_way).repeat_interleave(shots).expand(meta_batch, -1).contiguous()
        out.append(TaskBatch(x, y, minibatch_schedule(meta_batch, n_way * shots, steps, 5, g)))
    return out


def _run_both(model, inner, loss, reduction, task_list, dtype, eps=0.5, skip=(), task_conv="grouped"):
    model = model.to(dtype)
    reference_model = copy.deepcopy(model)
    learner = Learner(model, inner, loss, reduction, task_conv=task_conv)
    # engine
    outer = torch.optim.SGD(model.parameters(), lr=eps)
    phi = dict(model.named_parameters())
    state = inner.init({n: p.detach() for n, p in phi.items()})
    algorithm = Reptile()
    for tasks in task_list:
        tasks = tasks.to("cpu", dtype)
        g, state, _ = algorithm.meta_gradient(learner, {n: p.detach() for n, p in phi.items()}, tasks, state)
        for n, p in phi.items():
            p.grad = g[n]
        outer.step()
    # reference
    reference = SerialReptile(
        reference_model,
        Learner(reference_model, inner, loss, reduction),
        torch.optim.SGD(reference_model.parameters(), lr=eps),
    )
    for tasks in task_list:
        reference.outer_step(tasks.to("cpu", dtype))
    pairs = zip(model.named_parameters(), reference_model.parameters())
    return max((a - b).abs().max().item() for (name, a), b in pairs if name not in skip)


@pytest.mark.parametrize("inner", [SGD(0.02), Adam(0.001), Adam(0.001, reset=True)], ids=["sgd", "adam", "adam-reset"])
def test_engine_matches_reference_float64_sine(inner):
    torch.manual_seed(0)
    assert _run_both(MLP(), inner, "mse", "mean", _sine_tasks(), torch.float64) < 1e-10


def test_engine_matches_reference_float32_sgd_sine():
    torch.manual_seed(0)
    assert _run_both(MLP(), SGD(0.02), "mse", "mean", _sine_tasks(), torch.float32) < 1e-5


TASK_CONV = pytest.mark.parametrize("task_conv", ["grouped", "bmm"])


@TASK_CONV
def test_engine_matches_reference_float64_sgd_convnet(task_conv):
    torch.manual_seed(0)
    tasks = _image_tasks()
    assert (
        _run_both(OmniglotConvNet(5), SGD(0.001), "cross_entropy", "sum", tasks, torch.float64, task_conv=task_conv)
        < 1e-10
    )


@TASK_CONV
def test_engine_matches_reference_float64_adam_convnet(task_conv):
    """A conv bias feeding BatchNorm has zero true gradient: BN subtracts it again. Adam divides its
    rounding noise by the noise's own RMS and so takes steps of ~lr * 1e-6 in float64 (full-size in
    float32). Those biases carry no signal and differ at ~1e-9; every other parameter must agree."""
    torch.manual_seed(0)
    model = OmniglotConvNet(5)
    bn_fed_biases = {f"{i}.bias" for i in (0, 3, 6, 9)}
    tasks = _image_tasks()
    run = lambda model, **kw: _run_both(  # noqa: E731
        model, Adam(0.001), "cross_entropy", "sum", tasks, torch.float64, task_conv=task_conv, **kw
    )
    assert run(copy.deepcopy(model), skip=bn_fed_biases) < 1e-10
    assert run(model) < 1e-7


@TASK_CONV
def test_engine_matches_reference_float32_sgd_convnet(task_conv):
    torch.manual_seed(0)
    tasks = _image_tasks()
    assert (
        _run_both(OmniglotConvNet(5), SGD(0.001), "cross_entropy", "sum", tasks, torch.float32, task_conv=task_conv)
        < 1e-5
    )


def test_one_step_reptile_is_sgd_on_mean_loss():
    """REFERENCE.md section 1: with k = 1 and inner SGD, batched Reptile is SGD with lr eps*alpha on E[L]."""
    torch.manual_seed(0)
    model = MLP()
    alpha, eps = 0.02, 0.3
    learner = Learner(model, SGD(alpha))
    tasks = Sine().sample_train(5, 1, 10, torch.Generator().manual_seed(1))
    phi = {n: p.detach() for n, p in model.named_parameters()}
    g, _, _ = Reptile().meta_gradient(learner, phi, tasks, {})
    reptile = {n: p - eps * g[n] for n, p in phi.items()}
    xb, yb = tasks.minibatch(0)
    params = {n: p.clone().requires_grad_() for n, p in phi.items()}
    loss = torch.stack([learner.loss(params, xb[t], yb[t]) for t in range(5)]).mean()
    grads = torch.autograd.grad(loss, list(params.values()))
    for (n, p), gr in zip(phi.items(), grads):
        assert torch.allclose(reptile[n], p - eps * alpha * gr, atol=1e-6, rtol=0)


@pytest.mark.parametrize("inner", [SGD(0.02), Adam(0.01)], ids=["sgd", "adam"])
def test_in_place_step_equals_the_functional_step_whatever_the_gradients_layout(inner):
    """Autograd may hand back a transposed (non-contiguous) gradient (the grouped path's linear weights do); the
    fused Adam kernel walks memory in the parameters' order, so step_ must not pair the wrong elements."""
    torch.manual_seed(0)
    params = {"w": torch.randn(3, 4, 5, dtype=torch.float64)}
    grads = {"w": torch.randn(3, 5, 4, dtype=torch.float64).transpose(1, 2)}
    state = inner.tile(inner.init({"w": params["w"][0]}), 3, owned=True)
    expected, expected_state = inner.step(params, grads, state)
    state = inner.step_(params, grads, state)
    torch.testing.assert_close(params["w"], expected["w"], rtol=0, atol=1e-15)
    assert state.keys() == expected_state.keys()
    if isinstance(inner, Adam):  # the moments and the step count (the next step's bias correction) advanced too
        assert state["step"] == expected_state["step"] == 1
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(state[moment]["w"], expected_state[moment]["w"], rtol=0, atol=1e-15)


@pytest.mark.parametrize("meta_batch", [1, 3])
def test_in_place_inner_loop_leaves_phi_and_the_carried_state_alone(meta_batch):
    """With fused (the default) adapt updates weights and Adam state in place: they must be its own copies, also
    with one task, where the expanded view of phi is contiguous and .contiguous() would not copy."""
    model = MLP(hidden=(16, 16)).double()
    inner = Adam(0.01)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    state = inner.init(phi)
    state["exp_avg_sq"] = {n: v + 1.0 for n, v in state["exp_avg_sq"].items()}
    before = copy.deepcopy((phi, state))
    tasks = _sine_tasks(steps=3, meta_batch=meta_batch, outer_steps=1)[0].to("cpu", torch.float64)
    weights, task_state, _ = Learner(model, inner).adapt(phi, tasks, state)
    assert all(not torch.equal(weights[n][0], phi[n]) for n in phi)  # it did move
    for n in phi:
        assert torch.equal(phi[n], before[0][n])
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[moment][n], before[1][moment][n])
            assert not torch.equal(task_state[moment][n][0], state[moment][n])


@pytest.mark.cuda
def test_engine_matches_reference_on_cuda():
    torch.manual_seed(0)
    model = MLP().to(GPU)
    tasks = [t.to(GPU) for t in _sine_tasks()]
    assert _run_both_on(model, tasks, GPU) < 1e-5


def _run_both_on(model, task_list, device):
    reference_model = copy.deepcopy(model)
    learner = Learner(model, SGD(0.02))
    outer = torch.optim.SGD(model.parameters(), lr=0.5)
    for tasks in task_list:
        phi = {n: p.detach() for n, p in model.named_parameters()}
        g, _, _ = Reptile().meta_gradient(learner, phi, tasks, {})
        for n, p in model.named_parameters():
            p.grad = g[n]
        outer.step()
    reference = SerialReptile(
        reference_model, Learner(reference_model, SGD(0.02)), torch.optim.SGD(reference_model.parameters(), lr=0.5)
    )
    for tasks in task_list:
        reference.outer_step(tasks)
    return max((a - b).abs().max().item() for a, b in zip(model.parameters(), reference_model.parameters()))


def test_adapt_stays_differentiable_with_respect_to_a_phi_that_requires_grad():
    """The grouped step takes its gradients with plain autograd on detached copies of the weights, except where the
    weights are differentiated themselves: d(sum of the adapted weights)/d phi through 3 inner SGD steps equals the
    vmap path's, and differs from the identity a detached inner gradient would give."""
    torch.manual_seed(0)
    model = MLP().double()
    tasks = Sine().sample_train(3, 3, 10, torch.Generator().manual_seed(1)).to("cpu", torch.float64)
    through = {}
    for grouped in (True, False):
        learner = Learner(model, SGD(0.1), grouped=grouped)
        phi = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
        weights, _, _ = learner.adapt(phi, tasks, {})
        through[grouped] = torch.autograd.grad(sum(w.sum() for w in weights.values()), list(phi.values()))
    for a, b in zip(*through.values()):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert max((g - 3).abs().max().item() for g in through[True]) > 1e-3  # 3 tasks: the identity would give 3


def test_inner_adam_defaults_and_two_steps_by_hand():
    """The paper's inner Adam: betas (0, 0.999), eps 1e-8, state kept (REFERENCE.md section 2). With beta1 = 0 two
    steps from a zero state on gradients g1, g2 move by lr * g1 / (|g1| + eps), then lr * g2 / (sqrt(v2 / (1 - b2^2))
    + eps) with v2 = b2 (1 - b2) g1^2 + (1 - b2) g2^2: computed here without torch.optim."""
    adam = Adam(0.1)
    assert (adam.betas, adam.eps, adam.reset) == ((0.0, 0.999), 1e-8, False)
    g1, g2 = torch.tensor([0.5, -2.0], dtype=torch.float64), torch.tensor([1.0, 3.0], dtype=torch.float64)
    b2, eps = 0.999, 1e-8
    step1 = 0.1 * g1 / (g1.abs() + eps)
    v2 = b2 * (1 - b2) * g1**2 + (1 - b2) * g2**2
    step2 = 0.1 * g2 / (torch.sqrt(v2 / (1 - b2**2)) + eps)
    expected = -(step1 + step2)
    for in_place in (False, True):
        zero = torch.zeros(2, dtype=torch.float64)
        params, state = {"w": zero.unsqueeze(0).clone()}, adam.tile(adam.init({"w": zero}), 1, owned=True)
        for g in (g1, g2):
            if in_place:
                state = adam.step_(params, {"w": g.unsqueeze(0)}, state)
            else:
                params, state = adam.step(params, {"w": g.unsqueeze(0)}, state)
        torch.testing.assert_close(params["w"][0], expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("betas", [(0.0, 0.999), (0.9, 0.99)], ids=["paper", "beta1=0.9"])
def test_inner_adam_takes_torch_adams_steps_for_any_betas(betas):
    """Adam.step and step_ on task-stacked parameters take torch.optim.Adam's steps, task by task, over several
    gradients; with beta1 > 0 the bias correction 1 - beta1^t matters too (the paper's beta1 = 0 hides it)."""
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(2, 3, generator=g, dtype=torch.float64) for _ in range(4)]  # 2 tasks, 4 steps
    expected = []
    for t in range(2):
        w = torch.zeros(3, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.1, betas=betas, eps=1e-8)
        for grad in grads:
            w.grad = grad[t].clone()
            opt.step()
        expected.append(w.detach())
    adam = Adam(0.1, betas=betas)
    for in_place in (False, True):
        zero = torch.zeros(3, dtype=torch.float64)
        params, state = {"w": zero.expand(2, 3).clone()}, adam.tile(adam.init({"w": zero}), 2, owned=True)
        for grad in grads:
            if in_place:
                state = adam.step_(params, {"w": grad}, state)
            else:
                params, state = adam.step(params, {"w": grad}, state)
        torch.testing.assert_close(params["w"], torch.stack(expected), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("grouped", [True, False], ids=["grouped", "vmap"])
def test_inner_losses_and_gradients_are_the_papers(grouped):
    """REFERENCE.md sections 2 and 8: the classifier's loss is cross-entropy summed over the minibatch, the sine loss
    the mean squared error; every task's loss and gradient from Learner.gradients equal those of F.cross_entropy and
    F.mse_loss on that task's own model."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    cases = [
        (
            OmniglotConvNet(5).double(),
            "cross_entropy",
            "sum",
            torch.rand(2, 10, 1, 28, 28, generator=g).double(),
            torch.randint(0, 5, (2, 10), generator=g),
            lambda out, y: F.cross_entropy(out, y, reduction="sum"),
        ),
        (
            MLP().double(),
            "mse",
            "mean",
            torch.randn(2, 10, 1, generator=g).double(),
            torch.randn(2, 10, 1, generator=g).double(),
            F.mse_loss,
        ),
    ]
    for model, loss, reduction, x, y, paper_loss in cases:
        weights = {n: p.detach() + 0.01 * torch.randn(2, *p.shape, dtype=p.dtype) for n, p in model.named_parameters()}
        grads, losses = Learner(model, SGD(0.1), loss, reduction, grouped=grouped).gradients(weights, x, y)
        for t in range(2):
            leaves = {n: w[t].clone().requires_grad_() for n, w in weights.items()}
            task_loss = paper_loss(functional_call(model, leaves, (x[t],)), y[t])
            expected = torch.autograd.grad(task_loss, list(leaves.values()))
            torch.testing.assert_close(losses[t], task_loss.detach(), rtol=1e-12, atol=1e-12)
            for n, e in zip(leaves, expected):
                torch.testing.assert_close(grads[n][t], e, rtol=1e-9, atol=1e-12)
