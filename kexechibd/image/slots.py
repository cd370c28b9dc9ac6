"""Where the two image slots of a device (or prepared file) are, and the slot
record that publishes the image in one: pure layout and codec, no I/O.

The layout (docs/image-format.md, "On a block device"):

    [0, S)        slot A: an image exactly as in a file, from the slot's start;
                  the slot record in the slot's last 4 KiB
    [S, 2S)       slot B: the same
    [2S, size)    unused          (S = half the device, rounded down to 1 MiB)

A record carries a sequence number (a larger one is newer) and binds to its
image by the image's header digest.  A prepared image file carries records of
sequence 0 (``prepared_marker``): they publish nothing but say the file was
prepared.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

from kexechibd.image.meta import ImageError

SLOT_ALIGN = 1 << 20  # slots start and end on MiB boundaries, like partitions
RECORD_SIZE = 4096  # the slot record's block, at the end of its slot
IO_ALIGN = 4096  # every direct transfer: a multiple of any block size we accept
RECORD_MAGIC = b"KXHSLOTR"
RECORD_VERSION = 1
# magic, version, slot, sequence, slot_offset, slot_size, image_length,
# header digest; then the SHA-256 of these 80 bytes
RECORD = struct.Struct("<8sIIQQQQ32s")
SLOT_NAMES = ("A", "B")
MARKER_SEQUENCE = 0  # a prepared file's records: they publish nothing


@dataclass(frozen=True)
class SlotLayout:
    """Where the two slots of a device of ``device_size`` bytes are."""

    device_size: int
    slot_size: int

    @classmethod
    def for_device(cls, size: int) -> SlotLayout:
        slot = size // 2 // SLOT_ALIGN * SLOT_ALIGN
        if slot < SLOT_ALIGN:
            raise ImageError(
                f"a device of {size} bytes is too small for two image slots "
                f"(it needs at least {2 * SLOT_ALIGN} bytes)"
            )
        return cls(size, slot)

    @property
    def capacity(self) -> int:
        """The largest image a slot holds."""
        return self.slot_size - RECORD_SIZE

    def offset(self, slot: int) -> int:
        return slot * self.slot_size

    def record_offset(self, slot: int) -> int:
        return self.offset(slot) + self.capacity


@dataclass(frozen=True)
class SlotRecord:
    """What publishes the image in a slot: a larger ``sequence`` is newer."""

    slot: int
    sequence: int
    slot_offset: int
    slot_size: int
    image_length: int
    header_digest: bytes  # the image's DIGEST note: SHA-256 of its header

    def encode(self) -> bytes:
        body = RECORD.pack(
            RECORD_MAGIC,
            RECORD_VERSION,
            self.slot,
            self.sequence,
            self.slot_offset,
            self.slot_size,
            self.image_length,
            self.header_digest,
        )
        return (body + hashlib.sha256(body).digest()).ljust(RECORD_SIZE, b"\0")


def decode_record(block: bytes, slot: int, layout: SlotLayout) -> SlotRecord | None:
    """The record in ``block`` (slot ``slot``'s record block), or None when
    there is none: never written, torn (its checksum fails: the image it was
    to publish is not published), or written for another slot geometry (the
    device was resized).  A record of an unknown version is an error: a newer
    kexechibd wrote it, and guessing which image is newest is not safe."""
    if block[:8] != RECORD_MAGIC:
        return None
    (version,) = struct.unpack_from("<I", block, 8)
    if version != RECORD_VERSION:
        raise ImageError(
            f"slot {SLOT_NAMES[slot]}'s record has layout version {version}; this "
            f"kexechibd knows version {RECORD_VERSION}",
            offset=layout.record_offset(slot) + 8,
        )
    body = block[: RECORD.size]
    if hashlib.sha256(body).digest() != block[RECORD.size : RECORD.size + 32]:
        return None
    _magic, _version, *fields = RECORD.unpack(body)
    rec = SlotRecord(*fields)
    if (
        (rec.slot, rec.slot_offset, rec.slot_size) != (slot, layout.offset(slot), layout.slot_size)
        or rec.sequence == 0
        or not 0 < rec.image_length <= layout.capacity
    ):
        return None
    return rec


def newest(records: Sequence[SlotRecord | None]) -> SlotRecord | None:
    return max((r for r in records if r), key=lambda r: r.sequence, default=None)


def size_for(image_bytes: int) -> int:
    """The smallest device or file whose two slots each hold an image of
    ``image_bytes``, in whole MiB."""
    slot = -(-(image_bytes + RECORD_SIZE) // SLOT_ALIGN) * SLOT_ALIGN
    return 2 * slot


def prepared_marker(layout: SlotLayout, slot: int) -> bytes:
    """The record block a prepared file holds in ``slot`` until an image is
    published there: a record of sequence 0, which publishes nothing."""
    return SlotRecord(
        slot, MARKER_SEQUENCE, layout.offset(slot), layout.slot_size, 0, bytes(32)
    ).encode()
