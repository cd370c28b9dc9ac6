"""Writing an image: pages in, chunks compressed on a thread pool, header last.

The main thread finds zero pages and cuts page runs into chunks; worker
threads join, compress and hash each chunk's data (zstandard, lz4 and hashlib
release the GIL); the main thread writes finished chunks in order.  At most
``threads + 1`` chunks are in flight, so memory is a few chunks (plus the
caller's current buffer, and a chunk-sized gather buffer per compressing
thread) whatever the size of memory being saved.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import hashlib
import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from kexechibd import compression as policy
from kexechibd.image import codec, format
from kexechibd.image.fileio import ClosedOnExit, fsync, write_all
from kexechibd.image.format import (
    INDEX_HEAD,
    INDEX_MAGIC,
    MAX_PHYS_ADDR,
    RUN_PAGES_MAX,
    RUNS_PER_CHUNK_MAX,
    ChunkHead,
    Codec,
    Header,
    IndexEntry,
)
from kexechibd.image.meta import ImageMeta, ImageState, ImageSummary
from kexechibd.image.zeroscan import page_runs

Buffer = bytes | memoryview


class _Phase(enum.Enum):
    """Where a writer is: taking pages, done (the image is whole), or given up."""

    OPEN = "open"
    COMMITTED = "committed"
    ABORTED = "aborted"


class _Chunk:
    """A chunk being filled: its runs and the pieces of its data."""

    __slots__ = ("data_pages", "index", "pieces", "runs", "zero_pages")

    def __init__(self, index: int) -> None:
        self.index = index
        self.runs: list[list[int]] = []  # [pfn, npages, zero]
        self.pieces: list[memoryview] = []
        self.data_pages = 0
        self.zero_pages = 0


_Compressed = tuple[Buffer, bytes, int]  # payload, its SHA-256, codec


def _compress_chunk(
    c: codec.Compression, pieces: list[memoryview], scratch: threading.local
) -> _Compressed:
    """Worker: the chunk's payload.  A payload that does not shrink is stored raw.

    A chunk of several pieces (data runs between zero pages, or from two of
    the caller's buffers) is gathered into a buffer this thread reuses: a
    fresh ``b"".join`` of 4 MiB per chunk is memory the allocator maps anew,
    every page of it faulting in.  py-spy put that join at 6% of a save's
    samples; reusing the buffer halved the save's minor faults on the 1 GB
    lab dump (71-105 thousand to 37-39 thousand) and cut its system time
    from 0.50-0.53 s to 0.36-0.43 s (docs/performance.md)."""
    if len(pieces) == 1:
        return _payload(c, pieces[0])
    if c.ident == Codec.NONE:
        return _payload(c, b"".join(pieces))
    gather: io.BytesIO = scratch.__dict__.setdefault("gather", io.BytesIO())
    gather.seek(0)
    gather.writelines(pieces)  # one C loop, however many pieces
    size = gather.tell()
    with gather.getbuffer() as whole, whole[:size] as raw:
        payload, sha, ident = _payload(c, raw)
        if ident == Codec.NONE:
            payload = bytes(raw)  # stored raw: it must outlive this thread's next chunk
    return payload, sha, ident


def _payload(c: codec.Compression, raw: Buffer) -> _Compressed:
    if c.ident != Codec.NONE and len(raw):
        packed = codec.compress(c, raw)
        if len(packed) < len(raw):
            return packed, hashlib.sha256(packed).digest(), c.ident
    return raw, hashlib.sha256(raw).digest(), Codec.NONE


class ImageWriter(ClosedOnExit):
    """Writes one image to ``out`` (seekable; the image starts at offset 0).

    ``add`` pages in strictly increasing address order, then ``commit``.  Until
    the header is written by ``commit`` the first page of ``out`` is zero, so
    an interrupted image is never mistaken for a valid one.
    """

    def __init__(
        self,
        out: BinaryIO,
        meta: ImageMeta,
        *,
        compression: str = policy.DEFAULT,
        level: int | None = None,
        chunk_size: int = 4 << 20,
        threads: int | None = None,
    ) -> None:
        format.validate_meta(meta)
        self._c = codec.compression(compression, level)
        ps = meta.page_size
        if chunk_size % ps or not ps <= chunk_size <= format.CHUNK_SIZE_MAX:
            raise ValueError(
                f"chunk size {chunk_size} must be a multiple of the page size "
                f"{ps} and at most {format.CHUNK_SIZE_MAX}"
            )
        threads = codec.pool_size() if threads is None else threads
        if threads < 0:
            raise ValueError(f"threads must be >= 0, not {threads}")
        self._window = sorted(meta.window)
        for start, end in self._window:
            if start % ps or end % ps or start >= end:
                raise ValueError(f"window range [{start:#x}, {end:#x}) is not page aligned")
        self._out = out
        self._meta = meta
        self._ps = ps
        self._chunk_size = chunk_size
        self._pages_per_chunk = chunk_size // ps
        self._header_size = format.header_size(meta)
        self._data_offset = format.align_up(self._header_size, ps)
        self._pool = ThreadPoolExecutor(threads, "kexechib-image") if threads else None
        self._max_inflight = threads + 1
        self._scratch = threading.local()  # each compressing thread's gather buffer
        self._inflight: collections.deque[tuple[_Chunk, bytes, Future[_Compressed]]] = (
            collections.deque()
        )
        self._index = bytearray()
        self._chunk = _Chunk(0)
        self._chunks = 0
        self._next_addr = 0
        self._last: tuple[int, bool] | None = None  # (end pfn, zero) of the last run
        self._runs = self._data_pages = self._zero_pages = 0
        self._consumed = 0
        self._phase = _Phase.OPEN
        self._commit_hooks: list[Callable[[], None]] = []
        # Destroy whatever header was there before (a previous image on the
        # same device must not survive with our data under it).
        out.seek(0)
        write_all(out, bytes(self._data_offset))
        fsync(out)
        self._pos = self._data_offset

    # -- public -----------------------------------------------------------

    def on_commit(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` once ``commit()`` has made the image whole and durable,
        in the order added: how a store publishes it (a rename, a slot
        record).  A hook's exception reaches ``commit``'s caller; the image
        stays committed."""
        self._commit_hooks.append(hook)

    @property
    def progress(self) -> tuple[int, int]:
        """(bytes of memory consumed so far, bytes of image written so far)."""
        return self._consumed, self._pos

    def add(self, phys_addr: int, data: bytes | memoryview) -> None:
        """Save the pages at ``phys_addr``; zero pages become zero runs."""
        self._check_open()
        buf = data if type(data) is bytes else bytes(data)  # own it: callers reuse buffers
        ps = self._ps
        if phys_addr % ps or len(buf) % ps:
            raise ValueError(f"add({phys_addr:#x}, {len(buf)} bytes) is not page aligned")
        if phys_addr < self._next_addr:
            raise ValueError(
                f"add({phys_addr:#x}) is below the end of the previous add "
                f"({self._next_addr:#x}): pages must come in address order"
            )
        end = phys_addr + len(buf)
        if end > MAX_PHYS_ADDR:
            raise ValueError(f"pages up to {end:#x} are beyond physical memory")
        for start, stop in self._window:
            if start < end and phys_addr < stop:
                raise ValueError(
                    f"add({phys_addr:#x}..{end:#x}) overlaps B's window "
                    f"[{start:#x}, {stop:#x}), which is never saved"
                )
        if not buf:
            return
        pfn = phys_addr // ps
        mv = memoryview(buf)
        try:
            runs = list(page_runs(buf, ps))
            data_bytes = sum(npages for _, npages, zero in runs if not zero) * ps
            # Chunks hold views of their data: of `buf` itself when it is mostly
            # data, else of a copy of its data pages alone.  Views of a sparse
            # buffer would keep all of it alive until their chunk is written,
            # and a chunk of sparse memory takes pages from many buffers.
            compact = 2 * data_bytes < len(buf)
            if compact:
                mv = memoryview(
                    b"".join(mv[f * ps : (f + n) * ps] for f, n, zero in runs if not zero)
                )
            at = 0
            for first, npages, zero in runs:
                if zero:
                    self._add_zero(pfn + first, npages)
                    continue
                start = at if compact else first * ps
                self._add_data(pfn + first, npages, mv[start : start + npages * ps])
                at += npages * ps
        except BaseException:
            self._fail()
            raise
        self._next_addr = end
        self._consumed += len(buf)

    def commit(self) -> ImageSummary:
        """Write the rest, the index, fsync, then the header, fsync."""
        self._check_open()
        try:
            self._close_chunk()
            while self._inflight:
                self._write_oldest()
            index = INDEX_HEAD.pack(INDEX_MAGIC, self._chunks) + self._index
            index_offset = self._pos
            write_all(self._out, index)
            self._pos += len(index)
            fsync(self._out)
            header = Header(
                self._meta_saved(),
                ImageState.COMMITTED,
                self._c.ident,
                self._c.level,
                self._chunk_size,
                self._data_offset,
                index_offset,
                self._chunks,
                self._pos,
                self._data_pages,
                self._zero_pages,
                self._runs,
                hashlib.sha256(index).digest(),
            )
            encoded = format.encode_header(header)
            assert len(encoded) == self._header_size
            self._out.seek(0)
            write_all(self._out, encoded)
            fsync(self._out)
            self._header = header
            self._phase = _Phase.COMMITTED
        except BaseException:
            self._fail()
            raise
        finally:
            self._shutdown()
        for hook in self._commit_hooks:  # the image is committed even if one fails
            hook()
        return self._summary()

    def abort(self) -> None:
        """Stop and leave nothing that could pass as a valid image.  Does
        nothing once the image is committed."""
        if self._phase is _Phase.COMMITTED:
            return
        self._fail()

    def close(self) -> None:
        """What leaving a ``with`` block does: ``abort`` unless committed."""
        self.abort()

    # -- cutting runs into chunks -----------------------------------------

    def _new_run(self, pfn: int, zero: bool) -> None:
        """Account for a run starting at ``pfn`` (maximal runs span chunks)."""
        if self._last != (pfn, zero):
            self._runs += 1

    def _add_zero(self, pfn: int, npages: int) -> None:
        while npages:
            c = self._chunk
            last = c.runs[-1] if c.runs else None
            if last and last[2] and last[0] + last[1] == pfn and last[1] < RUN_PAGES_MAX:
                take = min(npages, RUN_PAGES_MAX - last[1])
                last[1] += take
            else:
                if len(c.runs) == RUNS_PER_CHUNK_MAX:
                    self._close_chunk()
                    continue
                take = min(npages, RUN_PAGES_MAX)
                self._new_run(pfn, True)
                self._chunk.runs.append([pfn, take, 1])
            self._chunk.zero_pages += take
            self._zero_pages += take
            pfn += take
            npages -= take
            self._last = (pfn, True)

    def _add_data(self, pfn: int, npages: int, mv: memoryview) -> None:
        ps = self._ps
        while npages:
            c = self._chunk
            take = min(npages, self._pages_per_chunk - c.data_pages)
            last = c.runs[-1] if c.runs else None
            if last and not last[2] and last[0] + last[1] == pfn:
                last[1] += take
            else:
                if len(c.runs) == RUNS_PER_CHUNK_MAX:
                    self._close_chunk()
                    continue
                self._new_run(pfn, False)
                c.runs.append([pfn, take, 0])
            c.pieces.append(mv[: take * ps])
            mv = mv[take * ps :]
            c.data_pages += take
            self._data_pages += take
            pfn += take
            npages -= take
            self._last = (pfn, False)
            if c.data_pages == self._pages_per_chunk:
                self._close_chunk()

    def _close_chunk(self) -> None:
        c = self._chunk
        if not c.runs:
            return
        self._chunk = _Chunk(c.index + 1)
        table = format.pack_runs([(r[0], r[1], bool(r[2])) for r in c.runs])
        pieces, c.pieces = c.pieces, []  # the future holds them now
        fut: Future[_Compressed]
        if self._pool is None:
            fut = Future()
            fut.set_result(_compress_chunk(self._c, pieces, self._scratch))
        else:
            fut = self._pool.submit(_compress_chunk, self._c, pieces, self._scratch)
        self._inflight.append((c, table, fut))
        while self._inflight and (
            len(self._inflight) > self._max_inflight or self._inflight[0][2].done()
        ):
            self._write_oldest()

    def _write_oldest(self) -> None:
        c, table, fut = self._inflight.popleft()
        payload, payload_sha, ident = fut.result()
        head = ChunkHead(
            c.index,
            len(c.runs),
            ident,
            c.runs[0][0],
            c.runs[-1][0] + c.runs[-1][1],
            c.data_pages,
            c.zero_pages,
            len(payload),
            payload_sha,
        )
        head_bytes = head.pack() + table
        write_all(self._out, head_bytes)
        write_all(self._out, payload)
        entry = IndexEntry(
            self._pos,
            head.record_size,
            head.first_pfn,
            head.end_pfn,
            c.data_pages,
            c.zero_pages,
            hashlib.sha256(head_bytes).digest(),
        )
        self._index += entry.pack()
        self._pos += head.record_size
        self._chunks += 1

    # -- state ---------------------------------------------------------------

    def _meta_saved(self) -> ImageMeta:
        return dataclasses.replace(self._meta, window=())  # the window is not saved

    def _summary(self) -> ImageSummary:
        return self._header.summary()

    def _check_open(self) -> None:
        if self._phase is not _Phase.OPEN:
            raise ValueError(f"image writer is {self._phase.value}")

    def _shutdown(self) -> None:
        for _c, _t, fut in self._inflight:
            fut.cancel()
        self._inflight.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def _fail(self) -> None:
        """Stop for good and zero the header region, best effort: the error
        that brought us here is the one the caller needs to see."""
        self._phase = _Phase.ABORTED
        self._shutdown()
        try:
            self._out.seek(0)
            write_all(self._out, bytes(self._data_offset))
            fsync(self._out)
        except (OSError, ValueError):
            pass
