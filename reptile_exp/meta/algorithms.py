"""Meta-gradients. Each algorithm maps (phi, a meta-batch of tasks) to a direction g that the outer
optimizer follows with lr eps: phi <- phi - eps * g for outer SGD.
"""

from __future__ import annotations

from torch import Tensor

from ..data.tasks import TaskBatch
from ..distributed import task_mean
from .learner import Learner
from .optim import Params, State


class Reptile:
    """Reptile, Algorithms 1 and 2: g = phi - mean_t W_t, so outer SGD gives phi + eps * mean_t(W_t - phi).

    Serial Reptile (Algorithm 1) is a meta-batch of one task.
    """

    query_shots = 0

    def meta_gradient(
        self, learner: Learner, phi: Params, tasks: TaskBatch, state: State
    ) -> tuple[Params, State, Tensor]:
        weights, task_state, losses = learner.adapt(phi, tasks, state)
        g = {n: p - task_mean(weights[n]) for n, p in phi.items()}
        return g, learner.inner_optimizer.merge(task_state), losses
