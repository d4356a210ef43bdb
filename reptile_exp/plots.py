"""Figures a run writes to <run dir>/plots: the learning curve and, for sine, the paper's Figure 1."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from .meta.learner import Learner


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported when a figure is drawn: importing it costs about a
    second, which every run (a config error included) would otherwise pay at start-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _finite(value) -> bool:
    return isinstance(value, float) and math.isfinite(value)


def learning_curve(records: list[dict], path: Path) -> Path | None:
    """Training loss (and every periodic evaluation metric) against the outer iteration."""
    train = [(r["iteration"], r["train/loss"]) for r in records if _finite(r.get("train/loss"))]
    evals = sorted({k for r in records for k in r if k.startswith("eval/") and not k.endswith("ci95")})
    if not train:
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 1 + bool(evals), figsize=(5 + 5 * bool(evals), 3.6), squeeze=False)
    it, loss = zip(*train)
    axes[0, 0].plot(it, loss)
    axes[0, 0].set(xlabel="outer iteration", ylabel="inner-loop loss", title="meta-training", yscale="log")
    for key in evals:
        points = [(r["iteration"], r[key]) for r in records if _finite(r.get(key))]
        if points:
            axes[0, 1].plot(*zip(*points), marker="o", label=key.removeprefix("eval/"))
    if evals:
        axes[0, 1].set(xlabel="outer iteration", title="periodic evaluation")
        axes[0, 1].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


@torch.no_grad()
def sine_fit(
    learner: Learner,
    phi: dict,
    state: dict,
    dataset,
    generator: torch.Generator,
    path: Path,
    steps: tuple[int, ...] = (0, 1, 32),
) -> Path:
    """A held-out sine, its k_shot support points, and the learned initialisation after 0, 1, 32 steps."""
    tasks = dataset.sample_eval(1, max(steps), dataset.k_shot, generator)
    tasks = tasks.to(tasks.x.device, next(iter(phi.values())).dtype)
    grid = torch.linspace(*dataset.x_range, 200, device=tasks.x.device, dtype=tasks.x.dtype).view(1, -1, 1)
    fits = {}

    def observe(j, weights):
        if j in steps:
            fits[j] = learner.predict(weights, grid)[0, :, 0].cpu()

    learner.adapt({n: p.detach() for n, p in phi.items()}, tasks, state, max(steps), observe=observe)
    order = tasks.x_query[0, :, 0].argsort()
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(tasks.x_query[0, order, 0].cpu(), tasks.y_query[0, order, 0].cpu(), "k-", lw=2, label="true sine")
    ax.plot(tasks.x[0, :, 0].cpu(), tasks.y[0, :, 0].cpu(), "ko", label=f"{tasks.x.shape[1]} support points")
    for j in steps:
        ax.plot(grid[0, :, 0].cpu(), fits[j], "--", label=f"after {j} step{'s' if j != 1 else ''}")
    ax.set(xlabel="x", ylabel="y", title="Learned initialisation on a held-out sine")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
