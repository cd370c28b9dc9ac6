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

The guest side is this module run as a program:
`python -m tests.lab.test_staged_final_memory guest`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import Segment, Stage, page_align_down, page_align_up
from kexechibd.kernel.api import MemoryKind
from kexechibd.lab import GuestResult
from tests.lab.staged_support import (
    call,
    errno_name,
    largest_ram_range,
    markers,
    mem_free_kib,
    memory_back,
    oom_kills,
    run_guest_program,
    say,
)
from tests.sizes import MIB

pytestmark = pytest.mark.lab

SPARE = 0.08  # of free memory, left out of the destinations


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


# ============================================================== guest side


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
    _stage_and_finish("final", SPARE)
    _stage_and_finish("no-spare", 0.0)
    return 0


def main(argv: Sequence[str]) -> int:  # pragma: no cover - runs inside lab guests
    if argv == ["guest"]:
        return _guest()
    raise SystemExit(f"unknown guest step {argv}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
