"""Writing files durably: whole writes, fsync of a file and of a directory.

Shared by the writer, the stores and the export; no policy of its own.
"""

from __future__ import annotations

import abc
import io
import os
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Self


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
