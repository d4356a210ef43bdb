"""The sine task distribution (REFERENCE.md section 8): y = a sin(x + b) with a ~ U[0.1, 5], b ~ U[0, 2 pi].

Reptile setting (x_sampling=grid): training passes over 50 evenly spaced x in [-5, 5]; a test task adapts on 10 of
those grid points and is scored on all 50. MAML setting (the sine_finn_* presets: x_sampling=uniform, phase U[0, pi]):
K = 10 support points x ~ U[-5, 5] and K fresh query points per task, disjoint from the support."""

import math

import pytest
import torch
from conftest import ROOT
from hydra import compose, initialize_config_dir

from reptile_exp.data.sine import Sine
from reptile_exp.experiment import build_dataset

GRID = torch.linspace(-5, 5, 50)
TASKS = 500


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def curves(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Amplitude a and phase b in [0, 2 pi) of each task's y = a sin(x + b) = a cos b sin x + a sin b cos x, by least
    squares on (sin x, cos x) in float64; asserts that the points lie on that curve."""
    x, y = x.double(), y.double()
    basis = torch.cat([torch.sin(x), torch.cos(x)], dim=-1)
    coef = torch.linalg.lstsq(basis, y).solution
    assert (basis @ coef - y).abs().max() < 1e-5, "the points lie on one sine per task"
    a_cos_b, a_sin_b = coef[:, 0, 0], coef[:, 1, 0]
    return torch.hypot(a_cos_b, a_sin_b), torch.atan2(a_sin_b, a_cos_b) % (2 * math.pi)


def assert_uniform(values: torch.Tensor, low: float, high: float) -> None:
    """Within [low, high], reaching both ends, with the uniform mean and spread (4 standard errors)."""
    width = high - low
    assert low - 1e-5 <= values.min() and values.max() <= high + 1e-5
    assert values.min() < low + 0.02 * width and values.max() > high - 0.02 * width
    assert abs(values.mean().item() - (low + high) / 2) < 4 * width / math.sqrt(12 * len(values))
    assert abs(values.std().item() - width / math.sqrt(12)) < 0.1 * width / math.sqrt(12)


def on_grid(x: torch.Tensor) -> torch.Tensor:
    """The grid index of each x (asserting that it is a grid point)."""
    distance, index = (x - GRID).abs().min(dim=-1)
    assert distance.max() < 1e-6, "every x is a grid point"
    return index


def test_grid_training_tasks_pass_over_the_50_grid_points():
    tasks = Sine().sample_train(TASKS, 5, 10, gen())
    assert tasks.x.shape == (TASKS, 50, 1) and tasks.y.shape == (TASKS, 50, 1) and tasks.x_query is None
    assert torch.equal(tasks.x, GRID.view(1, 50, 1).expand(TASKS, -1, -1))
    # 5 steps of 10: one pass over the 50 points, in a new order per task
    assert tasks.batches.shape == (TASKS, 5, 10)
    assert (tasks.batches.flatten(1).sort(-1).values == torch.arange(50)).all(), "every grid point once"
    assert len({tuple(b.flatten().tolist()) for b in tasks.batches}) > 0.99 * TASKS, "shuffled per task"
    a, b = curves(tasks.x, tasks.y)
    assert_uniform(a, 0.1, 5.0)
    assert_uniform(b, 0.0, 2 * math.pi)


def test_grid_test_tasks_adapt_on_10_grid_points_and_score_on_all_50():
    tasks = Sine().sample_eval(TASKS, 32, 10, gen())
    assert tasks.x.shape == (TASKS, 10, 1) and tasks.x_query.shape == (TASKS, 50, 1)
    assert torch.equal(tasks.x_query, GRID.view(1, 50, 1).expand(TASKS, -1, -1)), "scored on the whole grid"
    support = on_grid(tasks.x).sort(dim=1).values
    assert (support[:, 1:] != support[:, :-1]).all(), "10 distinct grid points"
    assert len({tuple(s.flatten().tolist()) for s in support}) > 0.99 * TASKS, "drawn afresh per task"
    assert torch.bincount(support.flatten(), minlength=50).min() > 0, "from the whole grid"
    # the support points lie on the task's curve: fitted on the support, the curve gives the queries' targets
    a, b = curves(tasks.x, tasks.y)
    torch.testing.assert_close(
        a.view(-1, 1, 1) * torch.sin(tasks.x_query.double() + b.view(-1, 1, 1)),
        tasks.y_query.double(),
        rtol=0,
        atol=1e-5,
    )
    assert_uniform(a, 0.1, 5.0)
    assert tasks.batches.shape == (TASKS, 32, 10)
    assert (tasks.batches.sort(-1).values == torch.arange(10)).all(), "32 full-batch steps on the 10 points"


def test_grid_training_tasks_hold_query_points_out_of_the_inner_loop():
    """sine_maml (grid): query_shots of the 50 grid points are MAML's query set; the inner loop passes over the rest."""
    tasks = Sine().sample_train(TASKS, 4, 10, gen(), query_shots=10)
    assert tasks.x.shape == (TASKS, 40, 1) and tasks.x_query.shape == (TASKS, 10, 1)
    every = torch.cat([on_grid(tasks.x), on_grid(tasks.x_query)], dim=1).sort(dim=1).values
    assert (every == torch.arange(50)).all(), "support and queries are disjoint and together the grid"
    assert (tasks.batches.flatten(1).sort(-1).values == torch.arange(40)).all(), "4 steps of 10: one pass, all 40"
    curves(torch.cat([tasks.x, tasks.x_query], 1), torch.cat([tasks.y, tasks.y_query], 1))


@pytest.mark.parametrize("split", ["train", "test"])
def test_maml_setting_draws_fresh_support_and_disjoint_query_points(split):
    """x_sampling=uniform: k_shot support points and k_shot (train: query_shots) query points x ~ U[-5, 5], new for
    every task, none of them a query and a support point at once; both on the task's curve, phase U[0, pi]."""
    sine = Sine(phase=(0.0, math.pi), x_sampling="uniform")
    if split == "train":
        tasks = sine.sample_train(TASKS, 5, 10, gen(), query_shots=10)
    else:
        tasks = sine.sample_eval(TASKS, 32, 10, gen())
    assert tasks.x.shape == (TASKS, 10, 1) and tasks.x_query.shape == (TASKS, 10, 1)
    support, query = tasks.x[..., 0], tasks.x_query[..., 0]
    assert not (support.unsqueeze(2) == query.unsqueeze(1)).any(), "queries disjoint from the support"
    every = torch.cat([support, query], 1)
    assert every.unique().numel() > 0.99 * every.numel(), "continuous x, not the grid's 50 values"
    assert_uniform(every.flatten(), -5.0, 5.0)
    assert len({tuple(s.tolist()) for s in support}) == TASKS
    a, b = curves(torch.cat([tasks.x, tasks.x_query], 1), torch.cat([tasks.y, tasks.y_query], 1))
    assert_uniform(a, 0.1, 5.0)
    assert_uniform(b, 0.0, math.pi)
    assert (tasks.batches.sort(-1).values == torch.arange(10)).all(), "minibatches of 10 over the 10 support points"


@pytest.mark.parametrize(
    ("preset", "phase", "sampling"),
    [("sine_reptile", 2 * math.pi, "grid"), ("sine_finn_reptile", math.pi, "uniform")],
)
def test_the_presets_build_their_setting(preset, phase, sampling):
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "conf")):
        dataset = build_dataset(compose("train", overrides=[f"experiment={preset}"]))
    assert isinstance(dataset, Sine) and dataset.x_sampling == sampling and dataset.k_shot == 10
    assert dataset.amplitude == (0.1, 5.0) and dataset.phase == (0.0, phase) and dataset.x_range == (-5.0, 5.0)
    assert dataset.n_points == 50
