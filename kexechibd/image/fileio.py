"""Writing files durably: whole writes, fsync of a file and of a directory.

Shared by the writer, the stores and the export; no policy of its own.
"""

from __future__ import annotations

import abc
import io
import os
import stat
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self

from kexechibd.image.meta import ImageError
from kexechibd.image.pathcheck import owner_mode_refusal

ZERO_SIZE = 4 << 20  # zeros are written in pieces this large (a wipe, a prepared file)


class ClosedOnExit(abc.ABC):
    """An object that ``with`` closes at the end of the block."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def write_all(out: BinaryIO, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data``: ``write`` may be partial on a raw (unbuffered) file."""
    mv = memoryview(data)
    while mv:
        n = out.write(mv)
        if n is None:
            raise BlockingIOError("image output would block")
        mv = mv[n:]


def write_zeros(out: BinaryIO, end: int) -> None:
    """Write zeros from ``out``'s position up to byte ``end``.  The zeros
    are made per call, not at import: kernel B imports this module with
    little memory to spare (its window is 128 MiB by default)."""
    pos = out.tell()
    zeros = memoryview(bytes(min(ZERO_SIZE, max(end - pos, 0))))
    while pos < end:
        n = min(len(zeros), end - pos)
        write_all(out, zeros[:n])
        pos += n


def fsync(f: BinaryIO) -> None:
    """Flush and fsync ``f``; in-memory files (tests) have nothing to sync."""
    f.flush()
    try:
        fd = f.fileno()
    except (OSError, io.UnsupportedOperation):
        return
    os.fsync(fd)


def fsync_dir(directory: Path) -> None:
    """fsync a directory, so that a name just created or renamed in it
    survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_private(st: os.stat_result, path: Path | str) -> None:
    """Refuse an image file that someone other than root could have written
    or read: ``pathcheck.owner_mode_refusal``'s rule, on what was opened."""
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path} is not a regular file; refusing it as an image")
    problem = owner_mode_refusal(st, path=str(path))
    if problem:
        raise ImageError(f"{path} cannot be used as an image: {problem}")
