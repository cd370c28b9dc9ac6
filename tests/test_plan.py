"""Stage planning for resume: runs → segments → calls (property tests)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kexechibd.cycle.plan import PlannedRun, plan_calls
from kexechibd.kernel.abi import PAGE_SIZE

P = PAGE_SIZE


@st.composite
def images(draw: st.DrawFn) -> list[tuple[list[PlannedRun], bytes]]:
    """Chunks of address-ordered, non-overlapping runs with their data."""
    pfn = draw(st.integers(0, 1000))
    chunks = []
    for _ in range(draw(st.integers(1, 6))):
        runs = []
        data = bytearray()
        for _ in range(draw(st.integers(1, 12))):
            pfn += draw(st.integers(0, 3))
            n = draw(st.integers(1, 5))
            zero = draw(st.booleans())
            runs.append(PlannedRun(pfn, n, zero))
            if not zero:
                data += bytes([pfn % 251 + 1]) * (n * P)
            pfn += n
        chunks.append((runs, bytes(data)))
    return chunks


def _pages(chunks: list[tuple[list[PlannedRun], bytes]]) -> dict[int, bytes | None]:
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
@given(images(), st.integers(1, 8))
def test_plan_covers_exactly_the_runs_within_limits(chunks, limit) -> None:
    covered: dict[int, bytes | None] = {}
    for call in plan_calls(chunks, max_segments=limit):
        assert 1 <= len(call) <= limit
        for seg in call:
            assert seg.mem % P == 0 and seg.memsz % P == 0 and seg.memsz > 0
            assert seg.bufsz in (0, seg.memsz)
            for i in range(seg.memsz // P):
                pfn = seg.mem // P + i
                assert pfn not in covered, "a page is planned twice"
                covered[pfn] = bytes(seg.buf[i * P : (i + 1) * P]) if seg.bufsz else None
    assert covered == _pages(chunks)


def test_adjacent_zero_runs_merge_across_chunks() -> None:
    chunks = [([PlannedRun(0, 2, True)], b""), ([PlannedRun(2, 3, True)], b"")]
    calls = list(plan_calls(chunks))
    assert [(s.mem, s.memsz, s.bufsz) for c in calls for s in c] == [(0, 5 * P, 0)]


def test_a_call_never_spans_two_chunks_of_data() -> None:
    chunks = [([PlannedRun(0, 1, False)], b"a" * P), ([PlannedRun(1, 1, False)], b"b" * P)]
    assert [len(c) for c in plan_calls(chunks)] == [1, 1]
