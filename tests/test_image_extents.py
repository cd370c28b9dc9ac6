"""The pure part of image files written by block address: what FIEMAP
returns, decoded from crafted ioctl buffers; which extents are refused; and
how file offsets map to device offsets."""

from __future__ import annotations

import pytest

from kexechibd.image import ImageError
from kexechibd.image import extents as ex
from kexechibd.image.extents import Extent, FileExtents, RawExtent
from kexechibd.kernel import abi
from tests.sizes import MIB

K = 4096


def fiemap_reply(extents: list[tuple[int, int, int, int]], room: int | None = None) -> bytes:
    """A buffer as the kernel leaves it: header, then the mapped extents."""
    room = len(extents) if room is None else room
    head = abi.FIEMAP.pack(0, abi.FIEMAP_MAX_OFFSET, abi.FIEMAP_FLAG_SYNC, len(extents), room, 0)
    body = b"".join(
        abi.FIEMAP_EXTENT.pack(lo, ph, n, bytes(16), fl, bytes(12)) for lo, ph, n, fl in extents
    )
    return head + body + bytes(abi.FIEMAP_EXTENT.size * (room - len(extents)))


def test_a_fiemap_reply_decodes_to_its_extents() -> None:
    reply = fiemap_reply([(0, 40 * K, 8 * K, 0), (8 * K, 100 * K, 4 * K, abi.EXTENT_LAST)], room=4)
    assert ex.decode_fiemap(reply) == [
        RawExtent(0, 40 * K, 8 * K, 0),
        RawExtent(8 * K, 100 * K, 4 * K, abi.EXTENT_LAST),
    ]


def test_the_request_asks_for_a_sync_and_has_room_for_the_extents() -> None:
    buf = ex.fiemap_request(0, MIB, 3)
    assert len(buf) == abi.FIEMAP.size + 3 * abi.FIEMAP_EXTENT.size
    assert abi.FIEMAP.unpack_from(buf) == (0, MIB, abi.FIEMAP_FLAG_SYNC, 0, 3, 0)


def test_a_reply_claiming_more_extents_than_its_room_is_refused() -> None:
    reply = bytearray(fiemap_reply([(0, 0, K, 0)]))
    abi.FIEMAP.pack_into(reply, 0, 0, 0, 0, 5, 1, 0)
    with pytest.raises(ImageError, match="5 extents in room for 1"):
        ex.decode_fiemap(reply)


def test_physically_adjacent_extents_are_merged() -> None:
    raw = [RawExtent(0, 40 * K, 8 * K, 0), RawExtent(8 * K, 48 * K, 8 * K, abi.EXTENT_LAST)]
    assert ex.check_extents(raw, 16 * K, "f") == (Extent(0, 40 * K, 16 * K),)


def test_extents_beyond_the_end_of_the_file_are_cut_off() -> None:
    raw = [RawExtent(0, 40 * K, 8 * K, 0), RawExtent(8 * K, 80 * K, 8 * K, abi.EXTENT_LAST)]
    assert ex.check_extents(raw, 4 * K, "f") == (Extent(0, 40 * K, 4 * K),)


@pytest.mark.parametrize(
    ("flag", "name"),
    [
        (0x2, "UNKNOWN"),
        (0x4, "DELALLOC"),
        (0x8, "ENCODED"),
        (0x100, "NOT_ALIGNED"),
        (0x200, "DATA_INLINE"),
        (0x400, "DATA_TAIL"),
        (0x800, "UNWRITTEN"),
        (0x2000, "SHARED"),
        (0x10000, "unknown flags 0x10000"),
    ],
)
def test_an_extent_with_a_flag_other_than_last_or_merged_is_refused(flag: int, name: str) -> None:
    raw = [RawExtent(0, 40 * K, 8 * K, abi.EXTENT_LAST | flag)]
    with pytest.raises(ImageError, match=f"offset 0x0 is {name}"):
        ex.check_extents(raw, 8 * K, "f")


def test_a_hole_between_extents_is_refused() -> None:
    raw = [RawExtent(0, 40 * K, 4 * K, 0), RawExtent(8 * K, 80 * K, 4 * K, abi.EXTENT_LAST)]
    with pytest.raises(ImageError, match="has a hole at file offset 0x4000"):
        ex.check_extents(raw, 12 * K, "f")


def test_a_hole_at_the_end_is_refused() -> None:
    raw = [RawExtent(0, 40 * K, 4 * K, abi.EXTENT_LAST)]
    with pytest.raises(ImageError, match="hole at file offset 0x4000 \\(to its end at 0x8000\\)"):
        ex.check_extents(raw, 8 * K, "f")


def test_an_extent_not_aligned_to_4096_bytes_on_the_device_is_refused() -> None:
    raw = [RawExtent(0, 10241 * 1024, 8 * K, abi.EXTENT_LAST)]
    with pytest.raises(ImageError, match="not aligned to 4096 bytes on the device"):
        ex.check_extents(raw, 8 * K, "f")


def test_a_file_in_too_many_pieces_is_refused() -> None:
    n = ex.MAX_EXTENTS + 1
    raw = [RawExtent(k * K, 2 * k * K, K, 0) for k in range(n)]
    with pytest.raises(ImageError, match=f"in {n} pieces"):
        ex.check_extents(raw, n * K, "f")


def mapped() -> FileExtents:
    return FileExtents(
        7, 0, "loop0", 64 * MIB, 12 * K, (Extent(0, 40 * K, 8 * K), Extent(8 * K, 100 * K, 4 * K))
    )


def test_a_transfer_is_split_where_an_extent_ends() -> None:
    assert list(mapped().spans(4 * K, 8 * K)) == [(44 * K, 4 * K), (100 * K, 4 * K)]


def test_a_transfer_inside_one_extent_is_one_piece() -> None:
    assert list(mapped().spans(8 * K + 512, 1024)) == [(100 * K + 512, 1024)]


def test_a_transfer_stops_at_the_end_of_the_file() -> None:
    assert list(mapped().spans(8 * K, 1 * MIB)) == [(100 * K, 4 * K)]


def test_a_map_reaching_past_its_device_is_refused() -> None:
    with pytest.raises(ImageError, match="bad extent map for loop0"):
        FileExtents(7, 0, "loop0", 100 * K, 8 * K, (Extent(0, 96 * K, 8 * K),))


def test_a_map_that_does_not_cover_the_file_is_refused() -> None:
    with pytest.raises(ImageError, match="cover 32768 of 49152 bytes"):
        FileExtents(7, 0, "loop0", MIB, 12 * K, (Extent(0, 0, 8 * K),))


def test_a_map_survives_its_trip_to_b() -> None:
    assert FileExtents.from_dict(mapped().to_dict()) == mapped()


def test_a_map_with_a_field_of_the_wrong_type_is_refused() -> None:
    data = mapped().to_dict()
    data["extents"] = [[0, "40960", 8192]]
    with pytest.raises(ImageError, match="bad extent map: a field has the wrong type"):
        FileExtents.from_dict(data)
