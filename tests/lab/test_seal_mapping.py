"""A sealed image file's mapping (DESIGN §1.6, image/seal.py) on the real
kernel's device-mapper, over a LUKS2 volume opened as Debian opens a root.

The guest formats a virtio disk as LUKS2 (cryptsetup, a key file), opens it
(the volume key goes to dm-crypt through the kernel keyring), puts ext4 on it
and a file with a key block first; then this project's code reads dm's table,
maps the file and makes the two devices, and a secret is written through
them. The host then searches the raw disk file:

- dm's table shows a key reference, not the key: why B cannot be handed the
  volume key (the premise of sealing);
- the secret written through the seal is nowhere on the raw disk, while a
  control secret written to the disk in the clear is found (the search works);
- the key block reads back through the file; the image part read through the
  file is not the secret (it is encrypted twice over: seal, then LUKS);
- both devices are gone after ``remove``.

The guest side is this module run as a program.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kexechibd.image.extents import FileExtents
from kexechibd.lab import GuestResult
from tests.lab import luks_support as luks
from tests.lab.staged_support import guest_main, markers, say
from tests.sizes import MIB

pytestmark = pytest.mark.lab

SEALED_SECRET = b"KEXECHIB-SEALED-SECRET-PAGE-0001"
CONTROL_SECRET = b"KEXECHIB-CONTROL-SECRET-PAGE-01"
FILE_BYTES = 8 * MIB


@pytest.fixture(scope="module")
def disk(lab: Path) -> tuple[GuestResult, bytes]:
    return luks.run_with_disk(lab, "tests.lab.test_seal_mapping", "seal")


def test_dm_shows_a_key_reference_not_the_volume_key(disk: tuple[GuestResult, bytes]) -> None:
    got = markers(disk[0], "seal")
    assert got["luks_key"].startswith(":64:logon:cryptsetup:"), got


def test_the_luks_mapping_parses_as_a_crypt_target(disk: tuple[GuestResult, bytes]) -> None:
    got = markers(disk[0], "seal")
    assert got["target"] == "aes-xts-plain64", got


def test_what_is_written_through_the_seal_reads_back(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "seal")["read_back"] == "yes"


def test_the_key_block_reads_back_through_the_file(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "seal")["key_block"] == "yes"


def test_the_file_view_of_the_image_is_not_the_secret(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "seal")["secret_in_file_view"] == "no"


def test_the_devices_are_gone_after_remove(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "seal")["left"] == "none"


def test_the_sealed_secret_is_not_on_the_raw_disk(disk: tuple[GuestResult, bytes]) -> None:
    assert SEALED_SECRET not in disk[1]


def test_the_control_secret_is_found_on_the_raw_disk(disk: tuple[GuestResult, bytes]) -> None:
    assert luks.control_on(disk[1], CONTROL_SECRET)


# ============================================================== guest side


def _map(path: Path) -> FileExtents:
    """The file's extent map on the dm-crypt device, taken apart from
    ``map_file`` so that this test shows the mapping alone."""
    from kexechibd.image import extents as ex
    from kexechibd.image.blockdev import device_name, device_size

    fd = os.open(path, os.O_RDONLY)
    try:
        st = os.fstat(fd)
        found = ex.check_extents(ex.fiemap(fd), st.st_size, path)
    finally:
        os.close(fd)
    name = device_name(st.st_dev)
    assert name is not None
    dev = (os.major(st.st_dev), os.minor(st.st_dev))
    return FileExtents(*dev, name, device_size(name), st.st_size, found)


def guest() -> int:  # pragma: no cover - runs in the lab guest
    from kexechibd.image import devmapper, seal

    luks.format_volume()
    luks.open_volume()
    luks_key = luks.run("dmsetup", "table", "--showkeys", luks.NAME).split()[4]
    path = luks.mount() / "image"
    key = seal.SealKey.generate()
    with path.open("wb") as f:
        f.write(key.to_block() + bytes(FILE_BYTES - seal.KEY_AREA))
        f.flush()
        os.fsync(f.fileno())
    mapped = _map(path)
    target = seal.parse_crypt_table(devmapper.table_of(mapped.rdev), mapped.device_name)
    mapping = seal.SealMapping(mapped, target)
    blocks = devmapper.create(seal.BLOCKS_NAME, mapping.blocks_table())
    image = devmapper.create(
        seal.IMAGE_NAME, mapping.image_table(key, (os.major(blocks), os.minor(blocks)))
    )
    luks.direct_write(devmapper.node(image), MIB, SEALED_SECRET)
    read_back = luks.direct_read(devmapper.node(image), MIB).startswith(SEALED_SECRET)
    devmapper.remove(seal.IMAGE_NAME)
    devmapper.remove(seal.BLOCKS_NAME)
    left = [n for n in (seal.IMAGE_NAME, seal.BLOCKS_NAME) if devmapper.exists(n)]
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
        view = f.read()
    key_block = seal.SealKey.from_block(view[: seal.KEY_AREA], str(path)) == key
    luks.unmount()
    luks.close_volume()
    luks.direct_write(luks.DISK, luks.CONTROL_OFFSET, CONTROL_SECRET)
    yes = {True: "yes", False: "no"}
    say(
        "seal",
        luks_key=luks_key,
        target=target.cipher,
        read_back=yes[read_back],
        key_block=yes[key_block],
        secret_in_file_view=yes[SEALED_SECRET in view],
        left=",".join(left) or "none",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover - in lab guests
    guest_main(guest)
