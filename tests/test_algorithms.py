"""The algorithm family against known answers (issue 4): closed forms on quadratic task losses, the
official code's FOMAML update, the Taylor expansion of REFERENCE.md section 1, and plain autograd MAML."""

import copy

import pytest
import torch
from torch import nn
from torch.func import grad

from reptile_exp.data.sine import Sine
from reptile_exp.data.tasks import TaskBatch, minibatch_schedule
from reptile_exp.errors import ConfigError
from reptile_exp.meta.algorithms import FOMAML, MAML, Reptile
from reptile_exp.meta.learner import Learner
from reptile_exp.meta.optim import SGD, Adam
from reptile_exp.models import MLP, BatchStatsNorm2d, OmniglotConvNet

DIM, POINTS, BATCH, QUERY = 3, 12, 4, 5


def _linear_tasks(num_tasks, steps, seed=0):
    """Linear-regression tasks: with a bias-free linear model each minibatch loss is a quadratic in w."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(num_tasks, POINTS, DIM, generator=g, dtype=torch.float64)
    y = torch.randn(num_tasks, POINTS, 1, generator=g, dtype=torch.float64)
    xq = torch.randn(num_tasks, QUERY, DIM, generator=g, dtype=torch.float64)
    yq = torch.randn(num_tasks, QUERY, 1, generator=g, dtype=torch.float64)
    return TaskBatch(x, y, minibatch_schedule(num_tasks, POINTS, steps, BATCH, g), xq, yq)


def _quadratic(x, y):
    """Hessian H and gradient function of mean((x w - y)^2): grad(w) = H w - c."""
    n = x.shape[0]
    h, c = 2 / n * x.T @ x, 2 / n * x.T @ y[:, 0]
    return h, lambda w: h @ w - c


def _linear_learner(alpha):
    model = nn.Linear(DIM, 1, bias=False).double()
    return Learner(model, SGD(alpha), "mse", "mean"), {"weight": model.weight.detach().clone()}


def _closed_form(phi, tasks, alpha):
    """Per task: the adapted point W_k, W_{k-1}, the last minibatch's gradient function and MAML's meta-gradient
    (I - alpha H_1) ... (I - alpha H_k) grad L_query(W_k)."""
    out = []
    for t in range(tasks.num_tasks):
        w, jac = phi["weight"][0].clone(), torch.eye(DIM, dtype=torch.float64)
        for j in range(tasks.batches.shape[1]):
            idx = tasks.batches[t, j]
            h, gfun = _quadratic(tasks.x[t, idx], tasks.y[t, idx])
            w_prev, w = w, w - alpha * gfun(w)
            jac = (torch.eye(DIM, dtype=torch.float64) - alpha * h) @ jac
        _, query_grad = _quadratic(tasks.x_query[t], tasks.y_query[t])
        out.append({"w": w, "w_prev": w_prev, "last_grad": gfun(w_prev), "maml": jac.T @ query_grad(w)})
    return out


def _mean(rows, key):
    return torch.stack([r[key] for r in rows]).mean(0)


@pytest.mark.parametrize("k", [1, 3])
def test_maml_meta_gradient_equals_closed_form_on_quadratics(k):
    alpha, tasks = 0.1, _linear_tasks(4, k)
    learner, phi = _linear_learner(alpha)
    g, _, losses = MAML(query_shots=QUERY).meta_gradient(learner, phi, tasks, {})
    assert losses.shape == (4, k)
    torch.testing.assert_close(g["weight"][0], _mean(_closed_form(phi, tasks, alpha), "maml"), rtol=0, atol=1e-12)


def test_first_order_gradients_are_gradients_at_the_adapted_point():
    """FOMAML (official FOML): alpha * grad L_k(W_{k-1}); MAML first_order: grad L_query(W_k)."""
    alpha, tasks = 0.1, _linear_tasks(4, 3)
    learner, phi = _linear_learner(alpha)
    rows = _closed_form(phi, tasks, alpha)
    g, _, _ = FOMAML().meta_gradient(learner, phi, tasks, {})
    torch.testing.assert_close(g["weight"][0], alpha * _mean(rows, "last_grad"), rtol=0, atol=1e-12)
    g, _, _ = MAML(query_shots=QUERY, first_order=True).meta_gradient(learner, phi, tasks, {})
    query_grads = [_quadratic(tasks.x_query[t], tasks.y_query[t])[1](r["w"]) for t, r in enumerate(rows)]
    torch.testing.assert_close(g["weight"][0], torch.stack(query_grads).mean(0), rtol=0, atol=1e-12)
    g, _, _ = Reptile().meta_gradient(learner, phi, tasks, {})
    torch.testing.assert_close(g["weight"][0], phi["weight"][0] - _mean(rows, "w"), rtol=0, atol=1e-12)


def test_fomaml_tail_uses_only_the_held_out_examples_in_its_last_step():
    alpha, k, tail = 0.1, 3, 2
    tasks = _linear_tasks(4, k)
    tasks.x_query, tasks.y_query = tasks.x_query[:, :tail], tasks.y_query[:, :tail]
    learner, phi = _linear_learner(alpha)
    regular = TaskBatch(tasks.x, tasks.y, tasks.batches[:, : k - 1], tasks.x_query, tasks.y_query)
    rows = _closed_form(phi, regular, alpha)  # the first k - 1 steps see only the regular minibatches
    expected = [alpha * _quadratic(tasks.x_query[t], tasks.y_query[t])[1](r["w"]) for t, r in enumerate(rows)]
    algorithm = FOMAML(tail_shots=tail)
    assert algorithm.query_shots == tail
    g, _, losses = algorithm.meta_gradient(learner, phi, tasks, {})
    assert losses.shape == (4, k)
    torch.testing.assert_close(g["weight"][0], torch.stack(expected).mean(0), rtol=0, atol=1e-12)


def _official_fomaml(model, inner, task_list, eps):
    """The official FOML train_step literally: per task, a fresh copy of phi and of the carried inner optimizer
    state, k steps, update = W_k - W_{k-1}; phi <- phi + eps * mean update (REFERENCE.md section 1)."""
    carried = None
    for tasks in task_list:
        updates = []
        for t in range(tasks.num_tasks):
            task_model = copy.deepcopy(model)
            opt = inner.torch_optimizer(task_model.parameters())
            if carried is not None:
                opt.load_state_dict(copy.deepcopy(carried))
            for j in range(tasks.batches.shape[1]):
                before = [p.detach().clone() for p in task_model.parameters()]
                idx = tasks.batches[t, j]
                opt.zero_grad()
                nn.functional.mse_loss(task_model(tasks.x[t, idx]), tasks.y[t, idx]).backward()
                opt.step()
            updates.append([p.detach() - b for p, b in zip(task_model.parameters(), before)])
            carried = copy.deepcopy(opt.state_dict())
        with torch.no_grad():
            for p, *u in zip(model.parameters(), *updates):
                p += eps * torch.stack(u).mean(0)


@pytest.mark.parametrize(("inner", "meta_batch"), [(SGD(0.02), 4), (Adam(0.01), 1)], ids=["sgd-batched", "adam-serial"])
def test_fomaml_with_outer_sgd_reproduces_the_official_update(inner, meta_batch):
    torch.manual_seed(0)
    model = MLP(hidden=(16, 16)).double()
    reference = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    task_list = [Sine().sample_train(meta_batch, 4, 10, g).to("cpu", torch.float64) for _ in range(3)]
    learner, algorithm = Learner(model, inner), FOMAML()
    outer = torch.optim.SGD(model.parameters(), lr=0.7)
    phi = dict(model.named_parameters())
    state = inner.init({n: p.detach() for n, p in phi.items()})
    for tasks in task_list:
        g_, state, _ = algorithm.meta_gradient(learner, {n: p.detach() for n, p in phi.items()}, tasks, state)
        for n, p in phi.items():
            p.grad = g_[n]
        outer.step()
    _official_fomaml(reference, inner, task_list, eps=0.7)
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def _hvp(loss, phi, v):
    """Hessian of loss at phi times v, reverse over reverse."""
    return grad(lambda p: sum((grad(loss)(p)[n] * v[n]).sum() for n in p))(phi)


def _taylor_errors(alpha):
    """Errors of the k = 2 updates against the O(alpha) expansion of REFERENCE.md section 1, per task then
    averaged over tasks (the expectation): Reptile g/alpha ~ g1 + g2 - alpha H2 g1, FOMAML g/alpha ~ g2 - alpha H2 g1,
    MAML (one step on batch 1, query batch 2) g ~ g2 - alpha H2 g1 - alpha H1 g2; gi, Hi at phi."""
    torch.manual_seed(0)
    model = MLP(hidden=(16, 16)).double()
    learner = Learner(model, SGD(alpha))
    phi = {n: p.detach() for n, p in model.named_parameters()}
    tasks = Sine().sample_train(6, 2, 10, torch.Generator().manual_seed(2)).to("cpu", torch.float64)
    b1, b2 = tasks.minibatch(0), tasks.minibatch(1)
    one_step = TaskBatch(tasks.x, tasks.y, tasks.batches[:, :1], *b2)
    expansions = {"reptile": [], "fomaml": [], "maml": [], "zeroth": []}
    for t in range(tasks.num_tasks):
        losses = [lambda p, x=b[0][t], y=b[1][t]: learner.loss(p, x, y) for b in (b1, b2)]
        g1, g2 = (grad(f)(phi) for f in losses)
        h2g1, h1g2 = _hvp(losses[1], phi, g1), _hvp(losses[0], phi, g2)
        expansions["reptile"].append({n: g1[n] + g2[n] - alpha * h2g1[n] for n in phi})
        expansions["fomaml"].append({n: g2[n] - alpha * h2g1[n] for n in phi})
        expansions["maml"].append({n: g2[n] - alpha * h2g1[n] - alpha * h1g2[n] for n in phi})
        expansions["zeroth"].append(g2)  # FOMAML without its O(alpha) term
    measured = {
        "reptile": Reptile().meta_gradient(learner, phi, tasks, {})[0],
        "fomaml": FOMAML().meta_gradient(learner, phi, tasks, {})[0],
        "maml": MAML(query_shots=BATCH).meta_gradient(learner, phi, one_step, {})[0],
    }
    measured["zeroth"] = measured["fomaml"]
    scale = {"reptile": alpha, "fomaml": alpha, "zeroth": alpha, "maml": 1.0}
    errors = {}
    for key, rows in expansions.items():
        diff = [measured[key][n] / scale[key] - torch.stack([r[n] for r in rows]).mean(0) for n in phi]
        errors[key] = torch.cat([d.flatten() for d in diff]).norm().item()
    return errors


def test_k2_updates_match_the_taylor_expansion_to_second_order():
    """Halving alpha divides an O(alpha^2) error by 4: assert at least ~quadratic shrinkage, and that dropping the
    O(alpha) term leaves an error that only halves (the expansion's alpha term is real)."""
    errors = [_taylor_errors(alpha) for alpha in (0.02, 0.01, 0.005)]
    for coarse, fine in zip(errors, errors[1:]):
        for key in ("reptile", "fomaml", "maml"):
            assert coarse[key] / fine[key] > 3.5, (key, coarse[key], fine[key])
        assert 1.7 < coarse["zeroth"] / fine["zeroth"] < 2.3
    assert errors[-1]["fomaml"] < 0.1 * errors[-1]["zeroth"]


def _autograd_maml(model, learner, tasks, alpha):
    """MAML the textbook way: one task at a time, torch.autograd.grad with create_graph through the k steps."""
    params = dict(model.named_parameters())
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for t in range(tasks.num_tasks):
        w = dict(params)
        for j in range(tasks.batches.shape[1]):
            idx = tasks.batches[t, j]
            loss = learner.loss(w, tasks.x[t, idx], tasks.y[t, idx])
            grads = torch.autograd.grad(loss, list(w.values()), create_graph=True)
            w = {n: p - alpha * gr for (n, p), gr in zip(w.items(), grads)}
        query = learner.loss(w, tasks.x_query[t], tasks.y_query[t])
        for (n, _), gr in zip(params.items(), torch.autograd.grad(query, list(params.values()))):
            total[n] += gr / tasks.num_tasks
    return total


def _image_tasks(num_tasks, steps, n_way=3, shots=2, query=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = lambda n: (torch.rand(num_tasks, n_way * n, 1, 28, 28, generator=g) > 0.5).double()  # noqa: E731
    labels = lambda n: torch.arange(n_way).repeat_interleave(n).expand(num_tasks, -1).contiguous()  # noqa: E731
    batches = minibatch_schedule(num_tasks, n_way * shots, steps, 4, g)
    return TaskBatch(images(shots), labels(shots), batches, images(query), labels(query))


@pytest.mark.parametrize("case", ["sine-mlp-float32", "omniglot-convnet-float64"])
def test_maml_engine_agrees_with_plain_autograd(case):
    """To each dtype's rounding: measured 1.4e-7 (float32, gradients ~0.4) and 7e-15 (float64, gradients ~6)."""
    torch.manual_seed(0)
    if case == "sine-mlp-float32":
        model, loss, reduction, alpha = MLP(hidden=(32, 32), activation="relu"), "mse", "mean", 0.01
        tasks = Sine(x_sampling="uniform").sample_train(5, 3, 10, torch.Generator().manual_seed(0), query_shots=10)
        atol = 1e-6
    else:
        model, loss, reduction, alpha = OmniglotConvNet(3).double(), "cross_entropy", "sum", 0.01
        tasks = _image_tasks(2, 2)
        atol = 1e-12
    learner = Learner(model, SGD(alpha), loss, reduction)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    g, _, _ = MAML(query_shots=1).meta_gradient(learner, phi, tasks, {})
    expected = _autograd_maml(model, learner, tasks, alpha)
    for n in phi:
        torch.testing.assert_close(g[n], expected[n], rtol=0, atol=atol)


def test_every_algorithm_merges_the_inner_state_like_reptile():
    torch.manual_seed(0)
    model = MLP(hidden=(16, 16)).double()
    inner = Adam(0.01)
    learner = Learner(model, inner)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    state = inner.init(phi)
    g = torch.Generator().manual_seed(3)
    tasks = Sine(x_sampling="uniform").sample_train(4, 3, 10, g, query_shots=10).to("cpu", torch.float64)
    _, expected, expected_losses = Reptile().meta_gradient(learner, phi, tasks, state)
    for algorithm in (FOMAML(), MAML(query_shots=10), MAML(query_shots=10, first_order=True)):
        _, merged, losses = algorithm.meta_gradient(learner, phi, tasks, state)
        assert merged["step"] == expected["step"] == 3
        for moment in ("exp_avg", "exp_avg_sq"):
            for n in phi:
                torch.testing.assert_close(merged[moment][n], expected[moment][n], rtol=0, atol=1e-12)
        torch.testing.assert_close(losses, expected_losses, rtol=0, atol=1e-12)


def test_bad_algorithm_options_fail_with_the_key():
    with pytest.raises(ConfigError, match="algorithm.tail_shots=-1"):
        FOMAML(tail_shots=-1)
    with pytest.raises(ConfigError, match="algorithm.query_shots=0"):
        MAML(query_shots=0)
    assert Reptile.query_shots == 0 and FOMAML().query_shots == 0 and MAML(query_shots=7).query_shots == 7


def test_batch_stats_norm_has_the_native_values():
    """models.BatchStatsNorm2d (batch norm in elementary ops, for correct second derivatives under vmap)."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 5, 5, dtype=torch.float64) * 3 + 2
    ours = BatchStatsNorm2d(4, eps=1e-3, track_running_stats=False).double()
    nn.init.uniform_(ours.weight), nn.init.normal_(ours.bias)
    native = nn.BatchNorm2d(4, eps=1e-3, track_running_stats=False).double()
    native.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x), native(x), rtol=0, atol=1e-12)
