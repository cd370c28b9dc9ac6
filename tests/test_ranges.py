"""Physical range arithmetic (kexechibd/ranges.py)."""

from __future__ import annotations

from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.ranges import merge, subtract

RAM, RESERVED = MemoryKind.RAM, MemoryKind.RESERVED


def test_merge_joins_touching_and_overlapping_ranges_of_one_kind() -> None:
    ranges = [MemoryRange(0x3000, 0x5000), MemoryRange(0, 0x1000), MemoryRange(0x1000, 0x3800)]
    assert merge(ranges) == [MemoryRange(0, 0x5000)]


def test_merge_keeps_ranges_of_different_kinds_apart() -> None:
    ranges = [MemoryRange(0, 0x1000), MemoryRange(0x1000, 0x2000, RESERVED)]
    assert merge(ranges) == ranges


def test_subtract_cuts_holes_and_keeps_the_kind() -> None:
    ranges = [MemoryRange(0, 0x10000, RESERVED), MemoryRange(0x20000, 0x30000)]
    holes = [(0x4000, 0x5000), (0x1F000, 0x21000), (0x30000, 0x40000)]
    assert subtract(ranges, holes) == [
        MemoryRange(0, 0x4000, RESERVED),
        MemoryRange(0x5000, 0x10000, RESERVED),
        MemoryRange(0x21000, 0x30000),
    ]


def test_subtracting_a_covering_hole_leaves_nothing() -> None:
    assert subtract([MemoryRange(0x1000, 0x2000)], [(0, 0x3000)]) == []
