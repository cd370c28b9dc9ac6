"""Images in one regular file, replaced atomically (``<path>.new``, renamed
over ``<path>`` when the new image commits)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from kexechibd.image.fileio import check_private, fsync, fsync_dir, write_zeros
from kexechibd.image.meta import ImageError, ImageMeta
from kexechibd.image.reader import ImageReader
from kexechibd.image.store import (
    OPEN_FLAGS,
    ImageStore,
    create_image_file,
    invalidate_image,
    mark_image_consumed,
    unmark_image_consumed,
)
from kexechibd.image.writer import ImageWriter


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
            fsync_dir(self.path.parent)

        f = create_image_file(tmp)
        try:
            with f, ImageWriter(f, meta, **writer_kwargs) as w:
                w.on_commit(publish)
                yield w
        finally:
            if not published:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _open(self, flags: int, path: Path | None = None) -> BinaryIO:
        """The image file (or ``path``, the store's other file), checked."""
        path = self.path if path is None else path
        try:
            # O_NONBLOCK: open(2) of a FIFO would wait for a writer, holding
            # the caller where Cancel cannot reach; check_private refuses it.
            fd = os.open(path, flags | OPEN_FLAGS | os.O_NONBLOCK)
        except FileNotFoundError as e:
            raise ImageError(f"no image at {path}") from e
        except OSError as e:
            raise ImageError(f"cannot open the image at {path}: {e.strerror}") from e
        try:
            check_private(os.fstat(fd), path)
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

    def wipe(self) -> int:
        """The file (and a ``.new`` one a failed save left) zeroed in place,
        durably, then removed: a plain file has no layout to keep."""
        wiped = 0
        for path in (self.path, self.temp_path):
            try:
                f = self._open(os.O_RDWR, path)
            except ImageError:
                if path.exists():
                    raise
                continue
            with f:
                size = os.fstat(f.fileno()).st_size
                write_zeros(f, size)
                fsync(f)
            path.unlink()
            wiped += size
        fsync_dir(self.path.parent)
        return wiped
