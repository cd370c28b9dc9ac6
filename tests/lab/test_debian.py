"""The Debian guest (kexechibd/lab/debian.py): Debian 12 with systemd on an
ext4 root on virtio-blk, booted through OVMF with two CPUs and 1 GiB, the
product installed as a user would.

Boot (conftest.py's `debian_booted`, which tests/lab/test_logind_guest.py
shares): the probe unit reports the system running (no failed unit) with
logind and dbus active, the root remounted read-write by systemd, both CPUs
online, ACPI found, the user's workload service running.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult
from kexechibd.lab.debian import (
    DebianCycle,
    debian_cycle,
    journal,
    read_file,
)

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def booted(debian_booted: GuestResult) -> GuestResult:
    return debian_booted


def _fields(result: GuestResult, kind: str) -> dict[str, str]:
    marker = result.marker(kind)
    assert marker is not None, result.describe()
    return marker.fields


def test_the_system_reaches_running_with_no_failed_unit(booted: GuestResult) -> None:
    assert _fields(booted, "system") == {**_fields(booted, "system"), "state": "running"}, (
        booted.describe()
    )
    assert _fields(booted, "system")["failed"] == "none"


def test_logind_and_dbus_run_and_resume_is_enabled(booted: GuestResult) -> None:
    units = _fields(booted, "deb-units")
    assert units == {
        "logind": "active",
        "dbus": "active",
        "resume": "enabled",
        "workload": "active",
    }


def test_two_cpus_uefi_acpi_and_a_read_write_root(booted: GuestResult) -> None:
    machine = _fields(booted, "deb-machine")
    assert machine == {"cpus": "0-1", "root": "rw", "efi": "yes", "acpi": "yes"}


def test_the_user_workload_runs_from_boot(booted: GuestResult) -> None:
    assert int(_fields(booted, "deb-workload")["counter"]) > 0


def test_the_guest_powers_off_cleanly(booted: GuestResult) -> None:
    assert booted.exit_status == 0 and booted.shutdown_reason == "guest-shutdown", booted.describe()


# ---------------------------------------------------------------- the cycle
# The disk: Debian's root with the checkout's package installed by `dpkg -i`
# (its postinst built kernel B's initramfs with `kexechibctl saver build`),
# the image file prepared by `kexechibctl image create`, and the system's
# Debian initramfs with kexechibd's hook. QEMU 1: A (the probe runs
# guest/debian/debian-cycle.sh as root) calls logind's Hibernate(false), as
# desktops do; logind hands hibernate.target to kexechibd through the
# package's drop-in; B, the installed kernel with that initramfs, writes the
# file's blocks on /dev/vda and powers off. QEMU 2 boots the same disk
# through its own Debian initramfs, whose local-premount/kexechib resumes A
# before the root is checked or mounted; logind's job ends, A's script ends,
# and A powers off cleanly. Then e2fsck -fn on the host.


@pytest.fixture(scope="module")
def cycle(lab: Path) -> DebianCycle:
    from kexechibd.lab import new_workdir

    return asyncio.run(debian_cycle(lab, new_workdir("debian-cycle")))


def _records(result: GuestResult | None, kind: str) -> dict[str, str]:
    assert result is not None
    marker = result.marker(kind)
    assert marker is not None, result.describe()
    return marker.fields


def test_b_saves_and_powers_off(cycle: DebianCycle) -> None:
    one = cycle.hibernate
    assert any("image committed" in line.text for line in one.lines), one.describe()
    assert one.shutdown_reason == "guest-shutdown", one.describe()


def test_logind_offers_hibernation_as_kexechibd_does(cycle: DebianCycle) -> None:
    assert _records(cycle.hibernate, "a-can") == {"logind": "yes", "kexechib": "yes"}


def test_logind_sends_prepare_for_sleep_true_then_false_around_the_cycle(
    cycle: DebianCycle,
) -> None:
    assert _records(cycle.resume, "a-back")["signals"] == "true,false"


def test_the_sleep_hooks_run_pre_and_post_hibernate(cycle: DebianCycle) -> None:
    hooks = _records(cycle.resume, "a-back")["hooks"]
    assert hooks == "pre:hibernate:hibernate,post:hibernate:hibernate"


def test_kexechibd_reports_no_error_after_the_resume(cycle: DebianCycle) -> None:
    assert _records(cycle.resume, "a-back")["last_error"] == "none"


def test_the_next_boot_resumes_a_and_the_call_returns(cycle: DebianCycle) -> None:
    assert _records(cycle.resume, "a-back")["status"] == "0"


def test_c_resumes_from_the_initramfs_before_anything_mounts_as_root(cycle: DebianCycle) -> None:
    # C never mounted A's root: no journal replay, no orphan cleanup behind A's back.
    assert cycle.resume is not None
    log = cycle.resume.log
    jump = log.index("Starting new kernel")
    assert "Running /scripts/local-premount" in log[:jump], cycle.resume.describe()
    assert "role restorer" in log[:jump]
    assert "EXT4-fs (vda)" not in log[:jump], cycle.resume.describe()


def test_the_workload_counts_on_with_its_memory_and_tmpfs_file(cycle: DebianCycle) -> None:
    before = _records(cycle.hibernate, "a-ready")
    after = _records(cycle.resume, "a-state")
    assert after["pid"] == before["pid"]
    assert (after["memory"], after["canary"]) == ("intact", "intact")
    assert int(after["counter"]) > int(before["counter"])


def test_the_file_on_the_ext4_root_goes_on_being_appended(cycle: DebianCycle) -> None:
    # Read on the host after the clean shutdown: one line per count, none
    # lost or doubled across the cycle, and more after it than before.
    before = _records(cycle.hibernate, "a-ready")
    counts = [int(n) for n in read_file(cycle.disk, "/home/lab/workload.log").split()]
    assert counts == list(range(counts[0], counts[0] + len(counts)))
    assert counts[-1] > int(_records(cycle.resume, "a-state")["counter"]) > int(before["counter"])


def test_the_journal_shows_the_cycle(cycle: DebianCycle) -> None:
    text = journal(cycle.disk, "-u", "kexechibd.service")
    assert "jumping to kernel B" in text and "back in A: resumed from the image" in text


def test_both_cpus_are_back_after_the_resume(cycle: DebianCycle) -> None:
    assert _records(cycle.resume, "a-state")["cpus"] == "0-1"


def test_the_root_is_clean_after_the_shutdown(cycle: DebianCycle) -> None:
    assert cycle.resume is not None and cycle.resume.shutdown_reason == "guest-shutdown"
    assert cycle.fsck_status == 0, cycle.fsck_output


def test_the_image_is_wiped(cycle: DebianCycle) -> None:
    assert cycle.resume is not None
    (image,) = cycle.resume.records("a-image")
    (values,) = image["data"]  # type: ignore[index]
    assert values["absent"]["data"] is True, image  # the prepared file holds no image
    assert "image wiped: " in journal(cycle.disk, "-u", "kexechibd.service")


# The control of tests/lab/test_debian_luks.py's search: on this unencrypted
# root the image file holds the workload's secret in the clear until A wipes
# it, and the host's search of the raw disk file finds it.


def test_the_hosts_search_finds_the_secret_in_the_image_in_the_clear(cycle: DebianCycle) -> None:
    assert len(cycle.secret) == 16
    assert cycle.secret_after_save, "no piece of the workload's secret in the clear image"


def test_no_piece_of_the_secret_is_left_on_the_disk_after_the_wipe(cycle: DebianCycle) -> None:
    assert cycle.secret_after_resume == frozenset()
