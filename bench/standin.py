"""A kernel stand-in for timing the loader alone (issue 15, item 3).

On the model, ``kexec_load`` is the model kernel's Python: placement tables,
the entry list, a ``pwrite`` per run into the file that is model memory, the
checks.  A real kernel does that work in C, and what it must spend per byte
is one copy of each segment's buffer from the caller into pages it holds.
``CopyKernel.kexec_load`` does exactly that and nothing else: each data
segment's bytes are copied into pages that exist before the call — one
``pwrite`` into a tmpfs file whose pages were all written beforehand
(``prepare``), so the copy is the kernel's own ``copy_from_user`` into
resident pages: no page fault, no allocation, and nothing in the loader's
RSS.  A zero-fill segment (``bufsz == 0``) costs nothing, as the patched
kernel only records it; a buffer shorter than its segment has the rest
zeroed, as the kernel clears it.  No placement, no entry list, no checks:
the time left is the loader's own (reading, verifying, decompressing,
planning, calling) plus the copy.

Used by ``python -m bench.worker resume IMAGE MACHINE --copy-kernel PAGES``;
the machine gives the memory map (read once, before the clock starts).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from kexechibd.kernel import abi
from kexechibd.kernel.api import MemoryKind, MemoryRange

_ZEROS = bytes(1 << 20)


def prepare(path: Path, size: int) -> None:
    """A file of ``size`` bytes whose every page is written (resident on
    tmpfs): the stand-in's pages, made once and kept between runs."""
    if path.exists() and path.stat().st_size >= size:
        return
    with open(path, "wb") as f:
        os.fchmod(f.fileno(), 0o600)
        for _ in range(-(-size // len(_ZEROS))):
            f.write(_ZEROS)


class CopyKernel:
    """``kexec_load`` as one copy per data segment into resident pages."""

    backend = "copy stand-in"

    def __init__(self, memory_map: Sequence[MemoryRange], pages: Path) -> None:
        self._map = list(memory_map)
        size = max(r.end for r in self._map if r.kind is MemoryKind.RAM)
        prepare(pages, size)
        self._fd = os.open(pages, os.O_RDWR)
        self.calls = 0

    def memory_map(self) -> list[MemoryRange]:
        return list(self._map)

    def kexec_load(self, entry: int, segments: Sequence[abi.Segment], flags: int) -> None:
        fd = self._fd
        for seg in segments:
            n = seg.bufsz
            if n:
                done = os.pwrite(fd, seg.buf, seg.mem)
                while done < n:  # a short write: the rest, from where it stopped
                    done += os.pwrite(fd, memoryview(seg.buf)[done:], seg.mem + done)
            pos, end = seg.mem + n, seg.end if n else seg.mem
            while pos < end:  # the part of a data segment beyond its buffer
                pos += os.pwrite(fd, _ZEROS[: min(end - pos, len(_ZEROS))], pos)
        self.calls += 1

    def close(self) -> None:
        os.close(self._fd)
