"""Images on a raw block device: two slots, the newest published image wins.

B must never write through A's mounted filesystems (DESIGN §1.3), so the image
goes to a partition or whole disk that A, B and C all see.  The device holds
two slots (``slots.py``; docs/image-format.md, "On a block device").

A save goes to the slot that does not hold the newest published image, so
nothing of the previous image is written until the new one is complete
(DESIGN §9).  ``commit`` publishes it: the image is read back and verified,
then the slot's record (sequence number = newest + 1, bound to this image by
its header digest) is written and fsynced; only then is the older image
retired (its state word set to INVALID), so that at most one image on the
device is ever resumable and an image older than the newest is never resumed
by mistake (A's filesystems have moved on since).  The writer fsyncs the data
before the header; the store fsyncs the header before the record.

Every transfer is direct (``directio.py``, which says why); the device is
checked before it is used (``blockdev.py``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from kexechibd.image import format
from kexechibd.image.blockdev import device_name, stacked_kind
from kexechibd.image.directio import DirectDevice, SlotFile, header_digest
from kexechibd.image.meta import ImageError, ImageMeta
from kexechibd.image.reader import ImageReader
from kexechibd.image.slots import IO_ALIGN, SlotRecord, newest
from kexechibd.image.store import (
    ImageStore,
    Pinned,
    invalidate_image,
    mark_image_consumed,
    unmark_image_consumed,
)
from kexechibd.image.writer import ImageWriter

log = logging.getLogger(__name__)


class DeviceImageStore(ImageStore):
    """Images in the two slots of a block device (see the module's docstring).

    ``allow_regular_file`` also accepts a preallocated regular file (root's,
    0600) with the same layout, through the same direct I/O: for tests where
    loop devices cannot be made, and tools.  The daemon never sets it."""

    def __init__(self, path: Path | str, *, allow_regular_file: bool = False) -> None:
        super().__init__(path)
        self.allow_regular_file = allow_regular_file

    def open_device(self, *, write: bool) -> DirectDevice:
        """The device, opened for direct I/O after its checks."""
        return DirectDevice(self.path, write=write, allow_regular_file=self.allow_regular_file)

    def records(self) -> tuple[SlotRecord | None, SlotRecord | None]:
        """The slot records of slots A and B (None: no published image)."""
        with self.open_device(write=False) as dev:
            return dev.records()

    @property
    def capacity(self) -> int:
        """The largest image a slot holds, in bytes."""
        with self.open_device(write=False) as dev:
            return dev.layout.capacity

    def pin_for_saver(self) -> Pinned | None:
        """One slot's capacity; no block map (B opens a partition by name).
        A device-mapper or md device is refused: B builds none of A's
        mappings or arrays (it has no key of a dm-crypt mapping), so it
        could not open it."""
        try:
            st = os.stat(self.path)
        except OSError as e:
            raise ImageError(f"cannot look at {self.path}: {e.strerror}") from None
        if stat.S_ISBLK(st.st_mode):
            name = device_name(st.st_rdev) or self.path.name
            kind = stacked_kind(st.st_rdev, name)
            if kind:
                raise ImageError(
                    f"{self.path} is a {kind} device ({name}): kernel B sets up none of "
                    "A's mappings or arrays, so it could not write the image there; use a "
                    "partition, or on an encrypted root an image file (kexechibctl image "
                    "create; it is sealed)"
                )
        return Pinned(self.capacity)

    def exists(self) -> bool:
        """Whether a slot holds a published image (in any state); a device that
        is absent has none, one that is refused raises ``ImageError``."""
        if not self.path.exists():
            return False
        with self.open_device(write=False) as dev:
            return newest(dev.records()) is not None

    # -- writing --------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, meta: ImageMeta, **writer_kwargs: Any) -> Iterator[ImageWriter]:
        """An ``ImageWriter`` on the slot that does not hold the newest image;
        ``commit()`` reads back and verifies the header and index the device
        holds, publishes the image with the slot record, then retires the
        older image.  An exception, or leaving
        the block without committing, publishes nothing (the writer zeroes
        the new image's header) and leaves the other slot untouched."""
        with self.open_device(write=True) as dev:
            records = dev.records()
            last = newest(records)
            target = 0 if last is None else 1 - last.slot
            sequence = 1 + (last.sequence if last else 0)

            def publish() -> None:
                reader = ImageReader(f.as_binary_io())  # from the device, not from memory
                rec = SlotRecord(
                    target,
                    sequence,
                    dev.layout.offset(target),
                    dev.layout.slot_size,
                    reader.summary.stored_bytes,
                    header_digest(f),
                )
                dev.write_record(rec)
                self._retire(dev, records[1 - target])

            with (
                dev.slot(target) as f,
                ImageWriter(f.as_binary_io(), meta, **writer_kwargs) as w,
            ):
                w.on_commit(publish)
                yield w

    def _retire(self, dev: DirectDevice, older: SlotRecord | None) -> None:
        """Best effort: the new image is published and newest whatever happens here."""
        if older is None:
            return
        try:
            with dev.slot(older.slot) as f:
                invalidate_image(f.as_binary_io())
        except (ImageError, OSError) as e:
            log.warning(
                "could not invalidate the older image in %s: %s", dev.describe(older.slot), e
            )

    # -- reading and the resume state ----------------------------------------------

    def _newest(self, records: Sequence[SlotRecord | None]) -> SlotRecord:
        rec = newest(records)
        if rec is None:
            raise ImageError(f"no image on {self.path}: neither slot holds a published image")
        return rec

    def _verified(self, dev: DirectDevice, f: SlotFile, rec: SlotRecord) -> ImageReader:
        where = f"{dev.describe(rec.slot)}, image {rec.sequence}"
        try:
            reader = ImageReader(f.as_binary_io())
        except ImageError as e:
            raise ImageError(
                f"{where}: {e.message} (offsets are from the slot's start)",
                offset=e.offset,
                chunk=e.chunk,
            ) from e
        if reader.summary.stored_bytes != rec.image_length or header_digest(f) != rec.header_digest:
            raise ImageError(
                f"{where}: the slot's record does not describe the image in the slot "
                "(something other than kexechibd wrote there); refusing it"
            )
        return reader

    def open(self) -> ImageReader:
        """A verified reader on the newest published image, whatever its state
        (close it when done).  Never an older one: once a newer image was
        published, resuming an older one would take A back behind the state
        of its filesystems."""
        dev = self.open_device(write=False)
        try:
            rec = self._newest(dev.records())
            return self._verified(dev, dev.slot(rec.slot, owns_device=True), rec)
        except BaseException:
            dev.close()
            raise

    def _change_state(self, change: Callable[[BinaryIO], None]) -> None:
        with self.open_device(write=True) as dev:
            rec = self._newest(dev.records())
            with dev.slot(rec.slot) as f:
                self._verified(dev, f, rec)
                change(f.as_binary_io())

    def mark_consumed(self) -> None:
        self._change_state(mark_image_consumed)

    def mark_committed(self) -> None:
        self._change_state(unmark_image_consumed)

    def wipe(self) -> int:
        """Each published image (the newest and a retired older one): its
        bytes zeroed, then its slot unpublished.  Interrupted between the
        two, the record describes a zeroed image, which no boot resumes."""
        wiped = 0
        with self.open_device(write=True) as dev:
            for rec in dev.records():
                if rec is None:
                    continue
                span = format.align_up(rec.image_length, IO_ALIGN)
                dev.zero(rec.slot_offset, span)
                dev.unpublish(rec.slot)
                wiped += span
        return wiped

    def invalidate(self) -> None:
        """Invalidate the newest image (damaged or not, as long as it is one of
        ours), and the older one too if a retirement failed to."""
        with self.open_device(write=True) as dev:
            records = dev.records()
            rec = self._newest(records)
            with dev.slot(rec.slot) as f:
                invalidate_image(f.as_binary_io())
            self._retire(dev, records[1 - rec.slot])
