"""Atomic writes (reptile_exp/atomic.py): a write that fails midway leaves the file it replaces as it was, and a
finished one is flushed to disk before the rename, and the rename before it returns."""

from __future__ import annotations

import errno
import os

import pytest

from reptile_exp import atomic
from reptile_exp.atomic import atomic_write, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "summary.json"
    path.write_text("old")

    def fail_midway(tmp):
        assert tmp != path and path.read_text() == "old"  # written beside the target, not into it
        tmp.write_text("partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, fail_midway)
    assert path.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_a_write_is_synced_then_renamed_then_its_folder_synced(tmp_path, monkeypatch):
    events = []
    fsync, replace = os.fsync, os.replace

    def record_fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        fsync(fd)

    def record_replace(src, dst):
        events.append(("replace", str(dst)))
        replace(src, dst)

    monkeypatch.setattr(atomic.os, "fsync", record_fsync)
    monkeypatch.setattr(atomic.os, "replace", record_replace)
    path = tmp_path / "config.yaml"
    path.write_text("old")
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    kinds = [(kind, os.path.basename(target)) for kind, target in events]
    assert kinds[0][0] == "fsync" and kinds[0][1].startswith(".config.yaml.tmp-")
    assert kinds[1:] == [("replace", "config.yaml"), ("fsync", tmp_path.name)]
