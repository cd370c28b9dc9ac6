"""The engine's part of resuming from Debian's initramfs (DESIGN §6.4): a
prepared file reached through its (mounted) filesystem is not resumed, and
Hibernate to poweroff checks the resume record of the next boot's initramfs.

The kernel is a stand-in that says it is the linux backend (the checks apply
to a real machine only); nothing here loads or jumps: the refusals come
first."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from kexechibd import cpio
from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.errors import NotSupported
from kexechibd.initramfs import record
from kexechibd.kernel.api import KernelIdentity
from kexechibd.operation import CancelToken, ResumeOptions

RELEASE = "6.1.0-test"


class LinuxStandIn:
    backend = "linux"

    def cmdline(self) -> str:
        return "ro quiet"

    def identity(self) -> KernelIdentity:
        return KernelIdentity(RELEASE, "build", "boot", "machine")


def engine(location: Path, next_initramfs: str | None = None) -> KexecEngine:
    settings = EngineSettings(
        image_location=location,
        chunk_size=1 << 20,
        saver_kernel=Path("/nonexistent"),
        saver_initrd=None,
        saver_cmdline="",
        window_start=768 << 20,
        window_size=128 << 20,
        low_memory=True,
        next_initramfs=next_initramfs,
    )
    return KexecEngine(settings, LinuxStandIn())  # type: ignore[arg-type]


class Quiet:
    def set_state(self, state: object) -> None:
        raise AssertionError("the refusal comes before any state change")


def test_a_prepared_file_reached_through_its_filesystem_is_not_resumed(
    prepared: Path,
) -> None:
    with pytest.raises(NotSupported) as refused:
        asyncio.run(
            engine(prepared).resume(prepared, ResumeOptions(), Quiet(), CancelToken())  # type: ignore[arg-type]
        )
    assert "resumed from the initramfs, before the root is checked or mounted" in str(refused.value)
    assert "left in place" in str(refused.value)


def initramfs(tmp_path: Path, files: dict[str, bytes]) -> str:
    path = tmp_path / f"initrd.img-{RELEASE}"
    path.write_bytes(cpio.build_newc(files))
    return str(tmp_path / "initrd.img-{release}")


def test_hibernate_refuses_when_the_next_initramfs_has_no_record(
    tmp_path: Path,
    prepared: Path,
) -> None:
    pattern = initramfs(tmp_path, {"init": b"#!/bin/sh\n"})
    with pytest.raises(NotSupported, match=r"has no kexechib resume record.*update-initramfs -u"):
        engine(prepared, pattern)._check_next_boot(prepared, RELEASE)


def test_hibernate_refuses_a_file_recreated_since_the_initramfs_recorded_it(
    tmp_path: Path,
    prepared: Path,
) -> None:
    old = record.make(prepared)
    stale = record.Record(**{**old.__dict__, "inode": old.inode + 1})
    pattern = initramfs(tmp_path, {record.PATH: stale.to_json()})
    with pytest.raises(NotSupported, match="was recreated since"):
        engine(prepared, pattern)._check_next_boot(prepared, RELEASE)


def test_hibernate_accepts_the_image_the_next_initramfs_records(
    tmp_path: Path,
    prepared: Path,
) -> None:
    pattern = initramfs(tmp_path, {record.PATH: record.make(prepared).to_json()})
    engine(prepared, pattern)._check_next_boot(prepared, RELEASE)


def test_without_an_initramfs_file_the_next_boot_is_not_checked(
    tmp_path: Path,
    prepared: Path,
) -> None:
    # The lab boots its kernels with QEMU's -kernel/-initrd: nothing in /boot.
    engine(prepared, str(tmp_path / "absent-{release}"))._check_next_boot(prepared, RELEASE)
