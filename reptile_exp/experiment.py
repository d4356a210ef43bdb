"""The experiment: every object of Algorithm 2 built from the config, and its resumable state.

`build` instantiates the task distribution, the model (phi), the inner optimizer, the meta-gradient
algorithm, the outer optimizer with its linear eps schedule, and the task generator; `Experiment`
holds them, and its state_dict is what a checkpoint stores. `fingerprint` is what a checkpoint must
share with the run that loads it.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass

import torch
from hydra.errors import InstantiationException
from hydra.utils import get_class
from hydra.utils import instantiate as hydra_instantiate
from omegaconf import DictConfig, OmegaConf

from .config import ConfigError, ReptileExpError, register_schema
from .host_memory import keep_host_memory
from .meta.learner import Learner, check_fast_paths, set_precision
from .schedule import LinearAnneal

log = logging.getLogger("reptile_exp")
register_schema()  # the typed schema of the config build() reads, first in conf/train.yaml's defaults


@dataclass
class Experiment:
    """Everything built from the config: the objects of Algorithm 2 and their mutable state."""

    cfg: DictConfig
    device: torch.device
    dtype: torch.dtype
    dataset: object
    learner: Learner
    algorithm: object
    outer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    task_generator: torch.Generator
    inner_state: dict
    iteration: int = 0

    @property
    def phi(self) -> dict[str, torch.Tensor]:
        return dict(self.learner.model.named_parameters())

    def state_dict(self, run_id: str, finished: bool) -> dict:
        """What a checkpoint stores. The only random state the run draws from after build() is the task
        generator's (a CPU generator on every device), so that is the only one kept; no CUDA state."""
        return {
            "version": 1,
            "iteration": self.iteration,
            "phi": self.learner.model.state_dict(),
            "outer_optimizer": self.outer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "inner_state": self.inner_state,
            "rng": {"tasks": self.task_generator.get_state()},
            "device": self.device.type,
            "wandb_run_id": run_id,
            "finished": finished,
            "fingerprint": fingerprint(self.cfg),
        }

    def load_state_dict(self, state: dict, training: bool = True) -> None:
        """Restore a checkpoint; `training` restores the outer loop's state and the task generator too.

        Entries of older checkpoints that the run never used (the global and the CUDA RNG states) are ignored.
        """
        self.learner.model.load_state_dict(state["phi"])
        self.inner_state = _to_device(state["inner_state"], self.device)
        self.iteration = state["iteration"]
        if training:
            self.outer.load_state_dict(state["outer_optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            trained_on = state.get("device", self.device.type)  # older checkpoints do not say
            if trained_on != self.device.type:
                log.info(
                    "resuming on %s a run trained on %s: the same tasks follow (the task generator is a CPU "
                    "generator everywhere), the arithmetic differs in the last bits",
                    self.device.type,
                    trained_on,
                )
            self._restore_tasks(state["rng"]["tasks"])

    def _restore_tasks(self, tasks: torch.Tensor) -> None:
        """Continue the task generator; an older GPU run's generator (a 16-byte CUDA Philox state, not a CPU
        one) cannot continue on the CPU: a CPU generator re-derived from the seed and the iteration takes over."""
        if tasks.numel() == self.task_generator.get_state().numel():
            self.task_generator.set_state(tasks)
            return
        seed = int.from_bytes(hashlib.sha256(f"{self.cfg.seed}:{self.iteration}".encode()).digest()[:8], "little")
        self.task_generator.manual_seed(seed)
        log.warning(
            "the checkpoint's task generator state (%d bytes) is not a CPU generator's (an older GPU run's CUDA "
            "generator); continuing from iteration %d with a CPU task generator re-derived from seed=%d and the "
            "iteration: the tasks from here on differ from an uninterrupted run's",
            tasks.numel(),
            self.iteration,
            self.cfg.seed,
        )


def _to_device(tree, device):
    if isinstance(tree, torch.Tensor):
        return tree.to(device)
    if isinstance(tree, dict):
        return {k: _to_device(v, device) for k, v in tree.items()}
    return tree


CUBLAS_WORKSPACE = ":4096:8"  # the value cuBLAS's reproducibility notes ask for
TRAINING_KEYS = ("k", "inner_batch", "meta_batch", "epsilon", "epsilon_final", "iterations", "replacement", "seed")


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must share with the run that loads it: model, data and algorithm settings."""
    dataset = {
        k: v
        for k, v in OmegaConf.to_container(cfg.dataset, resolve=True).items()
        if k not in ("root", "download", "cache", "cache_dir")
    }
    return {
        "model": OmegaConf.to_container(cfg.model, resolve=True),
        "dataset": dataset,
        "algorithm": OmegaConf.to_container(cfg.algorithm, resolve=True),
        "inner_optimizer": OmegaConf.to_container(cfg.inner_optimizer, resolve=True),
        "dtype": cfg.dtype.value,
        "synthetic_data": cfg.synthetic_data,
        # the outer loop and eps schedule: a resumed run must continue the same schedule
        "training": {key: cfg[key] for key in TRAINING_KEYS},
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: no CUDA GPU is visible here; use device=auto or device=cpu")
    return torch.device(name)


def build(cfg: DictConfig) -> Experiment:
    """Instantiate dataset, model, inner/outer optimizers, eps schedule and task sampler.

    The task generator lives on the CPU whatever the device: one seed draws the same tasks everywhere.
    """
    set_deterministic(cfg.deterministic)
    device, dtype = resolve_device(cfg.device.value), getattr(torch, cfg.dtype.value)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_host_memory and device.type == "cpu":
        keep_host_memory()
    torch.manual_seed(cfg.seed)
    dataset = build_dataset(cfg).to(device)
    model = instantiate(cfg.model).to(device=device, dtype=dtype)
    inner = instantiate(cfg.inner_optimizer)
    loss = "mse" if dataset.kind == "regression" else "cross_entropy"
    fast = {"compile": cfg.compile.value, "precision": cfg.precision.value}
    check_fast_paths(device, fast["compile"], fast["precision"])
    set_precision(device, fast["precision"])
    learner = Learner(
        model, inner, loss, cfg.loss_reduction.value, **fast, fused=cfg.fused_inner, grouped=cfg.grouped_tasks
    )
    outer = instantiate(cfg.outer_optimizer)(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(outer, LinearAnneal(cfg.epsilon, cfg.epsilon_final, cfg.iterations))
    generator = torch.Generator().manual_seed(cfg.seed)
    state = inner.init({n: p.detach() for n, p in model.named_parameters()})
    return Experiment(
        cfg, device, dtype, dataset, learner, instantiate(cfg.algorithm), outer, scheduler, generator, state
    )


def set_deterministic(on: bool) -> None:
    """deterministic=true: deterministic kernels only (torch.use_deterministic_algorithms, cuDNN without
    autotuning, cuBLAS with a fixed workspace, set before CUDA creates its first handle); false restores the
    defaults, and drops the cuBLAS variable when it holds the value set here."""
    torch.use_deterministic_algorithms(on)
    torch.backends.cudnn.deterministic = on
    torch.backends.cudnn.benchmark = False
    if on and "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    elif not on and os.environ.get("CUBLAS_WORKSPACE_CONFIG") == CUBLAS_WORKSPACE:
        del os.environ["CUBLAS_WORKSPACE_CONFIG"]


def build_dataset(cfg: DictConfig):
    """The task distribution of cfg.dataset; random images of its shape when synthetic_data=true."""
    if cfg.synthetic_data and "root" in cfg.dataset:
        from .data.fewshot import synthetic_like

        d = cfg.dataset
        return synthetic_like(get_class(d._target_), d.n_way, d.k_shot, d.train_shots, seed=cfg.seed)
    return instantiate(cfg.dataset)


def instantiate(node: DictConfig, *args):
    """hydra.utils.instantiate, re-raising our own one-line errors unwrapped from Hydra's."""
    try:
        return hydra_instantiate(node, *args)
    except InstantiationException as e:
        if isinstance(e.__cause__, ReptileExpError):
            raise e.__cause__ from None
        raise
