"""Images on a raw block device: two slots, the newest published image wins.

B must never write through A's mounted filesystems (DESIGN §1.3), so the image
goes to a partition or whole disk that A, B and C all see.  The device holds
two slots (docs/image-format.md, "On a block device"):

    [0, S)        slot A: an image exactly as in a file, from the slot's start;
                  the slot record in the slot's last 4 KiB
    [S, 2S)       slot B: the same
    [2S, size)    unused          (S = half the device, rounded down to 1 MiB)

A save goes to the slot that does not hold the newest published image, so
nothing of the previous image is written until the new one is complete
(DESIGN §9).  ``commit`` publishes it: the image is read back and verified,
then the slot's record (sequence number = newest + 1, bound to this image by
its header digest) is written and fsynced; only then is the older image
retired (its state word set to INVALID), so that at most one image on the
device is ever resumable and an image older than the newest is never resumed
by mistake (A's filesystems have moved on since).

Coherence between kernels.  Every transfer here is ``O_DIRECT``.  A kexec
jump freezes A's page cache with the rest of A: when B or C has written the
device, A's cached blocks of it are stale and nothing tells A.  A buffered
read would return them, and a buffered 8-byte write (the state word) would
read-modify-write a stale cached page and put old bytes back over the image
B wrote.  Direct reads always come from the device, and the kernel drops the
cached range after a direct write.  Dropping the cache instead
(``BLKFLSBUF``, ``posix_fadvise(DONTNEED)``) is best effort: the kernel
silently keeps pages that are mapped, locked or under writeback, and the
next read fills the cache with the whole image again, memory that C needs
for the staged load's source pages and that B, confined to its window,
does not have.  Durability: ``fsync`` on a block device also flushes the
device's volatile write cache, and the writer fsyncs the data before the
header; the store fsyncs the header before the record.

Safety (images hold all of memory): the node must be root's, writable by no
one else but the ``disk`` group (whose members can write every disk
already), and, to write an image, readable by no one else either; the device
must not be mounted, be active swap or be held by device-mapper or md, nor
may any of its partitions or the disk it is part of; writes open it
``O_EXCL``, so that the kernel also refuses a device claimed where we cannot
look (another mount namespace) and nobody can mount it while we write.
"""

from __future__ import annotations

import contextlib
import errno
import grp
import hashlib
import logging
import mmap
import os
import re
import stat
import struct
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from kexechibd.image import format
from kexechibd.image.meta import ImageError, ImageMeta
from kexechibd.image.reader import ImageReader
from kexechibd.image.store import (
    ImageStore,
    check_private,
    invalidate_image,
    mark_image_consumed,
    unmark_image_consumed,
)
from kexechibd.image.writer import ImageWriter

if TYPE_CHECKING:
    from kexechibd.image.extents import FileExtents

log = logging.getLogger(__name__)

# ===========================================================================
# Layout (pure)
# ===========================================================================

SLOT_ALIGN = 1 << 20  # slots start and end on MiB boundaries, like partitions
RECORD_SIZE = 4096  # the slot record's block, at the end of its slot
IO_ALIGN = 4096  # every direct transfer: a multiple of any block size we accept
RECORD_MAGIC = b"KXHSLOTR"
RECORD_VERSION = 1
# magic, version, slot, sequence, slot_offset, slot_size, image_length,
# header digest; then the SHA-256 of these 80 bytes
RECORD = struct.Struct("<8sIIQQQQ32s")
SLOT_NAMES = ("A", "B")


@dataclass(frozen=True)
class SlotLayout:
    """Where the two slots of a device of ``device_size`` bytes are."""

    device_size: int
    slot_size: int

    @classmethod
    def for_device(cls, size: int) -> SlotLayout:
        slot = size // 2 // SLOT_ALIGN * SLOT_ALIGN
        if slot < SLOT_ALIGN:
            raise ImageError(
                f"a device of {size} bytes is too small for two image slots "
                f"(it needs at least {2 * SLOT_ALIGN} bytes)"
            )
        return cls(size, slot)

    @property
    def capacity(self) -> int:
        """The largest image a slot holds."""
        return self.slot_size - RECORD_SIZE

    def offset(self, slot: int) -> int:
        return slot * self.slot_size

    def record_offset(self, slot: int) -> int:
        return self.offset(slot) + self.capacity


@dataclass(frozen=True)
class SlotRecord:
    """What publishes the image in a slot: a larger ``sequence`` is newer."""

    slot: int
    sequence: int
    slot_offset: int
    slot_size: int
    image_length: int
    header_digest: bytes  # the image's DIGEST note: SHA-256 of its header

    def encode(self) -> bytes:
        body = RECORD.pack(
            RECORD_MAGIC,
            RECORD_VERSION,
            self.slot,
            self.sequence,
            self.slot_offset,
            self.slot_size,
            self.image_length,
            self.header_digest,
        )
        return (body + hashlib.sha256(body).digest()).ljust(RECORD_SIZE, b"\0")


def decode_record(block: bytes, slot: int, layout: SlotLayout) -> SlotRecord | None:
    """The record in ``block`` (slot ``slot``'s record block), or None when
    there is none: never written, torn (its checksum fails: the image it was
    to publish is not published), or written for another slot geometry (the
    device was resized).  A record of an unknown version is an error: a newer
    kexechibd wrote it, and guessing which image is newest is not safe."""
    if block[:8] != RECORD_MAGIC:
        return None
    (version,) = struct.unpack_from("<I", block, 8)
    if version != RECORD_VERSION:
        raise ImageError(
            f"slot {SLOT_NAMES[slot]}'s record has layout version {version}; this "
            f"kexechibd knows version {RECORD_VERSION}",
            offset=layout.record_offset(slot) + 8,
        )
    body = block[: RECORD.size]
    if hashlib.sha256(body).digest() != block[RECORD.size : RECORD.size + 32]:
        return None
    _magic, _version, *fields = RECORD.unpack(body)
    rec = SlotRecord(*fields)
    if (
        (rec.slot, rec.slot_offset, rec.slot_size) != (slot, layout.offset(slot), layout.slot_size)
        or rec.sequence == 0
        or not 0 < rec.image_length <= layout.capacity
    ):
        return None
    return rec


def newest(records: Sequence[SlotRecord | None]) -> SlotRecord | None:
    return max((r for r in records if r), key=lambda r: r.sequence, default=None)


# ===========================================================================
# The device: checks, and direct I/O through aligned buffers
# ===========================================================================

SYS_DEV_BLOCK = Path("/sys/dev/block")
MOUNTINFO = Path("/proc/self/mountinfo")
SWAPS = Path("/proc/swaps")
BOUNCE_SIZE = 1 << 20  # reads up to this size go through one buffer per device
WRITE_BUFFER = 4 << 20  # the writer's output is gathered into aligned writes this large


def _trusted_groups() -> set[int]:
    """Root, and ``disk``: its members may read and write every disk already."""
    groups = {0}
    with contextlib.suppress(KeyError):
        groups.add(grp.getgrnam("disk").gr_gid)
    return groups


def check_device_node(st: os.stat_result, path: Path | str, *, write: bool) -> None:
    """Refuse a device node through which someone other than root (or the
    ``disk`` group) could have changed the image, or, for ``write``, could
    read the memory we are about to put there.  Debian's nodes (root:disk
    0660) pass."""
    if st.st_uid != 0:
        raise ImageError(
            f"{path} is owned by uid {st.st_uid}, not root: anyone with that uid could "
            "read and change images on it; refusing to use it"
        )
    mode = stat.S_IMODE(st.st_mode)
    trusted_group = st.st_gid in _trusted_groups()
    problems = []
    if mode & stat.S_IWOTH or (mode & stat.S_IWGRP and not trusted_group):
        problems.append("writable by others, so others could have changed the image")
    if write and (mode & stat.S_IROTH or (mode & stat.S_IRGRP and not trusted_group)):
        problems.append("readable by others, who would read all of memory")
    if problems:
        raise ImageError(
            f"{path} has mode {mode:04o} and group {st.st_gid}: it is "
            f"{' and '.join(problems)}; only root and the disk group may have access "
            f"(chown root:disk {path}; chmod 660 {path})"
        )


def _sysfs(rdev: int) -> Path:
    return SYS_DEV_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}"


def _read_dev(path: Path) -> int | None:
    try:
        major, minor = path.read_text().strip().split(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def _related(rdev: int) -> dict[int, str]:
    """The device, its partitions and the disk it is a partition of, each
    with how a message names it (sysfs; just the device without it)."""
    related = {rdev: "it"}
    node = _sysfs(rdev)
    with contextlib.suppress(OSError):
        if (node / "partition").exists():
            disk = node.resolve().parent
            dev = _read_dev(disk / "dev")
            if dev is not None:
                related[dev] = f"its disk {disk.name}"
        else:
            for part in node.iterdir():
                dev = _read_dev(part / "dev") if (part / "partition").exists() else None
                if dev is not None:
                    related[dev] = f"its partition {part.name}"
    return related


def _unescape(field: str) -> str:
    """mountinfo and swaps write space, tab, newline and backslash as \\ooo."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _rdev_of(path: str) -> int | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_rdev if stat.S_ISBLK(st.st_mode) else None


def _lines(path: Path) -> list[list[str]]:
    try:
        return [line.split() for line in path.read_text().splitlines()]
    except OSError:
        return []  # no /proc here: the kernel's O_EXCL check still applies


def device_in_use(rdev: int) -> str | None:
    """Why the device cannot hold images, as far as this mount namespace and
    sysfs tell: a mount, swap or holder of it, of a partition of it, or of
    the disk it is part of.  None when it is free."""
    related = _related(rdev)
    for fields in _lines(MOUNTINFO):
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            dev = os.makedev(int(major), int(minor))
            fstype, source = fields[sep + 1], fields[sep + 2]
        except (ValueError, IndexError):
            continue
        if dev not in related and source.startswith("/dev/"):
            # btrfs and other multi-device filesystems report an anonymous
            # device number; their source names the block device.
            dev = _rdev_of(_unescape(source)) or dev
        if dev in related:
            return f"{related[dev]} is mounted at {_unescape(fields[4])} ({fstype})"
    for fields in _lines(SWAPS)[1:]:
        dev_ = _rdev_of(_unescape(fields[0])) if fields else None
        if dev_ in related:
            return f"{related[dev_]} is active swap"
    for dev, who in related.items():
        with contextlib.suppress(OSError):
            holders = sorted(h.name for h in (_sysfs(dev) / "holders").iterdir())
            if holders:
                return f"{who} is held by {', '.join(holders)} (device-mapper, RAID or the like)"
    return None


def _logical_block_size(rdev: int) -> int:
    node = _sysfs(rdev)
    try:
        if (node / "partition").exists():
            node = node.resolve().parent
        return int((node / "queue" / "logical_block_size").read_text())
    except (OSError, ValueError):
        return 512  # without sysfs; a larger one makes the first read fail with EINVAL


class _Device:
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
                lbs = _logical_block_size(fst.st_rdev)
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

    def __enter__(self) -> _Device:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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

    def read_into(self, buf: mmap.mmap, span: int, pos: int) -> int:
        """Fill ``buf[:span]`` from ``pos`` (both aligned); fewer bytes only at
        the end of the device (or file)."""
        total = 0
        with memoryview(buf) as mv:
            for dev_pos, at, length in self._spans(pos, span):
                done = 0
                while done < length:
                    n = os.preadv(self.fd, [mv[at + done : at + length]], dev_pos + done)
                    if n == 0:
                        return total + done
                    done += n
                total += done
        return total

    def write_from(self, buf: mmap.mmap, span: int, pos: int) -> None:
        written = 0
        with memoryview(buf) as mv:
            for dev_pos, at, length in self._spans(pos, span):
                done = 0
                while done < length:
                    n = os.pwritev(self.fd, [mv[at + done : at + length]], dev_pos + done)
                    if n == 0:
                        raise OSError(
                            errno.EIO, f"{self.path}: nothing written at {dev_pos + done:#x}"
                        )
                    done += n
                written += done
        if written != span:  # with extents: past the file's end, a bug of ours
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
        assert self._bounce is not None
        self._bounce[:RECORD_SIZE] = rec.encode()
        self.write_from(self._bounce, RECORD_SIZE, self.layout.record_offset(rec.slot))
        os.fsync(self.fd)

    def slot(self, k: int, *, owns_device: bool = False) -> SlotFile:
        return SlotFile(self, k, owns_device=owns_device)

    def describe(self, k: int) -> str:
        return f"slot {SLOT_NAMES[k]} of {self.name} (from byte {self.layout.offset(k):#x})"


class SlotFile:
    """One slot as a file of its own, for ``ImageReader`` and ``ImageWriter``
    (they use seek, tell, read, write, flush, fileno and close): offsets from
    the slot's start, its end at the slot's capacity.

    Reads are direct.  Writes are gathered into an aligned buffer and written
    a whole ``WRITE_BUFFER`` at a time; ``flush`` (and the writer's fsync, and
    a write elsewhere) writes what is gathered, completing a partial last
    block with what the device holds after it (read directly too)."""

    def __init__(self, device: _Device, slot: int, *, owns_device: bool) -> None:
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

    def __enter__(self) -> SlotFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

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


# ===========================================================================
# The store
# ===========================================================================


class DeviceImageStore(ImageStore):
    """Images in the two slots of a block device (see the module's docstring).

    ``allow_regular_file`` also accepts a preallocated regular file (root's,
    0600) with the same layout, through the same direct I/O: for tests where
    loop devices cannot be made, and tools.  The daemon never sets it."""

    def __init__(self, path: Path | str, *, allow_regular_file: bool = False) -> None:
        super().__init__(path)
        self.allow_regular_file = allow_regular_file

    def _device(self, *, write: bool) -> _Device:
        return _Device(self.path, write=write, allow_regular_file=self.allow_regular_file)

    def records(self) -> tuple[SlotRecord | None, SlotRecord | None]:
        """The slot records of slots A and B (None: no published image)."""
        with self._device(write=False) as dev:
            return dev.records()

    @property
    def capacity(self) -> int:
        """The largest image a slot holds, in bytes."""
        with self._device(write=False) as dev:
            return dev.layout.capacity

    def pin_for_saver(self) -> tuple[int, FileExtents | None] | None:
        """One slot's capacity; no block map (B opens a partition by name)."""
        return self.capacity, None

    def exists(self) -> bool:
        """Whether a slot holds a published image (in any state); a device that
        is absent has none, one that is refused raises ``ImageError``."""
        if not self.path.exists():
            return False
        with self._device(write=False) as dev:
            return newest(dev.records()) is not None

    # -- writing --------------------------------------------------------------

    @contextlib.contextmanager
    def writer(self, meta: ImageMeta, **writer_kwargs: Any) -> Iterator[ImageWriter]:
        """An ``ImageWriter`` on the slot that does not hold the newest image;
        ``commit()`` reads back and verifies the header and index the device
        holds, publishes the image with the slot record, then retires the
        older image.  An exception, or leaving
        the block without committing, publishes nothing (the writer zeroes
        the new image's header) and leaves the other slot untouched."""
        with self._device(write=True) as dev:
            records = dev.records()
            last = newest(records)
            target = 0 if last is None else 1 - last.slot
            sequence = 1 + (last.sequence if last else 0)

            def publish() -> None:
                reader = ImageReader(f.as_binary_io())  # from the device, not from memory
                rec = SlotRecord(
                    target,
                    sequence,
                    dev.layout.offset(target),
                    dev.layout.slot_size,
                    reader.summary.stored_bytes,
                    header_digest(f),
                )
                dev.write_record(rec)
                self._retire(dev, records[1 - target])

            with (
                dev.slot(target) as f,
                ImageWriter(f.as_binary_io(), meta, **writer_kwargs) as w,
            ):
                w._commit_hooks.append(publish)
                yield w

    def _retire(self, dev: _Device, older: SlotRecord | None) -> None:
        """Best effort: the new image is published and newest whatever happens here."""
        if older is None:
            return
        try:
            with dev.slot(older.slot) as f:
                invalidate_image(f.as_binary_io())
        except (ImageError, OSError) as e:
            log.warning(
                "could not invalidate the older image in %s: %s", dev.describe(older.slot), e
            )

    # -- reading and the resume state ----------------------------------------------

    def _newest(self, records: Sequence[SlotRecord | None]) -> SlotRecord:
        rec = newest(records)
        if rec is None:
            raise ImageError(f"no image on {self.path}: neither slot holds a published image")
        return rec

    def _verified(self, dev: _Device, f: SlotFile, rec: SlotRecord) -> ImageReader:
        where = f"{dev.describe(rec.slot)}, image {rec.sequence}"
        try:
            reader = ImageReader(f.as_binary_io())
        except ImageError as e:
            raise ImageError(
                f"{where}: {e.message} (offsets are from the slot's start)",
                offset=e.offset,
                chunk=e.chunk,
            ) from e
        if reader.summary.stored_bytes != rec.image_length or header_digest(f) != rec.header_digest:
            raise ImageError(
                f"{where}: the slot's record does not describe the image in the slot "
                "(something other than kexechibd wrote there); refusing it"
            )
        return reader

    def open(self) -> ImageReader:
        """A verified reader on the newest published image, whatever its state
        (close it when done).  Never an older one: once a newer image was
        published, resuming an older one would take A back behind the state
        of its filesystems."""
        dev = self._device(write=False)
        try:
            rec = self._newest(dev.records())
            return self._verified(dev, dev.slot(rec.slot, owns_device=True), rec)
        except BaseException:
            dev.close()
            raise

    def _change_state(self, change: Callable[[BinaryIO], None]) -> None:
        with self._device(write=True) as dev:
            rec = self._newest(dev.records())
            with dev.slot(rec.slot) as f:
                self._verified(dev, f, rec)
                change(f.as_binary_io())

    def mark_consumed(self) -> None:
        self._change_state(mark_image_consumed)

    def mark_committed(self) -> None:
        self._change_state(unmark_image_consumed)

    def invalidate(self) -> None:
        """Invalidate the newest image (damaged or not, as long as it is one of
        ours), and the older one too if a retirement failed to."""
        with self._device(write=True) as dev:
            records = dev.records()
            rec = self._newest(records)
            with dev.slot(rec.slot) as f:
                invalidate_image(f.as_binary_io())
            self._retire(dev, records[1 - rec.slot])
