"""Debian's own mkinitramfs with kexechibd's hook and local-premount script:
the archive holds the interpreter, kexechibd, the resume record and the
script, and initramfs-tools runs local-premount before it checks the root.

mkinitramfs reads the kernel's config from /boot; it runs here in a private
mount namespace with a tmpfs on /boot holding a one-line config for a kernel
release that does not exist (no /lib/modules: none are needed), so nothing
of the host's /boot is read or written.  Our files come from a copy of
/etc/initramfs-tools given with `-d`, as an administrator's own hooks would.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zstandard

from kexechibd import cpio
from kexechibd.initramfs import hook, record
from tests.initramfs_support import mkinitramfs

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("mkinitramfs") is None or shutil.which("unshare") is None,
    reason="needs root, unshare and initramfs-tools (Makefile APT_PACKAGES)",
)


def entries(path: Path) -> dict[str, bytes]:
    blob = path.read_bytes()
    assert blob.startswith(b"\x28\xb5\x2f\xfd"), "zstd, as Debian 12's COMPRESS=zstd"
    main = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=True).read()
    return {e.name.removeprefix("./"): e.data for e in cpio.read_newc(main)}


@pytest.fixture
def built(tmp_path: Path, prepared: Path) -> tuple[Path, dict[str, bytes], Path]:
    config = tmp_path / "kexechibd.conf"
    config.write_text(f"[image]\nlocation = {prepared}\n")
    out = mkinitramfs(tmp_path, config)
    return out, entries(out), prepared


def test_the_initramfs_holds_python_and_kexechibd(
    built: tuple[Path, dict[str, bytes], Path],
) -> None:
    _, files, _ = built
    assert "usr/bin/python3" in files and "usr/bin/python3.11" in files
    site = "usr/lib/python3/dist-packages"
    for module in ("kexechibd/daemon/main.pyc", "kexechibd/initramfs/record.pyc", "dbus_next"):
        assert any(name.startswith(f"{site}/{module}") for name in files), module
    assert not any(name.startswith(f"{site}/kexechibd/lab") for name in files)
    assert "etc/kexechibd.conf" in files


def test_the_initramfs_records_the_prepared_file(
    built: tuple[Path, dict[str, bytes], Path],
) -> None:
    out, files, image = built
    assert record.Record.from_json(files[record.PATH]) == record.make(image)
    # ... as A reads it back at Hibernate: no problem, nothing stale.
    assert record.problems(record.read_from_initramfs(out), record.make(image), "x") == []


def test_the_script_runs_in_local_premount(built: tuple[Path, dict[str, bytes], Path]) -> None:
    _, files, _ = built
    assert files["scripts/local-premount/kexechib"].startswith(b"#!/bin/sh")
    assert b"/scripts/local-premount/kexechib" in files["scripts/local-premount/ORDER"]


def test_local_premount_runs_before_the_root_is_checked_or_mounted(
    built: tuple[Path, dict[str, bytes], Path],
) -> None:
    _, files, _ = built
    local = files["scripts/local"].decode()
    body = local[local.index("local_mount_root()") :]
    assert body.index("local_premount") < body.index('checkfs "${ROOT}"') < body.index("mount ")


def test_without_an_image_location_the_hook_records_nothing(tmp_path: Path) -> None:
    config = tmp_path / "kexechibd.conf"
    config.write_text(f"[image]\nlocation = {tmp_path / 'absent'}\n")
    files = entries(mkinitramfs(tmp_path, config))
    assert record.PATH not in files
    assert "scripts/local-premount/kexechib" in files


def test_a_broken_configuration_leaves_the_initramfs_build_going_without_a_record(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "kexechibd.conf"
    config.write_text("[image]\nno_such_setting = 1\n")
    destdir = tmp_path / "destdir"
    destdir.mkdir()
    assert hook.main([str(destdir), str(config)]) == 0
    assert "kexechibd: W: not added to the initramfs" in capsys.readouterr().err
    assert not (destdir / record.PATH).exists()
