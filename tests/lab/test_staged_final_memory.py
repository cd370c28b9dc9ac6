"""Kernel C's case on the real patched kernel (issue 13 finding 3, kernel/patches
"take a staged image's control and entry pages outside its destinations"):
a 1 GiB guest stages an image whose zero-fill destinations cover all of RAM
but a spare window of 8% of its free memory at the top of its largest RAM
range, so at least 92% of the free pages are destinations, plus 1 MiB of
data, and finishes it.

`KEXEC_STAGE_FINAL` must find its control and entry-list pages (about one
per 511 zero-fill pages) among the few free pages that are no destination:
it loads, and the kernel logs no OOM kill. Then the same without the spare
window: no free page is left that is no destination, and FINAL is ENOMEM,
with nothing held and no OOM kill (kernels that set destination pages aside
until an allocation succeeds hold all of memory there first). Nothing is
jumped to; the image is unloaded at the end.

Before that, the same guest stages 64 MiB of data into free memory in the
middle of its largest RAM range (kernel/patches "take a run of free pages at once"):
the pages are taken in place, a pageblock at a time, and the pageblocks taken
whole are claimed as unmovable instead of leaving pinned pages in movable ones
(issue 13 finding 5).

The guest side is this module run as a program:
`python -m tests.lab.test_staged_final_memory guest`.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import (
    PAGE_SIZE,
    Segment,
    Stage,
    decode_page_map,
    page_align_down,
    page_align_up,
)
from kexechibd.kernel.api import MemoryKind
from kexechibd.lab import GuestResult
from tests.lab.staged_support import (
    call,
    errno_name,
    guest_main,
    largest_ram_range,
    markers,
    mem_free_kib,
    memory_back,
    oom_kills,
    pgmap,
    run_guest_program,
    say,
)
from tests.sizes import MIB

pytestmark = pytest.mark.lab

SPARE = 0.08  # of free memory, left out of the destinations
IN_PLACE = 64 * MIB


@pytest.fixture(scope="module")
def guest(lab: Path) -> GuestResult:
    return run_guest_program(
        lab, "tests.lab.test_staged_final_memory", "final", memory_mib=1024, timeout=600
    )


def test_final_loads_when_nearly_all_free_pages_are_destinations(guest: GuestResult) -> None:
    got = markers(guest, "final")
    assert int(got["covered_percent"]) >= 90, got
    assert (got["start"], got["mid"], got["final"]) == ("0", "0", "0"), got
    assert got["loaded"] == "1", got


def test_final_kills_no_process(guest: GuestResult) -> None:
    assert markers(guest, "final")["oom_kills"] == "0"


def test_final_without_a_free_page_outside_the_destinations_is_enomem(
    guest: GuestResult,
) -> None:
    got = markers(guest, "no-spare")
    assert (got["start"], got["mid"], got["final"]) == ("0", "0", "ENOMEM"), got
    assert got["loaded"] == "0", got


def test_final_without_a_free_page_outside_kills_no_process_and_holds_nothing(
    guest: GuestResult,
) -> None:
    got = markers(guest, "no-spare")
    assert got["oom_kills"] == "0", got
    assert memory_back(got), got


def test_data_staged_into_free_memory_is_loaded_in_place(guest: GuestResult) -> None:
    got = markers(guest, "in-place")
    assert got["err"] == "0", got
    assert int(got["in_place_pages"]) >= 0.9 * IN_PLACE // PAGE_SIZE, got


def test_pageblocks_taken_whole_in_place_become_unmovable(guest: GuestResult) -> None:
    got = markers(guest, "in-place")
    blocks = IN_PLACE // (int(got["block_pages"]) * PAGE_SIZE)
    claimed = int(got["unmovable_after"]) - int(got["unmovable_before"])
    assert claimed >= 0.9 * blocks, got


# ============================================================== guest side


def _pages_per_block() -> int:
    """Pages in a pageblock: 512 with hugetlbfs, else MAX_PAGE_ORDER's 1024 (the
    lab kernel's case)."""
    for line in Path("/proc/pagetypeinfo").read_text().splitlines():
        if line.startswith("Pages per block:"):
            return int(line.split()[-1])
    raise RuntimeError("no 'Pages per block' in /proc/pagetypeinfo")


def _pageblocks(kind: str) -> int:
    """How many pageblocks of ``kind`` (Unmovable, Movable, ...) all zones have
    (/proc/pagetypeinfo's "Number of blocks type" table)."""
    lines = Path("/proc/pagetypeinfo").read_text().splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("Number of blocks type"))
    column = lines[head].split()[4:].index(kind)
    total = 0
    for line in lines[head + 1 :]:
        if not line.startswith("Node"):
            break
        total += int(line.split()[4 + column])
    return total


def _in_place() -> None:
    # The middle of the largest range: the allocator hands out low pages
    # first and early boot allocations sit at the top, so it is free here.
    low, high = largest_ram_range()
    block = _pages_per_block() * PAGE_SIZE
    dest = (low + (high - low) // 2) // block * block
    before = _pageblocks("Unmovable")
    started = time.monotonic()
    err = call(0, [Segment(b"\x5a" * PAGE_SIZE, dest, IN_PLACE)], abi.load_flags(Stage.START))
    ms = round((time.monotonic() - started) * 1000)
    after = _pageblocks("Unmovable")
    first, end = dest // PAGE_SIZE, (dest + IN_PLACE) // PAGE_SIZE
    in_place = sum(
        max(0, min(r.dest_pfn + r.npages, end) - max(r.dest_pfn, first))
        for r in decode_page_map(pgmap())
        if r.dest_pfn == r.src_pfn
    )
    call(0, [], abi.load_flags(Stage.FULL))
    say(
        "in-place",
        err=errno_name(err),
        ms=ms,
        in_place_pages=in_place,
        block_pages=block // PAGE_SIZE,
        unmovable_before=before,
        unmovable_after=after,
    )


def _zero_fill_all_but(spare: tuple[int, int]) -> list[Segment]:
    """Zero-fill segments over every page of System RAM outside ``spare``."""
    from kexechibd.kernel.linux import LinuxKernel

    segments = []
    for r in LinuxKernel().memory_map():
        if r.kind is not MemoryKind.RAM:
            continue
        start, end = page_align_up(r.start), page_align_down(r.end)
        for lo, hi in ((start, min(end, spare[0])), (max(start, spare[1]), end)):
            if hi > lo:
                segments.append(Segment.zero(lo, hi - lo))
    return segments


def _stage_and_finish(kind: str, spare_fraction: float) -> None:
    free_kib = mem_free_kib()
    spare_bytes = page_align_down(int(free_kib * 1024 * spare_fraction))
    low, high = largest_ram_range()
    zero = _zero_fill_all_but((high - spare_bytes, high))
    kills = oom_kills()
    start = call(0, zero, abi.load_flags(Stage.START))
    data_at = low + 64 * MIB
    mid = call(0, [Segment(b"\x5a" * MIB, data_at, MIB)], abi.load_flags(Stage.MID))
    final = call(data_at, [], abi.load_flags(Stage.FINAL))
    from kexechibd.kernel.linux import LinuxKernel

    loaded = LinuxKernel().kexec_loaded()
    call(0, [], abi.load_flags(Stage.FULL))
    say(
        kind,
        start=errno_name(start),
        mid=errno_name(mid),
        final=errno_name(final),
        loaded=int(loaded),
        covered_percent=100 - round(100 * spare_bytes / (free_kib * 1024)),
        zero_fill_mib=sum(s.memsz for s in zero) // MIB,
        oom_kills=oom_kills() - kills,
        free_before_kib=free_kib,
        free_after_kib=mem_free_kib(),
    )


def _guest() -> int:
    _in_place()
    _stage_and_finish("final", SPARE)
    _stage_and_finish("no-spare", 0.0)
    return 0


if __name__ == "__main__":  # pragma: no cover - runs inside lab guests
    guest_main(_guest)
