"""Writing and reading images: what goes in comes out, zero pages cost no
data, chunks stay within their size, and the writer refuses misuse."""

from __future__ import annotations

import io
import itertools
import os
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kexechibd.image import FORMAT_VERSION, ImageReader, ImageWriter, Run, codec
from kexechibd.image import format as fmt
from tests.image_support import (
    PS,
    make_meta,
    open_image,
    page,
    read_pages,
    sample_image,
    write_image,
)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none"])
def test_pages_round_trip_with_every_compression(compression: str) -> None:
    image, summary = sample_image(compression=compression)
    data, zero = read_pages(open_image(image))
    assert data[0] == page(0)
    assert data[0x200 + 1] != data[0x200 + 2]  # random pages survive
    assert data[0x200] == page(0x200)
    assert zero == {6, 7} | set(range(0x100, 0x110))
    assert len(data) == summary.data_pages == 6 + 1 + 9
    assert summary.compression == compression


def test_reader_reports_what_commit_reported() -> None:
    image, summary = sample_image()
    assert open_image(image).summary == summary
    assert summary.format_version == FORMAT_VERSION
    assert summary.state == "committed"
    assert summary.stored_bytes == len(image)


def test_metadata_round_trips_except_the_window() -> None:
    meta = make_meta()
    image, _ = write_image([(0, page(1))], meta)
    got = open_image(image).meta
    assert got == make_meta(window=())
    assert got.created == meta.created and got.jump_back_entry == meta.jump_back_entry


def test_default_levels_are_zstd_3_and_lz4_fast() -> None:
    assert sample_image()[1].level == 3
    assert sample_image(compression="lz4")[1].level == 0
    assert sample_image(compression="zstd", level=1)[1].level == 1


def test_zero_pages_cost_no_data_bytes() -> None:
    image, summary = write_image([(0, bytes(64 << 20))], compression="none")
    assert summary.zero_pages == (64 << 20) // PS and summary.data_pages == 0
    assert summary.runs == 1
    assert len(image) < 3 * PS  # header, one chunk head, one run, the index


def test_uncompressed_image_stores_exactly_the_data_pages() -> None:
    image, summary = sample_image(compression="none")
    reader = open_image(image)
    overhead = sum(fmt.CHUNK_HEAD.size + fmt.RUN.size * len(c.runs) for c in reader.chunks())
    index = fmt.INDEX_HEAD.size + fmt.INDEX_ENTRY.size * summary.chunks
    header = fmt.align_up(fmt.header_size(make_meta()), PS)
    assert len(image) == header + overhead + summary.data_pages * PS + index


def test_incompressible_chunks_are_stored_raw() -> None:
    image, _ = write_image([(0, os.urandom(8 * PS))], chunk_size=8 * PS)
    reader = open_image(image)
    assert len(reader.summary.digest) == 64
    e = fmt.index_entry(reader._index, 0)
    assert int.from_bytes(image[e.offset + 16 : e.offset + 20], "little") == fmt.Codec.NONE


@pytest.mark.parametrize("threads", [0, 1, 2])
def test_incompressible_chunks_of_several_pieces_are_stored_as_they_were(threads: int) -> None:
    # Random pages between zero pages: each chunk's data comes in pieces, is
    # gathered into the compressing thread's reused buffer, does not shrink
    # and is stored raw — it must not be the buffer the next chunk reuses.
    pages = [page(i, "random") if i % 3 else bytes(PS) for i in range(96)]
    image, _ = write_image([(0, b"".join(pages))], chunk_size=8 * PS, threads=threads)
    data, zero = read_pages(open_image(image))
    assert zero == set(range(0, 96, 3))
    assert data == {i: p for i, p in enumerate(pages) if i % 3}


def test_chunks_hold_at_most_chunk_size_of_data() -> None:
    image, summary = write_image([(0, b"".join(page(i) for i in range(37)))], chunk_size=8 * PS)
    sizes = [len(c.data) for c in open_image(image).chunks()]
    assert sizes == [8 * PS] * 4 + [5 * PS]
    assert summary.chunks == 5


def test_chunk_runs_are_address_ordered_and_data_is_concatenated_in_order() -> None:
    image, _ = write_image([(0, page(0) + bytes(PS) + page(2)), (8 * PS, page(8))])
    (chunk,) = open_image(image).chunks()
    assert chunk.runs == (Run(0, 1, False), Run(1, 1, True), Run(2, 1, False), Run(8, 1, False))
    assert bytes(chunk.data) == page(0) + page(2) + page(8)


def test_covered_yields_maximal_runs_across_chunks_and_adds() -> None:
    adds = [
        (0, b"".join(page(i) for i in range(10))),
        (10 * PS, page(10)),
        (11 * PS, bytes(3 * PS)),
        (14 * PS, bytes(PS)),
        (20 * PS, page(20)),
    ]
    image, summary = write_image(adds, chunk_size=4 * PS)
    assert list(open_image(image).covered()) == [
        Run(0, 11, False),
        Run(11, 4, True),
        Run(20, 1, False),
    ]
    assert summary.runs == 3 and summary.chunks == 3


def test_gaps_between_adds_are_not_covered() -> None:
    image, _ = write_image([(PS, page(1)), (100 * PS, page(100))])
    assert [r.pfn for r in open_image(image).covered()] == [1, 100]


def test_empty_image_is_valid_and_covers_nothing() -> None:
    image, summary = write_image([])
    reader = open_image(image)
    assert (summary.runs, summary.chunks, summary.data_pages) == (0, 0, 0)
    assert list(reader.chunks()) == [] and list(reader.covered()) == []
    reader.verify()


def test_reading_with_and_without_worker_threads_gives_the_same_chunks() -> None:
    image, _ = sample_image()
    reader = open_image(image)
    inline = [(c.index, c.runs, bytes(c.data)) for c in reader.chunks(prefetch=0)]
    threaded = [(c.index, c.runs, bytes(c.data)) for c in reader.chunks(prefetch=3, threads=2)]
    assert inline == threaded


def test_writing_without_worker_threads_gives_the_same_image() -> None:
    adds = [(0, os.urandom(5 * PS) + b"".join(page(i) for i in range(7)) + bytes(3 * PS))]
    inline, _ = write_image(adds, chunk_size=2 * PS, threads=0)
    assert write_image(adds, chunk_size=2 * PS, threads=3)[0] == inline


@pytest.fixture
def one_cpu() -> Iterator[None]:
    """This thread (and the threads it starts) may run on one CPU only, as
    under taskset or a cgroup's cpuset; os.cpu_count() still counts all."""
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def test_chunk_pools_are_sized_to_the_cpus_this_process_may_run_on(one_cpu: None) -> None:
    assert codec.pool_size() == 1


def test_the_writer_starts_no_more_workers_than_usable_cpus(one_cpu: None) -> None:
    out = io.BytesIO()
    with ImageWriter(out, make_meta(), chunk_size=PS) as w:
        for i in range(8):
            w.add(i * PS, page(i, "random"))
        workers = {t.name for t in threading.enumerate() if t.name.startswith("kexechib-image")}
        w.commit()
    assert len(workers) == 1


def test_add_copies_the_buffer_so_callers_may_reuse_it() -> None:
    buf = bytearray(page(1))
    out = io.BytesIO()
    with ImageWriter(out, make_meta(), chunk_size=PS, threads=2) as w:
        w.add(0, memoryview(buf))
        buf[:] = page(2)
        w.add(PS, memoryview(buf))
        w.commit()
    data, _ = read_pages(ImageReader(out))
    assert data == {0: page(1), 1: page(2)}


def test_progress_counts_memory_consumed_and_bytes_stored() -> None:
    out = io.BytesIO()
    with ImageWriter(out, make_meta(), chunk_size=PS, threads=0) as w:
        assert w.progress[0] == 0
        w.add(0, page(0) + bytes(PS))
        consumed, stored = w.progress
        summary = w.commit()
    assert consumed == 2 * PS
    assert stored > PS and w.progress[1] == summary.stored_bytes


def test_run_table_limit_splits_chunks() -> None:
    n = fmt.RUNS_PER_CHUNK_MAX + 10
    out = io.BytesIO()
    zero = bytes(PS)
    with ImageWriter(out, make_meta(window=()), threads=0) as w:
        for i in range(n):
            w.add(2 * i * PS, zero)  # one-page zero runs with gaps between
        summary = w.commit()
    assert summary.runs == n and summary.chunks == 2
    assert sum(1 for _ in ImageReader(out).covered()) == n


# -- misuse is the caller's bug: ValueError, and nothing valid is left -------


def writer(**kwargs: object) -> ImageWriter:
    return ImageWriter(io.BytesIO(), make_meta(), **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("addr, size", [(PS + 1, PS), (0, PS + 1), (0, 100)])
def test_add_refuses_unaligned_pages(addr: int, size: int) -> None:
    with writer() as w, pytest.raises(ValueError, match="page aligned"):
        w.add(addr, bytes(size))


@pytest.mark.parametrize("second", [0, PS, 2 * PS])
def test_add_refuses_pages_out_of_address_order(second: int) -> None:
    with writer() as w:
        w.add(PS, bytes(2 * PS))
        with pytest.raises(ValueError, match="address order"):
            w.add(second, page(1))


def test_add_refuses_pages_of_bs_window() -> None:
    with writer() as w, pytest.raises(ValueError, match="window"):
        w.add(0x3000_0000 - PS, bytes(2 * PS))


def test_writer_refuses_use_after_commit() -> None:
    w = writer()
    w.commit()
    with pytest.raises(ValueError, match="committed"):
        w.add(0, page(0))
    with pytest.raises(ValueError, match="committed"):
        w.commit()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"compression": "gzip"}, "compression"),
        ({"compression": "zstd", "level": 23}, "level"),
        ({"compression": "lz4", "level": 17}, "level"),
        ({"compression": "none", "level": 3}, "level"),
        ({"chunk_size": PS + 1}, "chunk size"),
        ({"chunk_size": 512 << 20}, "chunk size"),
        ({"threads": -1}, "threads"),
    ],
)
def test_writer_refuses_bad_settings(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        writer(**kwargs)


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"mode": "sleep"}, "mode"),
        ({"kernel_release": "6.1\nmode=checkpoint"}, "newlines"),
        ({"page_size": 1000}, "page size"),
        ({"jump_back_entry": -1}, "jump-back"),
    ],
)
def test_writer_refuses_metadata_the_format_cannot_carry(
    overrides: dict[str, object], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        ImageWriter(io.BytesIO(), make_meta(**overrides))


def test_an_uncommitted_image_is_never_valid() -> None:
    out = io.BytesIO()
    w = ImageWriter(out, make_meta(), chunk_size=PS, threads=0)
    w.add(0, b"".join(page(i) for i in range(8)))  # chunks are on "disk" already
    assert len(out.getvalue()) > fmt.align_up(fmt.header_size(make_meta()), PS)
    with pytest.raises(ValueError, match="not an ELF file"):
        ImageReader(io.BytesIO(out.getvalue()))


def test_abort_on_exception_leaves_nothing_valid_even_over_an_old_image() -> None:
    old, _ = sample_image()
    out = io.BytesIO(old)
    with pytest.raises(RuntimeError), ImageWriter(out, make_meta(), threads=2) as w:
        w.add(0, page(0))
        raise RuntimeError("saver died")
    assert out.getvalue()[:PS] == bytes(PS)
    with pytest.raises(ValueError, match="not an ELF file"):
        ImageReader(out)


# -- property: any page runs round trip ---------------------------------------

KINDS = ("zero", "text", "random", "sparse")


def segment_pages(kind: str, n: int, tag: int) -> list[bytes]:
    if kind == "zero":
        return [bytes(PS)] * n
    if kind == "sparse":  # zero pages among data pages, and pages with a lone byte
        return [bytes(PS) if i % 2 else bytes(PS - 1) + bytes([i + 1]) for i in range(n)]
    return [page(tag + i, kind) for i in range(n)]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    segments=st.lists(
        st.tuples(st.integers(0, 3), st.integers(1, 12), st.sampled_from(KINDS), st.booleans()),
        max_size=12,
    ),
    chunk_pages=st.sampled_from([1, 2, 3, 8]),
    compression=st.sampled_from(["zstd", "lz4", "none"]),
    threads=st.sampled_from([0, 2]),
)
def test_any_page_runs_round_trip(
    segments: list[tuple[int, int, str, bool]],
    chunk_pages: int,
    compression: str,
    threads: int,
) -> None:
    expected: dict[int, bytes] = {}
    adds: list[tuple[int, bytes]] = []
    pfn = 0
    for gap, n, kind, split in segments:
        pfn += gap
        pages = segment_pages(kind, n, pfn)
        expected.update(zip(range(pfn, pfn + n), pages, strict=True))
        if split and n > 1:  # two adds, contiguous
            adds += [
                (pfn * PS, b"".join(pages[: n // 2])),
                ((pfn + n // 2) * PS, b"".join(pages[n // 2 :])),
            ]
        elif adds and gap == 0 and adds[-1][0] + len(adds[-1][1]) == pfn * PS:
            adds[-1] = (adds[-1][0], adds[-1][1] + b"".join(pages))
        else:
            adds.append((pfn * PS, b"".join(pages)))
        pfn += n
    image, summary = write_image(
        adds,
        make_meta(window=()),
        chunk_size=chunk_pages * PS,
        compression=compression,
        threads=threads,
    )
    reader = open_image(image)
    data, zero = read_pages(reader)
    zero_pages = {p for p, b in expected.items() if b == bytes(PS)}
    assert zero == zero_pages
    assert data == {p: b for p, b in expected.items() if p not in zero_pages}
    assert (summary.data_pages, summary.zero_pages) == (len(data), len(zero))
    covered = list(reader.covered())
    assert sum(r.npages for r in covered) == len(expected)
    assert all(a.end < b.pfn or a.zero != b.zero for a, b in itertools.pairwise(covered))
    assert len(covered) == summary.runs
    reader.verify()
