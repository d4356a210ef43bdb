"""Meta-gradients. Each algorithm maps (phi, a meta-batch of tasks) to a direction g that the outer
optimizer follows with lr eps: phi <- phi - eps * g for outer SGD.

Every `meta_gradient(learner, phi, tasks, state)` returns (g, the merged inner-optimizer state, the
(T, k) inner-loop losses); `query_shots` is the number of held-out examples per class (sine: points)
the sampler must draw into tasks.x_query. Means over tasks go through `distributed.task_mean`.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.func import grad, vmap

from ..data.tasks import TaskBatch
from ..distributed import task_mean
from ..errors import ConfigError
from .learner import Learner
from .optim import Params, State


class Reptile:
    """Reptile, Algorithms 1 and 2: g = phi - mean_t W_t, so outer SGD gives phi + eps * mean_t(W_t - phi).

    Serial Reptile (Algorithm 1) is a meta-batch of one task; k = 1 is joint training on the expected
    loss (REFERENCE.md section 1).
    """

    query_shots = 0

    def meta_gradient(
        self, learner: Learner, phi: Params, tasks: TaskBatch, state: State
    ) -> tuple[Params, State, Tensor]:
        weights, task_state, losses = learner.adapt(phi, tasks, state)
        g = {n: p - task_mean(weights[n]) for n, p in phi.items()}
        return g, learner.inner_optimizer.merge(task_state), losses


class FOMAML:
    """First-order MAML as the official code's FOML (REFERENCE.md section 1): the task's contribution is
    its last inner step only, g = mean_t(W_{k-1} - W_k), so outer SGD gives phi + eps * mean_t(W_k - W_{k-1}),
    whatever the inner optimizer. With inner SGD (lr alpha) g = alpha * mean_t grad L_k(W_{k-1}): the
    gradient of the last minibatch's loss at the adapted point.

    tail_shots > 0 holds the last minibatch out of the earlier steps: the sampler draws tail_shots extra
    examples per class (sine: points) into x_query, the first k - 1 steps use the regular minibatches and
    the last step uses all tail examples at once. (The official code carves the tail out of its
    train_shots; here it is drawn in addition, so dataset.train_shots = official train shots - tail_shots
    reproduces it.)
    """

    def __init__(self, tail_shots: int = 0):
        if tail_shots < 0:
            raise ConfigError(f"algorithm.tail_shots={tail_shots} is invalid: must be >= 0 (0 = no tail)")
        self.tail_shots = tail_shots

    @property
    def query_shots(self) -> int:
        return self.tail_shots

    def meta_gradient(
        self, learner: Learner, phi: Params, tasks: TaskBatch, state: State
    ) -> tuple[Params, State, Tensor]:
        k = tasks.batches.shape[1]
        before, task_state, losses = learner.adapt(phi, tasks, state, steps=k - 1)
        last = (tasks.x_query, tasks.y_query) if self.tail_shots else tasks.minibatch(k - 1)
        after, task_state, loss = learner.step(before, task_state, *last)
        g = {n: task_mean(before[n] - after[n]) for n in phi}
        return g, learner.inner_optimizer.merge(task_state), torch.cat([losses, loss.unsqueeze(1)], dim=1)


class MAML:
    """MAML (Finn et al. 2017; REFERENCE.md section 1): g = grad_phi mean_t L_t^query(W_t(phi)), the query
    loss after the k inner steps differentiated through the inner loop with torch.func (second order).

    The query set is query_shots held-out examples per class (sine: points), drawn by the sampler into
    x_query. first_order=true treats the inner gradients as constants, so dW/dphi = I and
    g = mean_t grad L_t^query(W_t): first-order MAML with a held-out query batch.
    Use inner SGD for second order: through inner Adam it differentiates sqrt(v), whose derivative is infinite
    where a gradient is exactly 0 at a fresh state (v = 0, e.g. a dead ReLU unit), and g turns NaN. The conv
    nets' BatchNorm is models.BatchStatsNorm2d because the native op's second derivative is wrong under vmap.
    """

    def __init__(self, query_shots: int = 10, first_order: bool = False):
        if query_shots < 1:
            raise ConfigError(
                f"algorithm.query_shots={query_shots} is invalid: MAML's outer loss needs held-out query "
                "examples; set algorithm.query_shots >= 1"
            )
        self.query_shots, self.first_order = query_shots, first_order

    def meta_gradient(
        self, learner: Learner, phi: Params, tasks: TaskBatch, state: State
    ) -> tuple[Params, State, Tensor]:
        if self.first_order:
            weights, task_state, losses = learner.adapt(phi, tasks, state)
            per_task = vmap(grad(learner.loss))(weights, tasks.x_query, tasks.y_query)
            return {n: task_mean(v) for n, v in per_task.items()}, learner.inner_optimizer.merge(task_state), losses

        counts = {}  # the state's integers (Adam's step count): torch.func returns only tensors as aux

        def outer_loss(phi_: Params) -> tuple[Tensor, tuple[State, Tensor]]:
            weights, task_state, losses = learner.adapt(phi_, tasks, state)
            counts.update({k: v for k, v in task_state.items() if isinstance(v, int)})
            tensors = {k: v for k, v in task_state.items() if k not in counts}
            return vmap(learner.loss)(weights, tasks.x_query, tasks.y_query).mean(), (tensors, losses)

        g_local, (task_state, losses) = grad(outer_loss, has_aux=True)(phi)
        task_state = {**task_state, **counts}
        # g_local is the mean over this rank's tasks; weighted by their count, task_mean's all-reduce stays
        # exact when several ranks share the meta-batch (distributed.py).
        g = {n: task_mean(v.expand(tasks.num_tasks, *v.shape)) for n, v in g_local.items()}
        return g, learner.inner_optimizer.merge(task_state), losses
