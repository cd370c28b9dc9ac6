"""A model kernel's kexec image: building it (mainline and staged loads,
DESIGN §2.1–§2.2), its entry list in memory, relocation.

The tables keyed by page frame (destination → source, source → destination
it serves) stand for the hash table the kernel patch adds: every placement
decision is O(1), and they hold what an image touches, never a slot for every
page of the machine.
The entry list is written into indirection pages in model memory when the
image is finished, laid out as the kernel lays it out and walked as
``relocate_kernel`` walks it — so the backup map of a preserve-context image
is part of the memory an image saves.
"""

from __future__ import annotations

import array
import bisect
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE
from kexechibd.model.allocator import PageAllocator
from kexechibd.model.memory import PhysicalMemory

ENTRY_SOURCE = "source"
ENTRY_ZERO = "zero"
ENTRY_INDIRECTION = "indirection"  # only from _walk: a page of the list itself
NONE = -1  # table value: this page plays no role
ZERO = -2  # table value: zero-fill destination


class CorruptEntryList(Exception):
    """The entry list in memory is not one a kernel could have written."""


@dataclass
class LoadedImage:
    """What a model kernel remembers of its loaded image (the rest is in memory)."""

    head: int  # physical address of the first indirection page (0: no entries)
    control: int  # physical address of the control page
    swap: int  # physical address of the swap page
    start: int  # entry point; replaced by the peer's re-entry point after a jump back
    preserve_context: bool
    entry_segment: tuple[int, int]  # [mem, end) of the segment holding the entry, if any

    def to_json(self) -> dict[str, object]:
        return {
            "head": self.head,
            "control": self.control,
            "swap": self.swap,
            "start": self.start,
            "preserve_context": self.preserve_context,
            "entry_segment": list(self.entry_segment),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> LoadedImage:
        seg = data["entry_segment"]
        assert isinstance(seg, list)
        return cls(
            head=int(str(data["head"])),
            control=int(str(data["control"])),
            swap=int(str(data["swap"])),
            start=int(str(data["start"])),
            preserve_context=bool(data["preserve_context"]),
            entry_segment=(int(seg[0]), int(seg[1])),
        )


def _walk(memory: PhysicalMemory, head: int) -> Iterator[tuple[str, int, int]]:
    """Every entry of the list at ``head`` and every indirection page (as
    ``(ENTRY_INDIRECTION, page_pfn, 0)``), refusing any list a kernel could
    not have written: it may come from an image, so it is bounded (a page is
    visited once) and checked (one flag per entry, nothing outside memory)."""
    if head == 0:
        return
    npages = memory.size >> PAGE_SHIFT
    seen: set[int] = set()
    page = head
    dest = -1
    while True:
        if page % PAGE_SIZE or not 0 <= page < memory.size:
            raise CorruptEntryList(f"bad indirection page {page:#x}")
        if page in seen:
            raise CorruptEntryList(f"indirection page {page:#x} is linked twice (a cycle)")
        seen.add(page)
        yield ENTRY_INDIRECTION, page >> PAGE_SHIFT, 0
        next_page = -1
        for word in array.array("Q", memory.read(page, PAGE_SIZE)):
            flag = word & ~abi.PAGE_MASK
            addr = word & abi.PAGE_MASK
            if flag == abi.IND_DESTINATION:
                dest = addr >> PAGE_SHIFT
            elif flag == abi.IND_SOURCE or (flag == abi.IND_ZERO and addr == 0):
                if not 0 <= dest < npages:
                    raise CorruptEntryList(f"entry {word:#x} has no destination in memory")
                if flag == abi.IND_ZERO:
                    yield ENTRY_ZERO, dest, 0
                elif addr + PAGE_SIZE > memory.size:
                    raise CorruptEntryList(f"source entry {word:#x} lies outside memory")
                else:
                    yield ENTRY_SOURCE, dest, addr >> PAGE_SHIFT
                dest += 1
            elif flag == abi.IND_INDIRECTION:
                next_page = addr
                break
            elif word == abi.IND_DONE:
                return
            else:
                raise CorruptEntryList(f"entry {word:#x} is not one a kernel writes")
        if next_page < 0:
            raise CorruptEntryList(f"indirection page {page:#x} ends without a link or IND_DONE")
        page = next_page


def walk_entries(memory: PhysicalMemory, head: int) -> Iterator[tuple[str, int, int]]:
    """``(kind, dest_pfn, src_pfn)`` for every page of the list at ``head``
    (``src_pfn`` is 0 for zero-fill pages).  Raises ``CorruptEntryList``."""
    return ((k, d, s) for k, d, s in _walk(memory, head) if k != ENTRY_INDIRECTION)


def _moves(entries: Sequence[tuple[str, int, int]]) -> Iterator[tuple[int, int, int]]:
    """``(dest, src, length)`` in bytes for the runs of data pages that
    relocation moves (those that are not their own source)."""
    pairs = ((d, s) for k, d, s in entries if k == ENTRY_SOURCE and d != s)
    for run in abi.coalesce_page_map(pairs):
        yield run.dest_pfn << PAGE_SHIFT, run.src_pfn << PAGE_SHIFT, run.npages << PAGE_SHIFT


def relocate(memory: PhysicalMemory, image: LoadedImage) -> None:
    """What ``relocate_kernel`` does before entering the new image: swap every
    destination with its source (preserve-context: the source keeps the old
    contents), or copy all data pages first and zero the zero-fill pages last.
    The whole list is checked before anything moves."""
    entries = list(walk_entries(memory, image.head))
    if image.preserve_context:
        for dest, src, length in _moves(entries):
            memory.swap(dest, src, length)
        return
    for dest, src, length in _moves(entries):
        memory.copy(dest, src, length)
    for run in abi.coalesce_page_map((d, d) for k, d, _ in entries if k == ENTRY_ZERO):
        memory.zero(run.dest_pfn << PAGE_SHIFT, run.npages << PAGE_SHIFT)


def swap_back(memory: PhysicalMemory, head: int) -> None:
    """The return path of a preserve-context jump: the same swap again."""
    for dest, src, length in _moves(list(walk_entries(memory, head))):
        memory.swap(dest, src, length)


def image_pages(memory: PhysicalMemory, image: LoadedImage) -> set[int]:
    """Every page frame a loaded image owns: sources, indirection, control, swap."""
    pages = {image.control >> PAGE_SHIFT}
    if image.swap:
        pages.add(image.swap >> PAGE_SHIFT)
    for kind, pfn, src in _walk(memory, image.head):
        if kind == ENTRY_INDIRECTION:
            pages.add(pfn)
        elif kind == ENTRY_SOURCE:
            pages.add(src)
    return pages


def page_map_of(pairs: Iterable[tuple[str, int, int]]) -> bytes:
    """``/proc/kexec_pgmap`` bytes for entry-list pages (zero-fill pages are not listed)."""
    data = sorted((d, s) for kind, d, s in pairs if kind == ENTRY_SOURCE)
    return abi.encode_page_map(abi.coalesce_page_map(data))


_CHUNK_SHIFT = 9
_CHUNK = 1 << _CHUNK_SHIFT
_CHUNK_MASK = _CHUNK - 1
_UNUSED_CHUNK = array.array("q", [NONE]) * _CHUNK


class _DestTable:
    """Destination page frame → source page frame, ``ZERO`` or ``NONE``.

    Stands for the kernel patch's hash table: O(1) per look-up, memory for
    the pages an image touches (allocated 512 frames at a time on first use),
    never for the whole machine."""

    def __init__(self) -> None:
        self._chunks: dict[int, array.array[int]] = {}

    def get(self, pfn: int) -> int:
        chunk = self._chunks.get(pfn >> _CHUNK_SHIFT)
        return NONE if chunk is None else chunk[pfn & _CHUNK_MASK]

    def _chunk(self, index: int) -> array.array[int]:
        chunk = self._chunks.get(index)
        if chunk is None:
            chunk = self._chunks[index] = array.array("q", _UNUSED_CHUNK)
        return chunk

    def set(self, pfn: int, value: int) -> None:
        self._chunk(pfn >> _CHUNK_SHIFT)[pfn & _CHUNK_MASK] = value

    @staticmethod
    def _pieces(first: int, count: int) -> Iterator[tuple[int, int, int]]:
        """``(pfn, offset in its chunk, length)`` pieces of ``[first, first + count)``."""
        off = first & _CHUNK_MASK
        if off + count <= _CHUNK:  # the common case: one chunk
            yield first, off, count
            return
        pfn, end = first, first + count
        while pfn < end:
            off = pfn & _CHUNK_MASK
            n = min(end - pfn, _CHUNK - off)
            yield pfn, off, n
            pfn += n

    def set_own(self, first: int, count: int) -> None:
        """Pages ``[first, first + count)`` are their own sources."""
        for pfn, off, n in self._pieces(first, count):
            chunk = self._chunk(pfn >> _CHUNK_SHIFT)
            if n == 1:
                chunk[off] = pfn
            else:
                chunk[off : off + n] = array.array("q", range(pfn, pfn + n))

    def unassigned(self, first: int, count: int) -> int:
        """How many pages from ``first`` on (at most ``count``) have no source yet."""
        for pfn, off, n in self._pieces(first, count):
            chunk = self._chunks.get(pfn >> _CHUNK_SHIFT)
            if chunk is None or not n or max(chunk[off : off + n]) < 0:
                continue  # no source among them (found in C, not page by page)
            for i in range(off, off + n):
                if chunk[i] >= 0:
                    return pfn + i - off - first
        return count

    def mark_zero(self, first: int, count: int) -> list[int]:
        """Make pages without a source zero-fill destinations; returns the
        sources of those that have one (they stay data pages)."""
        sources = []
        for pfn, off, n in self._pieces(first, count):
            index = pfn >> _CHUNK_SHIFT
            chunk = self._chunks.get(index)
            if chunk is None:
                chunk = self._chunks[index] = array.array("q", _UNUSED_CHUNK)
                chunk[off : off + n] = array.array("q", [ZERO]) * n
                continue
            for i in range(off, off + n):
                value = chunk[i]
                if value >= 0:
                    sources.append(value)
                else:
                    chunk[i] = ZERO
        return sources

    def entry_words(self) -> array.array[int]:
        """The entry list's words in destination order, as kimage_add_entry()
        writes them: a destination word where the pages stop being
        consecutive, then a source or zero word per page.  Most pages of a
        restored image are their own sources, in long stretches broken by
        the few pages the kernel held: those stretches are found by comparing
        slices (in C) and become their words as one range each; only
        what differs is gone through page by page."""
        words: array.array[int] = array.array("Q")
        expected = -1

        def span(
            chunk: array.array[int], own: array.array[int], base: int, lo: int, hi: int
        ) -> None:
            nonlocal expected
            if chunk[lo:hi] == own[lo:hi]:
                if base + lo != expected:
                    words.append(((base + lo) << PAGE_SHIFT) | abi.IND_DESTINATION)
                first = ((base + lo) << PAGE_SHIFT) | abi.IND_SOURCE
                words.extend(range(first, first + ((hi - lo) << PAGE_SHIFT), PAGE_SIZE))
                expected = base + hi
            elif hi - lo > 16:
                mid = (lo + hi) // 2
                span(chunk, own, base, lo, mid)
                span(chunk, own, base, mid, hi)
            else:
                for off in range(lo, hi):
                    value = chunk[off]
                    if value == NONE:
                        continue
                    if base + off != expected:
                        words.append(((base + off) << PAGE_SHIFT) | abi.IND_DESTINATION)
                    words.append(
                        (value << PAGE_SHIFT) | abi.IND_SOURCE if value >= 0 else abi.IND_ZERO
                    )
                    expected = base + off + 1

        for index in sorted(self._chunks):
            base = index << _CHUNK_SHIFT
            span(self._chunks[index], array.array("q", range(base, base + _CHUNK)), base, 0, _CHUNK)
        return words

    def items(self) -> Iterator[tuple[int, int]]:
        """``(dest, source | ZERO)`` in destination order."""
        for index in sorted(self._chunks):
            base = index << _CHUNK_SHIFT
            for off, value in enumerate(self._chunks[index]):
                if value != NONE:
                    yield base + off, value


class _Intervals:
    """Sorted, merged page-frame intervals: "is this page a destination of a
    data segment in the current call?" in O(log n)."""

    def __init__(self, spans: Sequence[tuple[int, int]]) -> None:
        merged: list[list[int]] = []
        for start, end in sorted(spans):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def __contains__(self, pfn: int) -> bool:
        i = bisect.bisect_right(self._starts, pfn) - 1
        return i >= 0 and pfn < self._ends[i]


class ImageBuilder:
    """An image under construction.  ``staged`` selects DESIGN §2.2's rules
    (overlap allowed, zero-fill segments); both kinds take a destination page
    that is free when its data arrives as its own source first."""

    def __init__(
        self,
        memory: PhysicalMemory,
        allocator: PageAllocator,
        *,
        preserve_context: bool,
        staged: bool,
    ) -> None:
        self.memory = memory
        self.allocator = allocator
        self.preserve_context = preserve_context
        self.staged = staged
        self._src = _DestTable()  # dest → source pfn | ZERO | NONE
        self._serves: dict[int, int] = {}  # source → the other destination it serves
        self._private: list[int] = []  # control, swap, indirection pages
        self._parked: set[int] = set()
        self._pending = _Intervals(())
        self._segments = array.array("Q")  # mem, end pairs, in load order
        self.data_pages = 0  # destinations with a source page (the kernel's nr_data_pages)

    # ---------------------------------------------------------------- loading

    def add(self, segments: Sequence[abi.Segment]) -> None:
        """Load one call's segments.  Raises ``OutOfPages``; the caller then
        discards the whole builder (all or nothing)."""
        self._pending = _Intervals(
            [(s.mem >> PAGE_SHIFT, s.end >> PAGE_SHIFT) for s in segments if not self.zero_fill(s)]
        )
        try:
            for seg in segments:
                self._segments.extend((seg.mem, seg.end))
                if self.zero_fill(seg):
                    self._add_zero_fill(seg)
                else:
                    self._add_data(seg)
        finally:
            for pfn in self._parked:
                self.allocator.free(pfn)
            self._parked.clear()
            self._pending = _Intervals(())

    def zero_fill(self, seg: abi.Segment) -> bool:
        """Whether ``seg`` is a zero-fill segment here: no source pages."""
        return self.staged and not self.preserve_context and seg.bufsz == 0

    def _add_zero_fill(self, seg: abi.Segment) -> None:
        first = seg.mem >> PAGE_SHIFT
        for src in self._src.mark_zero(first, seg.memsz >> PAGE_SHIFT):
            # Overlap onto a data page: it stays a data page, now zero.
            self.memory.zero(src << PAGE_SHIFT, PAGE_SIZE)

    def _add_data(self, seg: abi.Segment) -> None:
        buf = memoryview(seg.buf).cast("B") if seg.bufsz else memoryview(b"")
        first = seg.mem >> PAGE_SHIFT
        npages = seg.memsz >> PAGE_SHIFT
        table = self._src
        i = 0
        while i < npages:
            # Fast path: a run of destination pages that are free here and
            # have no source yet becomes its own source, written in one go.
            run = self._own_run(first + i, npages - i)
            if run:
                self._write(first + i, buf, i, run)
                i += run
                continue
            dest = first + i
            src = table.get(dest)
            if src < 0:
                self.data_pages += 1
                if dest in self._serves:
                    self._evict(dest)
                    src = dest
                else:
                    src = self._source_for(dest)
                self._assign(dest, src)
            self._write(src, buf, i, 1)
            i += 1

    def _assign(self, dest: int, src: int) -> None:
        self._src.set(dest, src)
        if src != dest:
            self._serves[src] = dest

    def _own_run(self, dest: int, limit: int) -> int:
        """Take the free pages from ``dest`` on that have no source yet (at most
        ``limit``) as their own sources; how many.  Looks ahead in windows that
        double, so the work is proportional to the pages taken, not to ``limit``."""
        table = self._src
        if table.get(dest) >= 0:
            return 0
        count = 0
        window = 16
        while count < limit:
            want = min(window, limit - count)
            free = self.allocator.free_run(dest + count, want)
            got = table.unassigned(dest + count, free)
            count += got
            if got < want:
                break
            window *= 2
        if count:
            self.allocator.reserve(dest, dest + count)
            table.set_own(dest, count)
            self.data_pages += count
        return count

    def _write(self, src: int, buf: memoryview, index: int, npages: int) -> None:
        """Fill ``npages`` source pages from page ``index`` of ``buf``; the
        part beyond the buffer is zero (``bufsz < memsz``)."""
        start = index * PAGE_SIZE
        end = start + npages * PAGE_SIZE
        data = buf[start:end]
        addr = src << PAGE_SHIFT
        if len(data):
            self.memory.write(addr, data)
        if len(data) < npages * PAGE_SIZE:
            self.memory.zero(addr + len(data), npages * PAGE_SIZE - len(data))

    def _source_for(self, dest: int) -> int:
        """A source page for ``dest`` that keeps the placement invariant: it is
        ``dest`` itself or not a data destination (zero-fill is fine)."""
        if dest in self._parked:
            self._parked.discard(dest)
            return dest
        if self.allocator.take(dest):
            return dest
        while True:
            page = self.allocator.alloc()
            if page == dest:
                return page
            holder = self._src.get(page)
            if holder >= 0:
                # ``page`` is a destination whose data waits in ``holder``:
                # move the data home and reuse ``holder`` (mainline's swap).
                self.memory.copy(page << PAGE_SHIFT, holder << PAGE_SHIFT, PAGE_SIZE)
                self._src.set(page, page)
                del self._serves[holder]
                return holder
            if page in self._pending:
                self._parked.add(page)
                continue
            return page

    def _evict(self, page: int) -> None:
        """``page`` holds another destination's data but is now a data
        destination itself: move that data to a fresh source first."""
        other = self._serves.pop(page)
        new = self._source_for(other)
        self.memory.copy(new << PAGE_SHIFT, page << PAGE_SHIFT, PAGE_SIZE)
        self._assign(other, new)

    # ---------------------------------------------------------------- queries

    def entries(self) -> Iterator[tuple[str, int, int]]:
        for dest, src in self._src.items():
            if src >= 0:
                yield ENTRY_SOURCE, dest, src
            else:
                yield ENTRY_ZERO, dest, 0

    def page_map(self) -> bytes:
        return page_map_of(self.entries())

    def segment_containing(self, addr: int) -> tuple[int, int]:
        segs = self._segments
        for i in range(len(segs) - 2, -1, -2):
            if segs[i] <= addr < segs[i + 1]:
                return segs[i], segs[i + 1]
        return 0, 0

    # ---------------------------------------------------------------- finishing

    def _alloc_private(self, count: int) -> list[int]:
        """Pages for the kernel's own use during relocation (control, swap,
        indirection): never any kind of destination, never a source.  The
        destinations the allocator offers meanwhile are set aside until all
        ``count`` pages are found, so each is passed once."""
        set_aside = []
        pages: list[int] = []
        try:
            while len(pages) < count:
                page = self.allocator.alloc()
                if self._src.get(page) != NONE:
                    set_aside.append(page)
                else:
                    self._private.append(page)
                    pages.append(page)
        finally:
            for page in set_aside:
                self.allocator.free(page)
        return pages

    def finish(self, entry: int, *, crash: bool = False) -> LoadedImage:
        """Terminate the entry list and write it into memory, laid out as
        kimage_add_entry() and kimage_terminate() do: up to 511 entries per
        indirection page, then the link to the next page or IND_DONE."""
        words = self._src.entry_words()
        per_page = abi.ENTRIES_PER_PAGE - 1
        npages = max(1, -(-len(words) // per_page))
        private = self._alloc_private(npages + (1 if crash else 2))
        control, swap = private[0], 0 if crash else private[1]
        pages = private[-npages:]
        for n, page in enumerate(pages):
            chunk = words[n * per_page : (n + 1) * per_page]
            last = n + 1 == len(pages)
            chunk.append(
                abi.IND_DONE if last else (pages[n + 1] << PAGE_SHIFT) | abi.IND_INDIRECTION
            )
            self.memory.write(page << PAGE_SHIFT, chunk.tobytes().ljust(PAGE_SIZE, b"\0"))
        return LoadedImage(
            head=pages[0] << PAGE_SHIFT,
            control=control << PAGE_SHIFT,
            swap=swap << PAGE_SHIFT,
            start=entry,
            preserve_context=self.preserve_context,
            entry_segment=self.segment_containing(entry),
        )

    def discard(self) -> None:
        for kind, _, src in self.entries():
            if kind == ENTRY_SOURCE:
                self.allocator.free(src)
        for pfn in self._private:
            self.allocator.free(pfn)
        self._private.clear()
        self._src = _DestTable()
        self._serves.clear()
