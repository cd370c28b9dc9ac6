"""Sealed image files (DESIGN §1.6; the layout and tables: ``seal.py``):
preparing one on a dm-crypt filesystem, finding its seal (A through the file,
C by block address through its own dm-crypt mapping, B in its parameters),
and the store whose device is the seal's mapping, made for each open and
removed when it is closed.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from pathlib import Path

from kexechibd.image import devmapper
from kexechibd.image.blockdev import device_name, device_size, stacked_kind
from kexechibd.image.directio import DirectDevice
from kexechibd.image.extents import FileExtents, check_backing_device, map_file
from kexechibd.image.extentstore import (
    ExtentImageStore,
    map_written,
    new_prepared_file,
    prepared_size,
)
from kexechibd.image.fileio import write_all, write_zeros
from kexechibd.image.meta import ImageError
from kexechibd.image.seal import (
    BLOCKS_NAME,
    IMAGE_NAME,
    KEY_AREA,
    CryptTarget,
    Seal,
    SealKey,
    SealMapping,
    parse_crypt_table,
)
from kexechibd.image.store import Pinned

_OPENS = itertools.count(1)


class SealedDevice(DirectDevice):
    """The image device of a sealed file: its two device-mapper devices made
    now, under names of this open's own (two opens never clash), and
    removed again on ``close``."""

    def __init__(self, mapping: SealMapping, key: SealKey, *, write: bool, name: Path) -> None:
        tag = f"{os.getpid()}-{next(_OPENS)}"
        self._dm_names = (f"{IMAGE_NAME}-{tag}", f"{BLOCKS_NAME}-{tag}")
        try:
            blocks = devmapper.create(self._dm_names[1], mapping.blocks_table())
            image = devmapper.create(
                self._dm_names[0], mapping.image_table(key, (os.major(blocks), os.minor(blocks)))
            )
            super().__init__(devmapper.node(image), write=write, name=name)
        except BaseException:
            with contextlib.suppress(ImageError):  # the first error is the one to tell
                self._remove()
            raise

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._remove()

    def _remove(self) -> None:
        """Both devices, the image device first (it holds the other); each
        is tried, and the errors are told together."""
        errors = []
        for dm_name in self._dm_names:
            try:
                devmapper.remove(dm_name)
            except ImageError as e:
                errors.append(e.message)
        if errors:
            raise ImageError("; ".join(errors))


def crypt_target(device: int, name: str) -> tuple[CryptTarget, str]:
    """The dm-crypt mapping ``device`` (kernel name ``name``) is, and the
    kernel name of the device under it, which must be a partition or disk."""
    target = parse_crypt_table(devmapper.table_of(device), name)
    below_dev = os.makedev(*target.device)
    below = device_name(below_dev)
    if below is None:
        raise ImageError(f"the device under {name} is not a block device")
    kind = stacked_kind(below_dev, below)
    if kind:
        raise ImageError(
            f"{name} is dm-crypt on {below}, itself a {kind} device; only dm-crypt "
            "directly on a partition or disk can hold a sealed image file"
        )
    return target, below


def seal_through_file(path: Path, mapped: FileExtents) -> Seal:
    """A's view: the key block read through the file, the table from dm."""
    target, below = crypt_target(mapped.rdev, mapped.device_name)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        block = os.pread(fd, KEY_AREA, 0)
    finally:
        os.close(fd)
    return Seal(target, below, device_size(below), SealKey.from_block(block, str(path)))


def seal_by_address(node: Path, mapped: FileExtents, path: Path) -> Seal:
    """C's view (no filesystem mounted): the key block read by block address
    on ``node``, this boot's dm-crypt mapping of the file's filesystem."""
    target, below = crypt_target(mapped.rdev, mapped.device_name)
    offset, length = SealMapping(mapped, target).key_span()
    buf = mmap.mmap(-1, length)  # page aligned, as O_DIRECT needs
    try:
        fd = os.open(node, os.O_RDONLY | os.O_DIRECT | os.O_CLOEXEC)
        try:
            got = os.preadv(fd, [buf], offset)
        finally:
            os.close(fd)
        if got != length:
            raise ImageError(f"{node}: short read of {path}'s key block")
        key = SealKey.from_block(bytes(buf), str(path))
        return Seal(target, below, device_size(below), key)
    except OSError as e:
        raise ImageError(f"cannot read {path}'s key block on {node}: {e.strerror}") from e
    finally:
        buf.close()


class SealedImageStore(ExtentImageStore):
    """Images in the two slots of a sealed file, through its seal's mapping.

    A (and tools) give only the path: the file is mapped and its seal read
    through it.  B gives the map and the seal from its parameters.  C gives
    the map from its resume record and ``node``, its own dm-crypt mapping of
    the file's filesystem, through which the key block is read."""

    def __init__(
        self,
        path: Path | str,
        *,
        extents: FileExtents | None = None,
        seal: Seal | None = None,
        node: Path | None = None,
    ) -> None:
        super().__init__(path, extents=extents)
        self.seal = seal
        self.node = node

    def mapping(self) -> FileExtents:
        return self.extents if self.extents is not None else map_file(self.path, sealed=True)

    def seal_for(self, mapped: FileExtents) -> Seal:
        if self.seal is not None:
            seal = self.seal
        elif self.node is not None:
            seal = seal_by_address(self.node, mapped, self.path)
        else:
            seal = seal_through_file(self.path, mapped)
        # B numbers devices as it finds them: the number A saw must still be
        # the device A named, or the image would go over another disk's blocks.
        here = device_name(os.makedev(*seal.target.device))
        size = device_size(here) if here is not None else 0
        if (here, size) != (seal.below, seal.below_size):
            major, minor = seal.target.device
            raise ImageError(
                f"block device {major}:{minor} is {here} of {size} bytes here but was "
                f"{seal.below} of {seal.below_size} bytes under {mapped.device_name} when "
                f"{self.path} was sealed; refusing to write by block address to another "
                "device"
            )
        return seal

    def open_device(self, *, write: bool) -> DirectDevice:
        mapped = self.mapping()
        seal = self.seal_for(mapped)
        return SealedDevice(SealMapping(mapped, seal.target), seal.key, write=write, name=self.path)

    def pin_for_saver(self) -> Pinned | None:
        mapped = self.mapping()
        seal = self.seal_for(mapped)
        pinned = SealedImageStore(self.path, extents=mapped, seal=seal)
        pinned.check_writable()
        return Pinned(pinned.capacity, mapped, seal)


def on_device_mapper(directory: Path) -> bool:
    """Whether the filesystem holding ``directory`` is on a device-mapper
    device (where a prepared file is sealed)."""
    dev = os.stat(directory).st_dev
    return stacked_kind(dev, device_name(dev) or "") == "device-mapper"


def prepare_sealed_file(path: Path, size: int) -> FileExtents:
    """Create ``path`` (it must not exist; root's, 0600) on a dm-crypt
    filesystem: a new key block, then room for two slots of ``size`` bytes
    between them (rounded up to whole MiB), written out through the
    filesystem and fsynced, then the slots' markers written through the
    seal.  The filesystem and the mapping are checked before anything is
    written; on any failure the file is removed."""
    size = prepared_size(size) + KEY_AREA
    dev, name = check_backing_device(os.stat(path.parent), path, sealed=True)
    crypt_target(dev, name)  # refuses LVM, integrity, a stack, before writing anything
    key = SealKey.generate()
    with new_prepared_file(path) as f:
        write_all(f, key.to_block())
        write_zeros(f, size)
        mapped = map_written(f, path, sealed=True)
        with SealedImageStore(path, extents=mapped).open_device(write=True) as device:
            for k in (0, 1):
                device.unpublish(k)  # a prepared file's marker
        return mapped
