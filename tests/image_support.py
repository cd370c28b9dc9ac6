"""Helpers shared by the image tests: sample images, their layout, and
re-signing an edited image.  Not a test module (pytest does not collect it);
tests/test_image_support.py shows the helpers themselves can be trusted."""

from __future__ import annotations

import hashlib
import io
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kexechibd.image import ImageMeta, ImageReader, ImageStore, ImageSummary, ImageWriter
from kexechibd.image import format as fmt

PS = 4096
VMCOREINFO = b"OSRELEASE=6.1.0-kexechib\nPAGESIZE=4096\nSYMBOL(swapper_pg_dir)=ffffffff82a0a000\n"
PAGE_MAP = b"KXPGMAP1" + struct.pack("<II", 4096, 0) + struct.pack("<QQQ", 0x30000, 0x100, 16)

# IMAGE note: its descriptor follows the FORMAT note and the note header + name.
IMAGE_DESC_AT = fmt.NOTES_OFFSET + fmt.FORMAT_NOTE_SIZE + fmt.NHDR.size + 12
IMAGE_FIELD = {  # offsets inside IMAGE_DESC
    "page_size": 0,
    "codec": 4,
    "level": 8,
    "flags": 12,
    "chunk_size": 16,
    "data_offset": 24,
    "index_offset": 32,
    "chunks": 40,
    "image_length": 48,
    "data_pages": 56,
    "zero_pages": 64,
    "runs": 72,
    "jump_back_entry": 80,
    "created": 88,
    "digest": 96,
}


def make_meta(**overrides: object) -> ImageMeta:
    meta = ImageMeta(
        kernel_release="6.1.0-kexechib",
        build_id="5f1d" * 10,
        boot_id="b0b0-1",
        machine_id="m4ch1n3",
        created=1_700_000_000.25,
        jump_back_entry=0x1_0000_2000,
        hibernate_id="nonce-42",
        mode="poweroff",
        window=((0x3000_0000, 0x3800_0000),),
        page_map=PAGE_MAP,
        vmcoreinfo=VMCOREINFO,
    )
    return replace(meta, **overrides)  # type: ignore[arg-type]


def page(tag: int, kind: str = "text") -> bytes:
    """A distinct non-zero page: text-like (compressible) or random."""
    if kind == "random":
        return os.urandom(PS)
    line = f"page {tag:#x} of A's memory; ".encode()
    return (line * (PS // len(line) + 1))[:PS]


def write_image(
    adds: Iterable[tuple[int, bytes]], meta: ImageMeta | None = None, **kwargs: object
) -> tuple[bytes, ImageSummary]:
    out = io.BytesIO()
    with ImageWriter(out, meta or make_meta(), **kwargs) as w:  # type: ignore[arg-type]
        for addr, data in adds:
            w.add(addr, data)
        summary = w.commit()
    return out.getvalue(), summary


def open_image(data: bytes | bytearray) -> ImageReader:
    return ImageReader(io.BytesIO(bytes(data)))


def read_pages(reader: ImageReader) -> tuple[dict[int, bytes], set[int]]:
    """(data pages by pfn, zero pfns) as the reader hands them out."""
    data: dict[int, bytes] = {}
    zero: set[int] = set()
    for chunk in reader.chunks():
        mv = memoryview(chunk.data)
        pos = 0
        for run in chunk.runs:
            if run.zero:
                zero.update(range(run.pfn, run.end))
                continue
            for i in range(run.npages):
                data[run.pfn + i] = bytes(mv[pos : pos + PS])
                pos += PS
        assert pos == len(mv)
    return data, zero


def sample_image(**kwargs: object) -> tuple[bytes, ImageSummary]:
    """Several chunks of text, random and zero pages, a gap, and zero runs."""
    adds = [
        (0, b"".join(page(i) for i in range(6)) + bytes(2 * PS) + page(6, "random")),
        (0x10_0000, bytes(16 * PS)),
        (0x20_0000, b"".join(page(0x200 + i, "random" if i % 3 else "text") for i in range(9))),
    ]
    kwargs.setdefault("chunk_size", 4 * PS)
    return write_image(adds, **kwargs)


# -- reaching into a committed image ----------------------------------------


@dataclass(frozen=True)
class Layout:
    notes_end: int
    data_offset: int
    index_offset: int
    chunks: int
    entries: tuple[fmt.IndexEntry, ...]

    def entry_at(self, k: int) -> int:
        return self.index_offset + fmt.INDEX_HEAD.size + k * fmt.INDEX_ENTRY.size

    def payload_at(self, image: bytes | bytearray, k: int) -> int:
        e = self.entries[k]
        nruns = struct.unpack_from("<I", image, e.offset + 12)[0]
        return int(e.offset + fmt.CHUNK_HEAD.size + fmt.RUN.size * nruns)


def layout(image: bytes | bytearray) -> Layout:
    notes_end = fmt.NOTES_OFFSET + struct.unpack_from("<Q", image, 96)[0]
    data_offset, index_offset, chunks = struct.unpack_from("<QQQ", image, IMAGE_DESC_AT + 24)
    fits = (len(image) - index_offset - fmt.INDEX_HEAD.size) // fmt.INDEX_ENTRY.size
    entries = tuple(
        fmt.IndexEntry(
            *fmt.INDEX_ENTRY.unpack_from(
                image, index_offset + fmt.INDEX_HEAD.size + k * fmt.INDEX_ENTRY.size
            )
        )
        for k in range(min(chunks, fits))
    )  # an edited count may be absurd
    return Layout(notes_end, data_offset, index_offset, chunks, entries)


def resign(image: bytearray, *, payloads: bool = False) -> bytearray:
    """Recompute every checksum after a deliberate edit, as a buggy (or
    hostile) writer would have produced them: then only the structural
    checks stand between the edit and the reader."""
    lay = layout(image)
    for k, e in enumerate(lay.entries):
        nruns = struct.unpack_from("<I", image, e.offset + 12)[0]
        head_len = fmt.CHUNK_HEAD.size + fmt.RUN.size * nruns
        if payloads:
            payload = image[e.offset + head_len : e.offset + e.length]
            image[e.offset + 64 : e.offset + 96] = hashlib.sha256(payload).digest()
        at = lay.entry_at(k) + 48
        image[at : at + 32] = hashlib.sha256(image[e.offset : e.offset + head_len]).digest()
    index = image[
        lay.index_offset : lay.index_offset
        + fmt.INDEX_HEAD.size
        + fmt.INDEX_ENTRY.size * len(lay.entries)
    ]
    at = IMAGE_DESC_AT + IMAGE_FIELD["digest"]
    image[at : at + 32] = hashlib.sha256(index).digest()
    end = lay.notes_end
    image[end - 32 : end] = fmt.header_digest(image[: end - 32])
    return image


def save(store: ImageStore, tag: int, **kwargs: object) -> None:
    with store.writer(make_meta(hibernate_id=f"image-{tag}"), chunk_size=2 * PS, **kwargs) as w:
        w.add(0, b"".join(page(tag * 16 + i) for i in range(5)) + bytes(3 * PS))
        w.commit()


def newest(store: ImageStore) -> tuple[str, str]:
    """(which image, its state) as ``open`` finds it."""
    with store.open() as reader:
        assert read_pages(reader)[0][0] == page(int(reader.meta.hibernate_id[6:]) * 16)
        return reader.meta.hibernate_id, reader.summary.state
