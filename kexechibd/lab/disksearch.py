"""Searching a powered-off guest's raw disk file for pieces of a secret (the
lab's proof that no image reaches a disk in the clear, docs/lab.md §13).

The needles are pieces of the Debian guest workload's random buffer, which
the guest names in its ``a-secret`` marker (kexechibd/lab/guest/workload.py).
Only the file's data is read (``SEEK_DATA``/``SEEK_HOLE``): the lab's disk
files are sparse, and a hole holds no secret.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

CHUNK = 64 << 20


def parse_needles(text: str) -> tuple[bytes, ...]:
    """The needles of an ``a-secret`` marker's ``needles=`` field (hex,
    comma-separated); empty for an empty field."""
    return tuple(bytes.fromhex(piece) for piece in text.split(",") if piece)


def _data_spans(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """(offset, length) of each run of data in the file, holes left out."""
    pos = 0
    while pos < size:
        try:
            start = os.lseek(fd, pos, os.SEEK_DATA)
        except OSError as e:
            if e.errno == errno.ENXIO:  # no data after pos
                return
            raise
        end = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, end - start
        pos = end


def found_needles(disk: Path, needles: Sequence[bytes]) -> set[int]:
    """The indices of ``needles`` that occur anywhere in the file ``disk``."""
    if not needles:
        raise ValueError("no needles to search for")
    overlap = max(len(n) for n in needles) - 1
    found: set[int] = set()
    fd = os.open(disk, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        for start, length in _data_spans(fd, size):
            tail = b""
            for offset in range(start, start + length, CHUNK):
                block = tail + os.pread(fd, min(CHUNK, start + length - offset), offset)
                found.update(i for i, n in enumerate(needles) if i not in found and n in block)
                if len(found) == len(needles):
                    return found
                tail = block[-overlap:] if overlap else b""
    finally:
        os.close(fd)
    return found
