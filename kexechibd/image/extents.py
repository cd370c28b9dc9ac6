"""Image files that kernel B writes by block address: the file's extents.

B must never write through A's mounted filesystems (DESIGN §1.3): A's page
cache and the filesystem's state are frozen inside the image.  A file can
still hold images the way a swap file holds pages: it is written out once
(``prepare_plain_file``: zeros, fsynced, so that every block is allocated and
written), and from then on its blocks are read and written on the block
device underneath, at the byte offsets that ``FS_IOC_FIEMAP`` reports.  A maps
the file right before it loads B and hands the map to B with B's parameters;
C and A after its return map it themselves (``ExtentImageStore``,
``extentstore.py``).

This is safe only while nothing else writes the file's blocks: the
filesystem writes a file's data blocks only for data written through it
(after preparation, nobody does: ``check_private`` keeps it root's), and
only filesystems whose FIEMAP addresses are byte offsets on the one device
``st_dev`` names qualify (``ACCEPTED_FILESYSTEMS``), without data journaling
(a journaled data block is written again when the journal is checkpointed).

The pure part decodes and validates what FIEMAP returns (``decode_fiemap``,
``check_extents``) and maps file offsets to device offsets (``FileExtents``);
then come asking the kernel and checking the file's filesystem and device.
Preparing such a file and the store are in ``extentstore.py``.
"""

from __future__ import annotations

import bisect
import errno
import fcntl
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexechibd.image.blockdev import current_mounts, device_name, device_size, stacked_kind
from kexechibd.image.fileio import check_private
from kexechibd.image.meta import ImageError
from kexechibd.image.slots import IO_ALIGN
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
from kexechibd.mounts import Mount

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


def mount_of(dev: int) -> Mount | None:
    """How the filesystem with device number ``dev`` is mounted (mountinfo)."""
    return next((m for m in current_mounts() if m.device == dev), None)


def mount_containing(path: Path | str) -> Mount | None:
    """The mount that holds ``path``: the longest mount point above it, the
    last mounted on ties.  For filesystems whose files' ``st_dev`` is not the
    superblock's (btrfs subvolumes: anonymous device numbers)."""
    target = os.path.realpath(path)
    found: Mount | None = None
    for m in current_mounts():
        where = m.mount_point
        inside = target == where or target.startswith(where.rstrip("/") + "/")
        if inside and (found is None or len(where) >= len(found.mount_point)):
            found = m
    return found


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


def check_backing_device(
    st: os.stat_result, path: Path | str, *, sealed: bool = False
) -> tuple[int, str]:
    """The block device that holds the file, as (device number, kernel name):
    refused when FIEMAP's addresses are not offsets on it, or when B could
    not open it without setting up what A set up (device-mapper, md).  A
    ``sealed`` file may be on device-mapper: its seal reaches the blocks
    under the mapping and checks what the mapping is (``seal.py``)."""
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
            f"{path} is on {mount.mount_point}, mounted with data=journal: the journal would "
            "write the file's old data over the image; use another filesystem or a raw "
            "partition"
        )
    name = device_name(dev)
    if name is None:
        raise ImageError(
            f"{path}: its filesystem's device {os.major(dev)}:{os.minor(dev)} is not a block "
            "device (sysfs has no /sys/dev/block entry for it)"
        )
    kind = stacked_kind(dev, name)
    if sealed and kind == "device-mapper":
        return dev, name  # the seal reads the mapping's table (seal.py)
    if kind:
        raise ImageError(
            f"{path} is on {name}, a {kind} device: kernel B, with only its initramfs, "
            "cannot open it without setting it up as A did; on dm-crypt, prepare the "
            "file with `kexechibctl image create` (it is then sealed); elsewhere use a "
            "file on a plain partition, or a raw partition"
        )
    return dev, name


def map_open_file(fd: int, path: Path | str, *, sealed: bool = False) -> FileExtents:
    """The validated extent map of the open image file ``fd``."""
    st = os.fstat(fd)
    check_private(st, path)
    dev, name = check_backing_device(st, path, sealed=sealed)
    try:
        raw = fiemap(fd)
    except ImageError as e:
        raise ImageError(f"{path}: {e.message}") from e
    except OSError as e:
        raise ImageError(f"{path}: cannot map its blocks (FIEMAP): {e.strerror}") from e
    extents = check_extents(raw, st.st_size, path)
    return FileExtents(os.major(dev), os.minor(dev), name, device_size(name), st.st_size, extents)


def map_file(path: Path | str, *, sealed: bool = False) -> FileExtents:
    """Open ``path`` (no symlink followed) and map it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise ImageError(f"no image file at {path}") from e
    except OSError as e:
        raise ImageError(f"cannot open {path}: {e.strerror}") from e
    try:
        mapped = map_open_file(fd, path, sealed=sealed)
        # What this kernel cached of the file is stale once another kernel
        # wrote its blocks; nothing here reads through the cache, but tools
        # might (best effort: mapped or busy pages stay).
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        return mapped
    finally:
        os.close(fd)
