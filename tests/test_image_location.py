"""``open_store(path)`` (kexechibd/image/location.py): the store for what the
path is.  A block device's store: tests/test_image_blockstore.py (it needs a
loop device); a file prepared on a real filesystem: test_image_extent_store.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from kexechibd.image import ExtentImageStore, FileImageStore, open_store
from kexechibd.image.slots import SlotLayout, prepared_marker
from tests.sizes import MIB


def looks_prepared(path: Path, size: int = 2 * MIB) -> None:
    """A file with the two slot markers ``prepare_image_file`` writes (its
    blocks are not checked until the store maps it)."""
    layout = SlotLayout.for_device(size)
    with path.open("wb") as f:
        f.truncate(size)
        for slot in (0, 1):
            f.seek(layout.record_offset(slot))
            f.write(prepared_marker(layout, slot))


def test_a_path_that_does_not_exist_yet_gets_the_file_store_and_stays_absent(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "image")
    assert type(store) is FileImageStore and store.path == tmp_path / "image"
    assert list(tmp_path.iterdir()) == []


def test_a_plain_file_gets_the_file_store(tmp_path: Path) -> None:
    (tmp_path / "image").write_bytes(bytes(4 * MIB))
    assert type(open_store(tmp_path / "image")) is FileImageStore


def test_a_file_with_slot_markers_gets_the_extent_store(tmp_path: Path) -> None:
    looks_prepared(tmp_path / "image")
    assert type(open_store(tmp_path / "image")) is ExtentImageStore
    assert type(open_store(str(tmp_path / "image"))) is ExtentImageStore  # a str will do


def test_a_symlink_to_a_prepared_file_is_not_taken_for_one(tmp_path: Path) -> None:
    """Image files are never reached through symlinks (the file store then
    refuses it when opened)."""
    looks_prepared(tmp_path / "image")
    (tmp_path / "link").symlink_to(tmp_path / "image")
    assert type(open_store(tmp_path / "link")) is FileImageStore


def test_a_fifo_gets_the_file_store_without_waiting_for_a_writer(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    chosen: list[object] = []
    looking = threading.Thread(
        target=lambda: chosen.append(open_store(tmp_path / "fifo")), daemon=True
    )
    looking.start()
    looking.join(5)
    assert not looking.is_alive(), "open_store waited for a writer on the FIFO"
    assert type(chosen[0]) is FileImageStore


def test_a_character_device_is_not_a_block_device() -> None:
    assert type(open_store("/dev/null")) is FileImageStore
