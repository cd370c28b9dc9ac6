"""Writing and reading need memory for a few chunks, never for the image:
the same peak for 256 MiB and 1 GiB of memory, and for 8 thousand and 32
thousand runs (the run list streams with its chunks, the index is 80 bytes
per chunk).

Without worker threads the peak is deterministic and compared tightly; with
them, it is whatever is in flight (at most about four chunks here), which
depends on timing but not on size."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable
from pathlib import Path

import pytest

from kexechibd.image import ImageReader, ImageWriter
from tests.image_support import PS, make_meta, page
from tests.sizes import KIB, MIB

BUFFER = 4 * MIB  # what a saver reads from /proc/vmcore at a time
CHUNK = 4 * MIB
SLACK = 256 * KIB  # an index entry is 80 bytes per chunk; Python's own noise
# Without threads: one chunk's data and its compressed (or decompressed) copy,
# and a run table with its Run objects.
SERIAL_BOUND = 2 * CHUNK + MIB


@pytest.fixture(scope="module")
def buffers() -> dict[str, bytes]:
    """Made before tracing starts: the caller's buffers are not the image's."""
    text = b"".join(page(i) for i in range(BUFFER // PS // 2))
    return {
        "zero": bytes(BUFFER),
        "data": text + bytes(range(256)) * (BUFFER // 2 // 256),
        "fragmented": b"".join(page(i) + bytes(PS) for i in range(BUFFER // PS // 2)),
    }


def peak(action: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        action()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def measure(
    tmp_path: Path, size: int, pick: Callable[[int], bytes], threads: int
) -> tuple[int, int, int]:
    """Peaks of (write, read every chunk, stream every run)."""
    path = tmp_path / f"image-{size}-{threads}"

    def write() -> None:
        with (
            path.open("w+b") as f,
            ImageWriter(f, make_meta(window=()), chunk_size=CHUNK, level=1, threads=threads) as w,
        ):
            for addr in range(0, size, BUFFER):
                w.add(addr, pick(addr))
            w.commit()

    def read() -> None:
        with path.open("rb") as f:
            for _chunk in ImageReader(f).chunks(prefetch=2 if threads else 0, threads=threads):
                pass

    def covered() -> None:
        with path.open("rb") as f:
            for _run in ImageReader(f).covered():
                pass

    return peak(write), peak(read), peak(covered)


def check(small: tuple[int, ...], large: tuple[int, ...], bound: int) -> None:
    for lo, hi in zip(small, large, strict=True):
        assert hi < bound, (small, large)
        if bound == SERIAL_BOUND:  # deterministic: no worker threads
            assert hi < lo + SLACK, (small, large)


def mostly_zero(buffers: dict[str, bytes]) -> Callable[[int], bytes]:
    return lambda addr: buffers["data"] if addr % (8 * BUFFER) == 0 else buffers["zero"]


def test_memory_does_not_grow_with_the_size_of_memory(
    tmp_path: Path, buffers: dict[str, bytes]
) -> None:
    pick = mostly_zero(buffers)
    check(
        measure(tmp_path, 256 * MIB, pick, 0), measure(tmp_path, 1024 * MIB, pick, 0), SERIAL_BOUND
    )


def test_memory_with_worker_threads_is_what_is_in_flight(
    tmp_path: Path, buffers: dict[str, bytes]
) -> None:
    pick = mostly_zero(buffers)
    check(measure(tmp_path, 256 * MIB, pick, 2), measure(tmp_path, 1024 * MIB, pick, 2), 5 * CHUNK)


def test_memory_does_not_grow_with_the_number_of_runs(
    tmp_path: Path, buffers: dict[str, bytes]
) -> None:
    def fragmented(addr: int) -> bytes:  # every other page used: a run per page
        return buffers["fragmented"]

    check(
        measure(tmp_path, 32 * MIB, fragmented, 0),  # 8192 runs
        measure(tmp_path, 128 * MIB, fragmented, 0),  # 32768 runs
        SERIAL_BOUND,
    )


def test_memory_does_not_grow_when_every_buffer_holds_a_little_data(tmp_path: Path) -> None:
    # What B's saver does: a fresh buffer from /proc/vmcore for every add, and
    # sparse memory, so one chunk gathers a few pages from many buffers.
    def write() -> None:
        with (
            (tmp_path / "image").open("w+b") as f,
            ImageWriter(f, make_meta(window=()), chunk_size=CHUNK, level=1, threads=0) as w,
        ):
            for i in range(64):
                buffer = bytearray(MIB)
                buffer[:PS] = page(i)
                w.add(i * MIB, bytes(buffer))
            w.commit()

    assert peak(write) < SERIAL_BOUND
