"""Arithmetic on physical memory ranges (pure): the union and difference of
``[start, end)`` spans of the kernel's memory map, as ``memmap=`` options, the
save window and the model's firmware map need them."""

from __future__ import annotations

from collections.abc import Sequence

from kexechibd.kernel.api import MemoryRange


def merge(ranges: Sequence[MemoryRange]) -> list[MemoryRange]:
    out: list[MemoryRange] = []
    for r in sorted(ranges):
        if out and r.start <= out[-1].end and r.kind is out[-1].kind:
            out[-1] = MemoryRange(out[-1].start, max(out[-1].end, r.end), r.kind)
        else:
            out.append(r)
    return out


def subtract(ranges: Sequence[MemoryRange], holes: Sequence[tuple[int, int]]) -> list[MemoryRange]:
    """``ranges`` minus the ``[start, end)`` ``holes``."""
    out = list(ranges)
    for hole_start, hole_end in holes:
        pieces = []
        for r in out:
            if r.end <= hole_start or r.start >= hole_end:
                pieces.append(r)
                continue
            if r.start < hole_start:
                pieces.append(MemoryRange(r.start, hole_start, r.kind))
            if r.end > hole_end:
                pieces.append(MemoryRange(hole_end, r.end, r.kind))
        out = pieces
    return out
