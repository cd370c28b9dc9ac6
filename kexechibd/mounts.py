"""Which filesystems are writable, and where an image can be found early in
boot (DESIGN §1.4, §6): pure functions of ``/proc/self/mountinfo`` and
``stat`` results, plus the one reader.

A resume (C → A) is safe only while no filesystem that may hold A's data is
mounted read-write: A's page cache, frozen in the image, must still match
the disks.  What counts is the *superblock's* state (the last field of a
mountinfo line): a read-only bind mount of a writable filesystem (as
``ProtectSystem=`` makes them) does not protect its disk.  Filesystems that
live in memory or describe the kernel (tmpfs, proc, sysfs, cgroup, …) hold
none of A's data; every other type counts, disk and network alike.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

MOUNTINFO = Path("/proc/self/mountinfo")

# Filesystems that hold nothing of A's that a disk keeps: memory-backed or
# views of the kernel.  (efivarfs writes firmware variables, not files of A;
# squashfs and iso9660 are read-only by nature.)
MEMORY_OR_KERNEL_FILESYSTEMS = frozenset(
    {
        "rootfs", "tmpfs", "ramfs", "proc", "sysfs", "devtmpfs", "devpts", "mqueue",
        "cgroup", "cgroup2", "securityfs", "debugfs", "tracefs", "pstore", "bpf",
        "hugetlbfs", "configfs", "fusectl", "efivarfs", "autofs", "binfmt_misc",
        "rpc_pipefs", "nsfs", "selinuxfs", "squashfs", "iso9660",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Mount:
    mount_point: str
    fstype: str
    source: str
    writable: bool  # the superblock's rw/ro, not this mount's
    device: int = 0  # st_dev of its files (major:minor); 0 when unreadable
    options: str = ""  # the mount's and the superblock's, comma-separated


def unescape(field: str) -> str:
    """A field of mountinfo or /proc/swaps, which write space, tab, newline
    and backslash as octal ``\\ooo``."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def parse_mountinfo(text: str) -> list[Mount]:
    """The mounts of a ``/proc/<pid>/mountinfo`` text (proc(5))."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        sep = fields.index("-")
        if sep < 6 or len(fields) < sep + 4:
            continue
        super_options = fields[sep + 3].split(",")
        try:
            major, minor = fields[2].split(":")
            device = os.makedev(int(major), int(minor))
        except ValueError:
            device = 0
        mounts.append(
            Mount(
                mount_point=unescape(fields[4]),
                fstype=fields[sep + 1],
                source=unescape(fields[sep + 2]),
                writable="rw" in super_options,
                device=device,
                options=f"{fields[5]},{fields[sep + 3]}",
            )
        )
    return mounts


def holds_data(mount: Mount) -> bool:
    """Whether a mount may hold A's data (its type is not memory or kernel)."""
    base = mount.fstype.split(".", 1)[0]  # fuse.sshfs counts as fuse
    return base not in MEMORY_OR_KERNEL_FILESYSTEMS


def writable_data_mounts(mounts: Iterable[Mount]) -> list[Mount]:
    """The mounts that make a resume unsafe: writable and holding data, one
    per filesystem (a bind mount shows it twice)."""
    seen: set[tuple[str, str]] = set()
    found = []
    for m in mounts:
        if m.writable and holds_data(m) and (m.source, m.fstype) not in seen:
            seen.add((m.source, m.fstype))
            found.append(m)
    return found


def resume_refusal(mounts: Iterable[Mount]) -> str:
    """Why a resume must not happen now ('' when it may)."""
    found = writable_data_mounts(mounts)
    if not found:
        return ""
    named = ", ".join(f"{m.mount_point} ({m.fstype} on {m.source})" for m in found[:4])
    more = f" and {len(found) - 4} more" if len(found) > 4 else ""
    return (
        f"{named}{more} {'is' if len(found) == 1 else 'are'} mounted read-write: this boot "
        "may already have changed what the hibernated system has cached, so resuming now "
        "could corrupt it.  Resume only at boot: from the initramfs (kexechibd's "
        "initramfs-tools hook, before the root is checked or mounted), or for a raw "
        "partition on a system without it from kexechib-resume.service (the kernel command "
        "line needs `ro`); or discard the image (kexechibctl image discard)"
    )


def read_mounts(path: Path = MOUNTINFO) -> list[Mount]:
    return parse_mountinfo(path.read_text())


def early_boot_problem(
    location: Path, location_stat: os.stat_result, root_stat: os.stat_result
) -> str:
    """Why kexechib-resume.service, which runs before anything but the root
    filesystem (read-only) is mounted, could not find an image at
    ``location`` ('' when it can): a block device, or a file on the root
    filesystem."""
    if stat.S_ISBLK(location_stat.st_mode):
        return ""
    if location_stat.st_dev == root_stat.st_dev:
        return ""
    return (
        f"{location} is not on the root filesystem: the next boot looks for the image "
        "before any other filesystem is mounted (kexechib-resume.service), so it would "
        "not find it there; put the image file on the root filesystem or use a raw "
        "partition ([image] location)"
    )


def early_boot_problem_of(location: Path) -> str:
    """``early_boot_problem`` for the file system as it is (a missing location
    is not this check's business: the image checks name it)."""
    try:
        location_stat = os.stat(location)
    except OSError:
        return ""
    return early_boot_problem(location, location_stat, os.stat("/"))
