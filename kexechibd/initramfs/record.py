"""Where the image is, for a boot that has not mounted anything yet: the
*resume record* that the initramfs-tools hook puts into Debian's initramfs
(DESIGN §1.4, §6.4).

C must resume A before the initramfs checks or mounts A's root: mounting
ext4 (read-only too) replays A's journal and cleans up its orphans, and A's
page cache in the image would no longer match the disk.  So the initramfs
finds the image without the filesystem: for a prepared file, its block
device and the file's extents (they never move, DESIGN §1.3), read through
the same ``ExtentImageStore`` kernel B writes through; for a raw partition,
the partition.

The device is named by what survives a reboot: the ``/dev/disk/by-*`` links
udev made for it here (by-uuid first: the filesystem's UUID, which udev
also makes in Debian's initramfs), with the device number and kernel name
as the fallback when no link exists.  The file's inode number, size and
extents are what A compares, at ``Hibernate``, with the file it is about to
use: a record that no longer matches would send the next boot to blocks that
are not the image, so ``Hibernate`` is refused (``problems``).

Pure: the record, its JSON and the comparison.  I/O: making one (``make``),
finding the device in the initramfs (``store``), and reading the record
from an installed, possibly compressed initramfs (``read_from_initramfs``).
"""

from __future__ import annotations

import gzip
import json
import lzma
import os
import stat
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexechibd import cpio
from kexechibd.image.blockdev import device_name, device_size
from kexechibd.image.blockstore import DeviceImageStore
from kexechibd.image.extents import Extent, FileExtents, map_file
from kexechibd.image.extentstore import ExtentImageStore, is_prepared
from kexechibd.image.meta import ImageError
from kexechibd.image.seal import is_sealed
from kexechibd.image.sealstore import SealedImageStore

# In the initramfs (relative to its root, as initramfs-tools' $DESTDIR).
PATH = "etc/kexechib/resume.json"
FORMAT = 1
# Every installed kernel's initramfs: `-u` alone updates only the newest, which
# need not be the kernel that is running (and whose image C must resume).
UPDATE_COMMAND = "update-initramfs -u -k all"
# The initramfs the next boot of this kernel uses (Debian's naming).
INSTALLED_INITRAMFS = "/boot/initrd.img-{release}"
# Link directories udev makes, most stable first; by-uuid only names a
# filesystem's device (a file's), by-partuuid/-partlabel a partition.
LINK_DIRECTORIES = ("by-uuid", "by-partuuid", "by-partlabel", "by-id", "by-path")
DISK_LINKS = Path("/dev/disk")
# Kinds of record for a prepared file: its extents are recorded.  A sealed
# file's record has no key: C reads it through its own dm-crypt mapping
# (DESIGN §1.6); the record lives on /boot, in the clear.
FILE_KINDS = ("file", "sealed")


@dataclass(frozen=True)
class Record:
    location: str  # [image] location, as configured
    kind: str  # "file" (a prepared file), "sealed" (one on dm-crypt), "device" (a partition)
    links: tuple[str, ...]  # /dev/disk/by-*/… that named the device, most stable first
    major: int  # the device's number and kernel name when recorded (fallback)
    minor: int
    device_name: str
    device_size: int
    inode: int = 0  # file only
    size: int = 0  # file only
    extents: tuple[tuple[int, int, int], ...] = ()  # file only: (logical, physical, length)

    def to_json(self) -> bytes:
        data: dict[str, Any] = {
            "format": FORMAT,
            "location": self.location,
            "kind": self.kind,
            "links": list(self.links),
            "major": self.major,
            "minor": self.minor,
            "device_name": self.device_name,
            "device_size": self.device_size,
        }
        if self.kind in FILE_KINDS:
            data.update(inode=self.inode, size=self.size, extents=[list(e) for e in self.extents])
        return json.dumps(data, indent=1).encode() + b"\n"

    @classmethod
    def from_json(cls, raw: bytes) -> Record:
        """Raises ImageError for anything but a record of this format."""
        try:
            data = json.loads(raw)
            if data.pop("format", None) != FORMAT:
                raise ImageError("the resume record has an unknown format")
            data["links"] = tuple(str(link) for link in data["links"])
            data["extents"] = tuple(tuple(int(v) for v in e) for e in data.get("extents", ()))
            record = cls(**data)
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ImageError(f"the resume record cannot be read: {e}") from None
        kinds = (*FILE_KINDS, "device")
        if record.kind not in kinds or (record.kind in FILE_KINDS) != bool(record.extents):
            raise ImageError(f"the resume record is inconsistent (kind {record.kind!r})")
        return record

    def file_extents(self, major: int, minor: int, name: str) -> FileExtents:
        """The extent map, as the device is numbered and named in this boot
        (checked by ``FileExtents``: contiguous, aligned, inside the device)."""
        return FileExtents(
            major,
            minor,
            name,
            self.device_size,
            self.size,
            tuple(Extent(*e) for e in self.extents),
        )


def problems(installed: Record | None, current: Record, initramfs: str) -> list[str]:
    """Why the next boot, reading ``installed`` (the record in its
    initramfs; None: none there), would not find the image ``current``
    describes (pure; empty when it would)."""
    fix = f"run `{UPDATE_COMMAND}` to record it"
    if installed is None:
        return [
            f"{initramfs} has no kexechib resume record, so the next boot would not look for "
            f"the image at {current.location}; {fix}"
        ]
    out = []
    if installed.location != current.location or installed.kind != current.kind:
        out.append(
            f"{initramfs} looks for the image at {installed.location}, not at "
            f"{current.location}; {fix}"
        )
    elif current.kind in FILE_KINDS and (installed.inode, installed.size) != (
        current.inode,
        current.size,
    ):
        out.append(
            f"{current.location} was recreated since {initramfs} recorded it (inode "
            f"{installed.inode} of {installed.size} bytes, now inode {current.inode} of "
            f"{current.size} bytes); {fix}"
        )
    elif installed.extents != current.extents:
        out.append(
            f"the blocks of {current.location} are not where {initramfs} recorded them; {fix}"
        )
    elif (installed.device_size, installed.links[:1]) != (current.device_size, current.links[:1]):
        out.append(
            f"the device of {current.location} is not the one {initramfs} recorded "
            f"({installed.links[:1] or installed.device_name}, now "
            f"{current.links[:1] or current.device_name}); {fix}"
        )
    return out


# ===========================================================================
# Making a record (in A, from the hook and at Hibernate)
# ===========================================================================


def device_links(rdev: int, root: Path = DISK_LINKS) -> tuple[str, ...]:
    """The /dev/disk/by-* links that resolve to block device ``rdev``,
    in ``LINK_DIRECTORIES`` order."""
    out = []
    for kind in LINK_DIRECTORIES:
        try:
            names = sorted(os.listdir(root / kind))
        except OSError:
            continue
        for name in names:
            link = root / kind / name
            try:
                st = os.stat(link)
            except OSError:
                continue
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == rdev:
                out.append(str(link))
    return tuple(out)


# blkid's names for what udev's by-* links are made from.
_PROBED = (
    ("UUID", "by-uuid"),
    ("PART_ENTRY_UUID", "by-partuuid"),
    ("PART_ENTRY_NAME", "by-partlabel"),
)


def probed_links(node: Path, links_root: Path = DISK_LINKS) -> tuple[str, ...]:
    """The by-uuid/-partuuid/-partlabel links udev would make for ``node``,
    from what ``blkid -p`` reads on it: for a system (or a boot) where udev
    has made none yet."""
    done = subprocess.run(
        ["blkid", "-p", "-o", "export", str(node)], capture_output=True, text=True, check=False
    )
    found = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return tuple(
        str(links_root / kind / found[key].replace("/", "\\x2f"))
        for key, kind in _PROBED
        if found.get(key)
    )


def _links(rdev: int, name: str, links_root: Path) -> tuple[str, ...]:
    seen = device_links(rdev, links_root)
    extra = [link for link in probed_links(Path("/dev") / name, links_root) if link not in seen]
    return tuple(sorted((*seen, *extra), key=_rank))


def _rank(link: str) -> int:
    kind = Path(link).parent.name
    return LINK_DIRECTORIES.index(kind) if kind in LINK_DIRECTORIES else len(LINK_DIRECTORIES)


def make(location: Path, links_root: Path = DISK_LINKS) -> Record:
    """The record for the image at ``location``: a block device, or a
    prepared file (mapped now). Raises ImageError when it is neither."""
    try:
        st = os.stat(location)
    except OSError as e:
        raise ImageError(f"cannot look at {location}: {e.strerror}") from None
    if stat.S_ISBLK(st.st_mode):
        name = device_name(st.st_rdev) or location.name
        return Record(
            str(location),
            "device",
            _links(st.st_rdev, name, links_root),
            os.major(st.st_rdev),
            os.minor(st.st_rdev),
            name,
            device_size(name),
        )
    sealed = is_sealed(location)
    if not sealed and not is_prepared(location):
        raise ImageError(
            f"{location} is neither a block device nor a prepared image file "
            "(kexechibctl image create)"
        )
    mapped = map_file(location, sealed=sealed)
    return Record(
        str(location),
        "sealed" if sealed else "file",
        _links(mapped.rdev, mapped.device_name, links_root),
        mapped.major,
        mapped.minor,
        mapped.device_name,
        mapped.device_size,
        inode=st.st_ino,
        size=mapped.size,
        extents=tuple((e.logical, e.physical, e.length) for e in mapped.extents),
    )


def next_boot_problems(location: Path, initramfs: Path) -> list[str] | None:
    """Why the initramfs at ``initramfs`` would not find the image at
    ``location`` (``problems``); None when there is no initramfs there (a
    machine booted without one, or from elsewhere: not checked).  Raises
    ImageError when either cannot be read."""
    if not initramfs.exists():
        return None
    return problems(read_from_initramfs(initramfs), make(location), str(initramfs))


# ===========================================================================
# Reading the record in the initramfs
# ===========================================================================


def find_device(record: Record, wait: float = 0.0) -> Path:
    """The node of the recorded device in this boot: its first link that
    exists (udev makes them in Debian's initramfs), else the device of the
    recorded number if it still has the recorded name.  Waits up to ``wait``
    seconds for it to appear."""
    deadline = time.monotonic() + wait
    while True:
        for link in record.links:
            if os.path.exists(link):
                return Path(link)
        rdev = os.makedev(record.major, record.minor)
        if device_name(rdev) == record.device_name and os.path.exists(f"/dev/{record.device_name}"):
            return Path("/dev") / record.device_name
        if time.monotonic() >= deadline:
            named = ", ".join(record.links) or "no /dev/disk link"
            raise ImageError(
                f"the device of {record.location} did not appear ({named}; "
                f"{record.major}:{record.minor} {record.device_name})"
            )
        time.sleep(0.2)


def store(record: Record, wait: float = 0.0) -> DeviceImageStore:
    """The image store the record describes, read and written by block
    address: ``ExtentImageStore`` with the recorded extents on the device
    as numbered in this boot, or the partition's ``DeviceImageStore``."""
    node = find_device(record, wait)
    if record.kind == "device":
        return DeviceImageStore(node)
    rdev = os.stat(node).st_rdev
    name = device_name(rdev) or record.device_name
    mapped = record.file_extents(os.major(rdev), os.minor(rdev), name)
    if record.kind == "sealed":
        return SealedImageStore(record.location, extents=mapped, node=node)
    return ExtentImageStore(record.location, extents=mapped)


def load(root: Path = Path("/")) -> Record | None:
    """The record in the running initramfs (None: the hook recorded none)."""
    try:
        raw = (root / PATH).read_bytes()
    except FileNotFoundError:
        return None
    return Record.from_json(raw)


# ===========================================================================
# Reading the record of an installed initramfs (in A, at Hibernate)
# ===========================================================================

_ZSTD = b"\x28\xb5\x2f\xfd"
_GZIP = b"\x1f\x8b"
_XZ = b"\xfd7zXZ\x00"


def _segments(blob: bytes) -> Iterator[bytes]:
    """The uncompressed newc archives of an initramfs: leading uncompressed
    ones (early microcode), then the main one, decompressed."""
    offset = 0
    while offset < len(blob):
        while offset < len(blob) and blob[offset] == 0:
            offset += 1
        rest = blob[offset:]
        if not rest:
            return
        if rest.startswith(cpio.MAGIC):
            end = _archive_end(rest)
            yield rest[:end]
            offset += end
            continue
        if rest.startswith(_ZSTD):
            import zstandard

            reader = zstandard.ZstdDecompressor().stream_reader(rest, read_across_frames=True)
            yield reader.read()
        elif rest.startswith(_GZIP):
            yield gzip.decompress(rest)
        elif rest.startswith(_XZ):
            yield lzma.decompress(rest)
        else:
            raise ImageError(
                f"its main archive is compressed with a method kexechibd does not read "
                f"(magic {rest[:4].hex()}); set COMPRESS=zstd, gzip or xz in "
                "/etc/initramfs-tools/initramfs.conf"
            )
        return


def _archive_end(blob: bytes) -> int:
    """The offset just past the trailer of the newc archive at the start
    (header fields: c_filesize is the 7th, c_namesize the 12th)."""
    offset = 0
    while blob.startswith(cpio.MAGIC, offset):
        try:
            filesize = int(blob[offset + 54 : offset + 62], 16)
            namesize = int(blob[offset + 94 : offset + 102], 16)
        except ValueError:
            break
        name_end = offset + cpio.HEADER_LEN + namesize
        name = blob[offset + cpio.HEADER_LEN : name_end - 1]
        data = name_end + (-name_end % 4)
        offset = data + filesize + (-(data + filesize) % 4)
        if name == cpio.TRAILER.encode():
            return offset
    raise ImageError("an uncompressed archive in it has no trailer")


def read_from_initramfs(path: Path) -> Record | None:
    """The record in the initramfs file at ``path`` (None: it has none).
    Raises ImageError when the file cannot be read."""
    try:
        blob = path.read_bytes()
    except OSError as e:
        raise ImageError(f"cannot read {path}: {e.strerror}") from None
    try:
        for archive in _segments(blob):
            for entry in cpio.read_newc(archive):
                if entry.name.lstrip("./") == PATH:
                    return Record.from_json(entry.data)
    except cpio.CpioError as e:
        raise ImageError(f"{path}: {e}") from None
    except ImageError as e:
        raise ImageError(f"{path}: {e.message}") from None
    return None
