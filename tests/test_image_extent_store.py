"""Image files written by block address, on a real filesystem: ext4 on a
loop device, mounted while the store writes the file's blocks on the device
(as A and C do; B writes with the map A made, as here).  What the store
writes is what the file holds once the filesystem's cache is gone, byte for
byte as a plain file image; and files whose blocks cannot be written by
address are refused, each with its reason."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kexechibd.ctl.main import main as kexechibctl
from kexechibd.image import (
    ExtentImageStore,
    FileImageStore,
    ImageError,
    open_store,
    prepare_image_file,
)
from kexechibd.image import extents as ex
from kexechibd.image import format as fmt
from kexechibd.image.extentstore import is_prepared
from kexechibd.image.slots import SlotLayout
from tests.blockdev_support import FILE_SIZE, Mounted, filesystem, run
from tests.image_support import newest, save
from tests.sizes import MIB

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="loop devices and mounts need root")


def file_bytes(path: Path, offset: int = 0, n: int = -1) -> bytes:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(n)


def test_a_prepared_file_is_root_private_and_mapped_on_its_device(
    ext4: Mounted, tmp_path: Path
) -> None:
    path = ext4.where / "image"
    mapped = prepare_image_file(path, FILE_SIZE)
    assert (mapped.device_name, mapped.size) == (Path(str(ext4.disk.loop)).name, FILE_SIZE)
    assert all(e.physical % 4096 == 0 for e in mapped.extents)
    assert (os.stat(path).st_mode & 0o777, os.stat(path).st_uid) == (0o600, 0)
    assert isinstance(open_store(path), ExtentImageStore)
    assert not open_store(path).exists()  # prepared, but no image published yet


def test_a_plain_image_file_is_not_taken_for_a_prepared_one(tmp_path: Path) -> None:
    plain = FileImageStore(tmp_path / "plain")
    save(plain, 1)
    assert isinstance(open_store(plain.path), FileImageStore)


def test_an_image_written_by_block_address_reads_back_through_the_store(prepared: Path) -> None:
    save(ExtentImageStore(prepared, extents=ex.map_file(prepared)), 1)  # B: A's map
    assert newest(open_store(prepared)) == ("image-1", "committed")  # C: maps it itself


def test_the_file_holds_the_image_as_a_plain_image_file_would(
    ext4: Mounted, prepared: Path, tmp_path: Path
) -> None:
    save(ExtentImageStore(prepared, extents=ex.map_file(prepared)), 1)
    plain = FileImageStore(tmp_path / "plain")
    save(plain, 1)
    image = plain.path.read_bytes()
    ext4.remount()
    assert file_bytes(prepared, 0, len(image)) == image  # slot A starts the file


def test_a_second_image_goes_to_slot_b_of_the_file(ext4: Mounted, prepared: Path) -> None:
    store = open_store(prepared)
    save(store, 1)
    save(store, 2)
    assert newest(store) == ("image-2", "committed")
    ext4.remount()
    slot_b = SlotLayout.for_device(FILE_SIZE).offset(1)
    assert file_bytes(prepared, slot_b, 4) == b"\x7fELF"
    state = file_bytes(prepared, fmt.STATE_OFFSET, 8)
    assert state == fmt.STATE_WORDS["invalid"]  # the first image was retired


def test_mark_consumed_lands_in_the_file_by_block_address(ext4: Mounted, prepared: Path) -> None:
    save(open_store(prepared), 1)
    open_store(prepared).mark_consumed()
    ext4.remount()
    assert file_bytes(prepared, fmt.STATE_OFFSET, 8) == fmt.STATE_WORDS["consumed"]


def test_invalidate_lands_in_the_file_by_block_address(ext4: Mounted, prepared: Path) -> None:
    save(open_store(prepared), 1)
    open_store(prepared).invalidate()
    ext4.remount()
    assert file_bytes(prepared, fmt.STATE_OFFSET, 8) == fmt.STATE_WORDS["invalid"]


def test_wipe_zeroes_the_image_in_the_file_which_stays_prepared(
    ext4: Mounted, prepared: Path
) -> None:
    store = open_store(prepared)
    save(store, 1)
    (rec,) = [r for r in store.records() if r]  # type: ignore[attr-defined]
    extents_before = ex.map_file(prepared).extents
    store.wipe()
    ext4.remount()
    assert file_bytes(prepared, 0, rec.image_length) == bytes(rec.image_length)
    assert is_prepared(prepared) and not open_store(prepared).exists()
    assert ex.map_file(prepared).extents == extents_before


def private_file(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)


def test_a_file_only_fallocated_is_refused_as_unwritten(ext4: Mounted) -> None:
    path = ext4.where / "fallocated"
    fd = private_file(path)
    try:
        os.posix_fallocate(fd, 0, 4 * MIB)
    finally:
        os.close(fd)
    with pytest.raises(ImageError, match="is UNWRITTEN"):
        ex.map_file(path)


def test_a_file_with_holes_is_refused(ext4: Mounted) -> None:
    path = ext4.where / "sparse"
    fd = private_file(path)
    try:
        os.pwrite(fd, b"x" * 4096, 0)
        os.pwrite(fd, b"x" * 4096, 1 * MIB)
    finally:
        os.close(fd)
    with pytest.raises(ImageError, match="has a hole at file offset 0x1000"):
        ex.map_file(path)


def test_a_filesystem_with_blocks_smaller_than_4096_bytes_is_refused(tmp_path: Path) -> None:
    with filesystem(tmp_path, "ext4", "mkfs.ext4", "-q", "-b", "1024") as fs:
        path = fs.where / "image"
        with pytest.raises(ImageError, match="not aligned to 4096 bytes on the device"):
            prepare_image_file(path, FILE_SIZE)
        assert not path.exists()  # nothing is left behind


def test_a_file_on_btrfs_is_refused(tmp_path: Path) -> None:
    with (
        filesystem(tmp_path, "btrfs", "mkfs.btrfs", "-q", size=128 * MIB) as fs,
        pytest.raises(ImageError, match="is on btrfs, whose FIEMAP addresses"),
    ):
        prepare_image_file(fs.where / "image", FILE_SIZE)


def test_a_file_on_tmpfs_is_refused(tmp_path: Path) -> None:
    where = tmp_path / "tmpfs"
    where.mkdir()
    run("mount", "-t", "tmpfs", "tmpfs", str(where))
    try:
        with pytest.raises(ImageError, match="is on a tmpfs filesystem"):
            prepare_image_file(where / "image", FILE_SIZE)
    finally:
        run("umount", str(where))


def test_b_refuses_a_device_whose_name_is_not_the_one_a_saw(prepared: Path) -> None:
    mapped = ex.map_file(prepared)
    other = ex.FileExtents.from_dict({**mapped.to_dict(), "device_name": "sdz9"})
    with pytest.raises(ImageError, match="refusing to write by block address to another device"):
        ExtentImageStore(prepared, extents=other).records()


def test_image_create_prepares_a_file(ext4: Mounted, capsys: pytest.CaptureFixture[str]) -> None:
    path = ext4.where / "image"
    assert kexechibctl(["image", "create", str(path), "--size", "8M"]) == 0
    assert "two slots, each for an image of up to 4.0 MiB" in capsys.readouterr().out
    assert is_prepared(path)


def test_image_create_never_overwrites_a_file(
    ext4: Mounted, prepared: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert kexechibctl(["image", "create", str(prepared), "--size", "8M"]) == 1
    assert "File exists" in capsys.readouterr().err
