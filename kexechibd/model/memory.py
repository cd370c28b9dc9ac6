"""Physical memory of the model: a sparse file, mapped shared.

Every process that plays a kernel of the same machine maps the same file, so
what one kernel leaves in memory is what the next one finds — the only
channel between kernels, as on hardware.

``read`` and ``write`` use ``pread``/``pwrite`` on the file rather than the
mapping (both see the same page cache): copying a page costs no page fault,
reading a page that was never written allocates nothing, and memory a model
kernel copies does not count in its process's RSS — as a real kernel's
copies do not count in the RSS of the process that asked for them.
"""

from __future__ import annotations

import ctypes
import hashlib
import mmap
import os
import random
from collections.abc import Iterable
from pathlib import Path

from kexechibd.kernel.abi import PAGE_SIZE

# ctypes, not cffi: cffi parses its declaration with pycparser at import,
# 60-150 ms of every process that opens a model machine (the resume bench's
# included) — a cost no kernel has.
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
_libc.fallocate.restype = ctypes.c_int
FALLOC_FL_KEEP_SIZE = 0x01
FALLOC_FL_PUNCH_HOLE = 0x02
SEEK_DATA = 3
SEEK_HOLE = 4
_ZERO_MIB = bytes(1 << 20)


class PhysicalMemory:
    """``size`` bytes of physical memory starting at address 0."""

    def __init__(self, path: Path, size: int, *, create: bool = False) -> None:
        flags = os.O_RDWR | (os.O_CREAT if create else 0)
        self.path = path
        self.size = size
        self._fd = os.open(path, flags, 0o600)
        if create:
            os.ftruncate(self._fd, size)
        self.mm = mmap.mmap(self._fd, size, mmap.MAP_SHARED)

    def close(self) -> None:
        self.mm.close()
        os.close(self._fd)

    def __enter__(self) -> PhysicalMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def check(self, addr: int, length: int) -> None:
        if addr < 0 or length < 0 or addr + length > self.size:
            raise ValueError(f"physical range {addr:#x}+{length:#x} is outside memory")

    def read(self, addr: int, length: int) -> bytes:
        self.check(addr, length)
        data = os.pread(self._fd, length, addr)
        while len(data) < length:  # large reads may come back short
            data += os.pread(self._fd, length - len(data), addr + len(data))
        return data

    def view(self, addr: int, length: int) -> memoryview:
        self.check(addr, length)
        return memoryview(self.mm)[addr : addr + length]

    def write(self, addr: int, data: bytes | bytearray | memoryview) -> None:
        self.check(addr, len(data))
        mv = memoryview(data).cast("B")
        while mv:
            n = os.pwrite(self._fd, mv, addr)
            addr += n
            mv = mv[n:]

    def read_u64(self, addr: int) -> int:
        return int.from_bytes(self.read(addr, 8), "little")

    def write_u64(self, addr: int, value: int) -> None:
        self.write(addr, value.to_bytes(8, "little"))

    def copy(self, dst: int, src: int, length: int) -> None:
        self.check(dst, length)
        self.check(src, length)
        self.mm.move(dst, src, length)

    def swap(self, a: int, b: int, length: int) -> None:
        """Exchange two non-overlapping ranges (relocate_kernel's swap_pages)."""
        self.check(a, length)
        self.check(b, length)
        saved = self.mm[a : a + length]
        self.mm.move(a, b, length)
        self.mm[b : b + length] = saved

    def zero(self, addr: int, length: int) -> None:
        """Zero a range; whole pages become holes again so that a large sparse
        machine stays sparse on disk."""
        self.check(addr, length)
        start = (addr + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)
        end = (addr + length) & ~(PAGE_SIZE - 1)
        if end - start >= 16 * PAGE_SIZE:
            self._write_zeros(addr, start - addr)
            self._write_zeros(end, addr + length - end)
            self.mm.flush(start, end - start)
            rc = _libc.fallocate(
                self._fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, end - start
            )
            if rc != 0:
                self._write_zeros(start, end - start)
        else:
            self._write_zeros(addr, length)

    def _write_zeros(self, addr: int, length: int) -> None:
        while length > 0:
            step = min(length, len(_ZERO_MIB))
            self.mm[addr : addr + step] = _ZERO_MIB[:step]
            addr += step
            length -= step

    def data_regions(self, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
        """Ranges of the backing file that hold data (everything else reads as zero)."""
        end = self.size if end is None else end
        regions = []
        pos = start
        while pos < end:
            try:
                data = os.lseek(self._fd, pos, SEEK_DATA)
            except OSError:
                break
            if data >= end:
                break
            hole = min(os.lseek(self._fd, data, SEEK_HOLE), end)
            regions.append((data, hole))
            pos = hole
        return regions

    def scramble(self, ranges: Iterable[tuple[int, int]], seed: int) -> None:
        """What power loss leaves: garbage, not zeros.  Large machines are
        scrambled where the file holds data plus a stripe of every range, so
        that holes do not pass for a correct restore."""
        rng = random.Random(seed)
        noise = rng.randbytes(1 << 20)
        for start, end in ranges:
            targets = (
                [(start, end)]
                if end - start <= (1 << 30)
                else [*self.data_regions(start, end), *self._stripes(start, end)]
            )
            for a, b in targets:
                pos = a
                while pos < b:
                    step = min(b - pos, len(noise))
                    offset = rng.randrange(0, len(noise) - step + 1)
                    self.mm[pos : pos + step] = noise[offset : offset + step]
                    pos += step

    @staticmethod
    def _stripes(start: int, end: int) -> list[tuple[int, int]]:
        stride = 64 << 20
        return [(a, min(a + PAGE_SIZE, end)) for a in range(start, end, stride)]

    def digest(self, ranges: Iterable[tuple[int, int]]) -> str:
        h = hashlib.sha256()
        for start, end in ranges:
            pos = start
            while pos < end:
                step = min(end - pos, 64 << 20)
                h.update(memoryview(self.mm)[pos : pos + step])
                pos += step
        return h.hexdigest()
