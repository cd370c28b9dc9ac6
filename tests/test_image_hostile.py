"""Hostile images: every truncation, bit flip, absurd count and foreign
header gets an ``ImageError`` naming the offset (and the chunk); nothing is
handed out from a chunk before it is verified, nor at all before the header
and index are."""

from __future__ import annotations

import hashlib
import struct

import lz4.frame
import pytest
import zstandard

from kexechibd.image import ImageError, codec
from kexechibd.image import format as fmt
from tests.image_support import (
    IMAGE_DESC_AT,
    IMAGE_FIELD,
    PS,
    layout,
    make_meta,
    open_image,
    page,
    resign,
    sample_image,
    write_image,
)


@pytest.fixture(scope="module")
def image() -> bytes:
    return sample_image(compression="zstd")[0]


def error(data: bytes | bytearray, action: str = "open") -> ImageError:
    with pytest.raises(ImageError) as info:
        reader = open_image(data)
        if action == "verify":
            reader.verify()
        elif action == "covered":
            list(reader.covered())
    return info.value


def flip(data: bytes, offset: int, bit: int = 0) -> bytearray:
    out = bytearray(data)
    out[offset] ^= 1 << bit
    return out


def put(data: bytes | bytearray, offset: int, fmt_: str, *values: object) -> bytearray:
    out = bytearray(data)
    struct.pack_into(fmt_, out, offset, *values)
    return out


def test_an_image_error_names_the_chunk_and_offset_it_was_found_at() -> None:
    e = ImageError("x", offset=3, chunk=1)
    assert (e.message, e.offset, e.chunk) == ("x", 3, 1)
    assert str(e) == "x (chunk 1, offset 0x3)"


# -- truncation -----------------------------------------------------------------


def test_truncation_at_every_chunk_boundary_names_the_missing_chunk(image: bytes) -> None:
    lay = layout(image)
    for k, e in enumerate(lay.entries):
        err = error(image[: e.offset])
        assert (err.chunk, err.offset) == (k, e.offset)
        assert f"chunk {k} (from {e.offset:#x}) is missing" in err.message


@pytest.mark.parametrize("where", ["head", "run table", "payload", "last byte"])
def test_truncation_inside_a_chunk_names_the_chunk(image: bytes, where: str) -> None:
    lay = layout(image)
    for k, e in enumerate(lay.entries):
        cut = {
            "head": e.offset + 50,
            "run table": e.offset + fmt.CHUNK_HEAD.size + 1,
            "payload": (lay.payload_at(image, k) + e.offset + e.length) // 2,
            "last byte": e.offset + e.length - 1,
        }[where]
        err = error(image[:cut])
        assert (err.chunk, err.offset) == (k, cut)
        assert "incomplete" in err.message


@pytest.mark.parametrize("cut", [0, 1, -1])
def test_truncation_inside_the_index_says_so(image: bytes, cut: int) -> None:
    lay = layout(image)
    at = lay.index_offset + cut if cut >= 0 else len(image) + cut
    err = error(image[:at])
    assert err.chunk is None and err.offset == at and "index" in err.message


def test_truncation_anywhere_in_the_header_is_caught(image: bytes) -> None:
    lay = layout(image)
    for cut in [*range(0, 200), *range(200, lay.data_offset, 97), lay.data_offset - 1]:
        err = error(image[:cut])
        if cut < 4:
            assert "not an ELF file" in err.message
        else:
            assert err.offset == cut and "truncated" in err.message


def test_a_longer_file_is_fine_bytes_after_the_image_are_ignored(image: bytes) -> None:
    open_image(image + b"\xff" * 5000).verify()


# -- foreign headers --------------------------------------------------------------


@pytest.mark.parametrize(
    "offset, value, fragment",
    [
        (0, b"\x7fELG", "not an ELF file"),
        (4, b"\x01", "ELF64"),
        (5, b"\x02", "little-endian"),
        (16, struct.pack("<H", 2), "ET_CORE"),
        (18, struct.pack("<H", 183), "EM_AARCH64"),
        (56, struct.pack("<H", 2), "program headers"),
        (64, struct.pack("<I", 1), "PT_NOTE"),
        (fmt.MAGIC_OFFSET, b"KXHIBIMH", "not a kexechib image"),
        (fmt.VERSION_OFFSET, struct.pack("<I", 2), "version 2 is not supported"),
        (fmt.VERSION_OFFSET, struct.pack("<I", 0), "version 0 is not supported"),
        (fmt.STATE_OFFSET, b"RESUMED!", "resume state"),
        (fmt.NOTES_OFFSET + 8, struct.pack("<I", 1), "first note is not KEXECHIB/FORMAT"),
    ],
)
def test_foreign_or_unknown_headers_are_named_precisely(
    image: bytes, offset: int, value: bytes, fragment: str
) -> None:
    bad = bytearray(image)
    bad[offset : offset + len(value)] = value
    err = error(bad)
    assert fragment in err.message
    expected = {"not an ELF file": 0, "first note is not KEXECHIB/FORMAT": fmt.NOTES_OFFSET}
    assert err.offset == expected.get(fragment, offset)


def test_every_bit_flip_in_the_header_is_caught(image: bytes) -> None:
    end = layout(image).notes_end
    for offset in range(end):
        err = error(flip(image, offset, offset % 8))
        assert err.offset is not None and err.offset < end


def test_bit_flips_in_the_metadata_notes_fail_the_header_checksum(image: bytes) -> None:
    for offset in (IMAGE_DESC_AT + IMAGE_FIELD["chunks"], IMAGE_DESC_AT + 200, 700):
        err = error(flip(image, offset))
        assert "header checksum mismatch" in err.message and err.offset == 0


def test_bit_flip_in_the_header_padding_is_caught(image: bytes) -> None:
    lay = layout(image)
    err = error(flip(image, lay.data_offset - 10))
    assert err.offset == lay.data_offset - 10 and "padding" in err.message


# -- index and chunks -------------------------------------------------------------


def test_every_bit_flip_in_the_index_is_caught_before_any_chunk_is_read(image: bytes) -> None:
    lay = layout(image)
    for offset in range(lay.index_offset, len(image), 7):
        err = error(flip(image, offset, offset % 8))
        assert err.offset == lay.index_offset and "index checksum mismatch" in err.message


def test_bit_flip_in_chunk_data_names_the_chunk(image: bytes) -> None:
    lay = layout(image)
    for k, e in enumerate(lay.entries):
        payload = lay.payload_at(image, k)
        for offset in (payload, (payload + e.offset + e.length) // 2, e.offset + e.length - 1):
            err = error(flip(image, offset), "verify")
            assert (err.chunk, err.offset) == (k, payload)
            assert "chunk data checksum mismatch" in err.message


def test_bit_flip_in_a_chunk_head_or_run_table_names_the_chunk(image: bytes) -> None:
    lay = layout(image)
    for k, e in enumerate(lay.entries):
        for offset in range(e.offset, lay.payload_at(image, k), 5):
            for action in ("verify", "covered"):
                err = error(flip(image, offset, 3), action)
                assert (err.chunk, err.offset) == (k, e.offset)
                assert "run table checksum mismatch" in err.message


def test_nothing_is_yielded_from_a_bad_chunk_but_earlier_chunks_are(image: bytes) -> None:
    lay = layout(image)
    bad = flip(image, lay.payload_at(image, 2) + 3)
    for prefetch in (0, 1, 4):
        got: list[int] = []
        with pytest.raises(ImageError) as info:
            for chunk in open_image(bad).chunks(prefetch=prefetch):
                got.append(chunk.index)
        assert got == [0, 1] and info.value.chunk == 2


def test_chunks_may_not_be_swapped(image: bytes) -> None:
    lay = layout(image)
    a, b = lay.entries[1], lay.entries[2]
    bad = bytearray(image)
    # Swap the index entries' checksums and the records: each chunk says its own number.
    swapped = image[b.offset : b.offset + b.length] + image[a.offset : a.offset + a.length]
    bad[a.offset : b.offset + b.length] = swapped
    err = error(resign(bad), "verify")
    assert err.chunk == 1


# -- absurd values behind valid checksums (a buggy or hostile writer) ------------


def field(name: str) -> int:
    return IMAGE_DESC_AT + IMAGE_FIELD[name]


@pytest.mark.parametrize(
    "name, value, fragment",
    [
        ("chunks", 1 << 40, "cannot fit"),
        ("image_length", 1 << 62, "does not fit"),
        ("data_pages", 1 << 60, "more than a machine holds"),
        ("runs", 1 << 50, "runs for"),
        ("chunk_size", 1 << 40, "chunk size"),
        ("chunk_size", PS + 1, "chunk size"),
        ("page_size", 3000, "page size"),
        ("codec", 9, "compression 9"),
        ("data_offset", PS * 9, "data offset"),
    ],
)
def test_absurd_header_counts_are_refused(
    image: bytes, name: str, value: int, fragment: str
) -> None:
    size = "<I" if name in ("page_size", "codec") else "<Q"
    err = error(resign(put(image, field(name), size, value)))
    assert fragment in err.message and err.offset == field(name)


def test_header_counts_that_disagree_with_the_index_are_refused(image: bytes) -> None:
    err = error(resign(put(image, field("zero_pages"), "<Q", 1)))
    assert "index counts" in err.message and err.offset == layout(image).index_offset


def entry_field(image: bytes, k: int, index: int, value: int) -> bytearray:
    return put(image, layout(image).entry_at(k) + 8 * index, "<Q", value)


@pytest.mark.parametrize(
    "index, value, fragment",
    [
        (0, 12345, "is not right after the previous chunk"),
        (1, 1 << 50, "absurd length"),
        (2, 0, "overlaps or precedes"),
        (3, 1 << 45, "ends beyond physical memory"),
        (4, 1 << 40, "holds more data"),
    ],
)
def test_absurd_or_overlapping_index_entries_are_refused(
    image: bytes, index: int, value: int, fragment: str
) -> None:
    lay = layout(image)
    err = error(resign(entry_field(image, 2, index, value)))
    assert fragment in err.message
    assert (err.chunk, err.offset) == (2, lay.entry_at(2))


def chunk_head(image: bytes, k: int, offset: int, fmt_: str, value: int) -> bytearray:
    return resign(put(image, layout(image).entries[k].offset + offset, fmt_, value))


@pytest.mark.parametrize(
    "offset, fmt_, value, fragment",
    [
        (8, "<I", 3, "says it is chunk 3"),
        (12, "<I", 1 << 31, "checksum mismatch"),  # the run table length is what is hashed
        (16, "<I", 2, "codec 2"),
        (56, "<Q", 1 << 40, "disagrees with its index entry"),
    ],
)
def test_absurd_chunk_headers_are_refused(
    image: bytes, offset: int, fmt_: str, value: int, fragment: str
) -> None:
    err = error(chunk_head(image, 1, offset, fmt_, value), "verify")
    assert fragment in err.message
    assert (err.chunk, err.offset) == (1, layout(image).entries[1].offset)


def run_entry(image: bytes, k: int, r: int) -> int:
    return layout(image).entries[k].offset + fmt.CHUNK_HEAD.size + r * fmt.RUN.size


def two_run_chunk() -> bytes:
    return write_image([(0, page(0) + bytes(PS) + page(2))], chunk_size=4 * PS)[0]


@pytest.mark.parametrize(
    "r, fmt_, value, fragment",
    [
        (1, "<Q", 0, "overlaps or precedes the previous run"),  # run 1 starts inside run 0
        (2, "<Q", 1, "overlaps or precedes the previous run"),  # unsorted
        (0, "<Q", 1, "does not start the chunk"),
        (2, "<I", 0, "is empty"),
        (2, "<I", 1 << 31, "past the chunk's end"),
    ],
)
def test_overlapping_unsorted_or_absurd_runs_are_refused(
    r: int, fmt_: str, value: int, fragment: str
) -> None:
    image = two_run_chunk()
    at = run_entry(image, 0, r) + (8 if fmt_ == "<I" else 0)
    bad = resign(put(image, at, fmt_, value))
    for action in ("verify", "covered"):
        err = error(bad, action)
        assert fragment in err.message
        assert (err.chunk, err.offset) == (0, run_entry(image, 0, r))


def test_unknown_run_flags_are_refused() -> None:
    image = two_run_chunk()
    err = error(resign(put(image, run_entry(image, 0, 1) + 12, "<I", 2)), "verify")
    assert "unknown flags" in err.message


def test_a_payload_declaring_another_size_is_refused_before_decompressing() -> None:
    image = write_image([(0, page(0) * 4)], chunk_size=4 * PS)[0]
    lay = layout(image)
    at = lay.payload_at(image, 0)
    # Re-encode the payload as a zstd frame of 1 MiB of zeros: a bomb, checksummed.
    bomb = zstandard.ZstdCompressor().compress(bytes(1 << 20))
    bad = bytearray(image[:at]) + bomb
    bad = put(bad, lay.entries[0].offset + 56, "<Q", len(bomb))
    end = len(bad)
    bad += image[lay.index_offset :]
    bad = put(bad, lay.entry_at(0) - lay.index_offset + end + 8, "<Q", end - lay.data_offset)
    bad = put(bad, field("index_offset"), "<Q", end)
    bad = put(bad, field("image_length"), "<Q", len(bad))
    err = error(resign(bad, payloads=True), "verify")
    assert "declares 1048576 bytes, expected 16384" in err.message and err.chunk == 0


def test_an_unexpected_note_is_refused(image: bytes) -> None:
    bad = bytearray(image)
    at = fmt.NOTES_OFFSET + fmt.FORMAT_NOTE_SIZE + 8  # the IMAGE note's type
    bad[at : at + 4] = struct.pack("<I", 0x4B4800FF)
    err = error(resign(bad))
    assert "unexpected note KEXECHIB/0x4b4800ff" in err.message
    assert err.offset == fmt.NOTES_OFFSET + fmt.FORMAT_NOTE_SIZE


def test_identity_note_must_be_complete(image: bytes) -> None:
    meta = make_meta()
    good, _ = write_image([(0, page(0))], meta)
    at = good.index(b"mode=poweroff")
    bad = bytearray(good)
    bad[at : at + 4] = b"MODE"
    err = error(resign(bad))
    assert "bad line 'MODE=poweroff'" in err.message


def test_checksums_are_sha256_of_the_stored_bytes(image: bytes) -> None:
    lay = layout(image)
    e = lay.entries[0]
    payload = lay.payload_at(image, 0)
    assert (
        image[e.offset + 64 : e.offset + 96]
        == hashlib.sha256(image[payload : e.offset + e.length]).digest()
    )
    assert open_image(image).summary.digest == hashlib.sha256(image[lay.index_offset :]).hexdigest()


@pytest.mark.parametrize(
    "store_size, expected, fragment",
    [
        (True, 50, "declares 100 bytes, expected 50"),
        (False, 100, "declares 0 bytes, expected 100"),  # no content size in the frame
    ],
)
def test_lz4_frames_must_declare_exactly_the_chunk_size(
    store_size: bool, expected: int, fragment: str
) -> None:
    frame = lz4.frame.compress(bytes(100), store_size=store_size)
    with pytest.raises(codec.CodecError, match=fragment):
        codec.decompress(fmt.Codec.LZ4, frame, expected)


def test_garbage_that_is_no_frame_is_refused() -> None:
    for ident in (fmt.Codec.ZSTD, fmt.Codec.LZ4):
        with pytest.raises(codec.CodecError):
            codec.decompress(ident, b"\x00garbage" * 10, 4096)
