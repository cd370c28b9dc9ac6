"""The resume record: what Debian's initramfs knows of the image without a
filesystem (kexechibd/initramfs/record.py, DESIGN §6.4)."""

from __future__ import annotations

import gzip
import os
import subprocess
from pathlib import Path

import pytest
import zstandard

from kexechibd import cpio
from kexechibd.image import ExtentImageStore, ImageError
from kexechibd.image import extents as ex
from kexechibd.initramfs import record
from tests.blockdev_support import Mounted

FILE = record.Record(
    location="/var/lib/kexechib/image",
    kind="file",
    links=("/dev/disk/by-uuid/0b9c-1",),
    major=254,
    minor=1,
    device_name="vda1",
    device_size=8 << 30,
    inode=131,
    size=64 << 20,
    extents=((0, 1 << 30, 32 << 20), (32 << 20, 2 << 30, 32 << 20)),
)
DEVICE = record.Record(
    location="/dev/disk/by-partlabel/kexechib",
    kind="device",
    links=("/dev/disk/by-partuuid/1234-02", "/dev/disk/by-partlabel/kexechib"),
    major=259,
    minor=2,
    device_name="nvme0n1p2",
    device_size=16 << 30,
)


SEALED = record.Record(**{**FILE.__dict__, "kind": "sealed", "device_name": "dm-0"})


@pytest.mark.parametrize("made", [FILE, SEALED, DEVICE], ids=["file", "sealed", "device"])
def test_a_record_reads_back_as_written(made: record.Record) -> None:
    assert record.Record.from_json(made.to_json()) == made


def test_a_sealed_files_record_holds_its_blocks_but_no_key() -> None:
    data = SEALED.to_json()
    assert b'"extents"' in data and b"key" not in data


def test_a_record_of_another_format_is_refused() -> None:
    with pytest.raises(ImageError, match="unknown format"):
        record.Record.from_json(FILE.to_json().replace(b'"format": 1', b'"format": 9'))


def test_a_file_record_without_extents_is_refused() -> None:
    raw = FILE.to_json().replace(b'"kind": "file"', b'"kind": "device"')
    with pytest.raises(ImageError, match="inconsistent"):
        record.Record.from_json(raw)


def test_the_record_that_matches_has_no_problem() -> None:
    assert record.problems(FILE, FILE, "/boot/initrd.img-6.1.0") == []


def test_no_record_in_the_initramfs_names_update_initramfs() -> None:
    (problem,) = record.problems(None, FILE, "/boot/initrd.img-6.1.0")
    assert "/boot/initrd.img-6.1.0 has no kexechib resume record" in problem
    assert "`update-initramfs -u -k all`" in problem


def test_a_recreated_file_is_stale_even_on_the_same_blocks() -> None:
    now = record.Record(**{**FILE.__dict__, "inode": 132})
    (problem,) = record.problems(FILE, now, "initrd")
    assert "was recreated" in problem and "update-initramfs -u" in problem


def test_moved_blocks_are_stale() -> None:
    now = record.Record(**{**FILE.__dict__, "extents": ((0, 3 << 30, 64 << 20),)})
    (problem,) = record.problems(FILE, now, "initrd")
    assert "blocks of /var/lib/kexechib/image are not where initrd recorded" in problem


def test_another_location_is_stale() -> None:
    (problem,) = record.problems(DEVICE, FILE, "initrd")
    assert "looks for the image at /dev/disk/by-partlabel/kexechib" in problem


def test_another_device_under_the_same_number_is_stale() -> None:
    now = record.Record(**{**DEVICE.__dict__, "links": ("/dev/disk/by-partuuid/9999-02",)})
    (problem,) = record.problems(DEVICE, now, "initrd")
    assert "not the one initrd recorded" in problem


def _initramfs(main: bytes, compress: str) -> bytes:
    early = cpio.build_newc({"kernel/x86/microcode/GenuineIntel.bin": b"\x01" * 1000})
    packed = {
        "zstd": lambda b: zstandard.ZstdCompressor().compress(b),
        "gzip": gzip.compress,
        "none": lambda b: b,
    }[compress](main)
    return early + packed


@pytest.mark.parametrize("compress", ["zstd", "gzip", "none"])
def test_the_record_is_read_from_an_installed_initramfs(tmp_path: Path, compress: str) -> None:
    main = cpio.build_newc({"init": b"#!/bin/sh\n", record.PATH: FILE.to_json()})
    path = tmp_path / "initrd.img"
    path.write_bytes(_initramfs(main, compress))
    assert record.read_from_initramfs(path) == FILE


def test_an_initramfs_without_the_hook_has_no_record(tmp_path: Path) -> None:
    path = tmp_path / "initrd.img"
    path.write_bytes(_initramfs(cpio.build_newc({"init": b"#!/bin/sh\n"}), "zstd"))
    assert record.read_from_initramfs(path) is None


def test_an_initramfs_compressed_another_way_names_the_setting(tmp_path: Path) -> None:
    path = tmp_path / "initrd.img"
    path.write_bytes(b"\x02\x21\x4c\x18" + bytes(60))  # lz4 legacy
    with pytest.raises(ImageError, match="COMPRESS=zstd"):
        record.read_from_initramfs(path)


def test_a_prepared_file_is_read_through_its_record_by_block_address(
    prepared: Path,
) -> None:
    made = record.make(prepared)
    assert (made.kind, made.inode, made.size) == ("file", os.stat(prepared).st_ino, 8 << 20)
    store = record.store(record.Record.from_json(made.to_json()))
    assert isinstance(store, ExtentImageStore) and store.extents is not None
    assert store.extents == ex.map_file(prepared)
    assert store.records() == ExtentImageStore(prepared).records()


def test_a_plain_file_gets_no_record(ext4: Mounted) -> None:
    plain = ext4.where / "plain"
    plain.write_bytes(bytes(4096))
    with pytest.raises(ImageError, match="neither a block device nor a prepared image file"):
        record.make(plain)


def test_a_file_is_recorded_by_its_filesystem_uuid_even_before_udev_made_the_link(
    prepared: Path,
) -> None:
    # This machine has no /dev/disk links at all; Debian's initramfs will.
    made = record.make(prepared, links_root=Path("/nonexistent"))
    uuid = subprocess.run(
        ["blkid", "-p", "-o", "value", "-s", "UUID", f"/dev/{made.device_name}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert made.links[0] == f"/nonexistent/by-uuid/{uuid}"


def test_the_next_boot_is_not_checked_without_an_initramfs_file(
    tmp_path: Path,
    prepared: Path,
) -> None:
    assert record.next_boot_problems(prepared, tmp_path / "initrd.img-x") is None
