"""newc cpio archives, as the kernel's initramfs unpacker reads them (pure).

B's parameters travel as a second newc archive appended to its initrd
(DESIGN §3); the kernel unpacks concatenated archives and skips the zero
padding between them.
"""

from __future__ import annotations

import stat
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

MAGIC = b"070701"
TRAILER = "TRAILER!!!"
HEADER_LEN = 110


class CpioError(ValueError):
    """Malformed archive; the message names the offset."""


def _pad4(n: int) -> int:
    return (4 - n % 4) % 4


def newc_entry(
    name: str,
    mode: int,
    data: bytes = b"",
    *,
    ino: int,
    nlink: int = 1,
    mtime: int = 0,
    rdev: tuple[int, int] = (0, 0),
) -> bytes:
    """One entry: header, NUL-terminated name and data, each padded so the
    next part starts 4-byte aligned (entries start aligned)."""
    raw = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, nlink, mtime, len(data), 0, 0, rdev[0], rdev[1], len(raw), 0]
    head = MAGIC + b"".join(b"%08X" % f for f in fields) + raw
    return head + bytes(_pad4(len(head))) + data + bytes(_pad4(len(data)))


def newc_trailer(ino: int = 0) -> bytes:
    """The entry that ends an archive."""
    return newc_entry(TRAILER, 0, ino=ino)


def build_newc(files: Mapping[str, bytes], *, file_mode: int = 0o600) -> bytes:
    """An archive holding ``files`` (path → contents) and the directories
    they need, ending with the trailer, padded to 4 bytes."""
    out = []
    ino = 1
    dirs: set[str] = set()
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts)):
            directory = "/".join(parts[:depth])
            if directory not in dirs:
                dirs.add(directory)
                out.append(newc_entry(directory, stat.S_IFDIR | 0o700, ino=ino))
                ino += 1
        out.append(newc_entry("/".join(parts), stat.S_IFREG | file_mode, files[path], ino=ino))
        ino += 1
    out.append(newc_trailer())
    return b"".join(out)


@dataclass(frozen=True)
class CpioEntry:
    name: str
    mode: int
    data: bytes

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_file(self) -> bool:
        return stat.S_ISREG(self.mode)


def read_newc(blob: bytes | memoryview) -> Iterator[CpioEntry]:
    """Every entry of every archive in ``blob`` (concatenated, zero padded),
    as the kernel's unpacker sees them; trailers are not yielded."""
    data = memoryview(blob)
    offset = 0
    while offset < len(data):
        if data[offset] == 0:
            # Zero padding between archives: the kernel skips every NUL byte
            # and then insists on a 4-byte aligned header (init/initramfs.c).
            while offset < len(data) and data[offset] == 0:
                offset += 1
            if offset < len(data) and offset % 4:
                raise CpioError(f"broken padding: next archive at unaligned offset {offset}")
            continue
        if len(data) - offset < HEADER_LEN:
            raise CpioError(f"truncated cpio header at offset {offset}")
        if bytes(data[offset : offset + 6]) != MAGIC:
            raise CpioError(f"not a newc cpio header at offset {offset}")
        try:
            fields = [
                int(bytes(data[offset + 6 + 8 * i : offset + 14 + 8 * i]), 16) for i in range(13)
            ]
        except ValueError:
            raise CpioError(f"bad hex field in cpio header at offset {offset}") from None
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        name_start = offset + HEADER_LEN
        name_end = name_start + namesize
        data_start = name_end + _pad4(HEADER_LEN + namesize)
        data_end = data_start + filesize
        if namesize == 0 or data_end > len(data):
            raise CpioError(f"cpio entry at offset {offset} runs past the end of the archive")
        name = bytes(data[name_start : name_end - 1]).decode(errors="replace")
        offset = data_end + _pad4(filesize)
        if name == TRAILER:
            continue
        yield CpioEntry(name, mode, bytes(data[data_start:data_end]))
