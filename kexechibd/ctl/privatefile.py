"""Write a file that may hold all of a system's memory (an exported ELF
core): private from its first byte and there only when complete."""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


class OutputExists(FileExistsError):
    """The target is already there; nothing was written."""


def _refuse_existing(target: Path) -> None:
    raise OutputExists(
        f"{target} already exists; kexechibctl never overwrites a file (it may be another "
        "image or core): remove it or name another"
    )


@contextlib.contextmanager
def private_output(target: Path) -> Iterator[BinaryIO]:
    """A file to write ``target`` through: 0600 under a hidden temporary name
    in ``target``'s directory (so the rename stays on one filesystem), put in
    place only when the block ends without an exception, removed otherwise.
    An existing ``target`` is refused, before and at the rename."""
    if os.path.lexists(target):
        _refuse_existing(target)
    fd, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=".partial"
    )  # mkstemp creates it 0600, whatever the umask
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        _place(temporary, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def _place(temporary: str, target: Path) -> None:
    """Link ``temporary`` to ``target``, which fails rather than replacing
    a file that appeared meanwhile (rename would replace it)."""
    try:
        os.link(temporary, target)
    except FileExistsError:
        _refuse_existing(target)
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP):
            raise
        # No hard links here (vfat, some FUSE): rename, after one more look.
        if os.path.lexists(target):
            _refuse_existing(target)
        os.rename(temporary, target)
