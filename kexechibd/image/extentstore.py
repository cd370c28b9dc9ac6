"""Prepared image files: made once with every block allocated and written
(``prepare_plain_file``), recognised by their slot markers (``is_prepared``),
and holding images in two slots written by block address on the device
underneath (``ExtentImageStore``).  Why that is safe: ``extents.py``.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from kexechibd.image.blockstore import DeviceImageStore
from kexechibd.image.directio import DirectDevice
from kexechibd.image.extents import (
    FileExtents,
    check_backing_device,
    device_path,
    map_file,
    map_open_file,
)
from kexechibd.image.fileio import fsync, fsync_dir, write_zeros
from kexechibd.image.slots import SLOT_ALIGN, SlotLayout, newest, prepared_marker, size_for
from kexechibd.image.store import Pinned, create_image_file


def is_prepared(path: Path | str) -> bool:
    """Whether ``path`` is a regular file that ``prepare_plain_file`` made
    (either record block starts with the record magic).  Read through the
    filesystem: the magic, once there, never changes."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < 2 * SLOT_ALIGN:
            return False
        layout = SlotLayout.for_device(st.st_size)
        return any(
            os.pread(fd, 8, layout.record_offset(k)) == prepared_marker(layout, k)[:8]
            for k in (0, 1)
        )
    finally:
        os.close(fd)


def prepared_size(size: int) -> int:
    """The bytes of two slots that hold at least ``size`` bytes between
    them: whole MiB slots, at least the smallest layout."""
    return max(size_for(0), -(-size // (2 * SLOT_ALIGN)) * 2 * SLOT_ALIGN)


@contextlib.contextmanager
def new_prepared_file(path: Path) -> Iterator[BinaryIO]:
    """``path`` created for the block to fill (it must not exist; root's,
    0600): removed again if the block fails, its name made durable if it
    succeeds."""
    f = create_image_file(path)
    try:
        with f:
            yield f
        fsync_dir(path.parent)  # the new name, too, survives a crash
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


def map_written(f: BinaryIO, path: Path, *, sealed: bool = False) -> FileExtents:
    """The map of a file just written out: fsynced first (every block
    allocated and written), and this kernel's cache of it dropped after
    (its blocks are read and written by address from now on)."""
    fsync(f)
    mapped = map_open_file(f.fileno(), path, sealed=sealed)
    os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
    return mapped


def prepare_plain_file(path: Path, size: int) -> FileExtents:
    """Create ``path`` (it must not exist; root's, 0600) holding ``size``
    bytes (rounded up to whole MiB slots) written out as zeros and fsynced,
    with the two slots' markers, and return its validated extent map.  The
    filesystem and device are checked before anything is written; on any
    failure the file is removed."""
    size = prepared_size(size)
    check_backing_device(os.stat(path.parent), path)
    layout = SlotLayout.for_device(size)
    with new_prepared_file(path) as f:
        write_zeros(f, size)
        for k in (0, 1):
            f.seek(layout.record_offset(k))
            f.write(prepared_marker(layout, k))
        return map_written(f, path)


class ExtentImageStore(DeviceImageStore):
    """Images in the two slots of a prepared file (the layout of a device's,
    docs/image-format.md), every transfer direct on the block device that
    holds the file, at the file's extents.

    ``extents`` given: B's case, which cannot see the file and uses the map
    A made right before it loaded B (A is frozen from then on: the blocks
    cannot move).  Without it (A, C, tools) the file is mapped afresh each
    time the device is opened."""

    def __init__(self, path: Path | str, *, extents: FileExtents | None = None) -> None:
        super().__init__(path)
        self.extents = extents

    def mapping(self) -> FileExtents:
        return self.extents if self.extents is not None else map_file(self.path)

    def open_device(self, *, write: bool) -> DirectDevice:
        """The block device that holds the file, its transfers confined to
        the file's extents."""
        mapped = self.mapping()
        return DirectDevice(device_path(mapped), write=write, extents=mapped, name=self.path)

    def check_writable(self) -> None:
        """A and C write the file's blocks while its filesystem is mounted,
        which a kernel built without CONFIG_BLK_DEV_WRITE_MOUNTED refuses:
        A finds out before it jumps."""
        with self.open_device(write=True):
            pass

    def pin_for_saver(self) -> Pinned | None:
        """The map of the file's blocks B writes by, made now (as late as it
        can be: A is frozen from the jump on, so nothing moves them before B
        writes), checked writable, with one slot's capacity."""
        mapped = self.mapping()
        pinned = ExtentImageStore(self.path, extents=mapped)
        pinned.check_writable()
        return Pinned(pinned.capacity, mapped)

    @property
    def through_filesystem(self) -> bool:
        """Whether this store found the file through its mounted filesystem
        (rather than by the block map a resume record or A handed over)."""
        return self.extents is None

    def exists(self) -> bool:
        if self.extents is None and not self.path.exists():
            return False
        with self.open_device(write=False) as dev:
            return newest(dev.records()) is not None
