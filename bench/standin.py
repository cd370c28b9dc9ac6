"""A kernel stand-in for timing the loader alone (issue 15, item 3).

On the model, ``kexec_load`` is the model kernel's Python: placement tables,
the entry list, a ``pwrite`` per run into the file that is model memory, the
checks.  A real kernel does that work in C, and what it must spend per byte
is one copy of each segment's buffer from the caller into pages it holds.
``CopyKernel.kexec_load`` does exactly that and nothing else: each data
segment's bytes are copied (one ``memcpy``, through the buffer protocol, no
intermediate ``bytes``) into preallocated, already faulted-in anonymous
pages at the segment's destination offset; a zero-fill segment
(``bufsz == 0``) costs nothing, as the patched kernel only records it; a
buffer shorter than its segment has the rest zeroed, as the kernel clears
it.  No placement, no entry list, no checks: the time left is the loader's
own (reading, verifying, decompressing, planning, calling) plus the copy.

Used by ``python -m bench.worker resume IMAGE MACHINE --copy-kernel``; the
machine gives the memory map (read once, before the clock starts).
"""

from __future__ import annotations

import mmap
from collections.abc import Sequence

from kexechibd.kernel import abi
from kexechibd.kernel.api import MemoryKind, MemoryRange

_ZEROS = bytes(1 << 20)


class CopyKernel:
    """``kexec_load`` as one copy per data segment into preallocated pages."""

    backend = "copy stand-in"

    def __init__(self, memory_map: Sequence[MemoryRange]) -> None:
        self._map = list(memory_map)
        size = max(r.end for r in self._map if r.kind is MemoryKind.RAM)
        # Faulted in now (MAP_POPULATE), as a kernel's free pages are there
        # before the call: the timed copy takes no page fault.
        self._pages = mmap.mmap(
            -1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | mmap.MAP_POPULATE
        )
        self.calls = 0
        self.copied = 0

    def memory_map(self) -> list[MemoryRange]:
        return list(self._map)

    def kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        pages = self._pages
        for seg in segments:
            n = seg.bufsz
            if n:
                pages[seg.mem : seg.mem + n] = seg.buf
                self.copied += n
            pos, end = seg.mem + n, seg.end if n else seg.mem
            while pos < end:  # the part of a data segment beyond its buffer
                step = min(end - pos, len(_ZEROS))
                pages[pos : pos + step] = _ZEROS[:step]
                pos += step
        self.calls += 1

    def close(self) -> None:
        self._pages.close()
