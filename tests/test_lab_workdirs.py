"""The lab's work directories do not pile up: each new one removes those
left behind long ago by failed or killed runs (kexechibd/lab/qemu.py)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from kexechibd.lab.qemu import KEPT_FOR, prune_workdirs


def _aged(path: Path, seconds: float) -> Path:
    path.mkdir()
    (path / "disk.raw").write_bytes(b"x")
    then = time.time() - seconds
    os.utime(path, (then, then))
    return path


def test_work_directories_older_than_the_keep_time_are_removed(tmp_path: Path) -> None:
    old = _aged(tmp_path / "debian-cycle-old", KEPT_FOR + 60)
    assert prune_workdirs(tmp_path) == [old]
    assert not old.exists()


def test_a_recent_work_directory_is_kept_for_its_logs(tmp_path: Path) -> None:
    recent = _aged(tmp_path / "debian-cycle-failed", 60)
    assert prune_workdirs(tmp_path) == []
    assert recent.exists()


def test_a_missing_root_prunes_nothing(tmp_path: Path) -> None:
    assert prune_workdirs(tmp_path / "absent") == []
