"""Stage planning for resume: runs → segments → calls (property tests).

The planner's rules (kexechibd/cycle/plan.py): every page of every run is
planned once, with its data or as zero fill; a call has at most the kernel's
``KEXEC_STAGE_SEGMENT_MAX`` segments (or the given limit); each data run is
one segment that points into its chunk's data (no copy; the image's runs are
maximal within a chunk, so there is nothing to merge); touching zero runs
are merged into one zero-fill segment, across chunks too; and a call never
holds two chunks' data, so each chunk can be released once its calls
returned."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from kexechibd.cycle.plan import PlannedRun, plan_calls
from kexechibd.kernel.abi import KEXEC_STAGE_SEGMENT_MAX, PAGE_SIZE, Segment

P = PAGE_SIZE
Chunks = list[tuple[list[PlannedRun], bytes]]


@st.composite
def images(draw: st.DrawFn) -> Chunks:
    """Chunks of address-ordered, non-overlapping runs with their data, as
    the image has them: within a chunk two touching runs differ in kind;
    across chunks anything may touch."""
    pfn = draw(st.integers(0, 1000))
    chunks = []
    for _ in range(draw(st.integers(1, 8))):
        runs: list[PlannedRun] = []
        data = bytearray()
        for _ in range(draw(st.integers(1, 24))):
            gap = draw(st.integers(0, 3))
            zero = draw(st.booleans())
            if runs and gap == 0 and runs[-1].zero == zero:
                zero = not zero  # the writer would have extended the previous run
            pfn += gap
            n = draw(st.integers(1, 4))
            runs.append(PlannedRun(pfn, n, zero))
            if not zero:
                data += b"".join(bytes([(pfn + i) % 251 + 1]) * P for i in range(n))
            pfn += n
        chunks.append((runs, bytes(data)))
    return chunks


limits = st.none() | st.integers(1, 8) | st.integers(1, KEXEC_STAGE_SEGMENT_MAX)


def plan(chunks: Chunks, limit: int | None) -> list[list[Segment]]:
    if limit is None:
        return list(plan_calls(chunks))
    return list(plan_calls(chunks, max_segments=limit))


def _pages(chunks: Chunks) -> dict[int, bytes | None]:
    pages: dict[int, bytes | None] = {}
    for runs, data in chunks:
        off = 0
        for r in runs:
            for i in range(r.npages):
                if r.zero:
                    pages[r.pfn + i] = None
                else:
                    pages[r.pfn + i] = data[off : off + P]
                    off += P
    return pages


@settings(max_examples=200, deadline=None)
@given(images(), limits)
def test_plan_covers_exactly_the_runs_within_limits(chunks: Chunks, limit: int | None) -> None:
    covered: dict[int, bytes | None] = {}
    for call in plan(chunks, limit):
        assert 1 <= len(call) <= (limit or KEXEC_STAGE_SEGMENT_MAX)
        for seg in call:
            assert seg.mem % P == 0 and seg.memsz % P == 0 and seg.memsz > 0
            assert seg.bufsz in (0, seg.memsz)
            for i in range(seg.memsz // P):
                pfn = seg.mem // P + i
                assert pfn not in covered, "a page is planned twice"
                covered[pfn] = bytes(seg.buf[i * P : (i + 1) * P]) if seg.bufsz else None
    assert covered == _pages(chunks)


@settings(max_examples=100, deadline=None)
@given(images(), limits)
def test_touching_zero_runs_become_one_zero_fill_segment(chunks: Chunks, limit: int | None) -> None:
    calls = plan(chunks, limit)
    zero_fill = sorted((s.mem, s.mem + s.memsz) for call in calls for s in call if not s.bufsz)
    for (_, end), (start, _) in itertools.pairwise(zero_fill):
        assert end < start, "two zero-fill segments touch: they should be one"


@settings(max_examples=100, deadline=None)
@given(images(), limits)
def test_each_data_run_is_one_segment_viewing_its_chunks_data(
    chunks: Chunks, limit: int | None
) -> None:
    runs = [(r.pfn * P, r.npages * P) for rs, _ in chunks for r in rs if not r.zero]
    segments = [seg for call in plan(chunks, limit) for seg in call if seg.bufsz]
    assert [(seg.mem, seg.memsz) for seg in segments] == runs
    chunk_data = {id(data) for _, data in chunks}
    assert all(id(seg.buf.obj) in chunk_data for seg in segments), "data was copied"


@settings(max_examples=100, deadline=None)
@given(images(), limits)
def test_a_call_never_holds_two_chunks_data(chunks: Chunks, limit: int | None) -> None:
    for call in plan(chunks, limit):
        assert len({id(seg.buf.obj) for seg in call if seg.bufsz}) <= 1


def test_adjacent_zero_runs_merge_across_chunks() -> None:
    chunks = [([PlannedRun(0, 2, True)], b""), ([PlannedRun(2, 3, True)], b"")]
    calls = list(plan_calls(chunks))
    assert [(s.mem, s.memsz, s.bufsz) for c in calls for s in c] == [(0, 5 * P, 0)]


def test_a_call_never_spans_two_chunks_of_data() -> None:
    chunks = [([PlannedRun(0, 1, False)], b"a" * P), ([PlannedRun(1, 1, False)], b"b" * P)]
    assert [len(c) for c in plan_calls(chunks)] == [1, 1]


def test_calls_are_as_full_as_the_kernels_limit_allows() -> None:
    # One chunk of 3000 alternating zero and data pages: 3000 segments.
    runs = [PlannedRun(pfn, 1, pfn % 2 == 0) for pfn in range(3000)]
    data = b"d" * (1500 * P)
    assert [len(c) for c in plan_calls([(runs, data)])] == [1024, 1024, 952]
