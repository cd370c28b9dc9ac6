"""Sealed image files: a prepared image file on a dm-crypt filesystem whose
image is encrypted with a key of its own, kept in the file's first block
(issue 16, point 1; DESIGN §1.3, "Images on an encrypted root").

Kernel B cannot write through A's dm-crypt mapping: it would need the volume
key, and a LUKS2 mapping that cryptsetup opened through the kernel keyring
(its default) holds the only copy; dm's table shows ``:64:logon:cryptsetup:…``
in its place, and nothing in userspace can read it back.  So the file carries
a key of its own, made when it is prepared:

    file [0, KEY_AREA)      the key block, written and read through the
                            filesystem's dm-crypt mapping like any file data,
                            so on the disk it is encrypted with the volume key
    file [KEY_AREA, size)   a "device" of size - KEY_AREA bytes with the
                            two-slot layout of a raw partition, seen through
                            a mapping every kernel sets up alike:

        kexechib-image-blocks   dm linear: the file's extents after the key
                                block, in file order, on the partition under
                                the dm-crypt mapping (their offsets there are
                                the crypt target's start plus FIEMAP's)
        kexechib-image          dm crypt, the seal key, over the linear device

A reads the key through the file; B gets it in its parameters (memory only);
C, whose initramfs unlocked the root, reads the key block by block address
through its own dm-crypt mapping.  Whoever cannot unlock the root cannot read
the key, so cannot read the image.

This module is the pure part: the key block's codec, dm's table of the
filesystem's device parsed (``parse_crypt_table``, refusing what cannot be
sealed) and the two tables of the mapping (``SealMapping``).  Running
``dmsetup``: ``devmapper.py``.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kexechibd.image.extents import FileExtents
from kexechibd.image.meta import ImageError
from kexechibd.image.slots import IO_ALIGN

SECTOR = 512  # dm's tables count 512-byte sectors, whatever the device's block size
KEY_AREA = IO_ALIGN
SEAL_MAGIC = b"KXHSEAL1"
SEAL_VERSION = 1
# LUKS2's default (cryptsetup 2.x): AES-256 in XTS mode, two 256-bit keys,
# the IV the sector number of the mapped device.
SEAL_CIPHER = "aes-xts-plain64"
SEAL_KEY_BYTES = 64
# magic, version, key length, cipher name (NUL-padded), key; then the SHA-256
# of those bytes
KEY_BLOCK = struct.Struct("<8sII32s64s")
BLOCKS_NAME = "kexechib-image-blocks"
IMAGE_NAME = "kexechib-image"


@dataclass(frozen=True, repr=False)
class SealKey:
    """The cipher and key of a sealed file's image.  Never printed: the
    default repr would put the key in a log."""

    cipher: str
    key: bytes

    def __repr__(self) -> str:
        return f"SealKey({self.cipher}, {len(self.key)} bytes)"

    @classmethod
    def generate(cls) -> SealKey:
        return cls(SEAL_CIPHER, os.urandom(SEAL_KEY_BYTES))

    def to_block(self) -> bytes:
        """The file's key block, KEY_AREA bytes."""
        body = KEY_BLOCK.pack(
            SEAL_MAGIC, SEAL_VERSION, len(self.key), self.cipher.encode(), self.key
        )
        block = body + hashlib.sha256(body).digest()
        return block + bytes(KEY_AREA - len(block))

    @classmethod
    def from_block(cls, block: bytes, where: str) -> SealKey:
        """The key in ``block`` (the file's first KEY_AREA bytes); ImageError
        naming ``where`` when it is not a key block or is damaged."""
        end = KEY_BLOCK.size + 32
        if len(block) < end or block[:8] != SEAL_MAGIC:
            raise ImageError(f"{where} has no seal key block: it is not a sealed image file")
        _magic, version, length, cipher, key = KEY_BLOCK.unpack_from(block)
        if hashlib.sha256(block[: KEY_BLOCK.size]).digest() != block[KEY_BLOCK.size : end]:
            raise ImageError(
                f"{where}: its seal key block is damaged (checksum mismatch); the images "
                "in it cannot be read"
            )
        if version != SEAL_VERSION:
            raise ImageError(f"{where}: seal key block version {version} is not supported")
        return cls.checked(cipher.rstrip(b"\0").decode("ascii", "replace"), key[:length], where)

    @classmethod
    def checked(cls, cipher: str, key: bytes, where: str) -> SealKey:
        """Only the seal's cipher and key size: both go into a dm table,
        where anything else (a space, a newline) would add fields."""
        if cipher != SEAL_CIPHER or len(key) != SEAL_KEY_BYTES:
            raise ImageError(
                f"{where}: a seal of {cipher!r} with a {len(key)}-byte key is not "
                f"supported (only {SEAL_CIPHER}, {SEAL_KEY_BYTES} bytes)"
            )
        return cls(cipher, key)

    def dm_key(self) -> str:
        """The key as dm-crypt's table takes it (hex)."""
        return self.key.hex()

    def to_dict(self) -> dict[str, object]:
        return {"cipher": self.cipher, "key": self.key.hex()}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> SealKey:
        cipher, key = data.get("cipher"), data.get("key")
        if not isinstance(cipher, str) or not isinstance(key, str):
            raise ImageError("bad seal key in the parameters")
        try:
            raw = bytes.fromhex(key)
        except ValueError:
            raise ImageError("bad seal key in the parameters (not hex)") from None
        return cls.checked(cipher, raw, "the parameters")


@dataclass(frozen=True)
class CryptTarget:
    """A dm-crypt mapping as its table describes it, without its key: the
    whole mapped device is ``device``'s sectors from ``start``."""

    cipher: str
    device: tuple[int, int]  # (major, minor) of what the mapping is on
    start: int  # sectors
    length: int  # sectors


def parse_crypt_table(table: str, name: str) -> CryptTarget:
    """dm's table of device ``name`` (``dmsetup table``'s output), which must
    be one crypt target over the whole device; ImageError saying why not."""
    lines = [line.split() for line in table.splitlines() if line.strip()]
    if len(lines) != 1:
        raise ImageError(
            f"{name} is made of {len(lines)} device-mapper targets (LVM or the like); only "
            "a filesystem directly on a dm-crypt mapping (LUKS on a partition or disk) "
            "can hold a sealed image file"
        )
    fields = lines[0]
    if len(fields) < 3 or fields[2] != "crypt":
        kind = fields[2] if len(fields) > 2 else "?"
        raise ImageError(
            f"{name} is a device-mapper {kind} device, not a dm-crypt mapping (LVM on LUKS, "
            "for one, is not supported); put the image file on a filesystem directly on "
            "a dm-crypt mapping"
        )
    try:
        first, length = int(fields[0]), int(fields[1])
        cipher, iv_offset, device, start = fields[3], int(fields[5]), fields[6], int(fields[7])
        major, minor = (int(v) for v in device.split(":"))
    except (IndexError, ValueError):
        raise ImageError(f"cannot read the dm-crypt table of {name}: {table.strip()!r}") from None
    features = fields[9:] if len(fields) > 8 else []
    if first != 0 or iv_offset < 0 or start < 0 or length <= 0:
        raise ImageError(f"cannot read the dm-crypt table of {name}: {table.strip()!r}")
    if any(f.startswith("integrity:") for f in features):
        raise ImageError(
            f"{name} is dm-crypt with an integrity target (authenticated encryption); "
            "images are not sealed on it: use a LUKS mapping without --integrity"
        )
    return CryptTarget(cipher, (major, minor), start, length)


@dataclass(frozen=True)
class Seal:
    """What opens a sealed file's image besides its extent map: the dm-crypt
    mapping its filesystem is on (``target``, on the device the kernel calls
    ``below``) and the file's key.  A reads it, B receives it."""

    target: CryptTarget
    below: str  # kernel name of target.device, checked where it is used
    below_size: int  # its bytes, checked too
    key: SealKey

    def __post_init__(self) -> None:
        end = (self.target.start + self.target.length) * SECTOR
        if end > self.below_size:
            raise ImageError(
                f"the dm-crypt mapping ends at byte {end} of {self.below}, which has "
                f"{self.below_size}: its table does not belong to this device"
            )

    def to_dict(self) -> dict[str, object]:
        t = self.target
        return {
            "cipher": t.cipher,
            "device": list(t.device),
            "start": t.start,
            "length": t.length,
            "below": self.below,
            "below_size": self.below_size,
            "key": self.key.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Seal:
        """The seal from B's parameters, checked for type."""
        try:
            major, minor = data["device"]
            ints = (major, minor, data["start"], data["length"], data["below_size"])
            cipher, below, key = data["cipher"], data["below"], data["key"]
            if not (
                all(type(v) is int for v in ints)
                and isinstance(cipher, str)
                and isinstance(below, str)
                and isinstance(key, dict)
            ):
                raise TypeError("a field has the wrong type")
        except (KeyError, TypeError, ValueError) as e:
            raise ImageError(f"bad seal in the parameters: {e}") from None
        target = CryptTarget(cipher, (major, minor), data["start"], data["length"])
        return cls(target, below, data["below_size"], SealKey.from_dict(key))


def is_sealed(path: Path | str) -> bool:
    """Whether ``path`` is a regular file that starts with a seal key block
    (read through its filesystem; never follows a symlink or waits on a FIFO)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        return stat.S_ISREG(os.fstat(fd).st_mode) and os.pread(fd, 8, 0) == SEAL_MAGIC
    except OSError:
        return False
    finally:
        os.close(fd)


@dataclass(frozen=True)
class SealMapping:
    """The two devices through which a sealed file's image is read and
    written: which blocks (``blocks_table``) and with which key
    (``image_table``).  ``file`` is the file's map on the dm-crypt device,
    ``target`` that device's table."""

    file: FileExtents
    target: CryptTarget

    def __post_init__(self) -> None:
        if self.file.size <= KEY_AREA:
            raise ImageError(f"a sealed file of {self.file.size} bytes holds no image")
        limit = self.target.length * SECTOR
        if self.file.device_size > limit:
            raise ImageError(
                f"{self.file.device_name} is {self.file.device_size} bytes but its dm-crypt "
                f"table maps {limit}: the table does not belong to it"
            )

    @property
    def size(self) -> int:
        """The image device's bytes: the file after its key block."""
        return self.file.size - KEY_AREA

    def key_span(self) -> tuple[int, int]:
        """(offset on the dm-crypt device, bytes) of the key block."""
        spans = list(self.file.spans(0, KEY_AREA))
        assert len(spans) == 1  # extents are IO_ALIGN-aligned, KEY_AREA is one block
        return spans[0]

    def blocks_table(self) -> str:
        """dm linear: the image device's sectors, in order, on the device the
        dm-crypt mapping is on."""
        major, minor = self.target.device
        lines, pos = [], 0
        for offset, length in self.file.spans(KEY_AREA, self.size):
            where = self.target.start + offset // SECTOR
            lines.append(f"{pos} {length // SECTOR} linear {major}:{minor} {where}")
            pos += length // SECTOR
        return "\n".join(lines) + "\n"

    def image_table(self, key: SealKey, blocks: tuple[int, int]) -> str:
        """dm crypt with the seal key over the linear device ``blocks``
        (major, minor).  It holds the key: give it to dmsetup on its
        standard input, never on a command line (which every user can read
        in /proc)."""
        major, minor = blocks
        return f"0 {self.size // SECTOR} crypt {key.cipher} {key.dm_key()} 0 {major}:{minor} 0\n"
