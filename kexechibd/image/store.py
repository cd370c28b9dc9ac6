"""Images on disk: created private, replaced atomically, checked before use,
and their resume state changed in place.

Images hold all of memory, secrets included (DESIGN §9): files are created
0600 and root-owned, and an image that others could have written is refused.

``ImageStore(path)`` is the one way to reach an image: it returns a
``DeviceImageStore`` (``blockstore.py``: two slots on a raw device, which B
may write without going through A's filesystems, DESIGN §1.3) for a block
device, an ``ExtentImageStore`` (``extents.py``: the same two slots in a file
that ``kexechibctl image create`` prepared, written by block address) for
such a file, and a ``FileImageStore`` for any other regular file (or a path
that does not exist yet).  All offer the same methods.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from kexechibd.image import format
from kexechibd.image.meta import ImageError, ImageMeta
from kexechibd.image.reader import ImageReader
from kexechibd.image.writer import ImageWriter, fsync

if TYPE_CHECKING:
    from kexechibd.image.extents import FileExtents

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def create_image_file(path: Path) -> BinaryIO:
    """Create ``path`` for a new image: it must not exist (``O_EXCL``, no
    symlink followed), mode 0600, owned by root:root when we are root."""

    def opener(name: str, _flags: int) -> int:
        return os.open(name, os.O_RDWR | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)

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


def check_private(st: os.stat_result, path: Path | str) -> None:
    """Refuse an image file that someone other than root could have written."""
    if not stat.S_ISREG(st.st_mode):
        raise ImageError(f"{path} is not a regular file; refusing it as an image")
    if st.st_uid != 0:
        raise ImageError(
            f"{path} is owned by uid {st.st_uid}, not root: anyone with that uid "
            "could have changed it; refusing to use it as an image"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        who = " and ".join(
            w for w, bit in (("group", stat.S_IWGRP), ("world", stat.S_IWOTH)) if mode & bit
        )
        raise ImageError(
            f"{path} has mode {mode:04o}: it is {who}-writable, so others could "
            f"have changed it; refusing it as an image (chmod 600 {path} if it is "
            "trusted)"
        )


def _set_state(f: BinaryIO, state: str) -> None:
    f.seek(format.STATE_OFFSET)
    f.write(format.STATE_WORDS[state])
    fsync(f)


def mark_image_consumed(f: BinaryIO) -> None:
    """COMMITTED → CONSUMED, in place and fsynced; the image must verify."""
    state = ImageReader(f).summary.state
    if state == "invalid":
        raise ImageError("cannot mark an invalidated image consumed", offset=format.STATE_OFFSET)
    if state == "committed":
        _set_state(f, "consumed")


def unmark_image_consumed(f: BinaryIO) -> None:
    """CONSUMED → COMMITTED, in place and fsynced: the restorer marked the
    image consumed but the jump did not happen, so nothing resumed from it."""
    state = ImageReader(f).summary.state
    if state == "invalid":
        raise ImageError(
            "cannot mark an invalidated image committed again", offset=format.STATE_OFFSET
        )
    if state == "consumed":
        _set_state(f, "committed")


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
    _set_state(f, "invalid")


class ImageStore:
    """Where the image lives: ``ImageStore(path)`` picks the store for what
    ``path`` is when it is called (see the module's docstring).

    Every store: ``writer()`` yields an ``ImageWriter`` whose ``commit()``
    publishes the image while a failure leaves the previous one whole;
    ``open()`` returns a verified ``ImageReader`` on the current image;
    ``mark_consumed``/``mark_committed``/``invalidate`` change its resume
    state in place, durably; ``exists()`` says whether there is one.
    """

    path: Path

    def __new__(cls, path: Path | str, **_options: object) -> ImageStore:
        if cls is ImageStore:
            if _is_block_device(path):
                from kexechibd.image.blockstore import DeviceImageStore

                cls = DeviceImageStore
            else:
                from kexechibd.image.extents import ExtentImageStore, is_prepared

                cls = ExtentImageStore if is_prepared(path) else FileImageStore
        return super().__new__(cls)

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    # What kernel A asks before it hands the location to B, and C before it
    # resumes (kexechibd.cycle.engine):

    @property
    def through_filesystem(self) -> bool:
        """Whether this store found a prepared file through its mounted
        filesystem: a real C must not resume from there (DESIGN §6.4)."""
        return False

    def pin_for_saver(self) -> tuple[int, FileExtents | None] | None:
        """For a location B writes by block address (a partition, a prepared
        file): one slot's capacity, and for a prepared file the map of its
        blocks B writes by, made now and checked writable (raises
        ``ImageError``).  None: a plain file, which B could write only
        through a filesystem."""
        return None

    # The interface; ``ImageStore(path)`` never returns this class itself, so
    # these are not abstract (mypy would refuse ``ImageStore(path)`` if they were).

    def exists(self) -> bool:
        raise NotImplementedError

    def writer(
        self, meta: ImageMeta, **writer_kwargs: Any
    ) -> contextlib.AbstractContextManager[ImageWriter]:
        raise NotImplementedError

    def open(self) -> ImageReader:
        raise NotImplementedError

    def mark_consumed(self) -> None:
        """COMMITTED → CONSUMED (the restorer is about to jump into it)."""
        raise NotImplementedError

    def mark_committed(self) -> None:
        """Undo ``mark_consumed`` when the jump failed (the kernel refused it)."""
        raise NotImplementedError

    def invalidate(self) -> None:
        """Any state → INVALID: the image is never resumed again."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r})"


def _is_block_device(path: Path | str) -> bool:
    """Follows symlinks: devices are usually named by udev's /dev/disk/by-* links."""
    try:
        return stat.S_ISBLK(os.stat(path).st_mode)
    except OSError:
        return False  # absent (or unreadable): the file store says what is wrong


class FileImageStore(ImageStore):
    """The image in one regular file.

    A new image is written to ``<path>.new`` and renamed over ``<path>`` when it
    commits, so the previous image stays whole until the new one is.
    """

    @property
    def temp_path(self) -> Path:
        return self.path.with_name(self.path.name + ".new")

    def exists(self) -> bool:
        return self.path.is_file()

    @contextlib.contextmanager
    def writer(self, meta: ImageMeta, **writer_kwargs: Any) -> Iterator[ImageWriter]:
        """An ``ImageWriter`` on the temp file; ``commit()`` publishes the
        image at ``path`` (fsync, rename, fsync the directory).  An exception,
        or leaving the block without committing, removes the temp file."""
        tmp = self.temp_path
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()  # left by a writer that died: it was never committed
        published = False

        def publish() -> None:
            nonlocal published
            os.rename(tmp, self.path)
            published = True
            self._sync_dir()

        f = create_image_file(tmp)
        try:
            with f, ImageWriter(f, meta, **writer_kwargs) as w:
                w._commit_hooks.append(publish)
                yield w
        finally:
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _sync_dir(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def _open(self, flags: int) -> BinaryIO:
        try:
            # O_NONBLOCK: open(2) of a FIFO would wait for a writer, holding
            # the caller where Cancel cannot reach; check_private refuses it.
            fd = os.open(self.path, flags | _OPEN_FLAGS | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise ImageError(f"no image at {self.path}") from e
        except OSError as e:
            raise ImageError(f"cannot open the image at {self.path}: {e.strerror}") from e
        try:
            check_private(os.fstat(fd), self.path)
            os.set_blocking(fd, True)
            return os.fdopen(fd, "r+b" if flags & os.O_RDWR else "rb")
        except BaseException:
            os.close(fd)
            raise

    def open(self) -> ImageReader:
        """A verified reader on the image (close it when done); refuses a file
        that is not root-owned or is group/world-writable."""
        f = self._open(os.O_RDONLY)
        try:
            return ImageReader(f)
        except BaseException:
            f.close()
            raise

    def mark_consumed(self) -> None:
        with self._open(os.O_RDWR) as f:
            mark_image_consumed(f)

    def mark_committed(self) -> None:
        with self._open(os.O_RDWR) as f:
            unmark_image_consumed(f)

    def invalidate(self) -> None:
        with self._open(os.O_RDWR) as f:
            invalidate_image(f)
