"""Sine-wave regression tasks y = a sin(x + b) (REFERENCE.md section 8).

The random numbers are drawn on the generator's device (the CPU) and moved to the data's device, so one seed
gives the same a, b, x and indices on every device; y is computed on the data's device. The moves are
non-blocking host-to-device copies (from pageable memory: safe, and the GPU is not waited for).
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError
from .tasks import KEY_BYTES, TaskBatch, minibatch_schedule, schedule_bytes


class Sine:
    """The sine task distribution.

    x_sampling "grid" is the Reptile setting: n_points evenly spaced x in x_range, the inner loop
    passes over them in minibatches, and a test task adapts on k_shot of the grid points and is
    scored on all of them. "uniform" is the MAML setting: k_shot support and k_shot query points
    drawn uniformly from x_range, fresh for every task.
    """

    kind = "regression"
    input_shape = (1,)

    def __init__(
        self,
        amplitude: tuple[float, float] = (0.1, 5.0),
        phase: tuple[float, float] = (0.0, 2 * math.pi),
        x_range: tuple[float, float] = (-5.0, 5.0),
        n_points: int = 50,
        k_shot: int = 10,
        x_sampling: str = "grid",
    ):
        if x_sampling not in ("grid", "uniform"):
            raise ConfigError(f"dataset.x_sampling={x_sampling!r} is invalid: choose 'grid' or 'uniform'")
        self.amplitude, self.phase, self.x_range = tuple(amplitude), tuple(phase), tuple(x_range)
        self.n_points, self.k_shot, self.x_sampling = n_points, k_shot, x_sampling
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> Sine:
        self.device = torch.device(device)
        return self

    def points(self, query_shots: int = 0, evaluation: bool = False) -> int:
        """The x values one task draws: the grid's n_points, or k_shot support and query_shots (a test task: k_shot)
        query points."""
        if self.x_sampling == "grid":
            return self.n_points
        return self.k_shot + (self.k_shot if evaluation else query_shots)

    def draw_bytes(
        self, steps: int, batch: int, query_shots: int = 0, replacement: bool = False, evaluation: bool = False
    ) -> int:
        """The memory one task's draw passes through (from the shapes: a check must not draw): per point its float32
        x, y and the two temporaries of a sin(x + b); the random keys of uniform x and of the support/query
        permutation; the minibatch schedule over the support (tasks.schedule_bytes); a test task also the float32
        support and query it returns (a training task's: fits.sampled_bytes)."""
        n = self.points(query_shots, evaluation)
        keys = n * (self.x_sampling == "uniform") + n * (evaluation or query_shots > 0)
        support = self.k_shot if evaluation else n - query_shots
        query = (n if self.x_sampling == "grid" else n - self.k_shot) if evaluation else 0
        returned = 2 * 4 * (support + query) if evaluation else 0
        drawn = 4 * 4 * n + KEY_BYTES * keys + returned
        return drawn + schedule_bytes(support, steps, batch, replacement)

    def _uniform(self, shape: tuple[int, ...], bounds: tuple[float, float], g: torch.Generator) -> torch.Tensor:
        low, high = bounds
        return (low + (high - low) * torch.rand(shape, generator=g, device=g.device)).to(self.device, non_blocking=True)

    def _permutations(self, num_tasks: int, n: int, g: torch.Generator) -> torch.Tensor:
        """(num_tasks, n): a uniformly random order of 0..n-1 per task."""
        return torch.rand(num_tasks, n, generator=g, device=g.device).argsort(-1).to(self.device, non_blocking=True)

    def _curves(self, num_tasks: int, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Amplitudes, phases (T, 1, 1) and inputs x (T, n, 1) of num_tasks new tasks."""
        a = self._uniform((num_tasks, 1, 1), self.amplitude, g)
        b = self._uniform((num_tasks, 1, 1), self.phase, g)
        if self.x_sampling == "grid":
            grid = torch.linspace(*self.x_range, self.n_points, device=self.device)
            x = grid.view(1, -1, 1).expand(num_tasks, -1, -1)
        else:
            x = self._uniform((num_tasks, n, 1), self.x_range, g)
        return a, b, x

    def sample_train(
        self,
        num_tasks: int,
        steps: int,
        batch: int,
        generator: torch.Generator,
        replacement: bool = False,
        query_shots: int = 0,
    ) -> TaskBatch:
        """Training tasks: the inner loop cycles over the grid (or k_shot random points)."""
        a, b, x = self._curves(num_tasks, self.points(query_shots), generator)
        y = a * torch.sin(x + b)
        x_query = y_query = None
        if query_shots:
            perm = self._permutations(num_tasks, x.shape[1], generator)
            rows = torch.arange(num_tasks, device=self.device).unsqueeze(1)
            query, support = perm[:, :query_shots], perm[:, query_shots:]
            x_query, y_query = x[rows, query], y[rows, query]
            x, y = x[rows, support], y[rows, support]
        batches = minibatch_schedule(num_tasks, x.shape[1], steps, batch, generator, replacement)
        batches = batches.to(self.device, non_blocking=True)
        return TaskBatch(x.contiguous(), y.contiguous(), batches, x_query, y_query)

    def sample_eval(
        self,
        num_tasks: int,
        steps: int,
        batch: int,
        generator: torch.Generator,
        split: str = "test",
        replacement: bool = False,
    ) -> TaskBatch:
        """Test tasks: adapt on k_shot points (minibatches with `replacement` or not, as in training), score on the
        whole grid (or k_shot fresh points)."""
        a, b, x = self._curves(num_tasks, self.points(evaluation=True), generator)
        y = a * torch.sin(x + b)
        rows = torch.arange(num_tasks, device=self.device).unsqueeze(1)
        support = self._permutations(num_tasks, x.shape[1], generator)[:, : self.k_shot]
        if self.x_sampling == "grid":
            x_query, y_query = x, y
        else:
            x_query, y_query = x[:, self.k_shot :], y[:, self.k_shot :]
            support = torch.arange(self.k_shot, device=self.device).expand(num_tasks, -1)
        batches = minibatch_schedule(num_tasks, self.k_shot, steps, batch, generator, replacement, evaluation=True)
        batches = batches.to(self.device, non_blocking=True)
        return TaskBatch(
            x[rows, support].contiguous(),
            y[rows, support].contiguous(),
            batches,
            x_query.contiguous(),
            y_query.contiguous(),
        )
