"""Reading an image: everything is checked before anything is handed out.

Opening verifies the ELF header, the notes (SHA-256 of the header), the index
(SHA-256 in the header) and the index's structure.  ``chunks`` then reads
chunk records in order on the calling thread and verifies (head checksum from
the index, payload checksum from the head), checks and decompresses them on
worker threads, a bounded number ahead; a chunk is yielded only once all of
that passed.  Memory: a few chunks plus the index (80 bytes per chunk).
"""

from __future__ import annotations

import collections
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from kexechibd.image import codec, format
from kexechibd.image.fileio import ClosedOnExit
from kexechibd.image.format import (
    CHUNK_HEAD,
    NOTES_OFFSET,
    RUN,
    Codec,
    Header,
    IndexEntry,
)
from kexechibd.image.meta import (
    Chunk,
    ImageError,
    ImageMeta,
    ImageSummary,
    Run,
    state_refusal,
)


class ImageReader(ClosedOnExit):
    """A verified view of the image in ``f`` (seekable; the image starts at
    offset 0; bytes after the image's end are ignored)."""

    meta: ImageMeta
    summary: ImageSummary

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self._lock = threading.Lock()
        self._size = f.seek(0, os.SEEK_END)
        h = self._read_header()
        self._header = h
        self.meta = h.meta
        self.summary = h.summary()
        if self._size < h.image_length:
            raise self._truncated(h)
        index = self._read_at(h.index_offset, h.index_length)
        if format.sha256(index) != h.digest:
            raise ImageError(
                f"index checksum mismatch: bytes {h.index_offset:#x}.."
                f"{h.image_length:#x} do not match the header's digest",
                offset=h.index_offset,
            )
        format.check_index(index, h)
        self._index = index

    # -- header ---------------------------------------------------------------

    def _read_header(self) -> Header:
        size = self._size
        prefix = self._read_at(0, min(size, format.PREFIX_SIZE), exact=False)
        if len(prefix) < 4 or prefix[:4] != b"\x7fELF":
            raise ImageError("not an ELF file, so not a kexechib image", offset=0)
        self._need(NOTES_OFFSET, "the ELF headers")
        end = format.notes_end(prefix[:NOTES_OFFSET])
        self._need(format.PREFIX_SIZE, "the FORMAT note")
        format.check_format_prefix(prefix)
        format.check_notes_size(prefix, end)
        self._need(end, "the header")
        region = self._read_at(0, end)
        h = format.decode_header(region)
        if size < h.data_offset:
            raise self._truncated(h)
        padding = self._read_at(end, h.data_offset - end)
        if padding.count(0) != len(padding):
            at = next(i for i, b in enumerate(padding) if b)
            raise ImageError("padding after the header is not zero", offset=end + at)
        return h

    def _need(self, size: int, what: str) -> None:
        if self._size < size:
            raise ImageError(
                f"image truncated: {self._size} bytes, but {size} are needed for {what}",
                offset=self._size,
            )

    def _truncated(self, h: Header) -> ImageError:
        """Name what is missing when the file is shorter than the image."""
        size = self._size
        msg = f"image truncated: the file ends at {size:#x}, the image is {h.image_length} bytes"
        if size < h.data_offset:
            return ImageError(f"{msg}; the header padding is incomplete", offset=size)
        pos = h.data_offset
        for k in range(h.chunks):
            if pos >= size:
                return ImageError(
                    f"{msg}; chunk {k} (from {pos:#x}) is missing", offset=size, chunk=k
                )
            head = self._read_at(pos, min(CHUNK_HEAD.size, size - pos), exact=False)
            if len(head) < CHUNK_HEAD.size:
                return ImageError(
                    f"{msg}; chunk {k} (from {pos:#x}) is incomplete", offset=size, chunk=k
                )
            fields = CHUNK_HEAD.unpack(head)
            length = CHUNK_HEAD.size + RUN.size * fields[2] + fields[9]
            if pos + length > size:
                return ImageError(
                    f"{msg}; chunk {k} ({pos:#x}..{pos + length:#x}) is incomplete",
                    offset=size,
                    chunk=k,
                )
            pos += length
        return ImageError(
            f"{msg}; the index ({h.index_offset:#x}..{h.image_length:#x}) is incomplete",
            offset=size,
        )

    # -- I/O ------------------------------------------------------------------

    def _read_at(
        self, offset: int, n: int, *, exact: bool = True, chunk: int | None = None
    ) -> bytes:
        with self._lock:
            self._f.seek(offset)
            data = self._f.read(n)
            if len(data) < n:
                parts = [data]
                got = len(data)
                while got < n:
                    more = self._f.read(n - got)
                    if not more:
                        break
                    parts.append(more)
                    got += len(more)
                data = b"".join(parts)
        if exact and len(data) < n:
            raise ImageError(
                f"image truncated: {n} bytes at {offset:#x} expected, the file has {len(data)}",
                offset=offset + len(data),
                chunk=chunk,
            )
        return data

    def close(self) -> None:
        self._f.close()

    # -- state ----------------------------------------------------------------

    def require_resumable(self, *, force: bool = False) -> None:
        """Refuse an invalidated image always, a consumed one unless ``force``."""
        refusal = state_refusal(self.summary.state, force=force)
        if refusal:
            raise ImageError(refusal, offset=format.STATE_OFFSET)

    # -- chunks ---------------------------------------------------------------

    def _entry(self, k: int) -> IndexEntry:
        return format.index_entry(self._index, k)

    def _decode(self, k: int, e: IndexEntry, record: bytes) -> Chunk:
        """Verify and decode chunk ``k`` (runs on a worker thread)."""
        h = self._header
        mv = memoryview(record)
        nruns = int.from_bytes(mv[12:16], "little")
        head_len = CHUNK_HEAD.size + RUN.size * nruns
        if head_len > len(record) or format.sha256(mv[:head_len]) != e.head_sha:
            raise ImageError(
                "chunk header or run table checksum mismatch (it does not match the index)",
                offset=e.offset,
                chunk=k,
            )
        c = format.decode_chunk_head(mv[: CHUNK_HEAD.size], k, e, h)
        runs = tuple(format.decode_runs(mv[CHUNK_HEAD.size : head_len], c, e))
        payload = mv[head_len:]
        if format.sha256(payload) != c.payload_sha:
            raise ImageError(
                f"chunk data checksum mismatch ({len(payload)} bytes from "
                f"{e.offset + head_len:#x})",
                offset=e.offset + head_len,
                chunk=k,
            )
        data: bytes | memoryview = payload
        if c.codec != Codec.NONE:
            try:
                data = codec.decompress(c.codec, payload, c.data_pages * h.page_size)
            except codec.CodecError as err:
                raise ImageError(str(err), offset=e.offset + head_len, chunk=k) from err
        return Chunk(k, runs, data)

    def _start(self, pool: ThreadPoolExecutor | None, k: int) -> Future[Chunk]:
        e = self._entry(k)
        try:
            record = self._read_at(e.offset, e.length, chunk=k)
        except ImageError as err:
            fut: Future[Chunk] = Future()
            fut.set_exception(err)
            return fut
        if pool is not None:
            return pool.submit(self._decode, k, e, record)
        fut = Future()
        try:
            fut.set_result(self._decode(k, e, record))
        except ImageError as err:
            fut.set_exception(err)
        return fut

    def chunks(self, *, prefetch: int = 2, threads: int | None = None) -> Iterator[Chunk]:
        """Every chunk in order, verified; worker threads decode at most
        ``prefetch`` chunks ahead of the one the caller holds."""
        if prefetch < 0:
            raise ValueError("prefetch must be >= 0")
        workers = codec.pool_size() if threads is None else threads
        return self._chunks(prefetch, workers)

    def _chunks(self, prefetch: int, workers: int) -> Iterator[Chunk]:
        h = self._header
        pool = (
            ThreadPoolExecutor(min(workers, prefetch + 1), "kexechib-read")
            if prefetch and workers
            else None
        )
        pending: collections.deque[Future[Chunk]] = collections.deque()
        started = 0
        last: Run | None = None
        runs = 0
        try:
            for k in range(h.chunks):
                while started < h.chunks and started <= k + prefetch:
                    pending.append(self._start(pool, started))
                    started += 1
                chunk = pending.popleft().result()
                for r in chunk.runs:
                    if not (last and last.zero == r.zero and last.end == r.pfn):
                        runs += 1
                    last = r
                yield chunk
            self._check_runs(runs)
        finally:
            for fut in pending:
                fut.cancel()
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def _check_runs(self, runs: int) -> None:
        if runs != self._header.runs:
            raise ImageError(
                f"chunks hold {runs} runs, the header says {self._header.runs}", offset=0
            )

    def verify(self) -> None:
        """Read and check every chunk; ``ImageError`` names the first bad one."""
        workers = codec.pool_size()
        for _chunk in self.chunks(prefetch=workers, threads=workers):
            pass

    def covered(self) -> Iterator[Run]:
        """Every maximal run in address order, from the run tables alone
        (verified against the index); the page data is not read."""
        h = self._header
        pending: Run | None = None
        runs = 0
        for k in range(h.chunks):
            e = self._entry(k)
            head = self._read_at(e.offset, CHUNK_HEAD.size, chunk=k)
            nruns = int.from_bytes(head[12:16], "little")
            table_len = RUN.size * nruns
            table = (
                self._read_at(e.offset + CHUNK_HEAD.size, table_len, chunk=k)
                if CHUNK_HEAD.size + table_len <= e.length
                else b""
            )
            if format.sha256(head, table) != e.head_sha:
                raise ImageError(
                    "chunk header or run table checksum mismatch (it does not match the index)",
                    offset=e.offset,
                    chunk=k,
                )
            c = format.decode_chunk_head(head, k, e, h)
            for r in list(format.decode_runs(table, c, e)):
                if pending and pending.zero == r.zero and pending.end == r.pfn:
                    pending = Run(pending.pfn, pending.npages + r.npages, r.zero)
                    continue
                if pending:
                    runs += 1
                    yield pending
                pending = r
        if pending:
            runs += 1
            yield pending
        self._check_runs(runs)
