"""Which store keeps the image at a path: ``open_store(path)``, the one way
the daemon, the saver and the tools reach an image by its location."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from kexechibd.image.blockstore import DeviceImageStore
from kexechibd.image.extents import FileExtents
from kexechibd.image.extentstore import ExtentImageStore, is_prepared, prepare_plain_file
from kexechibd.image.filestore import FileImageStore
from kexechibd.image.seal import is_sealed
from kexechibd.image.sealstore import SealedImageStore, on_device_mapper, prepare_sealed_file
from kexechibd.image.store import ImageStore


def open_store(path: Path | str) -> ImageStore:
    """The store for what ``path`` is now: a ``DeviceImageStore`` for a block
    device (two slots on a raw device, which B may write without going
    through A's filesystems, DESIGN §1.3), an ``ExtentImageStore`` for a file
    that ``kexechibctl image create`` prepared (the same two slots, written
    by block address), a ``SealedImageStore`` for one it prepared on
    dm-crypt (DESIGN §1.6), a ``FileImageStore`` for any other regular file
    or a path that does not exist yet.  All offer the same methods; nothing
    is opened here."""
    if is_block_device(path):
        return DeviceImageStore(path)
    if is_sealed(path):
        return SealedImageStore(path)
    if is_prepared(path):
        return ExtentImageStore(path)
    return FileImageStore(path)


def is_block_device(path: Path | str) -> bool:
    """Follows symlinks: devices are usually named by udev's /dev/disk/by-* links."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False  # absent (or unreadable): the file store says what is wrong


def prepare_image_file(path: Path, size: int) -> FileExtents:
    """``kexechibctl image create``: a prepared file at ``path`` with two
    slots of at least ``size`` bytes between them, sealed when its
    filesystem is on device-mapper (dm-crypt: DESIGN §1.6)."""
    if on_device_mapper(path.parent):
        return prepare_sealed_file(path, size)
    return prepare_plain_file(path, size)
