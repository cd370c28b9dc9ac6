"""Kernel B boots the initramfs `kexechibctl saver build` writes.

The same hibernate -> power off -> resume cycle as test_cycle.py, except
that A's kexechibd loads B with the product's initramfs instead of the lab
userspace: built on the host by kexechibd.initramfs.build from the host's
python3 and Debian packages (the guest userspace is built from the same
files) for the lab kernel, and put where the lab's A finds kernel B's
initrd (/boot/saver.cpio of the origin layer).  B runs no script of the
lab: its /init (kexechibd/initramfs/init.py) runs `kexechibd --oneshot`,
which saves A to the image disk and powers off.  C resumes it as usual.
A's kexechibd checked the archive's manifest before it hibernated: an
archive of another kexechibd would have been refused (CanHibernate na).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.initramfs.manifest import NAME, read_manifest
from kexechibd.lab import new_workdir
from kexechibd.lab.cycle import CycleRun, hibernate_cycle
from kexechibd.lab.userspace import saver_build

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def built_cycle(lab: Path, request: pytest.FixtureRequest) -> Iterator[tuple[Path, CycleRun]]:
    workdir = new_workdir("saver-initramfs")
    failed = request.session.testsfailed
    initrd = saver_build(lab, workdir / "saver-initrd.img")
    run = asyncio.run(hibernate_cycle(lab, workdir, saver_initrd=initrd))
    yield initrd, run
    if request.session.testsfailed == failed:
        shutil.rmtree(workdir, ignore_errors=True)


def test_the_built_initramfs_names_the_lab_kernel_it_was_built_for(
    lab: Path, built_cycle: tuple[Path, CycleRun]
) -> None:
    initrd, _ = built_cycle
    manifest = read_manifest(initrd.read_bytes()[: 64 << 10])
    assert manifest is not None, NAME
    assert manifest.kernel_version.split()[0] == manifest.kernel_release
    assert manifest.modules == ()  # the lab kernel has its drivers built in


def test_b_boots_the_built_initramfs_saves_a_and_powers_off(
    built_cycle: tuple[Path, CycleRun],
) -> None:
    one = built_cycle[1].hibernate
    assert one.shutdown_reason == "guest-shutdown" and not one.timed_out, one.describe(80)
    log = one.log
    assert "kexechib-init: kernel B is up" in log, one.describe(80)
    assert "kexechib-init: starting kexechibd --oneshot" in log
    assert "kexechibd: INFO: role saver" in log
    assert "image committed" in log and "reboot: Power down" in one.tail(5)
    # Nothing of the lab ran in B: no /init marker after A's.
    assert [m.kind for m in one.markers].count("init") == 1, one.describe(80)


def test_c_resumes_the_image_b_wrote_and_a_carries_on(built_cycle: tuple[Path, CycleRun]) -> None:
    run = built_cycle[1]
    two = run.resume
    assert two is not None and two.exit_status == 0, two.describe(80) if two else run
    back = next(m for m in two.markers if m.kind == "a-back")
    assert back.fields["status"] == "0"
    state = next(m for m in two.markers if m.kind == "a-state").fields
    assert state["memory"] == "intact" and state["canary"] == "intact", state
    assert int(state["later"]) > int(state["counter"])
    print("\nphases:", *(f"{name}: {seconds} s" for name, seconds in run.times()), sep="\n  ")


def test_b_saves_in_a_window_of_the_default_size(lab: Path, request: pytest.FixtureRequest) -> None:
    # The lab's B (the 32 MB lab userspace, a bus and the daemon) needs
    # 192 MiB (docs/lab.md §5); the built initramfs must fit the default
    # 128 MiB ([saver] window = 128M@768M; at 256M here, in 512 MiB).
    workdir = new_workdir("saver-window")
    failed = request.session.testsfailed
    initrd = saver_build(lab, workdir / "saver-initrd.img")
    # A's memory outside a 128 MiB window is 382 MiB: slots of 400 MiB.
    cycle = hibernate_cycle(lab, workdir, saver_initrd=initrd, window="128M@256M", disk_mib=800)
    run = asyncio.run(cycle)
    one = run.hibernate
    assert "memmap=128M@0x10000000" in one.log, one.describe(80)
    assert "image committed" in one.log and "reboot: Power down" in one.tail(5), one.describe(80)
    assert run.resume is not None and run.resume.exit_status == 0, run.resume
    if request.session.testsfailed == failed:
        shutil.rmtree(workdir, ignore_errors=True)
