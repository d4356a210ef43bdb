"""A real one-node SLURM cluster for the tests (scripts/slurm_cluster.sh), or a skip that says why there is none."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import ROOT

SCRIPT = ROOT / "scripts" / "slurm_cluster.sh"
PACKAGES = "slurmctld slurmd slurm-client munge slurmdbd mariadb-server"
COMMANDS = (
    "munged",
    "mungekey",
    "mariadbd",
    "mariadb-install-db",
    "slurmdbd",
    "slurmctld",
    "slurmd",
    "sbatch",
    "sacct",
)


def unavailable() -> str | None:
    """Why no cluster can be started here, or None."""
    if os.geteuid() != 0:
        return "a SLURM cluster needs root to start its daemons"
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing): apt-get install {PACKAGES}"
    return None


@contextmanager
def running() -> Iterator[dict[str, str]]:
    """Start a cluster with its state in a fresh temporary directory; yield the environment that points the
    SLURM commands at it (SLURM_CONF); cancel its jobs, stop it and delete the directory afterwards.
    The test is skipped where no cluster can be started."""
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    directory = Path(tempfile.mkdtemp(prefix="reptile_exp_slurm-"))
    try:
        up = subprocess.run([SCRIPT, "up", directory], capture_output=True, text=True, timeout=600)
        assert up.returncode == 0, f"the SLURM cluster did not start: {up.stderr.strip()}"
        yield {"SLURM_CONF": str(directory / "slurm.conf")}
    finally:
        subprocess.run([SCRIPT, "down", directory], capture_output=True, timeout=300)
        shutil.rmtree(directory)
