"""The byte layout of a hibernation image, version 1 (docs/image-format.md).

Pure: encoders and validating decoders over ``bytes``; the reader and writer
do the I/O.  Every decoder raises ``ImageError`` naming the offset (and chunk)
of what it rejects.

    [0, 64)                 ELF64 header: ET_CORE, EM_X86_64, little endian
    [64, 120)               one PT_NOTE program header
    [120, notes_end)        notes: FORMAT, IMAGE, IDENTITY, [PAGE_MAP], [VMCOREINFO], DIGEST
    [notes_end, data_offset) zero padding to a page boundary
    [data_offset, index_offset) chunk records, contiguous, in address order
    [index_offset, image_length) the index: one entry per chunk
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, ClassVar

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.notes import iter_notes

from kexechibd.image.meta import ImageError, ImageMeta, ImageMode, ImageState, ImageSummary, Run

# The ELF core structures and values have one home, the kernel interface's (an
# image is an ELF core file like /proc/vmcore); named here for image/'s modules.
from kexechibd.kernel.elfcore import EHDR as EHDR
from kexechibd.kernel.elfcore import NHDR as NHDR
from kexechibd.kernel.elfcore import PF_RWX as PF_RWX
from kexechibd.kernel.elfcore import PHDR as PHDR
from kexechibd.kernel.elfcore import PN_XNUM as PN_XNUM
from kexechibd.kernel.elfcore import PT_LOAD as PT_LOAD
from kexechibd.kernel.elfcore import PT_NOTE as PT_NOTE
from kexechibd.kernel.elfcore import SHDR as SHDR
from kexechibd.kernel.elfcore import core_ehdr

FORMAT_VERSION = 1

# -- notes ------------------------------------------------------------------
NOTE_OWNER = "KEXECHIB"
VMCOREINFO_OWNER = "VMCOREINFO"  # as in /proc/vmcore, so crash and makedumpfile find it
NT_FORMAT = 0x4B480001  # magic, version, notes size, resume state (first note, every version)
NT_IMAGE = 0x4B480002  # layout, compression and counts (binary, IMAGE_DESC)
NT_IDENTITY = 0x4B480003  # "key=value\n" text: who made the image
NT_PAGE_MAP = 0x4B480004  # A's /proc/kexec_pgmap bytes, opaque
NT_DIGEST = 0x4B480005  # SHA-256 of the header; always the last note
NT_VMCOREINFO = 0

NOTES_OFFSET = EHDR.size + PHDR.size  # 120
FORMAT_DESC = struct.Struct("<8sII8s")  # magic, version, note region size, state
FORMAT_NOTE_SIZE = NHDR.size + 12 + FORMAT_DESC.size  # "KEXECHIB\0" pads to 12
FORMAT_DESC_OFFSET = NOTES_OFFSET + NHDR.size + 12  # 144
MAGIC_OFFSET = FORMAT_DESC_OFFSET
VERSION_OFFSET = FORMAT_DESC_OFFSET + 8  # 152
NOTES_SIZE_OFFSET = FORMAT_DESC_OFFSET + 12  # 156: v1, repeats PT_NOTE p_filesz
STATE_OFFSET = FORMAT_DESC_OFFSET + 16  # 160: rewritten in place, outside every checksum
STATE_SIZE = 8
IMAGE_MAGIC = b"KXHIBIMG"
STATE_WORDS = {
    ImageState.COMMITTED: b"COMMITTD",
    ImageState.CONSUMED: b"CONSUMED",
    ImageState.INVALID: b"INVALID\0",
}
STATE_BY_WORD = {word: state for state, word in STATE_WORDS.items()}
PREFIX_SIZE = FORMAT_DESC_OFFSET + FORMAT_DESC.size  # 168: enough to identify any version


# The image note's fields, in their stored order (IMAGE_DESC packs them): the
# one statement of it, for both ``encode_notes`` and ``decode_header``.
IMAGE_DESC_FIELDS = (
    "page_size",
    "codec",
    "level",
    "flags",
    "chunk_size",
    "data_offset",
    "index_offset",
    "chunks",
    "image_length",
    "data_pages",
    "zero_pages",
    "runs",
    "jump_back_entry",
    "created",
    "digest",
)
IMAGE_DESC = struct.Struct("<IIiIQQQQQQQQQd32s")
DIGEST_NOTE_SIZE = NHDR.size + 12 + 32
IDENTITY_KEYS = ("kernel_release", "build_id", "boot_id", "machine_id", "hibernate_id", "mode")

# -- chunks and index -------------------------------------------------------
CHUNK_MAGIC = b"KXHCHUNK"
# magic, index, nruns, codec, reserved; first_pfn, end_pfn, data_pages, zero_pages,
# payload_len; payload_sha256
CHUNK_HEAD = struct.Struct("<8sIIIIQQQQQ32s")
RUN = struct.Struct("<QII")  # pfn, npages, flags
RUN_ZERO = 1
INDEX_MAGIC = b"KXHINDEX"
INDEX_HEAD = struct.Struct("<8sQ")  # magic, entries
# offset, length, first_pfn, end_pfn, data_pages, zero_pages, head_sha256
INDEX_ENTRY = struct.Struct("<QQQQQQ32s")

# -- limits: what a reader accepts before it allocates anything -------------
PAGE_SIZES = (4096, 8192, 16384, 32768, 65536)
CHUNK_SIZE_MAX = 256 << 20
RUNS_PER_CHUNK_MAX = 65536  # a 1 MiB run table
RUN_PAGES_MAX = 0xFFFFFFFF
MAX_PHYS_ADDR = 1 << 52  # x86-64 architectural physical address width
NOTES_SIZE_MAX = 64 << 20
IDENTITY_SIZE_MAX = 64 << 10


class Codec:
    """Codec numbers as stored; names as the API spells them."""

    NONE = 0
    ZSTD = 1
    LZ4 = 2
    NAMES: ClassVar[dict[int, str]] = {NONE: "none", ZSTD: "zstd", LZ4: "lz4"}
    IDS: ClassVar[dict[str, int]] = {name: ident for ident, name in NAMES.items()}


def align_up(value: int, alignment: int) -> int:
    return -(-value // alignment) * alignment


def sha256(*parts: bytes | bytearray | memoryview) -> bytes:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.digest()


# ===========================================================================
# Header
# ===========================================================================


@dataclass(frozen=True)
class Header:
    """Everything the header of an image says."""

    meta: ImageMeta  # window is always () here: it is not saved
    state: ImageState
    codec: int
    level: int
    chunk_size: int
    data_offset: int
    index_offset: int
    chunks: int
    image_length: int
    data_pages: int
    zero_pages: int
    runs: int
    digest: bytes
    version: int = FORMAT_VERSION

    @property
    def page_size(self) -> int:
        return self.meta.page_size

    def summary(self) -> ImageSummary:
        return ImageSummary(
            self.version,
            Codec.NAMES[self.codec],
            self.level,
            self.chunk_size,
            self.data_pages,
            self.zero_pages,
            self.runs,
            self.chunks,
            self.image_length,
            self.digest.hex(),
            self.state,
        )

    @property
    def index_length(self) -> int:
        return INDEX_HEAD.size + INDEX_ENTRY.size * self.chunks


# The image note's fields a Header holds itself (the rest are its meta's, or flags).
_HEADER_DESC_FIELDS = tuple(
    f.name for f in dataclasses.fields(Header) if f.name in IMAGE_DESC_FIELDS
)


def _pad4(b: bytes) -> bytes:
    return b + bytes(-len(b) % 4)


def encode_note(owner: str, ntype: int, desc: bytes) -> bytes:
    name = owner.encode() + b"\0"
    return NHDR.pack(len(name), len(desc), ntype) + _pad4(name) + _pad4(desc)


def encode_identity(meta: ImageMeta) -> bytes:
    return "".join(f"{key}={getattr(meta, key)}\n" for key in IDENTITY_KEYS).encode()


def validate_meta(meta: ImageMeta) -> None:
    """Reject metadata the format cannot carry faithfully (a caller's bug)."""
    if meta.page_size not in PAGE_SIZES:
        raise ValueError(f"page size {meta.page_size} is not one of {PAGE_SIZES}")
    for key in IDENTITY_KEYS:
        value = getattr(meta, key)
        if not isinstance(value, str) or any(c in value for c in "\n\0"):
            raise ValueError(f"{key} must be a string without newlines or NULs: {value!r}")
    if len(encode_identity(meta)) > IDENTITY_SIZE_MAX:
        raise ValueError("identity strings are too long")
    if not 0 <= meta.jump_back_entry < 1 << 64:
        raise ValueError(f"jump-back entry {meta.jump_back_entry:#x} is not a 64-bit address")
    if len(meta.page_map) + len(meta.vmcoreinfo) > NOTES_SIZE_MAX // 2:
        raise ValueError("page map and VMCOREINFO are too large for the header")


def encode_notes(h: Header) -> bytes:
    """The note region, DIGEST included; the state word is filled in too."""
    m = h.meta
    fields = {
        "page_size": m.page_size,
        "flags": 0,
        "jump_back_entry": m.jump_back_entry,
        "created": m.created,
        **{name: getattr(h, name) for name in _HEADER_DESC_FIELDS},
    }
    parts = [
        encode_note(
            NOTE_OWNER,
            NT_IMAGE,
            IMAGE_DESC.pack(*(fields[name] for name in IMAGE_DESC_FIELDS)),
        ),
        encode_note(NOTE_OWNER, NT_IDENTITY, encode_identity(m)),
    ]
    if m.page_map:
        parts.append(encode_note(NOTE_OWNER, NT_PAGE_MAP, m.page_map))
    if m.vmcoreinfo:
        parts.append(encode_note(VMCOREINFO_OWNER, NT_VMCOREINFO, m.vmcoreinfo))
    rest = b"".join(parts)
    size = FORMAT_NOTE_SIZE + len(rest) + DIGEST_NOTE_SIZE
    desc = FORMAT_DESC.pack(IMAGE_MAGIC, h.version, size, STATE_WORDS[h.state])
    return encode_note(NOTE_OWNER, NT_FORMAT, desc) + rest


def header_size(meta: ImageMeta) -> int:
    """Bytes of ELF header, program header and notes for ``meta`` (padding excluded)."""
    probe = Header(meta, ImageState.COMMITTED, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, bytes(32))
    return NOTES_OFFSET + len(encode_notes(probe)) + DIGEST_NOTE_SIZE


def encode_elf_prefix(phnum: int, shoff: int = 0, shnum: int = 0) -> bytes:
    return core_ehdr(phnum, shoff=shoff, shnum=shnum)


def header_digest(header: bytes | bytearray | memoryview) -> bytes:
    """SHA-256 of ``header`` (ELF header through the DIGEST note's own note
    header) with the state word taken as zero, so the state can change in place."""
    mv = memoryview(header)
    return sha256(mv[:STATE_OFFSET], bytes(STATE_SIZE), mv[STATE_OFFSET + STATE_SIZE :])


def encode_header(h: Header) -> bytes:
    """The image's first bytes, up to (not including) the padding."""
    notes = encode_notes(h)
    notes_size = len(notes) + DIGEST_NOTE_SIZE
    prefix = encode_elf_prefix(1) + PHDR.pack(PT_NOTE, 0, NOTES_OFFSET, 0, 0, notes_size, 0, 4)
    body = prefix + notes + NHDR.pack(len(NOTE_OWNER) + 1, 32, NT_DIGEST) + _pad4(b"KEXECHIB\0")
    return body + header_digest(body)


# -- decoding ---------------------------------------------------------------


def _elf(data: bytes) -> Any:
    try:
        return ELFFile(io.BytesIO(data))
    except ELFError as e:
        raise ImageError(f"not an ELF file: {e}", offset=0) from e
    except Exception as e:  # pyelftools' construct errors have no common base
        raise ImageError(f"malformed ELF header: {e}", offset=0) from e


def notes_end(prefix: bytes) -> int:
    """Check the ELF and program headers (``prefix`` holds at least
    ``NOTES_OFFSET`` bytes) and return where the note region ends."""
    if prefix[:4] != b"\x7fELF":
        raise ImageError(f"not an ELF file: magic is {bytes(prefix[:4])!r}", offset=0)
    if prefix[4] != 2 or prefix[5] != 1:
        raise ImageError("not a little-endian ELF64 file", offset=4 if prefix[4] != 2 else 5)
    elf = _elf(prefix[:NOTES_OFFSET])
    hdr = elf.header
    checks: list[tuple[bool, int, str]] = [
        (hdr["e_type"] == "ET_CORE", 16, f"ELF type is {hdr['e_type']}, not ET_CORE"),
        (
            hdr["e_machine"] == "EM_X86_64",
            18,
            f"machine is {hdr['e_machine']}, not EM_X86_64: the image is for another architecture",
        ),
        (hdr["e_phoff"] == EHDR.size, 32, f"program headers at {hdr['e_phoff']}, expected 64"),
        (hdr["e_phentsize"] == PHDR.size, 54, f"program header size {hdr['e_phentsize']}"),
        (hdr["e_phnum"] == 1, 56, f"{hdr['e_phnum']} program headers, expected 1"),
    ]
    for ok, offset, message in checks:
        if not ok:
            raise ImageError(message, offset=offset)
    try:
        seg = elf.get_segment(0).header
    except Exception as e:
        raise ImageError(f"malformed program header: {e}", offset=EHDR.size) from e
    if seg["p_type"] != "PT_NOTE":
        raise ImageError(f"program header is {seg['p_type']}, not PT_NOTE", offset=EHDR.size)
    if seg["p_offset"] != NOTES_OFFSET:
        raise ImageError(f"notes at {seg['p_offset']}, expected {NOTES_OFFSET}", offset=72)
    size = seg["p_filesz"]
    if not FORMAT_NOTE_SIZE + DIGEST_NOTE_SIZE <= size <= NOTES_SIZE_MAX:
        raise ImageError(f"note region of {size} bytes is absurd", offset=96)
    return int(NOTES_OFFSET + size)


def check_format_prefix(prefix: bytes | bytearray | memoryview) -> tuple[int, ImageState]:
    """Identify a kexechib image from its first ``PREFIX_SIZE`` bytes (the same
    in every format version): return (version, state) or raise."""
    namesz, descsz, ntype = NHDR.unpack_from(prefix, NOTES_OFFSET)
    name = bytes(prefix[NOTES_OFFSET + NHDR.size : FORMAT_DESC_OFFSET])
    if (namesz, descsz, ntype, name) != (9, FORMAT_DESC.size, NT_FORMAT, b"KEXECHIB\0\0\0\0"):
        raise ImageError(
            "not a kexechib image: the first note is not KEXECHIB/FORMAT", offset=NOTES_OFFSET
        )
    magic, version, _size, word = FORMAT_DESC.unpack_from(prefix, FORMAT_DESC_OFFSET)
    if magic != IMAGE_MAGIC:
        raise ImageError(f"not a kexechib image: magic is {magic!r}", offset=MAGIC_OFFSET)
    if version != FORMAT_VERSION:
        raise ImageError(
            f"image format version {version} is not supported "
            f"(this reader knows version {FORMAT_VERSION})",
            offset=VERSION_OFFSET,
        )
    state = STATE_BY_WORD.get(word)
    if state is None:
        raise ImageError(
            f"resume state word {word!r} is none of committed/consumed/invalid", offset=STATE_OFFSET
        )
    return version, state


def check_notes_size(prefix: bytes | bytearray | memoryview, end: int) -> None:
    """The note region's size is in the PT_NOTE header and, in version 1, in
    the FORMAT note too: a flipped bit in either shows as a disagreement
    rather than as a truncated or garbled header."""
    (size,) = struct.unpack_from("<I", prefix, NOTES_SIZE_OFFSET)
    if size != end - NOTES_OFFSET:
        raise ImageError(
            f"the PT_NOTE header (at 0x60) says the notes are {end - NOTES_OFFSET} "
            f"bytes, the FORMAT note (at {NOTES_SIZE_OFFSET:#x}) says {size}",
            offset=96,
        )


def _identity(desc: bytes, offset: int) -> dict[str, str]:
    try:
        text = desc.decode()
    except UnicodeDecodeError as e:
        raise ImageError("identity note is not UTF-8", offset=offset + e.start) from e
    values: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if not sep or key not in IDENTITY_KEYS or key in values:
            raise ImageError(f"identity note has a bad line {line!r}", offset=offset)
        values[key] = value
    missing = [k for k in IDENTITY_KEYS if k not in values]
    if missing or not text.endswith("\n"):
        raise ImageError(
            f"identity note lacks {', '.join(missing) or 'a final newline'}", offset=offset
        )
    if values["mode"] not in {m.value for m in ImageMode}:
        raise ImageError(f"mode {values['mode']!r} is unknown", offset=offset)
    return values


def decode_header(region: bytes, image_end: int | None = None) -> Header:
    """Verify and decode the header ``region`` (``[0, notes_end)``).
    ``notes_end`` must already have accepted its first 120 bytes."""
    end = len(region)
    _version, state = check_format_prefix(region)
    check_notes_size(region, end)
    dig_at = end - DIGEST_NOTE_SIZE
    dig_hdr = NHDR.pack(9, 32, NT_DIGEST) + b"KEXECHIB\0\0\0\0"
    if dig_at < NOTES_OFFSET + FORMAT_NOTE_SIZE or region[dig_at : end - 32] != dig_hdr:
        raise ImageError(
            f"the note region ({end - NOTES_OFFSET} bytes by its program header) "
            f"does not end with the header digest note",
            offset=max(dig_at, 0),
        )
    if header_digest(memoryview(region)[: end - 32]) != region[end - 32 :]:
        raise ImageError(
            f"header checksum mismatch: bytes 0..{end - 32:#x} do not match "
            f"the SHA-256 stored at {end - 32:#x}",
            offset=0,
        )
    notes = _parse_notes(region)
    _check_note_order(notes)
    image = notes[1]
    if len(image.desc) != IMAGE_DESC.size:
        raise ImageError(
            f"image note is {len(image.desc)} bytes, expected {IMAGE_DESC.size}",
            offset=image.offset,
        )
    d = SimpleNamespace(**dict(zip(IMAGE_DESC_FIELDS, IMAGE_DESC.unpack(image.desc), strict=True)))
    ident = _identity(notes[2].desc, notes[2].desc_offset)
    by_kind = {(n.owner, n.type): n.desc for n in notes}
    at = image.desc_offset
    checks: list[tuple[bool, int, str]] = [
        (d.page_size in PAGE_SIZES, 0, f"page size {d.page_size} is not supported"),
        (d.codec in Codec.NAMES, 4, f"compression {d.codec} is unknown"),
        (d.flags == 0, 12, f"image flags {d.flags:#x} are unknown"),
        (
            d.chunks * INDEX_ENTRY.size < d.image_length,
            40,
            f"{d.chunks} chunks cannot fit in an image of {d.image_length} bytes",
        ),
        (
            d.chunk_size % d.page_size == 0 and d.page_size <= d.chunk_size <= CHUNK_SIZE_MAX,
            16,
            f"chunk size {d.chunk_size} is absurd",
        ),
        (
            d.data_offset == align_up(end, d.page_size),
            24,
            f"data offset {d.data_offset:#x} is not the page after the header",
        ),
        (
            d.data_offset <= d.index_offset,
            32,
            f"index offset {d.index_offset:#x} is before the data",
        ),
        (
            d.image_length == d.index_offset + INDEX_HEAD.size + INDEX_ENTRY.size * d.chunks,
            48,
            f"image length {d.image_length} does not fit {d.chunks} chunks after "
            f"{d.index_offset:#x}",
        ),
        (
            d.data_pages + d.zero_pages <= MAX_PHYS_ADDR // d.page_size,
            56,
            f"{d.data_pages} data and {d.zero_pages} zero pages are more than a machine holds",
        ),
        (
            d.runs <= d.data_pages + d.zero_pages
            and (d.runs > 0) == (d.data_pages + d.zero_pages > 0),
            72,
            f"{d.runs} runs for {d.data_pages + d.zero_pages} pages is absurd",
        ),
    ]
    for ok, rel, message in checks:
        if not ok:
            raise ImageError(message, offset=at + rel)
    meta = ImageMeta(
        kernel_release=ident["kernel_release"],
        build_id=ident["build_id"],
        boot_id=ident["boot_id"],
        machine_id=ident["machine_id"],
        created=d.created,
        jump_back_entry=d.jump_back_entry,
        hibernate_id=ident["hibernate_id"],
        mode=ImageMode(ident["mode"]),
        window=(),
        page_map=by_kind.get((NOTE_OWNER, NT_PAGE_MAP), b""),
        vmcoreinfo=by_kind.get((VMCOREINFO_OWNER, NT_VMCOREINFO), b""),
        page_size=d.page_size,
    )
    return Header(meta, state, **{name: getattr(d, name) for name in _HEADER_DESC_FIELDS})


# The notes of a version 1 header, in order; False marks an optional one.
_NOTE_ORDER = (
    ((NOTE_OWNER, NT_FORMAT), True),
    ((NOTE_OWNER, NT_IMAGE), True),
    ((NOTE_OWNER, NT_IDENTITY), True),
    ((NOTE_OWNER, NT_PAGE_MAP), False),
    ((VMCOREINFO_OWNER, NT_VMCOREINFO), False),
    ((NOTE_OWNER, NT_DIGEST), True),
)


def _check_note_order(notes: list[_Note]) -> None:
    t = 0
    for n in notes:
        while (
            t < len(_NOTE_ORDER)
            and _NOTE_ORDER[t][0] != (n.owner, n.type)
            and not _NOTE_ORDER[t][1]
        ):
            t += 1
        if t == len(_NOTE_ORDER) or _NOTE_ORDER[t][0] != (n.owner, n.type):
            raise ImageError(f"unexpected note {n.owner}/{n.type:#x}", offset=n.offset)
        t += 1


@dataclass(frozen=True)
class _Note:
    offset: int
    owner: str
    type: int
    desc: bytes
    desc_offset: int


def _parse_notes(region: bytes) -> list[_Note]:
    elf = _elf(region)
    end = len(region)
    notes: list[_Note] = []
    expect = NOTES_OFFSET
    try:
        for n in iter_notes(elf, NOTES_OFFSET, end - NOTES_OFFSET):
            at = int(n["n_offset"])
            owner = str(n["n_name"] or "")
            ntype: object = n["n_type"]  # a name when pyelftools knows the type
            if at != expect or not isinstance(ntype, int):
                raise ImageError(f"note of type {ntype} is malformed", offset=at)
            if n["n_namesz"] != len(owner) + 1 or len(n["n_descdata"]) != n["n_descsz"]:
                raise ImageError("note name or descriptor overruns the note region", offset=at)
            desc_at = at + NHDR.size + align_up(n["n_namesz"], 4)
            notes.append(_Note(at, owner, ntype, bytes(n["n_descdata"]), desc_at))
            expect = at + n["n_size"]
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"malformed note: {e}", offset=expect) from e
    if expect != end or len(notes) < 4:
        raise ImageError("notes do not fill the note region exactly", offset=expect)
    return notes


# ===========================================================================
# Chunks
# ===========================================================================


@dataclass(frozen=True)
class ChunkHead:
    index: int
    nruns: int
    codec: int
    first_pfn: int
    end_pfn: int
    data_pages: int
    zero_pages: int
    payload_len: int
    payload_sha: bytes

    def pack(self) -> bytes:
        return CHUNK_HEAD.pack(
            CHUNK_MAGIC,
            self.index,
            self.nruns,
            self.codec,
            0,
            self.first_pfn,
            self.end_pfn,
            self.data_pages,
            self.zero_pages,
            self.payload_len,
            self.payload_sha,
        )

    @property
    def table_size(self) -> int:
        return RUN.size * self.nruns

    @property
    def record_size(self) -> int:
        return CHUNK_HEAD.size + self.table_size + self.payload_len


@dataclass(frozen=True)
class IndexEntry:
    offset: int
    length: int
    first_pfn: int
    end_pfn: int
    data_pages: int
    zero_pages: int
    head_sha: bytes

    def pack(self) -> bytes:
        return INDEX_ENTRY.pack(*dataclasses.astuple(self))


def pack_runs(runs: list[tuple[int, int, bool]]) -> bytes:
    pack = RUN.pack
    return b"".join([pack(pfn, n, RUN_ZERO if zero else 0) for pfn, n, zero in runs])


def check_index(index: bytes, h: Header) -> None:
    """Check the index block's magic and every entry against the header and
    its neighbours.  Entries are decoded again, one at a time, with
    ``index_entry``: the index is kept as bytes, not as objects."""
    at = h.index_offset
    magic, count = INDEX_HEAD.unpack_from(index)
    if magic != INDEX_MAGIC or count != h.chunks:
        raise ImageError(
            f"index block says {magic!r}/{count} chunks, header says {h.chunks}", offset=at
        )
    expect = h.data_offset
    prev_end = 0
    data = zero = 0
    max_len = CHUNK_HEAD.size + RUN.size * RUNS_PER_CHUNK_MAX + h.chunk_size
    for i in range(count):
        e = index_entry(index, i)
        where = at + INDEX_HEAD.size + i * INDEX_ENTRY.size
        problem = (
            "is not right after the previous chunk"
            if e.offset != expect
            else f"has an absurd length {e.length}"
            if not CHUNK_HEAD.size < e.length <= max_len
            else "overruns the index"
            if e.offset + e.length > h.index_offset
            else "covers no pages or ends beyond physical memory"
            if not e.first_pfn < e.end_pfn <= MAX_PHYS_ADDR // h.page_size
            else "overlaps or precedes the previous chunk"
            if e.first_pfn < prev_end
            else "holds more data than a chunk may"
            if e.data_pages * h.page_size > h.chunk_size
            else "covers no pages"
            if e.data_pages + e.zero_pages == 0
            else "has more pages than it spans"
            if e.data_pages + e.zero_pages > e.end_pfn - e.first_pfn
            else ""
        )
        if problem:
            raise ImageError(f"index entry {i} {problem}", offset=where, chunk=i)
        expect = e.offset + e.length
        prev_end = e.end_pfn
        data += e.data_pages
        zero += e.zero_pages
    if expect != h.index_offset:
        raise ImageError(
            f"chunks end at {expect:#x}, the index starts at {h.index_offset:#x}", offset=at
        )
    if (data, zero) != (h.data_pages, h.zero_pages):
        raise ImageError(
            f"index counts {data} data and {zero} zero pages, header says "
            f"{h.data_pages} and {h.zero_pages}",
            offset=at,
        )


def index_entry(index: bytes, i: int) -> IndexEntry:
    return IndexEntry(*INDEX_ENTRY.unpack_from(index, INDEX_HEAD.size + i * INDEX_ENTRY.size))


def decode_chunk_head(head: bytes | memoryview, i: int, e: IndexEntry, h: Header) -> ChunkHead:
    """Check a chunk's fixed header (its head checksum already verified)."""
    (
        magic,
        index,
        nruns,
        codec,
        reserved,
        first_pfn,
        end_pfn,
        data_pages,
        zero_pages,
        payload_len,
        payload_sha,
    ) = CHUNK_HEAD.unpack_from(head)
    c = ChunkHead(
        index, nruns, codec, first_pfn, end_pfn, data_pages, zero_pages, payload_len, payload_sha
    )
    raw_len = data_pages * h.page_size
    problem = (
        f"magic is {magic!r}"
        if magic != CHUNK_MAGIC
        else f"says it is chunk {index}"
        if index != i
        else f"has {nruns} runs (at most {RUNS_PER_CHUNK_MAX})"
        if not 0 < nruns <= RUNS_PER_CHUNK_MAX
        else f"codec {codec} is neither none nor the image's"
        if codec not in (Codec.NONE, h.codec) or reserved
        else "disagrees with its index entry"
        if (first_pfn, end_pfn, data_pages, zero_pages)
        != (e.first_pfn, e.end_pfn, e.data_pages, e.zero_pages)
        or c.record_size != e.length
        else f"payload of {payload_len} bytes for {raw_len} bytes of data"
        if payload_len > raw_len or (codec == Codec.NONE and payload_len != raw_len)
        else ""
    )
    if problem:
        raise ImageError(f"chunk header {problem}", offset=e.offset, chunk=i)
    return c


def decode_runs(table: bytes | memoryview, c: ChunkHead, e: IndexEntry) -> Iterator[Run]:
    """The runs of a chunk, checked: sorted, not overlapping, inside the
    chunk's span, starting and ending at it, and adding up to its counts."""
    pos = c.first_pfn
    data = zero = 0
    at = e.offset + CHUNK_HEAD.size
    for k, (pfn, npages, flags) in enumerate(RUN.iter_unpack(table)):
        problem = (
            "is empty"
            if npages == 0
            else f"has unknown flags {flags:#x}"
            if flags & ~RUN_ZERO
            else "does not start the chunk"
            if k == 0 and pfn != pos
            else "overlaps or precedes the previous run"
            if pfn < pos
            else "runs past the chunk's end"
            if pfn + npages > c.end_pfn
            else ""
        )
        if problem:
            raise ImageError(
                f"run {k} ({pfn:#x}+{npages}) {problem}", offset=at + k * RUN.size, chunk=c.index
            )
        if flags:
            zero += npages
        else:
            data += npages
        pos = pfn + npages
        yield Run(pfn, npages, bool(flags))
    if pos != c.end_pfn or (data, zero) != (c.data_pages, c.zero_pages):
        raise ImageError(
            f"runs end at {pos:#x} with {data} data and {zero} zero pages; the "
            f"chunk says {c.end_pfn:#x}, {c.data_pages} and {c.zero_pages}",
            offset=at,
            chunk=c.index,
        )
