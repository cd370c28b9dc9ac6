"""Stage planning for resume (pure): the image's runs become segments, and
segments become ``kexec_load`` calls of at most ``KEXEC_STAGE_SEGMENT_MAX``.

Data runs become segments that point into the chunk's decompressed bytes (no
copy); zero runs become zero-fill segments (``bufsz == 0``), merged across
chunk boundaries.  A call never spans two chunks' data, so the caller can
release each chunk as soon as its calls returned: memory stays bounded by the
chunks in flight.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from kexechibd.kernel.abi import KEXEC_STAGE_SEGMENT_MAX, PAGE_SHIFT, Segment


class RunLike(Protocol):
    """A run of pages: the image's ``Run`` is one (taken as it is, with no
    per-run conversion: fragmented memory has a run per page)."""

    @property
    def pfn(self) -> int: ...

    @property
    def npages(self) -> int: ...

    @property
    def zero(self) -> bool: ...


@dataclass(frozen=True)
class PlannedRun:
    pfn: int
    npages: int
    zero: bool


def plan_calls(
    chunks: Iterable[tuple[Sequence[RunLike], bytes | memoryview]],
    *,
    max_segments: int = KEXEC_STAGE_SEGMENT_MAX,
) -> Iterator[list[Segment]]:
    """``chunks`` yields each chunk's runs (address order) and its data (the
    data runs' pages, concatenated).  Yields the segment list of each call."""
    calls: list[Segment] = []
    zero_start = zero_end = -1

    def take_zero() -> list[Segment]:
        nonlocal zero_start, zero_end
        if zero_start < 0:
            return []
        seg = Segment.zero(zero_start << PAGE_SHIFT, (zero_end - zero_start) << PAGE_SHIFT)
        zero_start = zero_end = -1
        return [seg]

    for runs, data in chunks:
        view = memoryview(data).cast("B") if len(data) else memoryview(b"")
        offset = 0
        for run in runs:
            if run.zero:
                if zero_start >= 0 and run.pfn == zero_end:
                    zero_end += run.npages
                    continue
                ready = take_zero()
                zero_start, zero_end = run.pfn, run.pfn + run.npages
            else:
                size = run.npages << PAGE_SHIFT
                if offset + size > len(view):
                    raise ValueError("chunk data is shorter than its data runs")
                ready = [
                    *take_zero(),
                    Segment(view[offset : offset + size], run.pfn << PAGE_SHIFT, size),
                ]
                offset += size
            for seg in ready:
                calls.append(seg)
                if len(calls) >= max_segments:
                    yield calls
                    calls = []
        if offset != len(view):
            raise ValueError("chunk data is longer than its data runs")
        # Data segments must not outlive their chunk; a pending zero run may.
        if calls:
            yield calls
            calls = []
    calls.extend(take_zero())
    if calls:
        yield calls
