"""Helpers for the lab tests of sealed image files.  Host side: a guest
program run with a blank disk (``run_with_disk``).  Guest side: a LUKS2
volume on that disk, opened as Debian's cryptsetup opens a root (the volume
key handed to dm-crypt through the kernel keyring), with ext4 on it; and raw
writes and searches of the disk under it."""

from __future__ import annotations

import mmap
import os
import subprocess
from pathlib import Path

from kexechibd.lab import GuestResult, new_workdir
from tests.lab.staged_support import run_guest_program
from tests.sizes import MIB

DISK_MIB = 64
CONTROL_OFFSET = (DISK_MIB - 1) * MIB  # the disk's last MiB, beyond ext4's


def run_with_disk(lab: Path, module: str, name: str) -> tuple[GuestResult, bytes]:
    """Run ``python -m <module> guest`` in a guest with a blank DISK_MIB disk
    as /dev/vda; the guest's run and the raw disk as it left it."""
    image = new_workdir(f"{name}-disk") / "disk.raw"
    with image.open("wb") as f:
        f.truncate(DISK_MIB * MIB)
    result = run_guest_program(lab, module, name, disks=(image,), timeout=300)
    return result, image.read_bytes()


def control_on(raw: bytes, control: bytes) -> bool:
    """Whether the raw disk holds ``control`` where the guest wrote it in the
    clear (``direct_write(DISK, CONTROL_OFFSET, control)``): the search works."""
    return raw[CONTROL_OFFSET : CONTROL_OFFSET + len(control)] == control


# =============================================================== guest side

DISK = Path("/dev/vda")
NAME = "root"
MAPPED = Path("/dev/mapper") / NAME
KEY_FILE = Path("/run/luks.key")  # tmpfs in the guest
MOUNT = Path("/run/root")


def run(*args: str) -> str:
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout


def format_volume() -> None:
    """LUKS2 on the disk, ext4 with 4 KiB blocks in it (a small filesystem
    would get 1 KiB blocks, which image files refuse); left closed."""
    KEY_FILE.write_bytes(os.urandom(32))
    # PBKDF2 at 1000 rounds: argon2id's default costs minutes under TCG.
    run(
        "cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--key-file",
        str(KEY_FILE), "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
        "--luks2-metadata-size", "16k", "--luks2-keyslots-size", "1m", str(DISK),
    )  # fmt: skip
    open_volume()
    run("mkfs.ext4", "-q", "-b", "4096", str(MAPPED))
    close_volume()


def open_volume() -> None:
    run("cryptsetup", "open", "--key-file", str(KEY_FILE), str(DISK), NAME)


def close_volume() -> None:
    run("cryptsetup", "close", NAME)


def mount() -> Path:
    MOUNT.mkdir(exist_ok=True)
    run("mount", str(MAPPED), str(MOUNT))
    return MOUNT


def unmount() -> None:
    run("umount", str(MOUNT))


def direct_write(path: Path, offset: int, data: bytes) -> None:
    """One MiB of ``data`` repeated, at ``offset``, past every cache."""
    buf = mmap.mmap(-1, MIB)
    buf.write((data * (MIB // len(data) + 1))[:MIB])
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    try:
        os.pwritev(fd, [buf], offset)
        os.fsync(fd)
    finally:
        os.close(fd)


def direct_read(path: Path, offset: int) -> bytes:
    buf = mmap.mmap(-1, MIB)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECT)
    try:
        os.preadv(fd, [buf], offset)
    finally:
        os.close(fd)
    return bytes(buf)


def on_disk(needle: bytes) -> bool:
    """Whether ``needle`` is anywhere on the raw disk (read past the cache)."""
    fd = os.open(DISK, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        size = os.lseek(fd, 0, os.SEEK_END)
        pos, tail = 0, b""
        while pos < size:
            block = os.pread(fd, 4 * MIB, pos)
            if needle in tail + block:
                return True
            tail = block[-len(needle) :]
            pos += len(block)
        return False
    finally:
        os.close(fd)
