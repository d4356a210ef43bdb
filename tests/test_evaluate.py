"""Few-shot evaluation (REFERENCE.md section 5): protocol, batch statistics, and no side effects."""

import copy
import math

import pytest
import torch

from reptile_exp.data.fewshot import FewShotClassification, FewShotSplit
from reptile_exp.data.sine import Sine
from reptile_exp.data.tasks import TaskBatch
from reptile_exp.evaluate import (
    DRAW_BLOCK,
    _non_transductive_logits,
    chunk_size,
    ci95,
    evaluate,
    task_bytes,
    task_chunks,
)
from reptile_exp.measure import peak_memory_mb
from reptile_exp.meta.learner import Learner
from reptile_exp.meta.optim import SGD, Adam
from reptile_exp.meta.reference import SerialReptile
from reptile_exp.models import MLP, OmniglotConvNet


def _dataset(n_way=3, k_shot=2, classes=8, per_class=6):
    g = torch.Generator().manual_seed(0)
    split = lambda: FewShotSplit(  # noqa: E731
        torch.randint(0, 2, (classes, per_class, 1, 28, 28), generator=g, dtype=torch.uint8), [""] * classes
    )
    return FewShotClassification({"train": split(), "test": split()}, n_way, k_shot, train_shots=4)


def _trained_state(learner, phi):
    """An inner Adam state that is not all zeros, as after some meta-training."""
    state = learner.inner_optimizer.init(phi)
    state["step"] = 7
    state["exp_avg_sq"] = {n: torch.rand_like(v) * 1e-3 for n, v in state["exp_avg_sq"].items()}
    return state


def _sine_learner(dtype=torch.float32):
    """A seeded sine MLP of `dtype`, its learner with inner SGD (lr 0.02) and phi."""
    torch.manual_seed(0)
    learner = Learner(MLP().to(dtype), SGD(0.02))
    return learner, {n: p.detach() for n, p in learner.model.named_parameters()}


def _conv_learner():
    """A seeded float64 Omniglot conv net, its learner with inner Adam, phi and a non-zero Adam state."""
    torch.manual_seed(0)
    model = OmniglotConvNet(3).double()
    learner = Learner(model, Adam(0.01), "cross_entropy", "sum")
    phi = {n: p.detach() for n, p in model.named_parameters()}
    return model, learner, phi, _trained_state(learner, phi)


def test_evaluation_leaves_phi_and_the_training_optimizer_state_unchanged():
    model, learner, phi, state = _conv_learner()
    phi_before, state_before = copy.deepcopy(phi), copy.deepcopy(state)
    for transductive in (False, True):
        evaluate(
            learner,
            phi,
            state,
            _dataset(),
            "test",
            6,
            5,
            3,
            torch.Generator().manual_seed(1),
            chunk=4,
            transductive=transductive,
        )
    assert all(torch.equal(phi[n], phi_before[n]) for n in phi)
    assert state["step"] == state_before["step"]
    for key in ("exp_avg", "exp_avg_sq"):
        assert all(torch.equal(state[key][n], state_before[key][n]) for n in phi)


def test_non_transductive_classifies_each_query_with_the_support_set():
    """BatchNorm sees support + that one query; transductive: the N queries alone."""
    torch.manual_seed(0)
    model = OmniglotConvNet(3).double()
    learner = Learner(model, Adam(0.01), "cross_entropy", "sum")
    tasks = _dataset().sample_eval(2, 1, 3, torch.Generator().manual_seed(2)).to("cpu", torch.float64)
    weights = {n: p.detach().unsqueeze(0).expand(2, *p.shape) for n, p in model.named_parameters()}
    logits = _non_transductive_logits(learner, weights, tasks.x, tasks.x_query)
    transductive = learner.predict(weights, tasks.x_query)
    for t in range(2):
        for q in range(3):
            batch = torch.cat([tasks.x[t], tasks.x_query[t, q : q + 1]])
            assert torch.allclose(logits[t, q], model(batch)[-1], atol=1e-10)
        assert torch.allclose(transductive[t], model(tasks.x_query[t]), atol=1e-10)
    assert not torch.allclose(logits, transductive)


@pytest.mark.parametrize("transductive", [False, True], ids=["non-transductive", "transductive"])
def test_accuracy_matches_a_task_by_task_evaluation(transductive):
    """The serial reference (meta/reference.py) evaluates one task after another with torch.optim, each from phi and
    the training Adam state; the per-task accuracies' mean and confidence interval must be the engine's."""
    model, learner, phi, state = _conv_learner()
    dataset, steps, num_tasks = _dataset(), 4, 16
    result = evaluate(
        learner,
        phi,
        state,
        dataset,
        "test",
        num_tasks,
        steps,
        3,
        torch.Generator().manual_seed(3),
        chunk=5,
        transductive=transductive,
    )
    tasks = dataset.sample_eval(num_tasks, steps, 3, torch.Generator().manual_seed(3)).to("cpu", torch.float64)
    reference = SerialReptile(model, learner, outer_optimizer=None)
    moments = ("exp_avg", "exp_avg_sq")
    torch_adam = learner.inner_optimizer.torch_optimizer(model.parameters())
    reference.inner_state = {
        "state": {
            i: {
                "step": torch.tensor(float(state["step"])),
                **{m: state[m][n].clone() for m in moments},
            }
            for i, n in enumerate(phi)
        },
        "param_groups": torch_adam.state_dict()["param_groups"],
    }
    per_task = reference.evaluate(tasks, transductive=transductive)
    # the comparison can fail: the accuracies vary, and the other protocol gives these tasks another mean
    assert per_task.std() > 0 and reference.evaluate(tasks, not transductive).mean() != per_task.mean()
    assert result["accuracy"] == pytest.approx(per_task.mean().item(), abs=1e-12)
    assert result["accuracy_ci95"] == pytest.approx(ci95(per_task), abs=1e-12)


def test_sine_mse_matches_a_task_by_task_evaluation():
    """The serial reference adapts a copy of phi to each test task's k_shot grid points and scores the whole grid
    (REFERENCE.md section 8); the per-task MSEs' mean and confidence interval must be the engine's."""
    learner, phi = _sine_learner(torch.float64)
    result = evaluate(learner, phi, {}, Sine(), "test", 16, 5, 10, torch.Generator().manual_seed(3), chunk=5)
    tasks = Sine().sample_eval(16, 5, 10, torch.Generator().manual_seed(3)).to("cpu", torch.float64)
    per_task = SerialReptile(learner.model, learner, outer_optimizer=None).evaluate(tasks)
    assert per_task.std() > 0
    assert result["mse"] == pytest.approx(per_task.mean().item(), rel=1e-10)
    assert result["mse_ci95"] == pytest.approx(ci95(per_task), rel=1e-9)


def test_sine_curve_starts_at_the_initialisation_and_has_k_eval_plus_one_points():
    """The curve's first point is the unadapted phi's MSE on the test tasks' query points (the grid)."""
    learner, phi = _sine_learner()
    out = evaluate(learner, phi, {}, Sine(), "test", 50, 32, 10, torch.Generator().manual_seed(0), chunk=20, curve=True)
    assert len(out["mse_curve"]) == 33
    assert out["mse_curve"][-1] == out["mse"] < out["mse_curve"][0]
    tasks = Sine().sample_eval(50, 32, 10, torch.Generator().manual_seed(0))
    with torch.no_grad():
        unadapted = ((learner.model(tasks.x_query) - tasks.y_query) ** 2).mean().item()
    assert out["mse_curve"][0] == pytest.approx(unadapted, rel=1e-6)


@pytest.mark.parametrize("steps", [0, 1, 5])
def test_sine_without_the_curve_scores_the_mse_after_all_k_eval_steps(steps):
    learner, phi = _sine_learner()
    scored = [
        evaluate(learner, phi, {}, Sine(), "test", 20, steps, 10, torch.Generator().manual_seed(0), 8, curve=curve)
        for curve in (False, True)
    ]
    assert scored[0] == {"mse": scored[1]["mse_curve"][-1], "mse_ci95": scored[1]["mse_ci95"]}


@pytest.mark.parametrize("dataset", [_dataset(), Sine()], ids=["fewshot", "sine"])
def test_the_seed_alone_fixes_the_test_tasks_whatever_the_chunk(dataset):
    """Memory budgets, devices and transductive or not pick different chunks; the tasks must not change."""
    num_tasks = 2 * DRAW_BLOCK + 13

    def drawn(chunk):
        chunks = list(task_chunks(dataset, "test", num_tasks, 3, 2, torch.Generator().manual_seed(5), chunk))
        assert [c.num_tasks for c in chunks[:-1]] == [chunk] * (len(chunks) - 1) and chunks[-1].num_tasks <= chunk
        return TaskBatch.cat(chunks)

    reference = drawn(num_tasks)
    for chunk in (1, 7, DRAW_BLOCK, DRAW_BLOCK + 1, 500):
        tasks = drawn(chunk)
        for name in ("x", "y", "batches", "x_query", "y_query"):
            assert torch.equal(getattr(tasks, name), getattr(reference, name)), (chunk, name)


def test_evaluation_result_and_progress_do_not_depend_on_the_chunk():
    learner, phi = _sine_learner(torch.float64)
    results = []
    for chunk in (9, 64):
        seen = []
        out = evaluate(
            learner, phi, {}, Sine(), "test", 150, 5, 10, torch.Generator().manual_seed(0), chunk, on_chunk=seen.append
        )
        assert sum(seen) == 150 and len(seen) == -(-150 // chunk)
        results.append(out)
    assert results[0]["mse"] == pytest.approx(results[1]["mse"], rel=1e-12)
    assert results[0]["mse_ci95"] == pytest.approx(results[1]["mse_ci95"], rel=1e-9)


def test_the_interval_is_1_96_sample_standard_errors():
    """ci95 of 50 zeros and 50 ones: 1.96 * sqrt(25/99) / 10 (the sample standard deviation, n - 1)."""
    values = torch.tensor([0.0, 1.0] * 50, dtype=torch.float64)
    assert ci95(values) == pytest.approx(1.96 * math.sqrt(25 / 99) / 10, rel=1e-12)


def test_a_chunk_is_the_most_whole_tasks_that_fit_in_memory_mb_or_the_requested_count():
    """At least one task, at most the evaluation's; below that, one more task would not fit in memory_mb MiB."""
    for per_task in (1, 1000, 2**20 - 1, 2**20, 2**20 + 1, 3 * 2**20, 10**9):
        for tasks in (1, 7, 10**6):
            for memory_mb in (0.5, 1, 3, 2048):
                chunk, budget = chunk_size(per_task, tasks, memory_mb), memory_mb * 2**20
                assert 1 <= chunk <= tasks
                assert chunk == 1 or chunk * per_task <= budget, (per_task, tasks, memory_mb)
                assert chunk == tasks or (chunk + 1) * per_task > budget, (per_task, tasks, memory_mb)
                for requested in (1, 5, 2000):
                    assert chunk_size(per_task, tasks, memory_mb, requested) == min(requested, tasks)


@pytest.mark.parametrize("task_conv", ["grouped", "bmm"])
def test_the_task_memory_estimate_covers_a_measured_evaluation_and_not_twice_over(task_conv):
    """evaluate.task_bytes against the peak tensor memory of real evaluations (float32, chunks of 2 and 4 tasks,
    inner minibatches of 20 and 40 inputs), term by term: the bytes per input through the model (the slope over the
    minibatch) and those per task whatever its inputs (phi's copies, the inner Adam state). Each must cover what was
    measured (or a chunk outgrows eval_memory_mb) and not be twice it (a chunk half the size the budget allows): per
    task measured 1.3x (grouped) and 1.1x (bmm); per input, a looser count of activations, 1.8x and 2.2x (at most
    2.5x), so doubling or halving either count fails here."""
    torch.manual_seed(0)
    model = OmniglotConvNet(3)
    learner = Learner(model, Adam(0.01), "cross_entropy", "sum", task_conv=task_conv)
    phi = {n: p.detach() for n, p in model.named_parameters()}
    state, dataset = _trained_state(learner, phi), _dataset(k_shot=1)  # 10 inputs per task, fewer than a minibatch

    def peak(tasks, batch):
        run = lambda: evaluate(learner, phi, state, dataset, "test", tasks, 3, batch, torch.Generator(), tasks)  # noqa: E731
        return peak_memory_mb(run, torch.device("cpu")) * 2**20

    per_input = (peak(4, 40) - peak(4, 20)) / (4 * 20)
    per_task = (peak(4, 20) - peak(2, 20)) / 2 - 20 * per_input
    estimate = [task_bytes(learner, phi, (1, 28, 28), n) for n in (0, 1)]
    assert 1 <= (estimate[1] - estimate[0]) / per_input <= 2.5
    assert 1 <= estimate[0] / per_task < 2
