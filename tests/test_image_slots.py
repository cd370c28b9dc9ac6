"""The two slots of an image device and the record that publishes the image
in one (kexechibd/image/slots.py): pure layout and codec, no device."""

from __future__ import annotations

import pytest

from kexechibd.image import ImageError
from kexechibd.image.slots import (
    RECORD,
    RECORD_MAGIC,
    RECORD_SIZE,
    SlotLayout,
    SlotRecord,
    decode_record,
    newest,
    prepared_marker,
    size_for,
)
from tests.sizes import MIB

K = 4096


@pytest.mark.parametrize(
    ("device_size", "slot_size"),
    [
        (2 * MIB, MIB),  # the smallest device with two slots
        (32 * MIB, 16 * MIB),
        (33 * MIB, 16 * MIB),  # an odd MiB is left unused at the end
        (32 * MIB + 4095, 16 * MIB),  # so is a partial one
        (3 * MIB - 1, MIB),
    ],
)
def test_each_slot_is_half_the_device_rounded_down_to_whole_mib(
    device_size: int, slot_size: int
) -> None:
    layout = SlotLayout.for_device(device_size)
    assert layout.slot_size == slot_size
    assert (layout.offset(0), layout.offset(1)) == (0, slot_size)
    assert layout.capacity == slot_size - RECORD_SIZE
    assert layout.record_offset(1) == 2 * slot_size - RECORD_SIZE


@pytest.mark.parametrize("device_size", [0, 4096, MIB, 2 * MIB - 1])
def test_a_device_too_small_for_two_one_mib_slots_is_refused(device_size: int) -> None:
    with pytest.raises(ImageError, match="too small for two image slots"):
        SlotLayout.for_device(device_size)


LAYOUT = SlotLayout.for_device(64 * MIB)
GOOD = SlotRecord(1, 5, LAYOUT.offset(1), LAYOUT.slot_size, 4096, bytes(range(32)))


def torn(block: bytes) -> bytes:
    damaged = bytearray(block)
    damaged[RECORD.size] ^= 1  # the checksum of the record
    return bytes(damaged)


def for_slot_1(sequence: int, image_length: int) -> bytes:
    return SlotRecord(
        1, sequence, LAYOUT.offset(1), LAYOUT.slot_size, image_length, bytes(32)
    ).encode()


@pytest.mark.parametrize(
    ("block", "slot", "layout"),
    [
        pytest.param(bytes(RECORD_SIZE), 1, LAYOUT, id="never written"),
        pytest.param(torn(GOOD.encode()), 1, LAYOUT, id="torn"),
        pytest.param(GOOD.encode(), 0, LAYOUT, id="for the other slot"),
        pytest.param(GOOD.encode(), 1, SlotLayout.for_device(80 * MIB), id="for another geometry"),
        pytest.param(prepared_marker(LAYOUT, 1), 1, LAYOUT, id="a prepared file's marker"),
        pytest.param(for_slot_1(5, 0), 1, LAYOUT, id="of an empty image"),
        pytest.param(
            for_slot_1(5, LAYOUT.capacity + 1), 1, LAYOUT, id="of an image larger than its slot"
        ),
    ],
)
def test_a_record_that_publishes_no_image_decodes_to_none(
    block: bytes, slot: int, layout: SlotLayout
) -> None:
    assert decode_record(block, slot, layout) is None


def test_a_record_decodes_to_what_was_encoded() -> None:
    block = GOOD.encode()
    assert len(block) == RECORD_SIZE and block.startswith(RECORD_MAGIC)
    assert decode_record(block, 1, LAYOUT) == GOOD


def test_a_record_of_an_unknown_version_is_an_error() -> None:
    block = bytearray(SlotRecord(0, 1, 0, LAYOUT.slot_size, 4096, bytes(32)).encode())
    block[8] = 2
    with pytest.raises(ImageError, match="layout version 2") as info:
        decode_record(bytes(block), 0, LAYOUT)
    assert info.value.offset == LAYOUT.record_offset(0) + 8


def test_a_prepared_marker_carries_the_record_magic() -> None:
    """What tells a prepared image file from any other file."""
    for slot in (0, 1):
        assert prepared_marker(LAYOUT, slot).startswith(RECORD_MAGIC)


def record(slot: int, sequence: int) -> SlotRecord:
    return SlotRecord(slot, sequence, LAYOUT.offset(slot), LAYOUT.slot_size, 4096, bytes(32))


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        ((None, None), None),
        ((record(0, 1), None), record(0, 1)),
        ((None, record(1, 7)), record(1, 7)),
        ((record(0, 3), record(1, 2)), record(0, 3)),
        ((record(0, 3), record(1, 4)), record(1, 4)),
    ],
)
def test_the_highest_sequence_number_is_the_newest(
    records: tuple[SlotRecord | None, SlotRecord | None], expected: SlotRecord | None
) -> None:
    assert newest(records) == expected


@pytest.mark.parametrize("n", [0, 1, MIB - K, MIB - K + 1, 5 * MIB + 17])
def test_a_device_of_size_for_n_bytes_has_slots_that_hold_n_bytes(n: int) -> None:
    size = size_for(n)
    assert size % (2 * MIB) == 0
    assert SlotLayout.for_device(size).capacity >= n
    smaller = size - 2 * MIB
    assert smaller < 2 * MIB or SlotLayout.for_device(smaller).capacity < n
