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
from enum import Enum

import torch
from omegaconf import DictConfig, OmegaConf

from . import protocols
from .checkpoint import CheckpointError
from .config import given_overrides, register_schema
from .data.fewshot import synthetic_like
from .errors import ConfigError
from .hardware import resolve
from .host_memory import keep_host_memory
from .instantiate import instantiate, parameter_count
from .memory import require
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
    # the open window of the logged train/loss: the sum of the task-mean losses since iteration `logged_from`
    loss_sum: float = 0.0
    logged_from: int = 0

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
            "loss_window": {"sum": self.loss_sum, "from": self.logged_from},
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
        if set(state["inner_state"]) == set(self.inner_state):  # evaluate_only may use another inner optimizer
            self.inner_state = _to_device(state["inner_state"], self.device)
        else:
            log.info("the checkpoint's inner optimizer state does not fit this inner_optimizer: starting it fresh")
        self.iteration = state["iteration"]
        if training:
            window = state.get("loss_window", {"sum": 0.0, "from": self.iteration})  # older checkpoints: none
            self.loss_sum, self.logged_from = window["sum"], window["from"]
            self._load_outer(state["outer_optimizer"])
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

    def _load_outer(self, saved: dict) -> None:
        """The outer optimizer's state. torch restores the hyperparameters the checkpoint's optimizer had; the
        fingerprint refuses another outer_optimizer, but a checkpoint older than its outer_optimizer entry is only
        checked here: a hyperparameter this optimizer steps with that the checkpoint lacks (another optimizer's
        state: KeyError 'betas' at the first step) or holds with another value is refused in one line."""
        configured = OmegaConf.to_container(self.cfg.outer_optimizer, resolve=True)
        needed = set(self.outer.param_groups[0])
        self.outer.load_state_dict(saved)
        loaded = self.outer.param_groups[0]
        missing = sorted(needed - set(loaded))
        if missing:
            raise CheckpointError(
                f"the checkpoint's outer optimizer state has no {', '.join(missing)}: it was trained with another "
                f"outer optimizer than this run's {configured['_target_']}; resume with the outer_optimizer it was "
                "trained with or start a new run dir (hydra.run.dir=...)"
            )
        for key, value in configured.items():  # lr: the scheduled step, compared as training.epsilon
            found = list(loaded[key]) if isinstance(loaded.get(key), tuple) else loaded.get(key)
            if not key.startswith("_") and key != "lr" and key in loaded and found != value:
                raise CheckpointError(
                    f"outer_optimizer.{key}: this run has {value!r}, the checkpoint has {found!r}; resume with the "
                    "checkpoint's value or start a new run dir (hydra.run.dir=...)"
                )

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
# What a checkpoint must share with the run that resumes it: every key that shapes training (phi's trajectory from
# the checkpoint on). It matters beyond the model's shape: torch's load_state_dict restores the checkpoint's outer
# optimizer hyperparameters and eps schedule (LambdaLR keeps LinearAnneal's eps_0, eps_final, iterations), so a
# resumed run with other values would silently ignore them, or crash (KeyError 'betas': another optimizer's state).
# The groups, every key (the dataset's location aside; its k_shot also sets the periodic evaluation's K):
TRAINING_GROUPS = ("model", "dataset", "algorithm", "inner_optimizer", "outer_optimizer")
DATASET_LOCATION = ("root", "download", "cache", "cache_dir")
# The top-level knobs: dtype and synthetic_data under their own names, these under training.<key>. They are compared
# before the groups, so the message names the knob a user sets (training.epsilon, not outer_optimizer.lr = ${epsilon}).
TRAINING_KEYS = (
    "seed",
    "k",
    "inner_batch",
    "replacement",
    "loss_reduction",
    "epsilon",
    "epsilon_final",
    "meta_batch",
    "iterations",
)
TRAINING_TOP = ("dtype", "synthetic_data")
# inner_lr reaches training only through inner_optimizer.lr = ${inner_lr} (both options): compared there.
THROUGH_GROUPS = ("inner_lr",)
# The top-level keys that deliberately do NOT shape training; a resumed run may change them:
NOT_TRAINING = (
    # names, logging, the run dir and its checkpoints (log_every: only when metrics are read back)
    *("name", "logger", "paths", "progress", "log_every", "checkpoint_every", "keep_checkpoints"),
    *("resume", "overwrite", "evaluate_only", "checkpoint"),
    # evaluation: it starts each task from phi and the inner state and restores both, and draws its tasks from
    # generators of its own, so phi's trajectory is the same with any of these (tests/test_resume_fingerprint.py)
    *("k_eval", "eval_batch", "eval_tasks", "eval_splits", "eval_chunk", "eval_memory_mb", "transductive"),
    *("protocols", "eval_every", "eval_every_tasks", "objective_split"),
    # where and how fast it runs: the same computation, other rounding. A run may resume on another device (the
    # same tasks follow, tests/test_cross_device.py) and compile=cudagraphs and precision=tf32 exist only on CUDA,
    # so comparing them would refuse that; bf16 rounds more coarsely, but phi and every state stay in dtype.
    *("device", "threads", "keep_host_memory", "deterministic", "compile", "precision", "fused_inner"),
    *("grouped_tasks", "task_conv"),
)
# Entries a checkpoint's fingerprint holds since issue 22: an older checkpoint lacks them, and they are not compared
# (a warning says so; _load_outer still refuses another outer optimizer's state).
ADDED = ("outer_optimizer", "training.loss_reduction")


def fingerprint(cfg: DictConfig) -> dict:
    """What a checkpoint must share with the run that resumes it (plain values: checkpoints load weights_only).

    In the order compared: the top-level knobs, then the groups (evaluate_only compares the model alone).
    """
    plain = lambda value: value.value if isinstance(value, Enum) else value  # noqa: E731
    groups = {group: OmegaConf.to_container(cfg[group], resolve=True) for group in TRAINING_GROUPS}
    groups["dataset"] = {k: v for k, v in groups["dataset"].items() if k not in DATASET_LOCATION}
    return {
        "training": {key: plain(cfg[key]) for key in TRAINING_KEYS},
        **{key: plain(cfg[key]) for key in TRAINING_TOP},
        **groups,
    }


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device='cuda' is invalid: no CUDA GPU is visible here; use device=auto or device=cpu")
    return torch.device(name)


def build_model(cfg_model: DictConfig, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """The model, once a build on the meta device (shapes, no memory) has shown that its parameters fit: a model too
    large for the machine is refused in one line instead of allocated until the kernel kills the process."""
    params = parameter_count(cfg_model)
    if params is not None:
        what = f"the model ({cfg_model._target_.rpartition('.')[2]}, {params:,} parameters)"
        require(params * dtype.itemsize, what, "choose a smaller one (model.hidden, model.channels)", device)
    return instantiate(cfg_model).to(device=device, dtype=dtype)


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
    # the explicit knobs need only the device: refused before the data is read (auto picks only what works)
    check_fast_paths(device, **{k: cfg[k].value for k in ("compile", "precision") if cfg[k].value != "auto"})
    dataset = build_dataset(cfg).to(device)
    model = build_model(cfg.model, device, dtype)
    inner = instantiate(cfg.inner_optimizer)
    loss = "mse" if dataset.kind == "regression" else "cross_entropy"
    compile, precision, chosen = resolve(
        device, cfg.compile.value, cfg.precision.value, dtype, model, 0 if cfg.evaluate_only else cfg.iterations
    )
    if chosen:
        log.info("%s", chosen)
    fast = {"compile": compile, "precision": precision}
    set_precision(device, fast["precision"])
    learner = Learner(
        model,
        inner,
        loss,
        cfg.loss_reduction.value,
        **fast,
        fused=cfg.fused_inner,
        grouped=cfg.grouped_tasks,
        task_conv=cfg.task_conv.value,
    )
    if cfg.task_conv.value != "grouped" and not learner.grouped:
        log.warning("task_conv=%s has no effect: the tasks run through vmap here (grouped_tasks)", cfg.task_conv.value)
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
        given = given_overrides()
        root = next((o.split("=", 1)[1] for o in given if o.lstrip("+").startswith("dataset.root=")), None)
        if root is not None:
            log.warning(
                "dataset.root=%s is not read: synthetic_data=true (debug=smoke sets it) draws random images; "
                "add synthetic_data=false to use the data there",
                root,
            )
        d = cfg.dataset
        loader = instantiate(d, _partial_=True).func  # located as the real data's is, nothing built or read
        held_out = max(cfg.algorithm.get(key, 0) for key in ("query_shots", "tail_shots"))
        tested = max(p.k_shot for p in protocols.parse(cfg)) + 1  # support and one query per class
        settings = {k: v for k, v in d.items() if k not in ("_target_", *DATASET_LOCATION)}
        return synthetic_like(loader, shots=max(d.train_shots + held_out, tested), seed=cfg.seed, **settings)
    return instantiate(cfg.dataset)
