"""Atomic checkpoints: write to a temporary file, fsync, rename; load with weights_only=True.

A checkpoint is a dict of tensors and plain values (phi, optimizer and scheduler states, the task
generator's state, the device type it trained on, iteration, W&B run id, the config fingerprint).
The newest loadable one wins; a corrupt newest file falls back to the one before with a warning.
"""

from __future__ import annotations

import io
import logging
import re
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write
from .errors import ReptileExpError

log = logging.getLogger(__name__)
PATTERN = re.compile(r"ckpt-(\d+)\.pt$")


class CheckpointError(ReptileExpError):
    pass


def first_difference(expected: Any, found: Any, prefix: str = "") -> tuple[str, Any, Any] | None:
    """The first difference between two nested dicts: (its dotted key, expected's value, found's), or None."""
    if isinstance(expected, dict) and isinstance(found, dict):
        for key in sorted(set(expected) | set(found), key=str):
            diff = first_difference(expected.get(key), found.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    return (prefix[:-1], expected, found) if expected != found else None


class Checkpointer:
    """Keeps the newest `keep` checkpoints ckpt-<iteration>.pt of one run in `directory`."""

    def __init__(self, directory: Path, keep: int = 2):
        self.directory, self.keep = Path(directory), keep

    def paths(self) -> list[Path]:
        """Checkpoints of this directory, newest first."""
        found = [(int(m.group(1)), p) for p in self.directory.glob("ckpt-*.pt") if (m := PATTERN.search(p.name))]
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict, iteration: int) -> Path:
        """Write ckpt-<iteration>.pt atomically and drop all but the newest `keep`; a failed write (a full
        disk) raises CheckpointError and leaves the earlier checkpoints as they were."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".ckpt-*.pt.tmp-*"):  # left by a writer that was killed mid-write
            stale.unlink(missing_ok=True)
        path = self.directory / f"ckpt-{iteration:08d}.pt"
        buffer = io.BytesIO()
        torch.save(state, buffer)  # serialized in memory: torch's file writer reports ENOSPC as a RuntimeError
        try:
            atomic_write(path, lambda tmp: tmp.write_bytes(buffer.getbuffer()))
        except OSError as e:
            raise CheckpointError(
                f"could not write checkpoint {path}: {e.strerror or e}; the previous checkpoint is kept, "
                "free disk space or point paths.log_dir elsewhere and re-run the same command to resume"
            ) from e
        for old in self.paths()[self.keep :]:
            old.unlink(missing_ok=True)
        return path

    def latest(self) -> tuple[dict, Path] | None:
        """The newest checkpoint that loads, or None when there is none."""
        paths = self.paths()
        for i, path in enumerate(paths):
            try:
                return load(path), path
            except CheckpointError as e:
                if i + 1 < len(paths):
                    log.warning("%s; falling back to %s", e, paths[i + 1].name)
                else:
                    raise
        return None


SAVED = (b"PK\x03\x04", b"\x80")  # how what torch.save writes begins: a zip archive (a pickle before torch 1.6)
ELSEWHERE = "; pass another checkpoint, or train in a new run dir (hydra.run.dir=...)"  # the fix a bad file gets


def load(path: Path) -> dict:
    """Load a checkpoint with weights_only=True: a pickle that would run code is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist; pass a ckpt-*.pt file or a run dir")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unpickling errors come in many types
        with path.open("rb") as f:
            head = f.read(4)
        if not head.startswith(SAVED):
            raise CheckpointError(
                f"{path} is not a checkpoint (it begins {head!r}, not with the zip header torch.save writes){ELSEWHERE}"
            ) from None
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            reason = "it holds objects other than tensors and plain values (refused: loading it could run code)"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {reason}{ELSEWHERE}") from None
    if not isinstance(state, dict) or "phi" not in state:
        raise CheckpointError(f"checkpoint {path} is not a reptile_exp checkpoint (no 'phi' entry){ELSEWHERE}")
    wrong = next((key for key, kind in ENTRIES.items() if key in state and not kind(state[key])), None)
    if wrong is not None or "iteration" not in state:
        entry = wrong or "iteration"
        raise CheckpointError(f"checkpoint {path} has a damaged {entry!r} entry ({state.get(entry)!r:.60}){ELSEWHERE}")
    bad = next((name for name, w in state["phi"].items() if not torch.isfinite(w).all()), None)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights ({bad}): the run diverged before it was written; pass an "
            "earlier checkpoint of that run (ckpt-*.pt in its checkpoints/), or train in a new run dir"
        )
    return state


# The entries a checkpoint may hold (older ones lack some) and what each must be: what load refuses in one line
# (a hand-edited or foreign file) instead of a traceback where the entry is used.
ENTRIES = {
    "phi": lambda v: isinstance(v, dict) and all(isinstance(w, torch.Tensor) for w in v.values()),
    "iteration": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0,
    **{
        key: lambda v: isinstance(v, dict)
        for key in ("fingerprint", "rng", "scheduler", "outer_optimizer", "inner_state", "loss_window")
    },
}


def resolve(path: str | Path) -> Path:
    """A checkpoint file, or the newest checkpoint in a run dir (or its checkpoints/ folder)."""
    path = Path(path)
    if path.is_dir():
        for folder in (path / "checkpoints", path):
            found = Checkpointer(folder).paths()
            if found:
                return found[0]
        raise CheckpointError(f"no checkpoint (ckpt-*.pt) in {path}; pass a ckpt-*.pt file or a run dir that has one")
    return path
