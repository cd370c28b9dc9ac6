"""Block devices and filesystems for the image store tests: a loop device over
a sparse file (reached through a device node of our own, so that no test
touches the nodes in /dev), or the file itself; and a filesystem made and
mounted on such a device.  They need root; where loop devices cannot be set
up, the test is skipped with the reason.

Not a test module: pytest does not collect it."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kexechibd.image import DeviceImageStore
from tests.sizes import MIB

DISK_SIZE = 32 * MIB  # two 16 MiB slots
FILE_SIZE = 8 * MIB  # a prepared image file: two 4 MiB slots


@dataclass(frozen=True)
class Disk:
    path: Path  # what the store is given: our node of the loop device, or the file
    backing: Path  # the bytes behind it
    loop: str | None  # /dev/loopN; None for the regular-file variant
    private_node: bool  # ``path`` is a node of our own, whose owner and mode tests may change

    def store(self) -> DeviceImageStore:
        return DeviceImageStore(self.path, allow_regular_file=self.loop is None)

    def read(self, offset: int = 0, n: int = -1) -> bytes:
        """What the device holds, from the file behind it."""
        with self.backing.open("rb") as f:
            f.seek(offset)
            return f.read(n)

    def write(self, offset: int, data: bytes) -> None:
        """Change the device behind the store's back (as another kernel would)."""
        with self.backing.open("r+b") as f:
            f.seek(offset)
            f.write(data)


def attach_loop(backing: Path) -> tuple[str | None, str]:
    """(/dev/loopN, "") or (None, why not)."""
    try:
        done = subprocess.run(
            ["losetup", "--find", "--show", str(backing)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.SubprocessError) as e:
        return None, str(e)
    if done.returncode:
        return None, done.stderr.strip()
    return done.stdout.strip(), ""


@contextlib.contextmanager
def make_disk(tmp_path: Path, kind: str, size: int = DISK_SIZE) -> Iterator[Disk]:
    """A sparse file of ``size`` bytes in ``tmp_path``: behind a loop device
    (``kind`` "loop") or itself (``kind`` "file")."""
    backing = tmp_path / "disk.img"
    os.close(os.open(backing, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    os.truncate(backing, size)
    if kind == "file":
        yield Disk(backing, backing, None, False)
        return
    loop, why = attach_loop(backing)
    if loop is None:
        unavailable = (
            f"loop devices cannot be set up here ({why}); the 'file' variant runs the "
            "same store code on a regular file, but mounts, device nodes and the page "
            "cache of a block device are not exercised"
        )
        pytest.skip(reason=unavailable)
    try:
        node, private = tmp_path / "disk", True
        try:
            os.mknod(node, stat.S_IFBLK | 0o600, os.stat(loop).st_rdev)
            os.close(os.open(node, os.O_RDONLY))
        except OSError:  # a nodev temp directory: use the system's node, unchanged
            node, private = Path(loop), False
        yield Disk(node, backing, loop, private)
    finally:
        subprocess.run(["losetup", "--detach", loop], check=False, timeout=60)


@dataclass(frozen=True)
class Mounted:
    disk: Disk
    fstype: str
    mkfs: tuple[str, ...]
    where: Path

    def remount(self) -> None:
        """Forget what the filesystem cached of the file: what is read next
        through it comes from the device."""
        run("umount", str(self.where))
        run("mount", "-t", self.fstype, str(self.disk.loop), str(self.where))


def run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True, timeout=120)


@contextlib.contextmanager
def filesystem(tmp_path: Path, fstype: str, *mkfs: str, size: int = 64 * MIB) -> Iterator[Mounted]:
    """A new ``fstype`` filesystem (made by ``mkfs``) on a loop device, mounted
    at ``tmp_path``/mnt until the block ends."""
    if not shutil.which(mkfs[0]):
        pytest.skip(reason=f"{mkfs[0]} is not installed: no {fstype} filesystem to test on")
    with make_disk(tmp_path, "loop", size=size) as disk:
        assert disk.loop is not None
        run(*mkfs, disk.loop)
        where = tmp_path / "mnt"
        where.mkdir()
        run("mount", "-t", fstype, disk.loop, str(where))
        try:
            yield Mounted(disk, fstype, mkfs, where)
        finally:
            subprocess.run(["umount", str(where)], check=False, timeout=120)
