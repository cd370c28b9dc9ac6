"""Writing files durably: whole writes, fsync of a file and of a directory.

Shared by the writer, the stores and the export; no policy of its own.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import BinaryIO


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
