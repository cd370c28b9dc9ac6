"""What every image store offers (``ImageStore``), and what they share:
image files created private and checked before use, and an image's resume
state changed in place.

Images hold all of memory, secrets included (DESIGN §9): files are created
0600 and root-owned, and an image that others could have written is refused.

The stores: ``FileImageStore`` (``filestore.py``), ``DeviceImageStore``
(``blockstore.py``), ``ExtentImageStore`` (``extentstore.py``);
``open_store`` (``location.py``) picks one for a path.
"""

from __future__ import annotations

import abc
import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from kexechibd.image import format
from kexechibd.image.fileio import fsync
from kexechibd.image.meta import ImageError, ImageMeta, ImageState
from kexechibd.image.reader import ImageReader
from kexechibd.image.writer import ImageWriter

if TYPE_CHECKING:
    from kexechibd.image.extents import FileExtents
    from kexechibd.image.seal import Seal


@dataclass(frozen=True)
class Pinned:
    """What A hands B of a location B writes by block address: one slot's
    capacity; for a prepared file the map of its blocks; for a sealed file
    also its seal (key included: B's parameters only, DESIGN §1.6)."""

    capacity: int
    file: FileExtents | None = None
    seal: Seal | None = None


OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC  # an image is never reached through a symlink


def create_image_file(path: Path) -> BinaryIO:
    """Create ``path`` for a new image: it must not exist (``O_EXCL``, no
    symlink followed), mode 0600, owned by root:root when we are root."""

    def opener(name: str, _flags: int) -> int:
        return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, 0o600)

    f = open(path, "r+b", opener=opener)  # noqa: SIM115 - the caller owns it
    try:
        os.fchmod(f.fileno(), 0o600)  # a default ACL could have widened the mode
        if os.geteuid() == 0:
            os.fchown(f.fileno(), 0, 0)  # a setgid directory could have set the group
    except BaseException:
        f.close()
        os.unlink(path)
        raise
    return f


def _set_state(f: BinaryIO, state: ImageState) -> None:
    f.seek(format.STATE_OFFSET)
    f.write(format.STATE_WORDS[state])
    fsync(f)


def mark_image_consumed(f: BinaryIO) -> None:
    """COMMITTED → CONSUMED, in place and fsynced; the image must verify."""
    state = ImageReader(f).summary.state
    if state is ImageState.INVALID:
        raise ImageError("cannot mark an invalidated image consumed", offset=format.STATE_OFFSET)
    if state is ImageState.COMMITTED:
        _set_state(f, ImageState.CONSUMED)


def unmark_image_consumed(f: BinaryIO) -> None:
    """CONSUMED → COMMITTED, in place and fsynced: the restorer marked the
    image consumed but the jump did not happen, so nothing resumed from it."""
    state = ImageReader(f).summary.state
    if state is ImageState.INVALID:
        raise ImageError(
            "cannot mark an invalidated image committed again", offset=format.STATE_OFFSET
        )
    if state is ImageState.CONSUMED:
        _set_state(f, ImageState.COMMITTED)


def invalidate_image(f: BinaryIO) -> None:
    """Any state → INVALID, in place and fsynced.  Works on a damaged image
    too, as long as its first 168 bytes say it is one of ours (in any version):
    anything else is left untouched."""
    f.seek(0)
    prefix = f.read(format.PREFIX_SIZE)
    if len(prefix) < format.PREFIX_SIZE or prefix[:4] != b"\x7fELF":
        raise ImageError("not a kexechib image; left untouched", offset=0)
    try:
        format.check_format_prefix(prefix)
    except ImageError as e:
        # Wrong version or a garbled state word still identify our image.
        if prefix[format.MAGIC_OFFSET : format.VERSION_OFFSET] != format.IMAGE_MAGIC:
            raise ImageError(f"{e.message}; left untouched", offset=e.offset) from e
    _set_state(f, ImageState.INVALID)


class ImageStore(abc.ABC):
    """Where an image lives; ``open_store(path)`` (``location.py``) gives the
    store for what ``path`` is.

    Every store: ``writer()`` yields an ``ImageWriter`` whose ``commit()``
    publishes the image while a failure leaves the previous one whole;
    ``open()`` returns a verified ``ImageReader`` on the current image;
    ``mark_consumed``/``mark_committed``/``invalidate`` change its resume
    state in place, durably; ``wipe`` destroys it; ``exists()`` says whether
    there is one.
    """

    path: Path

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # What kernel A asks before it hands the location to B, and C before it
    # resumes (kexechibd.cycle.engine):

    @property
    def through_filesystem(self) -> bool:
        """Whether this store found a prepared file through its mounted
        filesystem: a real C must not resume from there (DESIGN §6.4)."""
        return False

    def pin_for_saver(self) -> Pinned | None:
        """For a location B writes by block address (a partition, a prepared
        file): one slot's capacity, and for a prepared file the map of its
        blocks B writes by, made now and checked writable (raises
        ``ImageError``).  None: a plain file, which B could write only
        through a filesystem."""
        return None

    @abc.abstractmethod
    def exists(self) -> bool: ...

    @abc.abstractmethod
    def writer(
        self, meta: ImageMeta, **writer_kwargs: Any
    ) -> contextlib.AbstractContextManager[ImageWriter]: ...

    @abc.abstractmethod
    def open(self) -> ImageReader: ...

    @abc.abstractmethod
    def mark_consumed(self) -> None:
        """COMMITTED → CONSUMED (the restorer is about to jump into it)."""

    @abc.abstractmethod
    def mark_committed(self) -> None:
        """Undo ``mark_consumed`` when the jump failed (the kernel refused it)."""

    @abc.abstractmethod
    def invalidate(self) -> None:
        """Any state → INVALID: the image is never resumed again."""

    @abc.abstractmethod
    def wipe(self) -> int:
        """Destroy every image here: overwrite its bytes with zeros, durably,
        so that none of the memory it held stays on the disk, and leave no
        image behind (``exists()`` is False).  The location stays ready for
        the next image: a partition or prepared file keeps its layout and
        blocks.  Works on damaged images too.  Returns the bytes overwritten."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"
