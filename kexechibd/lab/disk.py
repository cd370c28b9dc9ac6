"""The daemon guests' image disk, read from the host by the documented layout.

An independent reading of docs/image-format.md ("On a block device", the
header notes, the index, chunk records) with `struct`, not through
`kexechibd.image`: the lab's fault tests use it to damage exactly one chunk's
payload, and to check that a save killed midway published nothing, without
trusting the code under test to say where things are.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
RECORD_SIZE = 4096
RECORD = struct.Struct("<8sIIQQQQ32s32s")  # magic .. header digest, then SHA-256 of 0..80
RECORD_MAGIC = b"KXHSLOTR"
IMAGE_MAGIC = b"KXHIBIMG"
INDEX_MAGIC = b"KXHINDEX"
CHUNK_MAGIC = b"KXHCHUNK"
# The IMAGE note (type 0x4b480002) follows the 48-byte FORMAT note at 120;
# its descriptor starts at 192: u32 page_size, codec, i32 level, u32 flags,
# then u64 chunk_size, data_offset, index_offset, chunks, image_length, ...
IMAGE_NOTE = 168
IMAGE_NOTE_TYPE = 0x4B480002
IMAGE_DESC = struct.Struct("<IIiIQQQQQ")
INDEX_ENTRY = struct.Struct("<QQQQQQ32s")
CHUNK_HEAD = 96
RUN_ENTRY = 16


@dataclass(frozen=True)
class Slot:
    index: int  # 0 = slot A, 1 = slot B
    offset: int  # of the slot on the disk
    sequence: int
    image_length: int


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    offset: int  # of the chunk record on the disk
    length: int
    payload_offset: int  # on the disk
    payload_length: int


def slot_size(disk_size: int) -> int:
    return max(MIB, disk_size // 2 // MIB * MIB)


def _pread(disk: Path, offset: int, n: int) -> bytes:
    with open(disk, "rb") as f:
        f.seek(offset)
        return f.read(n)


def published_slots(disk: Path) -> list[Slot]:
    """The slots whose record is intact (magic and checksum), newest first."""
    size = slot_size(disk.stat().st_size)
    found = []
    for k in (0, 1):
        block = _pread(disk, (k + 1) * size - RECORD_SIZE, RECORD.size)
        if len(block) < RECORD.size:
            continue
        magic, _version, slot, sequence, offset, _size, length, _digest, check = RECORD.unpack(
            block
        )
        if magic != RECORD_MAGIC or hashlib.sha256(block[:80]).digest() != check:
            continue
        if slot == k and sequence and length:
            found.append(Slot(k, offset, sequence, length))
    return sorted(found, key=lambda s: -s.sequence)


def slot_header_is_zero(disk: Path, slot: int) -> bool:
    """Whether the slot's first page is all zeros: what an image interrupted
    before its commit leaves (the writer zeroes the header first), and a wiped
    one."""
    offset = slot * slot_size(disk.stat().st_size)
    return _pread(disk, offset, 4096) == bytes(4096)


def chunk_spans(disk: Path, slot: Slot) -> list[ChunkSpan]:
    """Where each chunk of the slot's image, and its payload, are on the disk."""
    head = _pread(disk, slot.offset, IMAGE_NOTE + 12 + 12 + IMAGE_DESC.size)
    if head[144:152] != IMAGE_MAGIC:
        raise ValueError(f"slot {slot.index} holds no kexechib image")
    (note_type,) = struct.unpack_from("<I", head, IMAGE_NOTE + 8)
    if note_type != IMAGE_NOTE_TYPE:
        raise ValueError(f"unexpected note type {note_type:#x} at {IMAGE_NOTE}")
    desc = IMAGE_DESC.unpack_from(head, IMAGE_NOTE + 24)
    index_offset, chunks = desc[6], desc[7]
    index = _pread(disk, slot.offset + index_offset, 16 + INDEX_ENTRY.size * chunks)
    if index[:8] != INDEX_MAGIC or struct.unpack_from("<Q", index, 8)[0] != chunks:
        raise ValueError(f"no index at {index_offset:#x} in slot {slot.index}")
    spans = []
    for k in range(chunks):
        offset, length, *_ = INDEX_ENTRY.unpack_from(index, 16 + INDEX_ENTRY.size * k)
        record = _pread(disk, slot.offset + offset, CHUNK_HEAD)
        if record[:8] != CHUNK_MAGIC:
            raise ValueError(f"no chunk record at {offset:#x} in slot {slot.index}")
        (nruns,) = struct.unpack_from("<I", record, 12)
        (payload_length,) = struct.unpack_from("<Q", record, 56)
        payload = offset + CHUNK_HEAD + RUN_ENTRY * nruns
        spans.append(
            ChunkSpan(k, slot.offset + offset, length, slot.offset + payload, payload_length)
        )
    return spans


def flip_bytes(disk: Path, offset: int, n: int = 16) -> None:
    """Invert `n` bytes at `offset` (a bit flip the checksums must catch)."""
    with open(disk, "r+b") as f:
        f.seek(offset)
        data = f.read(n)
        f.seek(offset)
        f.write(bytes(b ^ 0xFF for b in data))
