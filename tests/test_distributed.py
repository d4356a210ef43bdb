"""Data parallelism over the tasks of a meta-batch (issue 5 acceptance): 2 ranks with the gloo backend
on the CPU evolve phi as one process does (to 1e-6), and only rank 0 logs and checkpoints."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import ROOT, clean_env, final_phi, run_train, train_cmd

from reptile_exp import distributed
from reptile_exp.errors import ConfigError

# meta_batch=3 over 2 ranks: uneven shards (2 + 1 tasks); inner Adam: its state merge is all-reduced too
COMMON = [
    "iterations=10",
    "meta_batch=3",
    "inner_optimizer=adam",
    "inner_lr=0.01",
    "log_every=5",
    "checkpoint_every=5",
    "eval_every=5",
    "eval_every_tasks=2",
    "eval_tasks=4",
    "k_eval=2",
    "device=cpu",
    "progress=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, port: int) -> None:
    """One of 2 ranks joined through torchrun's env:// variables (as torchrun sets them)."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank))
    os.environ["WORLD_SIZE"] = "2"
    assert distributed.setup("cpu", meta_batch=5) == rank
    assert distributed.world() == (rank, 2)
    assert distributed.shard(5) == [slice(0, 2), slice(2, 5)][rank]
    x = torch.arange(15.0).view(5, 3) ** 2
    torch.testing.assert_close(distributed.task_mean(x[distributed.shard(5)]), x.mean(0), rtol=0, atol=1e-6)
    # a stop signal seen by one rank only stops both at the same iteration
    assert distributed.agree(None if rank == 0 else 15) == 15
    assert distributed.agree(None) is None
    assert distributed.from_rank0(f"outputs/run-{rank}") == "outputs/run-0"
    with pytest.raises(ConfigError, match="meta_batch=1 is invalid"):
        distributed.setup("cpu", meta_batch=1)
    torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # as train.build does after setup (imports torch._dynamo)
    dist.destroy_process_group()
    # the group is gone with its threads, so none is left running into interpreter shutdown (a SIGABRT at exit)
    assert not [t for t in _native_threads() if t.startswith(("gloo", "pt_gloo"))], _native_threads()


def _native_threads() -> list[str]:
    """This process's threads by name (Linux /proc; none listed elsewhere)."""
    tasks = Path("/proc/self/task")
    return [(task / "comm").read_text().strip() for task in tasks.iterdir()] if tasks.is_dir() else []


def test_shard_task_mean_and_agree_across_two_gloo_ranks():
    mp.spawn(_rank, args=(_free_port(),), nprocs=2)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("one_process")
    run_train(tmp, f"hydra.run.dir={tmp / 'run'}", *COMMON, "logger.mode=disabled")
    return final_phi(tmp / "run")


def assert_same_phi(a: dict, b: dict) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_torchrun_with_two_gloo_ranks_gives_the_phi_of_one_process(tmp_path, one_process):
    run_dir = tmp_path / "run0"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m"]
    # each rank's Hydra resolves its own run dir (as with ${now:...} across a second boundary): rank 0's wins
    per_rank = f"hydra.run.dir={tmp_path}/run${{oc.env:RANK}}"
    args = [*torchrun, "reptile_exp.train", per_rank, *COMMON, "logger.mode=offline"]
    out = subprocess.run(args, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert not (tmp_path / "run1" / "config.yaml").exists()
    assert "rank 0 of 2 (gloo)" in out.stderr
    assert_same_phi(one_process, final_phi(run_dir))
    # rank 0 alone wrote: one W&B run, each metrics record once, checkpoints of iterations 5 and 10
    assert len(list(run_dir.glob("wandb/offline-run-*"))) == 1
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in records if "train/loss" in r] == [5, 10]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["ckpt-00000005.pt", "ckpt-00000010.pt"]


def test_submitit_launcher_with_one_task_per_rank_gives_the_phi_of_one_process(tmp_path, one_process):
    """The SLURM launcher's multi-GPU layout (tasks_per_node = GPUs) with submitit_local: 2 CPU tasks, gloo.
    The ranks come from submitit's job environment (SLURM_PROCID etc. on a cluster)."""
    sweep = tmp_path / "sweep"
    run_train(
        tmp_path,
        "hydra/launcher=submitit_local",
        "hydra.launcher.tasks_per_node=2",
        f"hydra.sweep.dir={sweep}",
        *COMMON,
        "logger.mode=disabled",
        multirun=True,
    )
    assert "rank 0 of 2 (gloo)" in (sweep / "0" / "train.log").read_text()
    assert_same_phi(one_process, final_phi(sweep / "0"))
    assert json.loads((sweep / "0" / "summary.json").read_text())["iterations"] == 10


@pytest.mark.parametrize(
    ("local_rank", "visible", "device"),
    [
        (0, 4, 0),  # every rank sees all 4 GPUs of the node: GPU LOCAL_RANK
        (3, 4, 3),
        (1, 1, 0),  # --gpus-per-task=1 / --gpu-bind / a narrowed CUDA_VISIBLE_DEVICES: its one GPU is cuda:0
        (3, 1, 0),
        (3, 2, 1),  # --gpus-per-task=2: rank 3 sees its own two, as 0 and 1
    ],
)
def test_each_rank_uses_a_gpu_it_sees(local_rank, visible, device):
    assert distributed.cuda_device(local_rank, visible) == device


def test_a_rank_that_sees_no_gpu_is_told_in_one_line():
    with pytest.raises(ConfigError, match="device=cuda is invalid on rank LOCAL_RANK=1: it sees no GPU"):
        distributed.cuda_device(1, 0)


@pytest.mark.parametrize(
    "env,words",
    [
        ({"WORLD_SIZE": "abc"}, "WORLD_SIZE='abc' is invalid: must be an integer"),
        ({"WORLD_SIZE": "1.5"}, "WORLD_SIZE='1.5' is invalid: must be an integer"),
        ({"RANK": "5"}, "RANK=5 (WORLD_SIZE=2) is invalid: a rank in [0, WORLD_SIZE)"),
        ({"RANK": "-1"}, "RANK=-1 (WORLD_SIZE=2) is invalid"),
        ({"MASTER_PORT": "notaport"}, "MASTER_PORT='notaport' is invalid: must be an integer"),
        ({"MASTER_PORT": "70000"}, "MASTER_PORT=70000 is invalid: a rank in [0, WORLD_SIZE), a port in [1, 65535]"),
    ],
)
def test_launcher_variables_that_cannot_make_a_group_are_one_line(monkeypatch, env, words):
    """Refused before joining: a rank outside the world or a port that is no port would wait for peers (30 min)."""
    for name, value in {"WORLD_SIZE": "2", "RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29555"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError) as err:
        distributed.setup("cpu", 4)
    assert words in str(err.value) and "\n" not in str(err.value)
    assert not dist.is_initialized()


def test_a_stray_world_size_without_the_other_variables_is_one_line(monkeypatch):
    """WORLD_SIZE left in the environment (torch's env:// then raises a ValueError naming RANK)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "MASTER_ADDR", "MASTER_PORT", "SUBMITIT_EXECUTOR"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT not: launch"):
        distributed.setup("cpu", 4)
    assert not dist.is_initialized()


def test_the_other_ranks_leave_only_after_rank_0s_summary(tmp_path):
    """Two real gloo ranks with torchrun's env:// variables, started here so that each one's exit is seen: rank 1
    may not shut its process group down (NCCL: a hang or an abort) while rank 0 still evaluates."""
    port, run_dir = _free_port(), tmp_path / "run0"
    cmd = train_cmd(f"hydra.run.dir={tmp_path}/run${{oc.env:RANK}}", *COMMON, "logger.mode=disabled", "eval_tasks=64")
    ranks = [
        subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=clean_env(
                tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=r, LOCAL_RANK=r, WORLD_SIZE="2"
            ),
            stdout=subprocess.DEVNULL,
            stderr=(tmp_path / f"rank{r}.err").open("w"),
        )
        for r in ("0", "1")
    ]
    ranks[1].wait(timeout=600)
    summary_when_rank1_left = (run_dir / "summary.json").exists()
    errors = "".join((tmp_path / f"rank{r}.err").read_text() for r in "01")
    assert ranks[0].wait(timeout=600) == 0 and ranks[1].returncode == 0, errors
    assert summary_when_rank1_left
