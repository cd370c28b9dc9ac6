"""Mainline's source-page placement, kept only as the benchmark's reference.

``kimage_alloc_page()`` in kernel/kexec_core.c (6.1): allocate pages until one
is the wanted destination or no destination at all; a page that is somebody
else's destination is checked against the whole entry list
(``kimage_dst_used``: O(entries)) and, if free of a source, parked on
``dest_pages``, which is itself searched linearly; "is this a destination"
(``kimage_is_destination_range``) scans every segment.  Placement only: no
data is copied, so the comparison flatters mainline.
"""

from __future__ import annotations

from collections.abc import Iterator


class MainlinePlacement:
    def __init__(self, free_pages: Iterator[int]) -> None:
        self._free = free_pages  # the page allocator's order
        self.segments: list[tuple[int, int]] = []  # [start, end) pfns
        self.entries: list[tuple[int, int]] = []  # (dest, src)
        self.dest_pages: list[int] = []

    def _is_destination(self, pfn: int) -> bool:
        return any(start <= pfn < end for start, end in self.segments)

    def _dst_used(self, pfn: int) -> int | None:
        for i, (dest, _) in enumerate(self.entries):
            if dest == pfn:
                return i
        return None

    def alloc_source(self, dest: int) -> int:
        for i, page in enumerate(self.dest_pages):
            if page == dest:
                return self.dest_pages.pop(i)
        while True:
            page = next(self._free)
            if page == dest or not self._is_destination(page):
                return page
            used = self._dst_used(page)
            if used is not None:
                old_dest, old_src = self.entries[used]
                self.entries[used] = (old_dest, page)
                return old_src
            self.dest_pages.append(page)

    def load(self, segments: list[tuple[int, int]]) -> None:
        self.segments.extend(segments)
        for start, end in segments:
            for dest in range(start, end):
                self.entries.append((dest, self.alloc_source(dest)))
