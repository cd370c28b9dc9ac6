"""A model kernel's page allocator.

One byte per page frame: 0 = free, 1 = in use or not RAM.  Free pages are
handed out from the top of memory down, as Linux's buddy allocator does after
boot (memblock frees pages in ascending order onto LIFO free lists), and a
page freed above the last one handed out comes back first.  Placement
(``kimage``) relies on none of this order: it takes a destination page
itself when that page is free (``take``) and checks every other page it is
given (DESIGN §2.2, placement).
"""

from __future__ import annotations

from collections.abc import Iterable

FREE = 0
USED = 1


class OutOfPages(Exception):
    """No free page is left (the kernel's ENOMEM)."""


class PageAllocator:
    def __init__(self, npages: int, bitmap: bytes | bytearray | None = None) -> None:
        if bitmap is not None and len(bitmap) != npages:
            raise ValueError("allocator bitmap size does not match the machine")
        self.npages = npages
        self._map = bytearray(bitmap) if bitmap is not None else bytearray(b"\x01" * npages)
        self._cursor = npages

    @classmethod
    def with_free(cls, npages: int, free_ranges: Iterable[tuple[int, int]]) -> PageAllocator:
        """An allocator whose free pages are exactly ``free_ranges`` (pfn ranges)."""
        alloc = cls(npages)
        for start, end in free_ranges:
            alloc._map[start:end] = bytes(end - start)
        return alloc

    def to_bytes(self) -> bytes:
        return bytes(self._map)

    @property
    def free_pages(self) -> int:
        return self._map.count(FREE)

    def is_free(self, pfn: int) -> bool:
        return 0 <= pfn < self.npages and self._map[pfn] == FREE

    def alloc(self) -> int:
        pfn = self._map.rfind(FREE, 0, self._cursor)
        if pfn < 0:
            pfn = self._map.rfind(FREE, self._cursor)
            if pfn < 0:
                raise OutOfPages("no free page left")
        self._map[pfn] = USED
        self._cursor = pfn
        return pfn

    def take(self, pfn: int) -> bool:
        """Take this particular page if it is free (Linux: take_page_off_buddy)."""
        if self.is_free(pfn):
            self._map[pfn] = USED
            return True
        return False

    def free_run(self, start: int, limit: int) -> int:
        """How many pages from ``start`` on (at most ``limit``) are free."""
        end = min(start + limit, self.npages)
        used = self._map.find(USED, start, end)
        return (end if used < 0 else used) - start

    def free(self, pfn: int) -> None:
        if self._map[pfn] == FREE:
            raise ValueError(f"double free of page frame {pfn:#x}")
        self._map[pfn] = FREE
        if pfn >= self._cursor:
            self._cursor = pfn + 1

    def reserve(self, start: int, end: int) -> None:
        """Mark page frames ``[start, end)`` used (kernel footprint, firmware)."""
        self._map[start:end] = b"\x01" * (end - start)

    def release(self, start: int, end: int) -> None:
        self._map[start:end] = bytes(end - start)
        self._cursor = max(self._cursor, end)

    def free_in(self, start: int, end: int) -> list[int]:
        return [start + i for i, v in enumerate(self._map[start:end]) if v == FREE]

    def used_in(self, start: int, end: int) -> list[int]:
        return [start + i for i, v in enumerate(self._map[start:end]) if v == USED]
