"""Image files that kernel B writes by block address: the file's extents.

B must never write through A's mounted filesystems (DESIGN §1.3): A's page
cache and the filesystem's state are frozen inside the image.  A file can
still hold images the way a swap file holds pages: it is written out once
(``prepare_image_file``: zeros, fsynced, so that every block is allocated and
written), and from then on its blocks are read and written on the block
device underneath, at the byte offsets that ``FS_IOC_FIEMAP`` reports.  A maps
the file right before it loads B and hands the map to B with B's parameters;
C and A after its return map it themselves (``ExtentImageStore``, at the
end).

This is safe only while nothing else writes the file's blocks: the
filesystem writes a file's data blocks only for data written through it
(after preparation, nobody does: ``check_private`` keeps it root's), and
only filesystems whose FIEMAP addresses are byte offsets on the one device
``st_dev`` names qualify (``ACCEPTED_FILESYSTEMS``), without data journaling
(a journaled data block is written again when the journal is checkpointed).

The pure part decodes and validates what FIEMAP returns (``decode_fiemap``,
``check_extents``) and maps file offsets to device offsets (``FileExtents``);
then come asking the kernel, preparing a file, and the store.
"""

from __future__ import annotations

import bisect
import contextlib
import errno
import fcntl
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexechibd.image.blockstore import (
    IO_ALIGN,
    MOUNTINFO,
    RECORD_SIZE,
    SLOT_ALIGN,
    SYS_DEV_BLOCK,
    DeviceImageStore,
    SlotLayout,
    SlotRecord,
    _Device,
    _lines,
    _unescape,
    newest,
)
from kexechibd.image.meta import ImageError
from kexechibd.image.store import check_private, create_image_file
from kexechibd.kernel.abi import (
    EXTENT_FLAGS,
    EXTENT_LAST,
    EXTENT_MERGED,
    FIEMAP,
    FIEMAP_EXTENT,
    FIEMAP_FLAG_SYNC,
    FIEMAP_MAX_OFFSET,
    FS_IOC_FIEMAP,
)

REQUEST_EXTENTS = 256  # extents asked for per ioctl
# B's parameters travel in a 64 KiB room (cycle/prepare.py); a file this
# fragmented is better recreated than mapped.
MAX_EXTENTS = 512
# Before merging: ext4 reports at most 128 MiB an extent, so this is 4 TiB.
RAW_EXTENTS_LIMIT = 64 * MAX_EXTENTS

# Filesystems whose FIEMAP physical addresses are byte offsets on the block
# device that st_dev names.  Not btrfs (addresses in its own logical space,
# over several devices), nor f2fs (its garbage collector moves blocks on its
# own), nor network, overlay or memory filesystems.
ACCEPTED_FILESYSTEMS = ("ext2", "ext3", "ext4", "xfs")


@dataclass(frozen=True)
class RawExtent:
    """One ``struct fiemap_extent`` as the kernel returned it."""

    logical: int
    physical: int
    length: int
    flags: int


@dataclass(frozen=True)
class Extent:
    """File bytes [logical, logical + length) are device bytes from ``physical``."""

    logical: int
    physical: int
    length: int

    @property
    def end(self) -> int:
        return self.logical + self.length


def fiemap_request(start: int, length: int, count: int) -> bytearray:
    """The ioctl's in/out buffer: the header, room for ``count`` extents."""
    buf = bytearray(FIEMAP.size + count * FIEMAP_EXTENT.size)
    FIEMAP.pack_into(buf, 0, start, length, FIEMAP_FLAG_SYNC, 0, count, 0)
    return buf


def decode_fiemap(buf: bytes | bytearray) -> list[RawExtent]:
    """The extents the kernel filled in; a count beyond the buffer is an error."""
    if len(buf) < FIEMAP.size:
        raise ImageError(f"a FIEMAP reply of {len(buf)} bytes has no header")
    _start, _length, _flags, mapped, count, _ = FIEMAP.unpack_from(buf, 0)
    room = (len(buf) - FIEMAP.size) // FIEMAP_EXTENT.size
    if mapped > min(count, room):
        raise ImageError(f"FIEMAP reported {mapped} extents in room for {min(count, room)}")
    out = []
    for k in range(mapped):
        logical, physical, length, _r, flags, _r2 = FIEMAP_EXTENT.unpack_from(
            buf, FIEMAP.size + k * FIEMAP_EXTENT.size
        )
        out.append(RawExtent(logical, physical, length, flags))
    return out


def _flag_names(flags: int) -> str:
    names = [name for bit, name in EXTENT_FLAGS.items() if flags & bit]
    unknown = flags & ~(EXTENT_LAST | EXTENT_MERGED | sum(EXTENT_FLAGS))
    if unknown:
        names.append(f"unknown flags {unknown:#x}")
    return ", ".join(names)


def check_extents(raw: Sequence[RawExtent], size: int, path: Path | str) -> tuple[Extent, ...]:
    """The extents of a ``size``-byte file, validated for writing by block
    address: every byte of the file in exactly one plain extent (no hole, no
    flag but LAST/MERGED), 4096-aligned on the device, and physically
    adjacent extents merged (fewer transfers to split).  Extents past the end
    of the file (preallocated beyond it) are cut off."""
    fix = f"recreate it with `kexechibctl image create {path} --size …`"
    if size <= 0 or size % IO_ALIGN:
        raise ImageError(f"{path} is {size} bytes, not a positive multiple of {IO_ALIGN}; {fix}")
    out: list[Extent] = []
    pos = 0
    for e in sorted(raw, key=lambda e: e.logical):
        if pos >= size:
            break
        bad = _flag_names(e.flags & ~(EXTENT_LAST | EXTENT_MERGED))
        if bad:
            raise ImageError(
                f"{path}: the extent at file offset {e.logical:#x} is {bad}; its blocks "
                f"cannot be written by address; {fix}"
            )
        if e.logical != pos:
            what = "a hole" if e.logical > pos else "overlapping extents"
            raise ImageError(
                f"{path} has {what} at file offset {pos:#x}: every byte must be allocated "
                f"and written (no sparse files); {fix}"
            )
        if e.length <= 0 or e.physical % IO_ALIGN or e.length % IO_ALIGN:
            raise ImageError(
                f"{path}: the extent at file offset {e.logical:#x} (device offset "
                f"{e.physical:#x}, {e.length} bytes) is not aligned to {IO_ALIGN} bytes on "
                "the device (a filesystem with smaller blocks?); direct I/O needs that"
            )
        length = min(e.length, size - pos)
        if out and out[-1].physical + out[-1].length == e.physical:
            last = out.pop()
            out.append(Extent(last.logical, last.physical, last.length + length))
        else:
            out.append(Extent(pos, e.physical, length))
        pos += length
    if pos < size:
        raise ImageError(
            f"{path} has a hole at file offset {pos:#x} (to its end at {size:#x}): every "
            f"byte must be allocated and written; {fix}"
        )
    if len(out) > MAX_EXTENTS:
        raise ImageError(
            f"{path} is in {len(out)} pieces on its device; kernel B's parameters hold at "
            f"most {MAX_EXTENTS}: {fix} where there is contiguous free space"
        )
    return tuple(out)


@dataclass(frozen=True)
class FileExtents:
    """Where a file's bytes are on its block device: what B needs to write
    the file without its filesystem.  The device is named by number, as
    ``st_dev`` gives it, and by kernel name (``vda1``), which B checks."""

    major: int
    minor: int
    device_name: str
    device_size: int
    size: int  # the file's
    extents: tuple[Extent, ...]

    def __post_init__(self) -> None:
        # Also what B checks of what it was given: one mistake here writes
        # memory over someone else's blocks.
        pos = 0
        for e in self.extents:
            if (
                e.logical != pos
                or e.length <= 0
                or (e.physical | e.length) % IO_ALIGN
                or e.physical + e.length > self.device_size
            ):
                raise ImageError(
                    f"bad extent map for {self.device_name}: {e} (file offset {pos:#x}, "
                    f"device of {self.device_size} bytes)"
                )
            pos = e.end
        if pos != self.size or not 0 < len(self.extents) <= MAX_EXTENTS:
            raise ImageError(
                f"bad extent map for {self.device_name}: {len(self.extents)} extents "
                f"cover {pos} of {self.size} bytes"
            )

    @property
    def rdev(self) -> int:
        return os.makedev(self.major, self.minor)

    def spans(self, offset: int, length: int) -> Iterator[tuple[int, int]]:
        """(device offset, bytes) for file bytes [offset, offset + length),
        split where an extent ends; nothing past the file's end."""
        starts = [e.logical for e in self.extents]
        k = bisect.bisect_right(starts, offset) - 1
        end = min(offset + length, self.size)
        while offset < end:
            e = self.extents[k]
            n = min(end, e.end) - offset
            yield e.physical + offset - e.logical, n
            offset += n
            k += 1

    def to_dict(self) -> dict[str, object]:
        return {
            "major": self.major,
            "minor": self.minor,
            "device_name": self.device_name,
            "device_size": self.device_size,
            "size": self.size,
            "extents": [[e.logical, e.physical, e.length] for e in self.extents],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileExtents:
        """The map from B's parameters, checked as ``__post_init__`` does."""
        try:
            ints = [data[k] for k in ("major", "minor", "device_size", "size")]
            name, extents = data["device_name"], data["extents"]
            triples = [tuple(e) for e in extents]
            if not (
                all(type(v) is int for v in ints)
                and isinstance(name, str)
                and all(len(t) == 3 and all(type(v) is int for v in t) for t in triples)
            ):
                raise TypeError("a field has the wrong type")
        except (KeyError, TypeError) as e:
            raise ImageError(f"bad extent map: {e}") from None
        major, minor, device_size, size = ints
        return cls(major, minor, name, device_size, size, tuple(Extent(*t) for t in triples))


# ===========================================================================
# Asking the kernel
# ===========================================================================


def fiemap(fd: int) -> list[RawExtent]:
    """Every extent of the open file (``FIEMAP_FLAG_SYNC``: dirty data is
    written out first, so delayed allocations have their blocks)."""
    out: list[RawExtent] = []
    start = 0
    while True:
        buf = fiemap_request(start, FIEMAP_MAX_OFFSET - start, REQUEST_EXTENTS)
        try:
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf, True)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                raise ImageError(
                    "its filesystem cannot tell where a file's blocks are (no FIEMAP)"
                ) from e
            raise
        got = decode_fiemap(buf)
        out.extend(got)
        if not got or got[-1].flags & EXTENT_LAST:
            return out
        if len(out) > RAW_EXTENTS_LIMIT:  # bounds memory
            raise ImageError(f"it is in more than {RAW_EXTENTS_LIMIT} pieces on its device")
        start = got[-1].logical + got[-1].length


@dataclass(frozen=True)
class Mount:
    fstype: str
    options: str  # the mount's and the superblock's, comma-separated
    where: str


def mount_of(dev: int) -> Mount | None:
    """How the filesystem with device number ``dev`` is mounted (mountinfo)."""
    for fields in _lines(MOUNTINFO):
        try:
            sep = fields.index("-", 6)
            major, minor = fields[2].split(":")
            if os.makedev(int(major), int(minor)) != dev:
                continue
            return Mount(fields[sep + 1], f"{fields[5]},{fields[sep + 3]}", _unescape(fields[4]))
        except (ValueError, IndexError):
            continue
    return None


def mount_containing(path: Path | str) -> Mount | None:
    """The mount that holds ``path``: the longest mount point above it, the
    last mounted on ties.  For filesystems whose files' ``st_dev`` is not the
    superblock's (btrfs subvolumes: anonymous device numbers)."""
    target = os.path.realpath(path)
    found: Mount | None = None
    for fields in _lines(MOUNTINFO):
        try:
            sep = fields.index("-", 6)
            where = _unescape(fields[4])
        except (ValueError, IndexError):
            continue
        inside = target == where or target.startswith(where.rstrip("/") + "/")
        if inside and (found is None or len(where) >= len(found.where)):
            found = Mount(fields[sep + 1], f"{fields[5]},{fields[sep + 3]}", where)
    return found


def device_name(rdev: int) -> str | None:
    """The kernel's name of block device ``rdev`` (``DEVNAME`` in sysfs)."""
    node = SYS_DEV_BLOCK / f"{os.major(rdev)}:{os.minor(rdev)}"
    with contextlib.suppress(OSError):
        for line in (node / "uevent").read_text().splitlines():
            if line.startswith("DEVNAME="):
                return line.split("=", 1)[1]
    return None


def device_path(extents: FileExtents) -> Path:
    """The node of the file's device, found by number as B's kernel numbers
    it; its name must be the one A saw (the same number for another disk
    would be written over)."""
    name = device_name(extents.rdev)
    where = f"{extents.major}:{extents.minor}"
    if name is None:
        raise ImageError(
            f"no block device {where} ({extents.device_name}) in this kernel: is its "
            "driver in the initramfs?"
        )
    if name != extents.device_name:
        raise ImageError(
            f"block device {where} is {name} here but was {extents.device_name} when the "
            "image file was mapped; refusing to write by block address to another device"
        )
    return Path("/dev") / name


def check_backing_device(st: os.stat_result, path: Path | str) -> tuple[int, str]:
    """The block device that holds the file, as (device number, kernel name):
    refused when FIEMAP's addresses are not offsets on it, or when B could
    not open it without setting up what A set up (device-mapper, md)."""
    dev = st.st_dev
    mount = mount_of(dev) or mount_containing(path)
    fstype = mount.fstype if mount else "unknown"
    if fstype == "btrfs":
        raise ImageError(
            f"{path} is on btrfs, whose FIEMAP addresses are its own logical addresses "
            "(over possibly several devices), not offsets on a block device; put the image "
            "file on ext4 or xfs, or use a raw partition"
        )
    if fstype not in ACCEPTED_FILESYSTEMS:
        raise ImageError(
            f"{path} is on a {fstype} filesystem; images are written by block address only "
            f"into files on {', '.join(ACCEPTED_FILESYSTEMS)}, or to a raw partition"
        )
    assert mount is not None
    if "data=journal" in mount.options.split(","):
        raise ImageError(
            f"{path} is on {mount.where}, mounted with data=journal: the journal would "
            "write the file's old data over the image; use another filesystem or a raw "
            "partition"
        )
    name = device_name(dev)
    if name is None:
        raise ImageError(
            f"{path}: its filesystem's device {os.major(dev)}:{os.minor(dev)} is not a block "
            "device (sysfs has no /sys/dev/block entry for it)"
        )
    node = SYS_DEV_BLOCK / f"{os.major(dev)}:{os.minor(dev)}"
    for kind, what in (("dm", "device-mapper (LVM, dm-crypt)"), ("md", "md RAID")):
        if (node / kind).exists() or name.startswith(f"{kind}-" if kind == "dm" else kind):
            raise ImageError(
                f"{path} is on {name}, a {what} device: kernel B, with only its initramfs, "
                "cannot open it without setting it up as A did; use a file on a plain "
                "partition, or a raw partition"
            )
    return dev, name


def _device_size(name: str) -> int:
    try:
        return int((Path("/sys/class/block") / name / "size").read_text()) * 512
    except (OSError, ValueError) as e:
        raise ImageError(f"cannot read the size of block device {name}: {e}") from e


def map_open_file(fd: int, path: Path | str) -> FileExtents:
    """The validated extent map of the open image file ``fd``."""
    st = os.fstat(fd)
    check_private(st, path)
    dev, name = check_backing_device(st, path)
    try:
        raw = fiemap(fd)
    except ImageError as e:
        raise ImageError(f"{path}: {e.message}") from e
    except OSError as e:
        raise ImageError(f"{path}: cannot map its blocks (FIEMAP): {e.strerror}") from e
    extents = check_extents(raw, st.st_size, path)
    return FileExtents(os.major(dev), os.minor(dev), name, _device_size(name), st.st_size, extents)


def map_file(path: Path | str) -> FileExtents:
    """Open ``path`` (no symlink followed) and map it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise ImageError(f"no image file at {path}") from e
    except OSError as e:
        raise ImageError(f"cannot open {path}: {e.strerror}") from e
    try:
        mapped = map_open_file(fd, path)
        # What this kernel cached of the file is stale once another kernel
        # wrote its blocks; nothing here reads through the cache, but tools
        # might (best effort: mapped or busy pages stay).
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return mapped
    finally:
        os.close(fd)


# ===========================================================================
# Preparing a file
# ===========================================================================

# Its two record blocks hold records of sequence 0: they publish nothing
# (docs/image-format.md), but say the file is a prepared one.
MARKER_SEQUENCE = 0
ZERO_WRITE = 4 << 20


def size_for(image_bytes: int) -> int:
    """The smallest device or file whose two slots each hold an image of
    ``image_bytes``, in whole MiB."""
    slot = -(-(image_bytes + RECORD_SIZE) // SLOT_ALIGN) * SLOT_ALIGN
    return 2 * slot


def marker(layout: SlotLayout, slot: int) -> bytes:
    return SlotRecord(
        slot, MARKER_SEQUENCE, layout.offset(slot), layout.slot_size, 0, bytes(32)
    ).encode()


def is_prepared(path: Path | str) -> bool:
    """Whether ``path`` is a regular file that ``prepare_image_file`` made
    (either record block starts with the record magic).  Read through the
    filesystem: the magic, once there, never changes."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size < 2 * SLOT_ALIGN:
            return False
        layout = SlotLayout.for_device(st.st_size)
        return any(
            os.pread(fd, 8, layout.record_offset(k)) == marker(layout, k)[:8] for k in (0, 1)
        )
    finally:
        os.close(fd)


def prepare_image_file(path: Path, size: int) -> FileExtents:
    """Create ``path`` (it must not exist; root's, 0600) holding ``size``
    bytes (rounded up to whole MiB slots) written out as zeros and fsynced,
    with the two slots' markers, and return its validated extent map.  The
    filesystem and device are checked before anything is written; on any
    failure the file is removed."""
    size = max(size_for(0), -(-size // (2 * SLOT_ALIGN)) * 2 * SLOT_ALIGN)
    parent = os.stat(path.parent)
    check_backing_device(parent, path)
    layout = SlotLayout.for_device(size)
    f = create_image_file(path)
    try:
        with f:
            zeros = bytes(ZERO_WRITE)
            pos = 0
            while pos < size:
                pos += f.write(zeros[: min(ZERO_WRITE, size - pos)])
            for k in (0, 1):
                f.seek(layout.record_offset(k))
                f.write(marker(layout, k))
            f.flush()
            os.fsync(f.fileno())
            mapped = map_open_file(f.fileno(), path)
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)  # the new name, too, survives a crash
        finally:
            os.close(fd)
        return mapped
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise


# ===========================================================================
# The store
# ===========================================================================


class ExtentImageStore(DeviceImageStore):
    """Images in the two slots of a prepared file (the layout of a device's,
    docs/image-format.md), every transfer direct on the block device that
    holds the file, at the file's extents.

    ``extents`` given: B's case, which cannot see the file and uses the map
    A made right before it loaded B (A is frozen from then on: the blocks
    cannot move).  Without it (A, C, tools) the file is mapped afresh each
    time the device is opened."""

    def __init__(self, path: Path | str, *, extents: FileExtents | None = None) -> None:
        super().__init__(path)
        self.extents = extents

    def mapping(self) -> FileExtents:
        return self.extents if self.extents is not None else map_file(self.path)

    def _device(self, *, write: bool) -> _Device:
        mapped = self.mapping()
        return _Device(device_path(mapped), write=write, extents=mapped, name=self.path)

    def check_writable(self) -> None:
        """A and C write the file's blocks while its filesystem is mounted,
        which a kernel built without CONFIG_BLK_DEV_WRITE_MOUNTED refuses:
        A finds out before it jumps."""
        with self._device(write=True):
            pass

    def pin_for_saver(self) -> tuple[int, FileExtents | None] | None:
        """The map of the file's blocks B writes by, made now (as late as it
        can be: A is frozen from the jump on, so nothing moves them before B
        writes), checked writable, with one slot's capacity."""
        mapped = self.mapping()
        pinned = ExtentImageStore(self.path, extents=mapped)
        pinned.check_writable()
        return pinned.capacity, mapped

    @property
    def through_filesystem(self) -> bool:
        """Whether this store found the file through its mounted filesystem
        (rather than by the block map a resume record or A handed over)."""
        return self.extents is None

    def exists(self) -> bool:
        if self.extents is None and not self.path.exists():
            return False
        with self._device(write=False) as dev:
            return newest(dev.records()) is not None
