"""Data parallelism over the tasks of a meta-batch (torch.distributed; docs/sweeps.md).

Every rank draws the same meta-batch from the same seeded generator and adapts its own contiguous
share of the tasks; means over tasks are all-reduced, so phi evolves as in one process (Algorithm 2
with the meta-batch split across devices). Only rank 0 writes: metrics, W&B, checkpoints, the final
evaluation; the other ranks wait for it and all leave together. Without an initialised process
group everything here is the single-process identity.

Launch: `torchrun --nproc_per_node=N -m reptile_exp.train ...` (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT), or the submitit launcher with one task per GPU (SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST, read through submitit's JobEnvironment).
"""

from __future__ import annotations

import atexit
import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from .errors import ConfigError

log = logging.getLogger(__name__)
LEAVE_TIMEOUT = timedelta(days=1)  # the other ranks wait this long for rank 0's final evaluation
_cpu_group = None  # gloo group for agree(): NCCL reduces only CUDA tensors, and a flag needs no GPU sync


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _export_submitit_env() -> None:
    """Under a submitit job with several tasks (SLURM, or submitit_local), export torch's env:// variables."""
    if "WORLD_SIZE" in os.environ or not os.environ.get("SUBMITIT_EXECUTOR"):
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # CUDA_VISIBLE_DEVICES stays: torch may have seen the GPUs already; setup() picks the rank's GPU
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def setup(device: str, meta_batch: int) -> int:
    """Join the process group when this process is one of several ranks; return its rank.

    device is cfg.device (auto | cpu | cuda): CUDA ranks use NCCL on the GPU `cuda_device` picks, CPU ranks gloo.
    A second call in the same process (several jobs of a multirun) reuses the group.
    """
    _export_submitit_env()
    if _env_int("WORLD_SIZE", 1) <= 1:
        return 0
    unset = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if unset:
        raise ConfigError(
            f"WORLD_SIZE={os.environ['WORLD_SIZE']} is set but {', '.join(unset)} not: launch the ranks with torchrun "
            "(or the submitit launcher), or unset WORLD_SIZE for a single process"
        )
    size, rank, port = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0), _env_int("MASTER_PORT", 0)
    if not 0 <= rank < size or not 0 < port < 65536:
        bad = f"RANK={rank} (WORLD_SIZE={size})" if not 0 <= rank < size else f"MASTER_PORT={port}"
        raise ConfigError(f"{bad} is invalid: a rank in [0, WORLD_SIZE), a port in [1, 65535]; launch with torchrun")
    global _cpu_group
    if not dist.is_initialized():
        # Imported after the group exists (torch.optim imports it), torch._dynamo keeps references to it, so
        # destroy_process_group would leave its gloo threads running into interpreter shutdown: an occasional
        # SIGABRT ("terminate called without an active exception") as a rank exits. Imported first, it keeps none.
        import torch._dynamo  # noqa: F401

        cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(cuda_device(_env_int("LOCAL_RANK", 0), torch.cuda.device_count()))
        log.info("rank %d of %d: waiting for the others at %s:%d", rank, size, os.environ["MASTER_ADDR"], port)
        dist.init_process_group("nccl" if cuda else "gloo", init_method="env://")
        _cpu_group = dist.new_group(backend="gloo") if cuda else None
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
    rank, size = world()
    if meta_batch < size:
        raise ConfigError(f"meta_batch={meta_batch} is invalid: {size} ranks share it, so it must be >= {size}")
    if rank != 0:
        logging.getLogger("reptile_exp").setLevel(logging.WARNING)  # rank 0 reports
    log.info("rank %d of %d (%s)", rank, size, dist.get_backend())
    return rank


def _env_int(name: str, default: int) -> int:
    """An integer environment variable of the launcher (torchrun, SLURM through submitit), or one line naming it."""
    value = os.environ.get(name, str(default))
    try:
        return int(value)
    except ValueError:
        fix = "launch with torchrun, or unset it"
        raise ConfigError(f"{name}={value!r} is invalid: must be an integer; {fix}") from None


def cuda_device(local_rank: int, visible: int) -> int:
    """The GPU (an index among the `visible` ones this rank sees) of the rank with this LOCAL_RANK.

    Every rank of a node seeing all its GPUs: GPU LOCAL_RANK. A rank bound to its own GPU(s) (`--gpus-per-task`,
    `--gpu-bind`, a CUDA_VISIBLE_DEVICES narrowed per task) sees them as 0, 1, ...: LOCAL_RANK modulo their number
    (0 when it sees one).
    """
    if visible < 1:
        raise ConfigError(f"device=cuda is invalid on rank LOCAL_RANK={local_rank}: it sees no GPU; use device=cpu")
    return local_rank % visible


def leave() -> None:
    """Wait until every rank is here: the ranks leave together, after rank 0's final evaluation and summary,
    so no rank shuts the process group down while another still uses it."""
    if world()[1] > 1:
        dist.monitored_barrier(group=_cpu_group, timeout=LEAVE_TIMEOUT, wait_all_ranks=True)


def from_rank0(value):
    """Rank 0's value of a picklable object, on every rank (e.g. the run dir: each rank's Hydra resolves
    ${now:...} itself, a second apart at times, and every rank must resume from rank 0's checkpoint)."""
    if world()[1] == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def shard(num_tasks: int) -> slice:
    """This rank's contiguous share of a meta-batch of num_tasks tasks (sizes differ by at most one)."""
    rank, size = world()
    return slice(rank * num_tasks // size, (rank + 1) * num_tasks // size)


def task_mean(x: Tensor) -> Tensor:
    """Mean over dim 0 (the task dimension) across all ranks' tasks; shards may differ in size.

    One all-reduce carries the per-rank sums and task counts together.
    """
    if world()[1] == 1:
        return x.mean(0)
    total = torch.cat([x.sum(0).flatten(), x.new_full((1,), x.shape[0])])
    dist.all_reduce(total)
    return (total[:-1] / total[-1]).view(x.shape[1:])


def agree(signum: int | None) -> int | None:
    """The stop signal any rank received (the largest number), so every rank stops at the same iteration; also any
    rank's flag (1 or None: pruning.prune_now)."""
    if world()[1] == 1:
        return signum
    flag = torch.tensor([signum or 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_cpu_group)
    return int(flag.item()) or None


class Muted:
    """Stands in for rank 0's Tracker or Checkpointer on the other ranks: every method does nothing."""

    def __getattr__(self, name: str):
        return lambda *args, **kwargs: None
