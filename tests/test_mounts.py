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
    unescape,
    writable_data_mounts,
)
from tests.mounts_support import EARLY, LATER


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


def test_a_mount_carries_its_device_number_and_both_option_lists() -> None:
    """What the image library asks of a mount: which device its files name
    (st_dev) and its options, the mount's and the superblock's."""
    home = next(m for m in parse_mountinfo(LATER) if m.mount_point == "/home dir")
    assert home.device == os.makedev(254, 17)
    assert home.options == "rw,relatime,rw,attr2"


@pytest.mark.parametrize(
    "field, text",
    [
        ("/srv/with\\040space", "/srv/with space"),
        ("a\\011tab\\012newline\\134backslash", "a\ttab\nnewline\\backslash"),
        ("\\089", "\\089"),  # not octal: left as it is
        ("plain", "plain"),
    ],
)
def test_mountinfo_fields_have_their_octal_escapes_undone(field: str, text: str) -> None:
    assert unescape(field) == text
