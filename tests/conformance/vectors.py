"""Conformance vectors for the kexec interface (DESIGN §2.1 and §2.2).

Each vector is a sequence of ``kexec_load`` calls against a ``Kernel`` with
the expected errno of every call and what ``/proc/kexec_pgmap`` and
``kexec_loaded`` must say afterwards.  Expectations are allocator independent
(which physical pages become sources differs between kernels): they name the
destination pages a map lists, the map's format and the placement invariant,
never source addresses.  Vectors are written from DESIGN, not from any
implementation, and use nothing but the ``Kernel`` protocol.  The same vectors
run against the machine model here and against a real (patched or mainline)
kernel inside a lab guest — nothing here jumps, and every vector that names
destinations beyond the 64 MiB window of RAM that ``choose_base`` picks is
refused by the kernel before it allocates anything (or, staged without
preserve-context, allocates no source pages at all).

Run in a guest: ``python -m tests.conformance.vectors`` prints one JSON line
per vector that applies to the running kernel (its features come from the
backend's capability probe).
"""

from __future__ import annotations

import errno
import itertools
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage
from kexechibd.kernel.api import Kernel, MemoryKind

P = PAGE_SIZE
OK = 0


@dataclass(frozen=True)
class Target:
    """Where a vector runs: ``base`` of a free RAM window, ``ram`` the bytes
    of RAM in the kernel's memory map (for the ½-RAM rule), ``largest`` its
    largest RAM range ``(start, end)`` (for the staged bounds)."""

    base: int
    ram: int
    largest: tuple[int, int] = (0, 0)

    def pages_of(self, fraction: float) -> int:
        """Whole pages making up ``fraction`` of RAM."""
        return int(self.ram * fraction) // P


Build = Callable[[Target], Sequence[Segment]]  # target → segments
PageSet = Callable[[Target], set[int]]  # target → destination page frames


@dataclass(frozen=True)
class Call:
    segments: Build
    flags: int
    expect: int = OK
    entry: int = 0


@dataclass(frozen=True)
class Vector:
    name: str
    rule: str
    calls: tuple[Call, ...]
    loaded: bool | None = None  # kexec_loaded afterwards (None: not checked)
    map_pages: PageSet | None = None  # dest pfns the map lists afterwards
    map_unchanged_by_last: bool = False  # the last call allocated nothing
    # "jump", "nojump", "staged", "mainline" (see features_of)
    requires: frozenset[str] = field(default_factory=frozenset)


def seg(
    offset_pages: int,
    npages: int,
    *,
    data: bytes | None = None,
    fill: int = 0x5A,
    bufsz: int | None = None,
) -> Build:
    """A segment ``offset_pages`` pages above the base."""

    def build(t: Target) -> list[Segment]:
        memsz = npages * P
        size = memsz if bufsz is None else bufsz
        buf = data if data is not None else bytes([fill]) * size
        return [Segment(buf, t.base + offset_pages * P, memsz)]

    return build


def raw(make: Callable[[Target], list[Segment]]) -> Build:
    return make


def at(mem: int, memsz: int, bufsz: int = 0) -> Build:
    """A segment at an absolute address (for the address checks)."""
    return lambda t: [Segment(b"\x5a" * bufsz, mem, memsz)]


def unaligned(offset_pages: int) -> Build:
    """A one-page segment 8 bytes past a page boundary."""
    return lambda t: [Segment(b"", t.base + offset_pages * P + 8, P)]


def empty_at(offset_pages: int) -> Build:
    """A segment with ``memsz == 0`` ``offset_pages`` pages above the base."""
    return lambda t: [Segment(b"", t.base + offset_pages * P, 0)]


def ram_share(first: float, fraction: float) -> Build:
    """A bufsz 0 segment from ``first`` of RAM covering ``fraction`` of RAM
    (physical addresses from 0; the kernel never checks that they are RAM)."""
    return lambda t: [Segment(b"", t.pages_of(first) * P, t.pages_of(fraction) * P)]


def ram_span(fraction: float, bufsz: int = 0) -> Build:
    """A segment from the start of the largest RAM range covering ``fraction``
    of RAM (every page System RAM), with ``bufsz`` bytes of data."""
    return lambda t: [Segment(b"\x5a" * bufsz, t.largest[0], t.pages_of(fraction) * P)]


def whole_largest_range(bufsz: int) -> Build:
    """A segment over all of the largest RAM range: more pages than the RAM
    the allocator manages (that excludes the kernel and its page tables)."""
    return lambda t: [Segment(b"\x5a" * bufsz, t.largest[0], t.largest[1] - t.largest[0])]


def many(*builds: Build) -> Build:
    def build(t: Target) -> list[Segment]:
        return [s for b in builds for s in b(t)]

    return build


def none() -> Build:
    return lambda t: []


def pages(offset: int, n: int) -> PageSet:
    return lambda t: {(t.base // P) + offset + i for i in range(n)}


def union(*fns: PageSet) -> PageSet:
    return lambda t: set().union(*(f(t) for f in fns))


def no_pages() -> PageSet:
    return lambda t: set()


FULL = abi.load_flags(Stage.FULL)
FULL_KEEP = abi.load_flags(Stage.FULL, preserve_context=True)
START = abi.load_flags(Stage.START)
MID = abi.load_flags(Stage.MID)
FINAL = abi.load_flags(Stage.FINAL)
START_KEEP = abi.load_flags(Stage.START, preserve_context=True)
MID_KEEP = abi.load_flags(Stage.MID, preserve_context=True)
FINAL_KEEP = abi.load_flags(Stage.FINAL, preserve_context=True)
FOREIGN_ARCH = 3 << 16  # KEXEC_ARCH_386
UNKNOWN_FLAG = 0x80
# Entry points beyond every destination: the kernel's text mapping, and the
# direct map (both are what a confused caller might pass for a physical address).
KERNEL_HALF = 0xFFFFFFFF81000000
ABOVE_LIMIT = 0xFFFF888008000000
S = frozenset({"staged"})
J = frozenset({"jump"})
SJ = frozenset({"staged", "jump"})
NOJUMP = frozenset({"nojump"})
WRAPS = (1 << 64) - P  # mem + memsz wraps around the address space

VECTORS: tuple[Vector, ...] = (
    # ---------------------------------------------------------- mainline (§2.1)
    Vector("full_load", "§2.1 a one-shot load succeeds", (Call(seg(0, 2), FULL),), loaded=True),
    Vector(
        "full_unload",
        "§2.1 nr_segments == 0 unloads",
        (Call(seg(0, 1), FULL), Call(none(), FULL)),
        loaded=False,
    ),
    Vector(
        "full_17_segments",
        "§2.1 at most 16 segments per KS_full call",
        (Call(many(*(seg(2 * i, 1) for i in range(17))), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "full_16_segments",
        "§2.1 16 segments are accepted",
        (Call(many(*(seg(2 * i, 1) for i in range(16))), FULL),),
        loaded=True,
    ),
    Vector(
        "unaligned_mem",
        "§2.1 mem must be page aligned",
        (Call(raw(lambda t: [Segment(b"x", t.base + 8, P)]), FULL, errno.EADDRNOTAVAIL),),
    ),
    Vector(
        "unaligned_memsz",
        "§2.1 memsz must be a multiple of the page size",
        (Call(raw(lambda t: [Segment(b"x", t.base, P + 8)]), FULL, errno.EADDRNOTAVAIL),),
    ),
    Vector(
        "beyond_limit",
        "§2.1 destinations beyond the addressable limit",
        (Call(at(1 << 46, P, 1), FULL, errno.EADDRNOTAVAIL),),
    ),
    Vector(
        "full_overlap",
        "§2.1 overlapping segments are refused in KS_full",
        (Call(many(seg(0, 2), seg(1, 2)), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "bufsz_over_memsz",
        "§2.1 bufsz must not exceed memsz",
        (Call(seg(0, 1, bufsz=P + 1), FULL, errno.EINVAL),),
    ),
    Vector(
        "bad_arch",
        "§2.1 a foreign architecture is refused",
        (Call(seg(0, 1), abi.load_flags(arch=FOREIGN_ARCH), errno.EINVAL),),
    ),
    Vector(
        "unknown_flag",
        "§2.1 flags the kernel does not know are refused",
        (Call(seg(0, 1), FULL | UNKNOWN_FLAG, errno.EINVAL),),
    ),
    Vector(
        "preserve_full",
        "§2.1 preserve-context one-shot load (CONFIG_KEXEC_JUMP)",
        (Call(seg(0, 1), FULL_KEEP),),
        loaded=True,
        requires=J,
    ),
    Vector(
        "stages_refused_by_mainline",
        "§2.2 a kernel without the patch refuses stage flags",
        (Call(seg(0, 1), START, errno.EINVAL),),
        loaded=False,
        requires=frozenset({"mainline"}),
    ),
    # ---------------------------------------------------------- staged (§2.2)
    Vector(
        "start_final",
        "§2.2 KS_start + KS_final load an image",
        (Call(seg(0, 2), START), Call(seg(4, 1), FINAL)),
        loaded=True,
        map_pages=union(pages(0, 2), pages(4, 1)),
        requires=S,
    ),
    Vector(
        "start_mid_final",
        "§2.2 KS_mid adds segments",
        (Call(seg(0, 1), START), Call(seg(2, 1), MID), Call(seg(4, 1), FINAL)),
        loaded=True,
        map_pages=union(pages(0, 1), pages(2, 1), pages(4, 1)),
        requires=S,
    ),
    Vector(
        "staged_map_while_loading",
        "§2.2 the map shows the staged image in progress",
        (Call(seg(0, 3), START),),
        loaded=False,
        map_pages=pages(0, 3),
        requires=S,
    ),
    Vector(
        "mid_without_start",
        "§2.2 KS_mid without a staged image is EINVAL",
        (Call(seg(0, 1), MID, errno.EINVAL),),
        loaded=False,
        requires=S,
    ),
    Vector(
        "final_without_start",
        "§2.2 KS_final without a staged image is EINVAL",
        (Call(seg(0, 1), FINAL, errno.EINVAL),),
        loaded=False,
        requires=S,
    ),
    Vector(
        "preserve_bit_mismatch",
        "§2.2 KS_mid with another preserve-context bit is EINVAL",
        (
            Call(seg(0, 1), START_KEEP),
            Call(seg(2, 1), MID, errno.EINVAL),
            Call(seg(4, 1), FINAL_KEEP, errno.EINVAL),
        ),
        loaded=False,
        requires=SJ,
    ),
    Vector(
        "crash_with_stage",
        "§2.2 KEXEC_ON_CRASH with a stage is EINVAL",
        (Call(seg(0, 1), START | abi.KEXEC_ON_CRASH, errno.EINVAL),),
        requires=S,
    ),
    Vector(
        "staged_1025_segments",
        "§2.2 at most 1024 segments per staged call",
        (Call(many(*(seg(i, 1) for i in range(1025))), START, errno.EINVAL),),
        loaded=False,
        requires=S,
    ),
    Vector(
        "staged_1024_segments",
        "§2.2 1024 segments per staged call are accepted",
        (Call(many(*(seg(i, 1) for i in range(1024))), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 1024),
        requires=S,
    ),
    Vector(
        "total_is_unbounded",
        "§2.2 the total number of segments is not capped",
        (
            Call(many(*(seg(2 * i, 1) for i in range(1000))), START),
            Call(many(*(seg(2 * i + 1, 1) for i in range(1000))), MID),
            Call(many(*(seg(2000 + i, 1) for i in range(500))), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 2500),
        requires=S,
    ),
    Vector(
        "overlap_same_call",
        "§2.2 overlap is allowed inside a staged call",
        (Call(many(seg(0, 2, fill=1), seg(1, 2, fill=2)), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 3),
        requires=S,
    ),
    Vector(
        "overlap_allocates_nothing",
        "§2.2 overlapping existing data pages allocates nothing",
        (Call(seg(0, 4, fill=1), START), Call(seg(1, 2, fill=2), MID)),
        map_pages=pages(0, 4),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "overlap_zero_buffer_stays_data",
        "§2.2 a bufsz 0 overlap keeps a data page listed",
        (Call(seg(0, 2, fill=1), START), Call(seg(0, 2, bufsz=0), MID)),
        map_pages=pages(0, 2),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "zero_fill_not_listed",
        "§2.2 zero-fill pages are not in the map",
        (Call(many(seg(0, 2), seg(4, 8, bufsz=0)), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 2),
        requires=S,
    ),
    Vector(
        "zero_fill_becomes_data",
        "§2.2 data over a zero-fill page makes it a data page",
        (Call(seg(0, 4, bufsz=0), START), Call(seg(1, 1), MID)),
        map_pages=pages(1, 1),
        requires=S,
    ),
    Vector(
        "preserve_zero_buffer_is_backup",
        "§2.2 with preserve-context bufsz 0 gets sources",
        (Call(many(seg(0, 1), seg(2, 3, bufsz=0)), START_KEEP), Call(none(), FINAL_KEEP)),
        loaded=True,
        map_pages=union(pages(0, 1), pages(2, 3)),
        requires=SJ,
    ),
    Vector(
        "partial_buffer_keeps_tail",
        "§2.2 0 < bufsz < memsz: every page gets a source",
        (Call(seg(0, 3, bufsz=P + 10), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 3),
        requires=S,
    ),
    Vector(
        "error_discards_staged",
        "§2.2 an error in a staged call discards the staged image",
        (
            Call(seg(0, 1), START),
            Call(raw(lambda t: [Segment(b"x", t.base + 8, P)]), MID, errno.EADDRNOTAVAIL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "error_keeps_loaded_image",
        "§2.2 the loaded image survives a failed staged load",
        (
            Call(seg(8, 2), FULL),
            Call(seg(0, 1), START),
            Call(seg(0, 1, bufsz=P + 1), MID, errno.EINVAL),
        ),
        loaded=True,
        map_pages=pages(8, 2),
        requires=S,
    ),
    Vector(
        "start_discards_unfinished",
        "§2.2 KS_start discards an unfinished staged image",
        (Call(seg(0, 2), START), Call(seg(8, 1), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(8, 1),
        requires=S,
    ),
    Vector(
        "start_empty_only_discards",
        "§2.2 KS_start with no segments only discards",
        (Call(seg(0, 2), START), Call(none(), START), Call(none(), FINAL, errno.EINVAL)),
        loaded=False,
        requires=S,
    ),
    Vector(
        "full_load_leaves_staged",
        "§2.2 KS_full loads never touch a staged image",
        (Call(seg(0, 1), START), Call(seg(8, 1), FULL), Call(seg(2, 1), FINAL)),
        loaded=True,
        map_pages=union(pages(0, 1), pages(2, 1)),
        requires=S,
    ),
    Vector(
        "full_unload_discards_staged",
        "§2.2 a KS_full unload discards a staged image too (kexec -u)",
        (Call(seg(0, 1), START), Call(none(), FULL), Call(seg(2, 1), FINAL, errno.EINVAL)),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "final_replaces_loaded",
        "§2.2 KS_final atomically replaces the loaded image",
        (Call(seg(8, 2), FULL), Call(seg(0, 1), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "loaded_map_after_final",
        "§2.2 the map shows the loaded image when no stage runs",
        (Call(seg(0, 2), START_KEEP), Call(seg(4, 2), FINAL_KEEP)),
        loaded=True,
        map_pages=union(pages(0, 2), pages(4, 2)),
        requires=SJ,
    ),
    Vector(
        "unload_empties_map",
        "§2.2 with nothing loaded the map is empty",
        (Call(seg(0, 2), START), Call(none(), FINAL), Call(none(), FULL)),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    # ---------------------------------------------------------- mainline (§2.1), continued
    Vector(
        "full_adjacent_segments",
        "§2.1 segments that touch do not overlap",
        (Call(many(seg(0, 1), seg(1, 1)), FULL),),
        loaded=True,
        map_pages=pages(0, 2),
    ),
    Vector(
        "full_overlap_nested",
        "§2.1 a segment inside another overlaps it",
        (Call(many(seg(0, 4), seg(1, 1)), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "full_overlap_any_order",
        "§2.1 overlap is found whatever the segment order",
        (Call(many(seg(4, 2), seg(8, 1), seg(0, 5)), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "full_overlap_empty_segment_inside",
        "§2.1 an empty segment strictly inside another overlaps it",
        (Call(many(seg(0, 2), empty_at(1)), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "full_empty_segment_at_an_edge",
        "§2.1 an empty segment at another's start or end does not overlap it",
        (Call(many(seg(0, 2), empty_at(0), empty_at(2)), FULL),),
        loaded=True,
        map_pages=pages(0, 2),
    ),
    Vector(
        "full_empty_segment_alone",
        "§2.1 one empty segment is an image (the jump-back helper's load)",
        (Call(empty_at(0), FULL),),
        loaded=True,
        map_pages=no_pages(),
    ),
    Vector(
        "full_wraps_address_space",
        "§2.1 mem + memsz beyond the address space",
        (Call(at(WRAPS, 2 * P), FULL, errno.EADDRNOTAVAIL),),
        loaded=False,
    ),
    Vector(
        "full_address_checks_come_first",
        "§2.1 an address error in any segment beats bufsz > memsz and overlap",
        (
            Call(
                many(seg(0, 1, bufsz=P + 1), seg(0, 1), unaligned(2)),
                FULL,
                errno.EADDRNOTAVAIL,
            ),
        ),
        loaded=False,
    ),
    Vector(
        "full_one_segment_over_half_ram",
        "§2.1 a segment of more than half of RAM",
        (Call(ram_share(0, 0.55), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "full_segments_over_half_ram",
        "§2.1 segments of more than half of RAM in total",
        (Call(many(ram_share(0, 0.3), ram_share(0.3, 0.3)), FULL, errno.EINVAL),),
        loaded=False,
    ),
    Vector(
        "arch_default_accepted",
        "§2.1 KEXEC_ARCH_DEFAULT is the native architecture",
        (Call(seg(0, 1), abi.load_flags(arch=abi.KEXEC_ARCH_DEFAULT)),),
        loaded=True,
    ),
    Vector(
        "full_load_replaces_loaded",
        "§2.1 a one-shot load replaces the loaded image",
        (Call(seg(0, 1), FULL), Call(seg(8, 1), FULL)),
        loaded=True,
        map_pages=pages(8, 1),
    ),
    Vector(
        "unload_without_image",
        "§2.1 unloading when nothing is loaded succeeds",
        (Call(none(), FULL), Call(none(), FULL)),
        loaded=False,
    ),
    Vector(
        "failed_full_load_keeps_loaded",
        "§2.1 a refused one-shot load leaves the loaded image alone",
        (Call(seg(8, 2), FULL), Call(many(seg(0, 2), seg(1, 1)), FULL, errno.EINVAL)),
        loaded=True,
        map_pages=pages(8, 2),
    ),
    Vector(
        "preserve_refused_without_kexec_jump",
        "§2.1 preserve-context without CONFIG_KEXEC_JUMP is EINVAL",
        (Call(seg(0, 1), FULL_KEEP, errno.EINVAL),),
        loaded=False,
        requires=NOJUMP,
    ),
    Vector(
        "full_zero_buffer_is_not_zero_fill",
        "§2.2 KS_full keeps mainline semantics: bufsz 0 pages get sources",
        (Call(seg(0, 3, bufsz=0), FULL),),
        loaded=True,
        map_pages=pages(0, 3),
        requires=S,
    ),
    # ---------------------------------------------------------- staged (§2.2), continued
    Vector(
        "start_empty_keeps_loaded",
        "§2.2 KS_start with no segments discards only the staged image",
        (Call(seg(8, 2), FULL), Call(seg(0, 1), START), Call(none(), START)),
        loaded=True,
        map_pages=pages(8, 2),
        requires=S,
    ),
    Vector(
        "start_empty_without_staged",
        "§2.2 KS_start with no segments and nothing staged returns 0",
        (Call(none(), START), Call(none(), START)),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_map_replaces_loaded_map",
        "§2.2 while a stage runs the map is the staged image's, kexec_loaded the old one's",
        (Call(seg(8, 1), FULL), Call(seg(0, 2), START)),
        loaded=True,
        map_pages=pages(0, 2),
        requires=S,
    ),
    Vector(
        "full_map_listed",
        "§2.2 with no stage running the map is the loaded (KS_full) image's",
        (Call(many(seg(0, 2), seg(4, 1)), FULL),),
        loaded=True,
        map_pages=union(pages(0, 2), pages(4, 1)),
        requires=S,
    ),
    Vector(
        "mid_empty_allocates_nothing",
        "§2.2 KS_mid with no segments changes nothing",
        (Call(seg(0, 2), START), Call(none(), MID)),
        loaded=False,
        map_pages=pages(0, 2),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "final_empty_keeps_map",
        "§2.2 KS_final without segments allocates no source page",
        (Call(many(seg(0, 2), seg(4, 1)), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=union(pages(0, 2), pages(4, 1)),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "preserve_placeholder_flow",
        "§2.2 (§1.1) KS_final overlapping a placeholder keeps the map read before it",
        (
            Call(many(seg(0, 2), seg(2, 3, bufsz=0), seg(5, 4, bufsz=0)), START_KEEP),
            Call(seg(2, 3, bufsz=P + 100, fill=7), FINAL_KEEP),
        ),
        loaded=True,
        map_pages=pages(0, 9),
        map_unchanged_by_last=True,
        requires=SJ,
    ),
    Vector(
        "preserve_zero_overlap_stays_data",
        "§2.2 a bufsz 0 overlap in a preserve-context image keeps its pages",
        (Call(seg(0, 2), START_KEEP), Call(seg(0, 2, bufsz=0), MID_KEEP)),
        map_pages=pages(0, 2),
        map_unchanged_by_last=True,
        requires=SJ,
    ),
    Vector(
        "mid_keep_after_plain_start",
        "§2.2 KS_mid with preserve-context after a plain KS_start is EINVAL and discards",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1), MID_KEEP, errno.EINVAL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=SJ,
    ),
    Vector(
        "final_with_other_preserve_bit",
        "§2.2 KS_final with another preserve-context bit is EINVAL and discards",
        (
            Call(seg(0, 1), START_KEEP),
            Call(none(), FINAL, errno.EINVAL),
            Call(none(), FINAL_KEEP, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=SJ,
    ),
    Vector(
        "crash_with_mid_keeps_staged",
        "§2.2 KEXEC_ON_CRASH with KS_mid is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1), MID | abi.KEXEC_ON_CRASH, errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "crash_with_final_keeps_staged",
        "§2.2 KEXEC_ON_CRASH with KS_final is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(none(), FINAL | abi.KEXEC_ON_CRASH, errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "mid_1025_segments_keeps_staged",
        "§2.2 more than 1024 segments in KS_mid is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(many(*(seg(2 + i, 1) for i in range(1025))), MID, errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "final_1025_segments_keeps_staged",
        "§2.2 more than 1024 segments in KS_final is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(many(*(seg(2 + i, 1) for i in range(1025))), FINAL, errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "mid_foreign_arch_keeps_staged",
        "§2.2 a foreign architecture in KS_mid is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1), abi.load_flags(Stage.MID, arch=FOREIGN_ARCH), errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "mid_unknown_flag_keeps_staged",
        "§2.2 an unknown flag in KS_mid is EINVAL and keeps the staged image",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1), MID | UNKNOWN_FLAG, errno.EINVAL),
            Call(none(), FINAL),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "mid_bufsz_over_memsz_discards",
        "§2.2 bufsz > memsz in a staged call is EINVAL and discards",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1, bufsz=P + 1), MID, errno.EINVAL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_beyond_limit",
        "§2.2 the address limit applies to staged calls",
        (Call(at(1 << 46, P), START, errno.EADDRNOTAVAIL), Call(none(), FINAL, errno.EINVAL)),
        loaded=False,
        requires=S,
    ),
    Vector(
        "staged_wraps_address_space",
        "§2.2 mem + memsz beyond the address space in a staged call",
        (Call(at(WRAPS, 2 * P), START, errno.EADDRNOTAVAIL),),
        loaded=False,
        requires=S,
    ),
    Vector(
        "staged_unaligned_memsz",
        "§2.2 memsz must be page aligned in a staged call too",
        (
            Call(seg(0, 1), START),
            Call(raw(lambda t: [Segment(b"", t.base + 2 * P, P + 8)]), MID, errno.EADDRNOTAVAIL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        requires=S,
    ),
    Vector(
        "error_in_start_discards_previous",
        "§2.2 a failed KS_start leaves no staged image, old or new",
        (
            Call(seg(0, 1), START),
            Call(many(seg(2, 1), seg(4, 1, bufsz=P + 1)), START, errno.EINVAL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "error_applies_nothing_of_the_call",
        "§2.2 a call that fails in a later segment loads none of its segments",
        (
            Call(seg(0, 1), START),
            Call(many(seg(2, 1), unaligned(4)), MID, errno.EADDRNOTAVAIL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "error_in_final_keeps_loaded",
        "§2.2 a failed KS_final leaves the loaded image loaded and discards the staged one",
        (
            Call(seg(8, 2), FULL),
            Call(seg(0, 1), START),
            Call(unaligned(4), FINAL, errno.EADDRNOTAVAIL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=True,
        map_pages=pages(8, 2),
        requires=S,
    ),
    Vector(
        "staged_zero_fill_over_half_ram",
        "§2.2 the ½-RAM rule does not apply to staged images (zero-fill: nothing allocated)",
        (Call(ram_span(0.6), START), Call(seg(0, 1), MID)),
        loaded=False,
        map_pages=pages(0, 1),
        requires=S,
    ),
    Vector(
        "staged_zero_fill_outside_ram",
        "§2.2 a staged segment over pages that hold no RAM (the VGA hole) is refused",
        (Call(at(0xA0000, 2 * P), START, errno.EADDRNOTAVAIL), Call(none(), FINAL, errno.EINVAL)),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_zero_fill_above_ram",
        "§2.2 a zero-fill segment far above RAM is refused before it costs anything",
        (Call(at(1 << 40, 16 << 30), START, errno.EADDRNOTAVAIL),),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_data_outside_ram_discards",
        "§2.2 a data segment over non-RAM pages is refused and discards the staged image",
        (
            Call(seg(0, 1), START),
            Call(at(0xA0000, P, P), MID, errno.EADDRNOTAVAIL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_data_beyond_ram",
        "§2.2 staged data pages beyond the RAM the allocator manages are ENOMEM at once",
        (Call(whole_largest_range(P), START, errno.ENOMEM), Call(none(), FINAL, errno.EINVAL)),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "staged_data_bound_counts_the_image",
        "§2.2 the bound counts the data pages already staged, not only the call's",
        (
            Call(ram_span(0.3, P), START_KEEP),
            Call(ram_span(0.8, P), MID_KEEP, errno.ENOMEM),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "zero_fill_allocates_nothing",
        "§2.2 zero-fill segments allocate no source pages",
        (Call(seg(0, 2), START), Call(seg(4, 8, bufsz=0), MID)),
        loaded=False,
        map_pages=pages(0, 2),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "zero_fill_over_zero_fill",
        "§2.2 zero-fill over zero-fill stays unlisted",
        (Call(seg(0, 4, bufsz=0), START), Call(seg(2, 4, bufsz=0), MID)),
        loaded=False,
        map_pages=no_pages(),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "zero_fill_then_data_in_one_call",
        "§2.2 a later segment of the same call turns zero-fill pages into data pages",
        (Call(many(seg(0, 4, bufsz=0), seg(1, 2)), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(1, 2),
        requires=S,
    ),
    Vector(
        "data_then_zero_fill_in_one_call",
        "§2.2 a later bufsz 0 segment of the same call keeps data pages listed",
        (Call(many(seg(0, 2), seg(0, 3, bufsz=0)), START), Call(none(), FINAL)),
        loaded=True,
        map_pages=pages(0, 2),
        requires=S,
    ),
    Vector(
        "partial_buffer_overlap_allocates_nothing",
        "§2.2 0 < bufsz < memsz over existing data pages allocates nothing",
        (Call(seg(0, 3), START), Call(seg(1, 2, bufsz=10), MID)),
        loaded=False,
        map_pages=pages(0, 3),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "partial_buffer_over_zero_fill",
        "§2.2 0 < bufsz < memsz over zero-fill pages makes every page a data page",
        (Call(seg(0, 4, bufsz=0), START), Call(seg(1, 2, bufsz=10), MID)),
        loaded=False,
        map_pages=pages(1, 2),
        requires=S,
    ),
    Vector(
        "overlap_extends_image",
        "§2.2 an overlap that reaches past the existing pages adds only the new ones",
        (Call(seg(0, 2), START), Call(seg(1, 3), MID), Call(seg(3, 2), FINAL)),
        loaded=True,
        map_pages=pages(0, 5),
        requires=S,
    ),
    Vector(
        "final_overlap_allocates_nothing",
        "§2.2 KS_final overlapping earlier pages exactly keeps the map",
        (Call(seg(0, 4), START), Call(seg(0, 4, fill=9), FINAL)),
        loaded=True,
        map_pages=pages(0, 4),
        map_unchanged_by_last=True,
        requires=S,
    ),
    Vector(
        "full_entry_in_kernel_half",
        "§2.1 an entry point no destination could have (the kernel half) is refused",
        (Call(seg(0, 1), FULL, errno.EADDRNOTAVAIL, entry=KERNEL_HALF),),
        loaded=False,
        requires=S,
    ),
    Vector(
        "final_entry_above_limit",
        "§2.2 KS_final with an entry above the destination limit discards the staged image",
        (
            Call(seg(0, 1), START),
            Call(seg(2, 1), FINAL, errno.EADDRNOTAVAIL, entry=ABOVE_LIMIT),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "unload_discards_loaded_and_staged",
        "§2.2 an unload discards the loaded image and the staged one",
        (
            Call(seg(8, 2), FULL),
            Call(seg(0, 1), START),
            Call(none(), FULL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=no_pages(),
        requires=S,
    ),
    Vector(
        "arch_default_staged",
        "§2.2 staged calls accept KEXEC_ARCH_DEFAULT",
        (
            Call(seg(0, 1), abi.load_flags(Stage.START, arch=abi.KEXEC_ARCH_DEFAULT)),
            Call(none(), abi.load_flags(Stage.FINAL, arch=abi.KEXEC_ARCH_DEFAULT)),
        ),
        loaded=True,
        map_pages=pages(0, 1),
        requires=S,
    ),
)


@dataclass
class Outcome:
    name: str
    errnos: list[int]
    loaded: bool
    map_pages: list[int] | None
    problems: list[str]

    @property
    def passed(self) -> bool:
        return not self.problems

    def to_json(self) -> str:
        return json.dumps(
            {
                "name": self.name,
                "errnos": self.errnos,
                "loaded": self.loaded,
                "map_pages": self.map_pages,
                "problems": self.problems,
            }
        )


def _reset(kernel: Kernel, staged: bool) -> None:
    if staged:
        kernel.kexec_load(0, [], START)
    kernel.kexec_load(0, [], FULL)


def _decode(kernel: Kernel, staged: bool) -> list[abi.PageMapRun] | None:
    return abi.decode_page_map(kernel.kexec_pgmap()) if staged else None


def _invariant_problems(runs: list[abi.PageMapRun]) -> list[str]:
    """A source page is either its own destination or not a data destination."""
    dests = {r.dest_pfn + i for r in runs for i in range(r.npages)}
    problems = []
    for r in runs:
        for i in range(r.npages):
            src, dest = r.src_pfn + i, r.dest_pfn + i
            if src != dest and src in dests:
                problems.append(f"source {src:#x} of {dest:#x} is another data destination")
    return problems[:3]


def _format_problems(runs: list[abi.PageMapRun]) -> list[str]:
    """Records are maximal runs: no record continues its predecessor on both sides
    (``decode_page_map`` has checked the header, sorting and overlap)."""
    return [
        f"records at dest {a.dest_pfn:#x} and {b.dest_pfn:#x} are one run"
        for a, b in itertools.pairwise(runs)
        if b.dest_pfn == a.dest_end and b.src_pfn == a.src_pfn + a.npages
    ][:3]


def largest_ram_range(kernel: Kernel) -> tuple[int, int]:
    r = max(
        (r for r in kernel.memory_map() if r.kind is MemoryKind.RAM), key=lambda r: r.end - r.start
    )
    return (r.start, r.end)


def ram_of(kernel: Kernel) -> int:
    return sum(r.end - r.start for r in kernel.memory_map() if r.kind is MemoryKind.RAM)


def run_vector(kernel: Kernel, vector: Vector, base: int, *, staged: bool) -> Outcome:
    target = Target(base, ram_of(kernel), largest_ram_range(kernel))
    _reset(kernel, staged)
    errnos = []
    problems = []
    map_before_last: list[abi.PageMapRun] | None = None
    for i, call in enumerate(vector.calls):
        if i == len(vector.calls) - 1 and staged:
            map_before_last = _decode(kernel, staged)
        try:
            kernel.kexec_load(call.entry or base, call.segments(target), call.flags)
            got = OK
        except abi.KernelError as exc:
            got = exc.errno
        errnos.append(got)
        if got != call.expect:
            problems.append(
                f"call {i}: errno {errno.errorcode.get(got, got)}, expected "
                f"{errno.errorcode.get(call.expect, call.expect)}"
            )
    loaded = kernel.kexec_loaded()
    if vector.loaded is not None and loaded != vector.loaded:
        problems.append(f"kexec_loaded is {int(loaded)}, expected {int(vector.loaded)}")
    listed: list[int] | None = None
    if staged:
        runs = _decode(kernel, staged) or []
        listed = sorted({r.dest_pfn + i for r in runs for i in range(r.npages)})
        problems += _invariant_problems(runs)
        problems += _format_problems(runs)
        if vector.map_pages is not None:
            want = vector.map_pages(target)
            if set(listed) != want:
                extra = sorted(set(listed) - want)[:4]
                missing = sorted(want - set(listed))[:4]
                problems.append(f"map lists wrong pages: extra {extra}, missing {missing}")
        if vector.map_unchanged_by_last and map_before_last != runs:
            problems.append("the last call changed the page map although it allocates nothing")
    _reset(kernel, staged)
    return Outcome(vector.name, errnos, loaded, listed, problems)


def applicable(vector: Vector, features: set[str]) -> bool:
    return vector.requires <= features


def features_of(kernel: Kernel) -> set[str]:
    report = kernel.probe()
    features = set()
    features.add("jump" if report.kexec_jump else "nojump")
    features.add("staged" if report.staged_load else "mainline")
    return features


def choose_base(kernel: Kernel, size: int = 64 << 20) -> int:
    """A RAM range to name as destinations (nothing is ever jumped to)."""
    for r in kernel.memory_map():
        start = max(r.start, 64 << 20)
        if r.kind is MemoryKind.RAM and r.end - start >= size:
            return start + (r.end - start - size) // 2 // P * P
    raise RuntimeError("no RAM range large enough for the conformance vectors")


def main(argv: Sequence[str]) -> int:  # pragma: no cover - runs inside lab guests
    from kexechibd.kernel.linux import LinuxKernel

    kernel = LinuxKernel()
    features = features_of(kernel)
    base = choose_base(kernel)
    staged = "staged" in features
    for vector in VECTORS:
        if applicable(vector, features):
            print(run_vector(kernel, vector, base, staged=staged).to_json(), flush=True)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1:]))
