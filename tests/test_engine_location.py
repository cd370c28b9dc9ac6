"""What the engine asks of the store at the image location, and nothing
more (``ImageStore.pin_for_saver``, ``through_filesystem``): the store says
how B will write it, so the engine needs no store classes; and what it
does when wiping a used image fails."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from kexechibd.cycle.engine import KexecEngine
from kexechibd.image import DeviceImageStore, ExtentImageStore, FileImageStore, blockdev, open_store
from kexechibd.image.extents import map_file
from kexechibd.image.meta import ImageError
from tests.blockdev_support import FILE_SIZE
from tests.image_support import save


def test_a_plain_file_has_no_slot_for_b(tmp_path: Path) -> None:
    store = open_store(tmp_path / "image")
    assert store.pin_for_saver() is None
    assert not store.through_filesystem


def test_a_prepared_file_gives_b_its_block_map_and_a_slot(prepared: Path) -> None:
    pinned = open_store(prepared).pin_for_saver()
    assert pinned is not None
    assert pinned.file == map_file(prepared)
    assert pinned.seal is None  # not on dm-crypt
    assert 0 < pinned.capacity < FILE_SIZE // 2


def test_a_device_mapper_device_is_refused_for_b_before_it_is_opened(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A dm-crypt mapping of a partition as the raw image location: B would
    # have to set it up, and has no key. Refused before anything opens it.
    block = tmp_path / "sys/dev/block"
    (block / "253:3/dm").mkdir(parents=True)
    (block / "253:3/uevent").write_text("MAJOR=253\nMINOR=3\nDEVNAME=dm-3\n")
    monkeypatch.setattr(blockdev, "SYS_DEV_BLOCK", block)
    node = tmp_path / "hibernate"
    os.mknod(node, stat.S_IFBLK | 0o600, os.makedev(253, 3))
    with pytest.raises(ImageError, match=r"is a device-mapper device \(dm-3\): kernel B"):
        DeviceImageStore(node).pin_for_saver()


def test_a_prepared_file_found_through_its_filesystem_says_so(prepared: Path) -> None:
    assert open_store(prepared).through_filesystem
    pinned = ExtentImageStore(prepared, extents=map_file(prepared))
    assert not pinned.through_filesystem


def test_a_used_image_that_cannot_be_wiped_is_at_least_invalidated(tmp_path: Path) -> None:
    store = open_store(tmp_path / "image")
    save(store, 1)

    class FailingDisk(FileImageStore):
        def wipe(self) -> int:
            raise OSError(errno.EIO, "Input/output error")

    KexecEngine._wipe(FailingDisk(store.path))
    with store.open() as reader:
        assert reader.summary.state == "invalid"
