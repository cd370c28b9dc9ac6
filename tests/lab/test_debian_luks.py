"""The hibernate cycle of a Debian guest whose root is on LUKS2
(kexechibd/lab/debian_luks.py; issue 16 point 4, docs/lab.md §13).

The disk is laid out as Debian's installer lays out an encrypted system:
ext4 /boot in the clear on vda1, LUKS2 on vda2 with ext4 / inside, unlocked
by the initramfs's cryptsetup (from a key file in the lab). QEMU 1: A runs
guest/debian/debian-cycle.sh: `kexechibctl image create` makes the image
file on the encrypted root, sealed, and updates the initramfs on /boot; then
logind's Hibernate(false); B writes the image through the seal and powers
off. QEMU 2 boots the initramfs A made: cryptsetup unlocks the root, and
local-premount/kexechib resumes A through C's own mapping. After each, the
host searches the raw disk file for pieces of the workload's secret (16
pieces of 32 random bytes): none is there. tests/lab/test_debian.py runs the
same search on the unencrypted guest, where it finds them (the control).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult, new_workdir
from kexechibd.lab.debian import DebianCycle, debian_cycle
from kexechibd.lab.debian_luks import LuksMachine

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def cycle(lab: Path) -> DebianCycle:
    return asyncio.run(debian_cycle(lab, new_workdir("debian-luks"), machine=LuksMachine()))


def _records(result: GuestResult | None, kind: str) -> dict[str, str]:
    assert result is not None
    marker = result.marker(kind)
    assert marker is not None, result.describe()
    return marker.fields


def test_the_system_boots_from_its_encrypted_root(cycle: DebianCycle) -> None:
    one = cycle.hibernate
    assert _records(one, "system") == {**_records(one, "system"), "failed": "none"}
    assert "EXT4-fs (dm-0): mounted filesystem" in one.log, one.describe()


def test_the_image_file_on_the_luks_root_is_sealed(cycle: DebianCycle) -> None:
    assert _records(cycle.hibernate, "a-protection")["sealed"] == "yes"


def test_logind_offers_hibernation_as_kexechibd_does(cycle: DebianCycle) -> None:
    assert _records(cycle.hibernate, "a-can") == {"logind": "yes", "kexechib": "yes"}


def test_b_writes_the_image_and_powers_off(cycle: DebianCycle) -> None:
    one = cycle.hibernate
    assert any("image committed" in line.text for line in one.lines), one.describe()
    assert one.shutdown_reason == "guest-shutdown", one.describe()


def test_c_unlocks_the_root_and_resumes_before_mounting_it(cycle: DebianCycle) -> None:
    assert cycle.resume is not None
    log = cycle.resume.log
    jump = log.index("Starting new kernel")
    assert "Running /scripts/local-premount" in log[:jump], cycle.resume.describe()
    assert "role restorer" in log[:jump]
    assert "EXT4-fs (dm-0)" not in log[:jump], cycle.resume.describe()


def test_the_call_returns_in_a_with_no_error(cycle: DebianCycle) -> None:
    back = _records(cycle.resume, "a-back")
    assert (back["status"], back["last_error"], back["signals"]) == ("0", "none", "true,false")


def test_the_journal_shows_the_cycle(cycle: DebianCycle) -> None:
    assert _records(cycle.resume, "a-journal")["resumed"] == "1"


def test_the_workload_is_the_same_process_with_the_same_memory(cycle: DebianCycle) -> None:
    before = _records(cycle.hibernate, "a-ready")
    after = _records(cycle.resume, "a-state")
    assert after["pid"] == before["pid"]
    assert (after["memory"], after["canary"]) == ("intact", "intact")
    assert int(after["counter"]) > int(before["counter"])


def test_no_piece_of_the_secret_is_on_the_raw_disk_after_the_save(cycle: DebianCycle) -> None:
    assert len(cycle.secret) == 16
    assert cycle.secret_after_save == frozenset()


def test_no_piece_of_the_secret_is_on_the_raw_disk_after_the_resume(cycle: DebianCycle) -> None:
    assert cycle.secret_after_resume == frozenset()


def test_the_image_is_wiped(cycle: DebianCycle) -> None:
    assert cycle.resume is not None
    (image,) = cycle.resume.records("a-image")
    (values,) = image["data"]  # type: ignore[index]
    assert values["absent"]["data"] is True, image
    assert _records(cycle.resume, "a-journal")["wiped"] == "1"


def test_boot_is_clean_after_the_shutdown(cycle: DebianCycle) -> None:
    assert cycle.resume is not None and cycle.resume.shutdown_reason == "guest-shutdown"
    assert cycle.fsck_status == 0, cycle.fsck_output
