"""Block devices as sysfs and /proc describe them: their kernel name and
size, and whether one may hold images: who may reach its node, and whether
anything uses it (a mount, swap, device-mapper or md), as far as this mount
namespace, /proc and sysfs tell.

Images hold all of memory: the node must be root's, writable by no one else
but the ``disk`` group (whose members can write every disk already), and, to
write an image, readable by no one else either; the device must not be
mounted, be active swap or be held by device-mapper or md, nor may any of its
partitions or the disk it is part of.  (Writers also open the device
``O_EXCL``, so that the kernel refuses a device claimed where we cannot look;
``directio.py``.)
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

from kexechibd import mounts
from kexechibd.image.meta import ImageError
from kexechibd.image.pathcheck import trusted_groups

SYS_DEV_BLOCK = Path("/sys/dev/block")
MOUNTINFO = mounts.MOUNTINFO
SWAPS = Path("/proc/swaps")


def check_device_node(st: os.stat_result, path: Path | str, *, write: bool) -> None:
    """Refuse a device node through which someone other than root (or the
    ``disk`` group) could have changed the image, or, for ``write``, could
    read the memory we are about to put there.  Debian's nodes (root:disk
    0660) pass."""
    if st.st_uid != 0:
        raise ImageError(
            f"{path} is owned by uid {st.st_uid}, not root: anyone with that uid could "
            "read and change images on it; refusing to use it"
        )
    mode = stat.S_IMODE(st.st_mode)
    trusted_group = st.st_gid in trusted_groups()
    problems = []
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not trusted_group):
        problems.append("writable by others, so others could have changed the image")
    if write and (mode & stat.S_IROTH or (mode & stat.S_IRGRP and not trusted_group)):
        problems.append("readable by others, who would read all of memory")
    if problems:
        raise ImageError(
            f"{path} has mode {mode:04o} and group {st.st_gid}: it is "
            f"{' and '.join(problems)}; only root and the disk group may have access "
            f"(chown root:disk {path}; chmod 660 {path})"
        )


def sysfs_node(rdev: int) -> Path:
    """The block device's directory in sysfs."""
    return SYS_DEV_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}"


def stacked_kind(rdev: int, name: str) -> str:
    """What block device ``rdev`` (kernel name ``name``) is built by, as a
    message names it: "device-mapper" (LVM, dm-crypt), "md RAID", or ''
    for a disk or partition."""
    node = sysfs_node(rdev)
    if (node / "dm").exists() or name.startswith("dm-"):
        return "device-mapper"
    if (node / "md").exists() or name.startswith("md"):
        return "md RAID"
    return ""


def device_name(rdev: int) -> str | None:
    """The kernel's name of block device ``rdev`` (``DEVNAME`` in sysfs)."""
    with contextlib.suppress(OSError):
        for line in (sysfs_node(rdev) / "uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return line.split("=", 1)[1]
    return None


def device_size(name: str) -> int:
    """The size in bytes of the block device the kernel calls ``name``."""
    try:
        return int((Path("/sys/class/block") / name / "size").read_text()) * 512
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read the size of block device {name}: {e}") from e


def _read_dev(path: Path) -> int | None:
    try:
        major, minor = path.read_text().strip().split(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _related(rdev: int) -> dict[int, str]:
    """The device, its partitions and the disk it is a partition of, each
    with how a message names it (sysfs; just the device without it)."""
    related = {rdev: "it"}
    node = sysfs_node(rdev)
    with contextlib.suppress(OSError):
        if (node / "partition").exists():
            disk = node.resolve().parent
            dev = _read_dev(disk / "dev")
            if dev is not None:
                related[dev] = f"its disk {disk.name}"
        else:
            for part in node.iterdir():
                dev = _read_dev(part / "dev") if (part / "partition").exists() else None
                if dev is not None:
                    related[dev] = f"its partition {part.name}"
    return related


def _rdev_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def current_mounts() -> list[mounts.Mount]:
    """This mount namespace's mounts; none without /proc (the kernel's
    ``O_EXCL`` check still applies)."""
    try:
        return mounts.parse_mountinfo(MOUNTINFO.read_text())
    except OSError:
        return []


def swap_devices() -> list[str]:
    """The paths /proc/swaps names (files and devices); none without /proc."""
    try:
        lines = SWAPS.read_text().splitlines()[1:]  # the first is the heading
    except OSError:
        return []
    return [mounts.unescape(line.split()[0]) for line in lines if line.split()]


def device_in_use(rdev: int) -> str | None:
    """Why the device cannot hold images, as far as this mount namespace and
    sysfs tell: a mount, swap or holder of it, of a partition of it, or of
    the disk it is part of.  None when it is free."""
    related = _related(rdev)
    for m in current_mounts():
        dev = m.device
        if dev not in related and m.source.startswith("/dev/"):
            # btrfs and other multi-device filesystems report an anonymous
            # device number; their source names the block device.
            dev = _rdev_of(m.source) or dev
        if dev in related:
            return f"{related[dev]} is mounted at {m.mount_point} ({m.fstype})"
    for swap in swap_devices():
        dev_ = _rdev_of(swap)
        if dev_ in related:
            return f"{related[dev_]} is active swap"
    for dev, who in related.items():
        with contextlib.suppress(OSError):
            holders = sorted(h.name for h in (sysfs_node(dev) / "holders").iterdir())
            if holders:
                return f"{who} is held by {', '.join(holders)} (device-mapper, RAID or the like)"
    return None


def logical_block_size(rdev: int) -> int:
    node = sysfs_node(rdev)
    try:
        if (node / "partition").exists():
            node = node.resolve().parent
        return int((node / "queue" / "logical_block_size").read_text())
    except (OSError, ValueError):
        return 512  # without sysfs; a larger one makes the first read fail with EINVAL
