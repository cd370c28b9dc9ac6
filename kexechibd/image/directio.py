"""Direct I/O on an image device: every transfer ``O_DIRECT`` and aligned.

Coherence between kernels.  A kexec jump freezes A's page cache with the
rest of A: when B or C has written the device, A's cached blocks of it are
stale and nothing tells A.  A buffered read would return them, and a buffered
8-byte write (the state word) would read-modify-write a stale cached page and
put old bytes back over the image B wrote.  Direct reads always come from the
device, and the kernel drops the cached range after a direct write.  Dropping
the cache instead (``BLKFLSBUF``, ``posix_fadvise(DONTNEED)``) is best
effort: the kernel silently keeps pages that are mapped, locked or under
writeback, and the next read fills the cache with the whole image again,
memory that C needs for the staged load's source pages and that B, confined
to its window, does not have.  Durability: ``fsync`` on a block device also
flushes the device's volatile write cache.

``DirectDevice`` opens a device (checked by ``blockdev.py``) and reads
and writes it through aligned buffers; ``SlotFile`` presents one slot
(``slots.py``) as a file for ``ImageReader`` and ``ImageWriter``.
"""

from __future__ import annotations

import errno
import mmap
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO, cast

from kexechibd.image import format
from kexechibd.image.blockdev import check_device_node, device_in_use, logical_block_size
from kexechibd.image.extents import FileExtents
from kexechibd.image.fileio import ZERO_SIZE, ClosedOnExit, check_private
from kexechibd.image.meta import ImageError
from kexechibd.image.slots import (
    IO_ALIGN,
    RECORD_SIZE,
    SLOT_NAMES,
    SlotLayout,
    SlotRecord,
    decode_record,
    prepared_marker,
)

BOUNCE_SIZE = 1 << 20  # reads up to this size go through one buffer per device
WRITE_BUFFER = 4 << 20  # the writer's output is gathered into aligned writes this large
# os.preadv or os.pwritev: (fd, buffers, offset) -> bytes moved.
_Vectored = Callable[[int, list[memoryview], int], int]


class DirectDevice(ClosedOnExit):
    """An open image device (or, for tests and tools, a preallocated regular
    file), every transfer ``O_DIRECT`` and aligned to ``IO_ALIGN``.

    With ``extents``, the slots are not the device's bytes but a file's on
    it (``extents.py``): offsets are the file's, each transfer is split
    where an extent ends, and the device is the mounted one that holds the
    file, so it is neither refused as in use nor claimed ``O_EXCL``.  Safe
    because nothing else writes those blocks: they are the file's, whose
    data is written by us only, by block address (``extents.py``)."""

    def __init__(
        self,
        path: Path,
        *,
        write: bool,
        allow_regular_file: bool = False,
        extents: FileExtents | None = None,
        name: Path | None = None,
    ) -> None:
        self.path = path
        self.name = name or path  # what messages call it: the image file, with extents
        self.extents = extents
        try:
            st = os.stat(path)  # follows /dev/disk/by-* links
        except FileNotFoundError as e:
            raise ImageError(f"no image device at {path}") from e
        except OSError as e:
            raise ImageError(f"cannot look at {path}: {e.strerror}") from e
        block = stat.S_ISBLK(st.st_mode)
        if not block and not (allow_regular_file and stat.S_ISREG(st.st_mode)):
            raise ImageError(f"{path} is not a block device; refusing it as an image device")
        if extents is not None and (not block or st.st_rdev != extents.rdev):
            raise ImageError(
                f"{path} is not block device {extents.major}:{extents.minor}, which holds "
                f"{self.name}"
            )
        if block and extents is None:
            # Before opening, for a message that names the mount; O_EXCL below
            # is the kernel's own check.
            busy = device_in_use(st.st_rdev)
            if busy:
                raise ImageError(
                    f"{path} is in use: {busy}; refusing to keep images on it "
                    "(writing one would destroy what is there)"
                )
        flags = os.O_DIRECT | os.O_CLOEXEC | (os.O_RDWR if write else os.O_RDONLY)
        if block and write and extents is None:
            flags |= os.O_EXCL  # on a block device: claim it exclusively (open(2))
        try:
            self.fd = os.open(path, flags)
        except OSError as e:
            hint = {
                errno.EBUSY: " (it is in use: mounted, swap, part of RAID or LVM, or "
                "opened exclusively by another program)",
                errno.EINVAL: " (does its filesystem support direct I/O?)",
            }.get(e.errno or 0, "")
            if extents is not None and e.errno == errno.EBUSY:
                hint = (
                    " (this kernel refuses writes to a block device with a mounted "
                    "filesystem: CONFIG_BLK_DEV_WRITE_MOUNTED=n or "
                    "bdev_allow_write_mounted=0; image files need them allowed)"
                )
            raise ImageError(f"cannot open {path}: {e.strerror}{hint}") from e
        self._bounce: mmap.mmap | None = None
        try:
            fst = os.fstat(self.fd)
            if block:
                if not stat.S_ISBLK(fst.st_mode) or fst.st_rdev != st.st_rdev:
                    raise ImageError(f"{path} changed while it was being opened")
                check_device_node(fst, path, write=write)
                lbs = logical_block_size(fst.st_rdev)
                if IO_ALIGN % lbs:
                    raise ImageError(
                        f"{path} has {lbs}-byte logical blocks; images need a block "
                        f"size that divides {IO_ALIGN}"
                    )
            else:
                check_private(fst, path)
            size = os.lseek(self.fd, 0, os.SEEK_END)
            if extents is not None:
                if size != extents.device_size:
                    raise ImageError(
                        f"{path} has {size} bytes, but {extents.device_name} had "
                        f"{extents.device_size} when {self.name} was mapped; refusing to "
                        "write by block address to another device"
                    )
                size = extents.size
            self.layout = SlotLayout.for_device(size)
            if block and extents is None:
                # Not for us (nothing here reads through the cache): for tools
                # that do, such as readelf -n or blkid, drop what this kernel
                # cached of the device before another kernel wrote it.
                os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_DONTNEED)
            self._bounce = mmap.mmap(-1, BOUNCE_SIZE)  # page aligned, as O_DIRECT needs
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._bounce is not None:
            self._bounce.close()
            self._bounce = None
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # -- aligned transfers ------------------------------------------------------

    def _spans(self, pos: int, span: int) -> Iterator[tuple[int, int, int]]:
        """(device offset, offset in the buffer, bytes) for ``span`` bytes
        from ``pos``: one piece, or with extents one per extent touched."""
        if self.extents is None:
            yield pos, 0, span
            return
        done = 0
        for dev_pos, n in self.extents.spans(pos, span):
            yield dev_pos, done, n
            done += n

    def _transfer(self, call: _Vectored, buf: mmap.mmap, span: int, pos: int) -> int:
        """Move ``span`` bytes between ``buf`` and ``pos`` with ``call``
        (``os.preadv`` or ``os.pwritev``, which may move part of what they
        are asked), extent by extent; the bytes moved, fewer when a call
        moves nothing (the end of the device or file)."""
        total = 0
        with memoryview(buf) as mv:
            for dev_pos, at, length in self._spans(pos, span):
                done = 0
                while done < length:
                    n = call(self.fd, [mv[at + done : at + length]], dev_pos + done)
                    if n == 0:
                        return total + done
                    done += n
                total += done
        return total

    def read_into(self, buf: mmap.mmap, span: int, pos: int) -> int:
        """Fill ``buf[:span]`` from ``pos`` (both aligned); fewer bytes only at
        the end of the device (or file)."""
        return self._transfer(os.preadv, buf, span, pos)

    def write_from(self, buf: mmap.mmap, span: int, pos: int) -> None:
        written = self._transfer(os.pwritev, buf, span, pos)
        if written != span:  # past the device's (or file's) end: a bug of ours
            raise OSError(errno.EIO, f"{self.name}: wrote {written} of {span} bytes at {pos:#x}")

    def pread(self, offset: int, n: int) -> bytes:
        """``n`` bytes from ``offset`` (any alignment): the aligned blocks
        around them are read into an aligned buffer, then copied out."""
        lo = offset - offset % IO_ALIGN
        span = format.align_up(offset + n, IO_ALIGN) - lo
        assert self._bounce is not None
        if span <= BOUNCE_SIZE:
            got = self.read_into(self._bounce, span, lo)
            return self._bounce[offset - lo : max(offset - lo, min(offset - lo + n, got))]
        with mmap.mmap(-1, span) as buf:  # a large chunk record: one transfer
            got = self.read_into(buf, span, lo)
            return buf[offset - lo : max(offset - lo, min(offset - lo + n, got))]

    # -- slots and records ----------------------------------------------------------

    def records(self) -> tuple[SlotRecord | None, SlotRecord | None]:
        a, b = (
            decode_record(self.pread(self.layout.record_offset(k), RECORD_SIZE), k, self.layout)
            for k in (0, 1)
        )
        return a, b

    def write_record(self, rec: SlotRecord) -> None:
        self._write_record_block(rec.slot, rec.encode())

    def unpublish(self, k: int) -> None:
        """Slot ``k`` publishes nothing from now on: its record becomes a
        prepared file's marker (sequence 0), durably."""
        self._write_record_block(k, prepared_marker(self.layout, k))

    def _write_record_block(self, k: int, block: bytes) -> None:
        assert self._bounce is not None
        self._bounce[:RECORD_SIZE] = block
        self.write_from(self._bounce, RECORD_SIZE, self.layout.record_offset(k))
        os.fsync(self.fd)

    def zero(self, pos: int, span: int) -> None:
        """Overwrite ``span`` bytes from ``pos`` (both aligned) with zeros,
        durably: writes, not a discard, which devices may not honour and
        which would take a prepared file's blocks away."""
        with mmap.mmap(-1, min(span, ZERO_SIZE) or IO_ALIGN) as zeros:  # zero-filled
            done = 0
            while done < span:
                n = min(len(zeros), span - done)
                self.write_from(zeros, n, pos + done)
                done += n
        os.fsync(self.fd)

    def slot(self, k: int, *, owns_device: bool = False) -> SlotFile:
        return SlotFile(self, k, owns_device=owns_device)

    def describe(self, k: int) -> str:
        return f"slot {SLOT_NAMES[k]} of {self.name} (from byte {self.layout.offset(k):#x})"


class SlotFile(ClosedOnExit):
    """One slot as a file of its own, for ``ImageReader`` and ``ImageWriter``
    (they use seek, tell, read, write, flush, fileno and close): offsets from
    the slot's start, its end at the slot's capacity.

    Reads are direct.  Writes are gathered into an aligned buffer and written
    a whole ``WRITE_BUFFER`` at a time; ``flush`` (and the writer's fsync, and
    a write elsewhere) writes what is gathered, completing a partial last
    block with what the device holds after it (read directly too)."""

    def __init__(self, device: DirectDevice, slot: int, *, owns_device: bool) -> None:
        self._dev = device
        self.slot = slot
        self._base = device.layout.offset(slot)
        self._size = device.layout.capacity
        self._owns = owns_device
        self._pos = 0
        self._wbuf: mmap.mmap | None = None
        self._wstart = -1  # slot offset of _wbuf[0] (aligned); -1: nothing gathered
        self._wlen = 0  # bytes of _wbuf that hold data to write
        self._dirty = False
        self.closed = False

    def fileno(self) -> int:
        return self._dev.fd

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}[whence]
        if base + offset < 0:
            raise OSError(errno.EINVAL, "seek before the slot's start")
        self._pos = base + offset
        return self._pos

    def tell(self) -> int:
        return self._pos

    def read(self, n: int = -1) -> bytes:
        self.flush()
        n = self._size - self._pos if n < 0 else n
        n = max(0, min(n, self._size - self._pos))
        data = self._dev.pread(self._base + self._pos, n)
        self._pos += len(data)
        return data

    def write(self, data: bytes | bytearray | memoryview) -> int:
        mv = memoryview(data).cast("B")
        n = len(mv)
        if self._pos + n > self._size:
            raise ImageError(
                f"the image does not fit in {self._dev.describe(self.slot)}: it has grown "
                f"past {self._pos + n} bytes and the slot holds {self._size} (half of "
                f"{self._dev.layout.device_size} bytes, less {RECORD_SIZE} bytes for "
                "its record); nothing was published, the previous image is intact"
            )
        if self._wbuf is None:
            self._wbuf = mmap.mmap(-1, WRITE_BUFFER)
        if self._wstart < 0 or self._pos != self._wstart + self._wlen:
            self.flush()
            self._gather_from(self._pos)
        done = 0
        while done < n:
            take = min(n - done, WRITE_BUFFER - self._wlen)
            self._wbuf[self._wlen : self._wlen + take] = mv[done : done + take]
            self._wlen += take
            done += take
            self._dirty = True
            if self._wlen == WRITE_BUFFER:
                self._dev.write_from(self._wbuf, WRITE_BUFFER, self._base + self._wstart)
                self._wstart += WRITE_BUFFER
                self._wlen = 0
                self._dirty = False
        self._pos += n
        return n

    def _gather_from(self, pos: int) -> None:
        """Start gathering at ``pos``: the bytes before it in its block are
        what the device holds there."""
        assert self._wbuf is not None
        self._wstart = pos - pos % IO_ALIGN
        self._wlen = pos - self._wstart
        if self._wlen:
            self._wbuf[: self._wlen] = self._dev.pread(self._base + self._wstart, self._wlen)

    def flush(self) -> None:
        if not self._dirty:
            return
        assert self._wbuf is not None
        full = self._wlen - self._wlen % IO_ALIGN
        tail = self._wlen - full
        span = full + (IO_ALIGN if tail else 0)
        if tail:  # slots end on a block boundary, so the whole block is ours
            rest = self._dev.pread(self._base + self._wstart + self._wlen, IO_ALIGN - tail)
            self._wbuf[self._wlen : span] = rest
        self._dev.write_from(self._wbuf, span, self._base + self._wstart)
        if tail:  # keep gathering into that block
            self._wbuf.move(0, full, IO_ALIGN)
        self._wstart += full
        self._wlen = tail
        self._dirty = False

    def close(self) -> None:
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            if self._wbuf is not None:
                self._wbuf.close()
            if self._owns:
                self._dev.close()

    def as_binary_io(self) -> BinaryIO:
        """The reader and writer are typed for files; this is one, duck-typed."""
        return cast(BinaryIO, self)


def header_digest(f: SlotFile) -> bytes:
    """The image's DIGEST note (SHA-256 of its header, the state word taken as
    zero): what a slot record binds to.  The header must have been verified."""
    f.seek(0)
    end = format.notes_end(f.read(format.NOTES_OFFSET))
    f.seek(end - 32)
    return f.read(32)
