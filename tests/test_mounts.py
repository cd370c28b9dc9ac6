"""When a resume is safe and where the next boot finds an image: pure
functions of /proc/self/mountinfo and stat results (kexechibd.mounts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kexechibd import cmdline
from kexechibd.mounts import (
    Mount,
    early_boot_problem,
    parse_mountinfo,
    read_mounts,
    resume_refusal,
    writable_data_mounts,
)

# What kexechib-resume.service sees early in a Debian boot (root `ro`), and
# the same system later, with a read-only bind mount as ProtectSystem= makes.
EARLY = """\
22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
23 1 0:22 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
24 1 0:5 / /dev rw,nosuid,relatime shared:2 - devtmpfs udev rw,size=4010000k,mode=755
26 1 0:24 / /run rw,nosuid,nodev,noexec,relatime shared:5 - tmpfs tmpfs rw,size=803000k
1 0 254:1 / / ro,relatime shared:1 - ext4 /dev/vda1 ro,errors=remount-ro
28 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw
"""
LATER = EARLY.replace(
    "ro,relatime shared:1 - ext4 /dev/vda1 ro,", "rw,relatime shared:1 - ext4 /dev/vda1 rw,"
) + (
    "40 1 254:1 /var/lib /var/lib ro,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro\n"
    "41 1 254:17 / /home\\040dir rw,relatime shared:30 - xfs /dev/vdb1 rw,attr2\n"
)


def test_early_boot_with_root_read_only_may_resume() -> None:
    assert resume_refusal(parse_mountinfo(EARLY)) == ""


def test_a_read_write_root_forbids_resuming_and_names_it() -> None:
    refusal = resume_refusal(parse_mountinfo(LATER))
    assert refusal.startswith(
        "/ (ext4 on /dev/vda1), /home dir (xfs on /dev/vdb1) are mounted read-write"
    )
    assert "kexechib-resume.service" in refusal and "kexechibctl image discard" in refusal


def test_a_read_only_bind_mount_of_a_writable_filesystem_still_counts_once() -> None:
    found = writable_data_mounts(parse_mountinfo(LATER))
    assert [(m.mount_point, m.source) for m in found] == [
        ("/", "/dev/vda1"),
        ("/home dir", "/dev/vdb1"),
    ]


@pytest.mark.parametrize(
    "fstype, source, counts",
    [
        ("ext4", "/dev/vda1", True),
        ("xfs", "/dev/mapper/vg-home", True),
        ("btrfs", "/dev/nvme0n1p2", True),
        ("vfat", "/dev/vda15", True),
        ("nfs4", "server:/export", True),  # the hibernated system's cache of it
        ("fuse.sshfs", "host:", True),
        ("tmpfs", "tmpfs", False),
        ("proc", "proc", False),
        ("sysfs", "sysfs", False),
        ("devtmpfs", "udev", False),
        ("cgroup2", "cgroup2", False),
        ("efivarfs", "efivarfs", False),
        ("rootfs", "rootfs", False),  # an initramfs: RAM
    ],
)
def test_which_writable_filesystems_may_hold_the_hibernated_systems_data(
    fstype: str, source: str, counts: bool
) -> None:
    mount = Mount("/m", fstype, source, writable=True)
    assert bool(writable_data_mounts([mount])) is counts
    assert writable_data_mounts([Mount("/m", fstype, source, writable=False)]) == []


def test_this_hosts_mountinfo_parses() -> None:
    mounts = read_mounts()
    assert any(m.mount_point == "/" for m in mounts)


def fake_stat(mode: int, dev: int) -> os.stat_result:
    return os.stat_result((mode, 1, dev, 1, 0, 0, 0, 0, 0, 0))


@pytest.mark.parametrize(
    "mode, dev, fine",
    [
        (stat.S_IFBLK | 0o660, 99, True),  # a raw partition: found by its node
        (stat.S_IFREG | 0o600, 1, True),  # a file on the root filesystem
        (stat.S_IFREG | 0o600, 2, False),  # a file on /home, /srv, …: not mounted yet
    ],
)
def test_the_next_boot_finds_only_a_partition_or_a_file_on_the_root(
    mode: int, dev: int, fine: bool
) -> None:
    problem = early_boot_problem(
        Path("/srv/image"), fake_stat(mode, dev), fake_stat(stat.S_IFDIR, 1)
    )
    assert (problem == "") is fine
    if not fine:
        assert "/srv/image is not on the root filesystem" in problem


@pytest.mark.parametrize(
    "line, noresume",
    [
        ("ro quiet", False),
        ("ro noresume", True),
        ("ro kexechib.noresume quiet", True),
        ("ro noresume=0", False),  # not the parameter
        ("ro kexechib.noresumeX", False),
    ],
)
def test_noresume_on_the_command_line(line: str, noresume: bool) -> None:
    assert cmdline.noresume(line) is noresume
