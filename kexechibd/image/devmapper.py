"""Device-mapper devices, through ``dmsetup`` (libdevmapper's tool, which
cryptsetup depends on and Debian's initramfs carries): a device's table, and
the devices of a sealed image file's mapping (``seal.py``) made and removed.

Tables go to dmsetup on its standard input: the image device's holds the seal
key, and a command line is readable by every user in /proc.  Devices are
opened by the node devtmpfs makes for them (``/dev/dm-N``), not through
``/dev/mapper`` links, which need udev (not running in B).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kexechibd.image.blockdev import device_name
from kexechibd.image.meta import ImageError

DMSETUP = "dmsetup"
# Where it is whatever PATH says (B's init and udev's workers set a short one).
SEARCH = "/usr/sbin:/sbin:/usr/bin:/bin"


def program() -> Path | None:
    """Where ``dmsetup`` is here (None: not installed)."""
    found = shutil.which(DMSETUP, path=SEARCH)
    return Path(found) if found else None


def _dmsetup(args: list[str], what: str, table: str | None = None) -> str:
    found = program()
    if found is None:
        raise ImageError(f"cannot {what}: {DMSETUP} is not installed (Debian: dmsetup)")
    done = subprocess.run(
        [str(found), *args], input=table, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        # Every line: the last is often just "Command failed.".  dmsetup
        # never echoes a table, so no key can be in it.
        why = "; ".join(done.stderr.split("\n")).strip("; ") or f"exit status {done.returncode}"
        raise ImageError(f"cannot {what}: {DMSETUP}: {why}")
    return done.stdout


def table_of(device: int) -> str:
    """dm's table of block device ``device`` (keys masked by dmsetup)."""
    major, minor = os.major(device), os.minor(device)
    return _dmsetup(
        ["table", "-j", str(major), "-m", str(minor)],
        f"read the device-mapper table of {major}:{minor}",
    )


def create(name: str, table: str) -> int:
    """Make device ``name`` with ``table``; its device number.  No udev
    synchronisation: where udev runs without dm's rules it would wait."""
    _dmsetup(["create", "--noudevsync", name], f"set up {name}", table)
    out = _dmsetup(
        ["info", "--columns", "--noheadings", "-o", "major,minor", "--separator", ":", name],
        f"find {name}",
    )
    try:
        major, minor = (int(v) for v in out.strip().split(":"))
    except ValueError:
        raise ImageError(f"cannot find {name}: {DMSETUP} said {out.strip()!r}") from None
    return os.makedev(major, minor)


def exists(name: str) -> bool:
    try:
        _dmsetup(["info", name], f"find {name}")
    except ImageError:
        return False
    return True


def remove(name: str) -> None:
    """Remove device ``name`` if it is there.  ``--retry``: udev may still
    be probing a device just closed (A, and C's initramfs, run udev)."""
    if exists(name):
        _dmsetup(["remove", "--noudevsync", "--retry", name], f"remove {name}")


def node(device: int) -> Path:
    """The device's node as devtmpfs names it."""
    name = device_name(device)
    if name is None:
        raise ImageError(f"device-mapper device {os.major(device)}:{os.minor(device)} has no node")
    return Path("/dev") / name
