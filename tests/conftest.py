"""Shared helpers: run the real command line in a subprocess, read offline W&B runs."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# The intra-op threads of a test process: OMP_NUM_THREADS where set, else the cores shared among pytest-xdist's
# workers. On a 2-core machine that is one per worker: with PyTorch's default two, the runs made in the workers
# spin-waited beside each other (four such files took 2.1x the time and 2.5x the CPU). Subprocesses: clean_env.
WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or max(1, len(os.sched_getaffinity(0)) // WORKERS)))
# The device the `cuda`-marked tests run on: CUDA, or the CPU when scripts/gpu_check.py --device cpu rehearses the
# GPU day (what only CUDA has, e.g. CUDA graphs, skips there with its reason).
GPU = os.environ.get("REPTILE_EXP_GPU_TESTS_DEVICE", "cuda")
CUDA_ONLY = pytest.mark.skipif(GPU != "cuda", reason=f"CUDA only; this rehearsal runs the cuda tests on {GPU}")


def script(name: str):
    """scripts/<name>.py as a module (scripts/ is no package), loaded once per process."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = sys.modules[name] = importlib.util.module_from_spec(spec)  # dataclasses look the module up
        spec.loader.exec_module(module)
    return sys.modules[name]


def train_cmd(*overrides: str, multirun: bool = False) -> list[str]:
    return [sys.executable, "-m", "reptile_exp.train", *(["-m"] if multirun else []), *overrides]


def clean_env(tmp_path: Path, **extra: str) -> dict:
    """An environment without W&B credentials and with HOME in tmp_path (no netrc, no prompts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(
        # one torch thread per subprocess: tests may run several at once on small machines, where
        # oversubscribed threads cost far more than they give for these tiny models
        OMP_NUM_THREADS="1",
        HOME=str(tmp_path / "home"),
        WANDB_DIR=str(tmp_path),
        PYTHONUNBUFFERED="1",
        REPTILE_EXP_OUTPUTS=str(tmp_path / "outputs"),
        HYDRA_FULL_ERROR="0",
    )
    env.update(extra)
    (tmp_path / "home").mkdir(exist_ok=True)
    return env


def run_train(
    tmp_path: Path, *overrides: str, multirun: bool = False, timeout: float = 600, check: bool = True, **env: str
) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        train_cmd(*overrides, multirun=multirun),
        cwd=ROOT,
        env=clean_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"train.py exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}")
    return proc


def final_phi(run_dir: Path) -> dict:
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.pt"))
    return torch.load(ckpts[-1], weights_only=True)["phi"]


@pytest.fixture
def tmp_env(tmp_path):
    return clean_env(tmp_path)


# The files that take longest (`pytest --durations=0`, summed per file), run first: pytest-xdist hands out whole
# files (--dist loadfile) in collection order (--no-loadscope-reorder), so the workers end together on short files.
LONGEST_FIRST = [
    "test_every_preset.py",
    "test_slurm.py",
    "test_gpu_check.py",
    "test_readme_commands.py",
    "test_optuna_sweeper.py",
    "test_faults.py",
    "test_settings.py",
    "test_checkpoint.py",
    "test_sweeps.py",
    "test_bad_inputs.py",
]


def pytest_collection_modifyitems(config, items):
    """The longest files first (LONGEST_FIRST; the others keep their order), and tests marked `cuda` skip, with the
    reason, where no CUDA GPU is visible (unless GPU is another device)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available() or GPU != "cuda":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible on this machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
