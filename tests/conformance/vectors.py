"""Conformance vectors for the kexec interface (DESIGN §2.1 and §2.2).

Each vector is a sequence of ``kexec_load`` calls against a ``Kernel`` with
the expected errno of every call and what ``/proc/kexec_pgmap`` and
``kexec_loaded`` must say afterwards.  Expectations are allocator independent
(which physical pages become sources differs between kernels): they name the
destination pages a map lists and the placement invariant, never source
addresses.  The same vectors run against the machine model here and against a
real (patched or mainline) kernel inside a lab guest — nothing here jumps.

Run in a guest: ``python -m tests.conformance.vectors [--profile mainline]``
prints one JSON line per vector.
"""

from __future__ import annotations

import errno
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage
from kexechibd.kernel.api import Kernel, MemoryKind

P = PAGE_SIZE
OK = 0

Build = Callable[[int], Sequence[Segment]]  # base address → segments


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
    map_pages: Callable[[int], set[int]] | None = None  # dest pfns the map lists (base → set)
    map_unchanged_by_last: bool = False  # the last call allocated nothing
    requires: frozenset[str] = field(default_factory=frozenset)  # "jump", "staged", "mainline"


def seg(
    offset_pages: int,
    npages: int,
    *,
    data: bytes | None = None,
    fill: int = 0x5A,
    bufsz: int | None = None,
) -> Build:
    """A segment ``offset_pages`` pages above the base."""

    def build(base: int) -> list[Segment]:
        memsz = npages * P
        size = memsz if bufsz is None else bufsz
        buf = data if data is not None else bytes([fill]) * size
        return [Segment(buf, base + offset_pages * P, memsz)]

    return build


def raw(make: Callable[[int], list[Segment]]) -> Build:
    return make


def many(*builds: Build) -> Build:
    def build(base: int) -> list[Segment]:
        return [s for b in builds for s in b(base)]

    return build


def none() -> Build:
    return lambda base: []


def pages(offset: int, n: int) -> Callable[[int], set[int]]:
    return lambda base: {(base // P) + offset + i for i in range(n)}


def union(*fns: Callable[[int], set[int]]) -> Callable[[int], set[int]]:
    return lambda base: set().union(*(f(base) for f in fns))


FULL = abi.load_flags(Stage.FULL)
FULL_KEEP = abi.load_flags(Stage.FULL, preserve_context=True)
START = abi.load_flags(Stage.START)
MID = abi.load_flags(Stage.MID)
FINAL = abi.load_flags(Stage.FINAL)
START_KEEP = abi.load_flags(Stage.START, preserve_context=True)
MID_KEEP = abi.load_flags(Stage.MID, preserve_context=True)
FINAL_KEEP = abi.load_flags(Stage.FINAL, preserve_context=True)
S = frozenset({"staged"})
J = frozenset({"jump"})
SJ = frozenset({"staged", "jump"})

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
        (Call(raw(lambda b: [Segment(b"x", b + 8, P)]), FULL, errno.EADDRNOTAVAIL),),
    ),
    Vector(
        "unaligned_memsz",
        "§2.1 memsz must be a multiple of the page size",
        (Call(raw(lambda b: [Segment(b"x", b, P + 8)]), FULL, errno.EADDRNOTAVAIL),),
    ),
    Vector(
        "beyond_limit",
        "§2.1 destinations beyond the addressable limit",
        (Call(raw(lambda b: [Segment(b"x", 1 << 46, P)]), FULL, errno.EADDRNOTAVAIL),),
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
        (Call(seg(0, 1), abi.load_flags(arch=3 << 16), errno.EINVAL),),
    ),
    Vector(
        "unknown_flag",
        "§2.1 flags the kernel does not know are refused",
        (Call(seg(0, 1), FULL | 0x80, errno.EINVAL),),
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
            Call(raw(lambda b: [Segment(b"x", b + 8, P)]), MID, errno.EADDRNOTAVAIL),
            Call(none(), FINAL, errno.EINVAL),
        ),
        loaded=False,
        map_pages=lambda b: set(),
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
        "full_unload_leaves_staged",
        "§2.2 KS_full unloads never touch a staged image",
        (Call(seg(0, 1), START), Call(none(), FULL), Call(seg(2, 1), FINAL)),
        loaded=True,
        map_pages=union(pages(0, 1), pages(2, 1)),
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
        map_pages=lambda b: set(),
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


def run_vector(kernel: Kernel, vector: Vector, base: int, *, staged: bool) -> Outcome:
    _reset(kernel, staged)
    errnos = []
    problems = []
    map_before_last: list[abi.PageMapRun] | None = None
    for i, call in enumerate(vector.calls):
        if i == len(vector.calls) - 1 and staged:
            map_before_last = _decode(kernel, staged)
        try:
            kernel.kexec_load(call.entry or base, call.segments(base), call.flags)
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
        if vector.map_pages is not None:
            want = vector.map_pages(base)
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
    if report.kexec_jump:
        features.add("jump")
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
