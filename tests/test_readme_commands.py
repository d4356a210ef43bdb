"""Every `python -m reptile_exp.train ...` command README.md shows runs (issue 12).

Each command is run as written, in its code block or inline code span, plus `debug=smoke` (seconds-long CPU
runs on synthetic data of the right shape), from a subprocess, and must exit 0. What cannot run here is
skipped with the reason: a SLURM cluster, a GPU, several torchrun ranks. A `checkpoint=<run dir>` or
`resume=<run dir>` placeholder is filled with the run dir of the same command without those keys, run first.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ROOT, clean_env
from doc_commands import ENTRY, doc_commands

README = ROOT / "README.md"
SMOKE_CAPS = {"hparams_search=": "hydra.sweeper.n_trials=2"}  # Optuna's 40 trials would run 40 smoke jobs
GPU_ONLY = ("device=cuda", "compile=cudagraphs", "precision=tf32")
FILLED = ("checkpoint", "resume")


def skip_reason(command: list[str]) -> str | None:
    if command[0] == "torchrun":
        ranks = next((w.split("=")[1] for w in command if w.startswith("--nproc_per_node=")), "1")
        if ranks != "1":
            return f"torchrun with {ranks} ranks (tests/test_distributed.py runs two gloo ranks)"
    if "experiment=glob(*)" in command:
        return "every preset in smoke mode: tests/test_every_preset.py runs this very multirun"
    if "launcher=slurm" in command:
        return "launcher=slurm needs a SLURM cluster (tests/test_slurm.py runs it on a real one-node cluster)"
    if any(w in command for w in GPU_ONLY) and not torch.cuda.is_available():
        return "needs a CUDA GPU (none visible on this machine)"
    return None


def run_command(command: list[str], tmp_path: Path) -> None:
    """Run a README command plus debug=smoke (and the caps of SMOKE_CAPS); fails on a non-zero exit or a run that
    wrote no results."""
    entry = command.index("reptile_exp.train") + 1
    launcher = [sys.executable, "-m", "torch.distributed.run"] if command[0] == "torchrun" else [sys.executable]
    args = [*launcher, *command[1:], *([] if "debug=smoke" in command else ["debug=smoke"])]
    args += [cap for key, cap in SMOKE_CAPS.items() if any(w.startswith(key) for w in command)]
    for i, word in enumerate(args):
        key, _, value = word.partition("=")
        if i >= entry and value.startswith("<"):
            assert key in FILLED, f"README placeholder {word!r}: this test can fill only {FILLED}"
            first = [w for w in args[entry:] if w.partition("=")[0] not in (*FILLED, "evaluate_only")]
            _run([sys.executable, "-m", "reptile_exp.train", *first, f"hydra.run.dir={tmp_path / 'first'}"], tmp_path)
            args[i] = f"{key}={tmp_path / 'first'}"
    _run(args, tmp_path)
    outputs = tmp_path / "outputs"  # REPTILE_EXP_OUTPUTS: where its run dirs go (a filled placeholder's run: 'first')
    results = [*outputs.rglob("summary.json"), *outputs.rglob("evaluation.json")]
    assert results, f"{shlex.join(args)} exited 0 but wrote no summary.json or evaluation.json under {outputs}"


def _run(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(
        args, cwd=ROOT, env=clean_env(tmp_path), capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"{shlex.join(args)} exited {proc.returncode}\n{proc.stderr[-3000:]}"


COMMANDS = doc_commands(README.read_text())


def test_the_readme_shows_train_commands():
    assert any(c[:3] == list(ENTRY) for c in COMMANDS), "README.md shows no python -m reptile_exp.train command"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(c) for c in COMMANDS])
def test_a_readme_command_runs(command, tmp_path):
    reason = skip_reason(command)
    if reason:
        pytest.skip(reason)
    run_command(command, tmp_path)
