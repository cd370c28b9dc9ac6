"""A sealed image file through the three kernels' views (DESIGN §1.6), on
the real kernel's device-mapper over a LUKS2 volume opened as Debian opens a
root. One guest plays each kernel in turn, with what that kernel would have:

- A (the filesystem mounted): ``kexechibctl image create``'s preparation
  seals the file; the store found at the path is the sealed one; A pins it
  for B (extents and seal) and makes the initramfs's resume record;
- B (the filesystem unmounted and the LUKS mapping closed: B has neither):
  writes an image with a secret page through the seal it was handed;
- C (the LUKS mapping open again, nothing mounted): the store the resume
  record describes reads the key block through C's own mapping and the
  image back, page for page;
- A after its return (mounted again): finds the image and wipes it.

Before the wipe the guest searches the raw disk for the secret page: it is
not there. After the guest, the host searches the raw disk file too, and
finds a control page written to the disk in the clear (the search works).
The guest side is this module run as a program.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from kexechibd.lab import GuestResult
from tests.lab import luks_support as luks
from tests.lab.staged_support import guest_main, markers, say
from tests.sizes import MIB

pytestmark = pytest.mark.lab


def noise(seed: bytes) -> bytes:
    """A page of random-looking bytes, the same on the host and in the guest.
    It stays whole in a compressed image (it does not compress), so finding
    any 64 bytes of it would find the page."""
    return b"".join(hashlib.sha512(seed + bytes([i])).digest() for i in range(64))


SECRET = noise(b"kexechib sealed secret")
CONTROL = noise(b"kexechib control")


@pytest.fixture(scope="module")
def disk(lab: Path) -> tuple[GuestResult, bytes]:
    return luks.run_with_disk(lab, "tests.lab.test_sealed_store", "sealed-store")


def test_image_create_seals_a_file_on_dm_crypt(disk: tuple[GuestResult, bytes]) -> None:
    got = markers(disk[0], "sealed")
    assert (got["sealed"], got["store"]) == ("yes", "SealedImageStore"), got


def test_a_hands_b_the_files_blocks_and_seal(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "sealed")["pinned"] == "extents+seal"


def test_the_resume_record_says_sealed_and_holds_no_key(disk: tuple[GuestResult, bytes]) -> None:
    got = markers(disk[0], "sealed")
    assert (got["record"], got["record_has_key"]) == ("sealed", "no"), got


def test_b_writes_without_the_filesystem_or_the_luks_mapping(
    disk: tuple[GuestResult, bytes],
) -> None:
    assert markers(disk[0], "sealed")["b_committed"] == "yes"


def test_c_reads_the_image_back_through_its_own_mapping(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "sealed")["c_read"] == "yes"


def test_the_secret_is_not_on_the_disk_before_the_wipe(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "sealed")["secret_on_disk"] == "no"


def test_a_wipes_the_used_image(disk: tuple[GuestResult, bytes]) -> None:
    got = markers(disk[0], "sealed")
    assert int(got["wiped"]) > 0 and got["after_wipe"] == "absent", got


def test_no_device_mapper_device_is_left_behind(disk: tuple[GuestResult, bytes]) -> None:
    assert markers(disk[0], "sealed")["left"] == "none"


def test_the_host_finds_no_secret_but_the_control(disk: tuple[GuestResult, bytes]) -> None:
    raw = disk[1]
    assert SECRET[1000:1064] not in raw
    assert luks.control_on(raw, CONTROL)


# ============================================================== guest side


def guest() -> int:  # pragma: no cover - runs in the lab guest
    from kexechibd.image import SealedImageStore, open_store, prepare_image_file
    from kexechibd.image.seal import is_sealed
    from kexechibd.initramfs import record
    from tests.image_support import make_meta, read_pages

    yes = {True: "yes", False: "no"}
    luks.format_volume()

    # A
    luks.open_volume()
    path = luks.mount() / "image"
    prepare_image_file(path, 8 * MIB)
    sealed = is_sealed(path)
    store = open_store(path)
    pinned = store.pin_for_saver()
    assert pinned is not None and pinned.file is not None and pinned.seal is not None
    made = record.make(path)
    luks.unmount()
    luks.close_volume()

    # B
    b = SealedImageStore(path, extents=pinned.file, seal=pinned.seal)
    with b.writer(make_meta(hibernate_id="sealed-1"), chunk_size=64 << 10) as w:
        w.add(0, SECRET + bytes(4096) + SECRET)
        w.commit()
    secret_on_disk = luks.on_disk(SECRET[1000:1064])

    # C
    luks.open_volume()
    c = record.store(made)
    with c.open() as reader:
        pages, _zero = read_pages(reader)
    c_read = pages.get(0) == SECRET and pages.get(2) == SECRET

    # A, back
    a = open_store(luks.mount() / "image")
    wiped = a.wipe()
    after = "absent" if not a.exists() else "present"
    luks.unmount()
    luks.close_volume()
    left = [line for line in luks.run("dmsetup", "ls").splitlines() if "kexechib" in line]

    luks.direct_write(luks.DISK, luks.CONTROL_OFFSET, CONTROL)
    say(
        "sealed",
        sealed=yes[sealed],
        store=type(store).__name__,
        pinned="extents+seal",
        record=made.kind,
        record_has_key=yes[b"key" in made.to_json()],
        b_committed="yes",
        secret_on_disk=yes[secret_on_disk],
        c_read=yes[c_read],
        wiped=wiped,
        after_wipe=after,
        left=",".join(left) or "none",
    )
    return 0


if __name__ == "__main__":  # pragma: no cover - in lab guests
    guest_main(guest)
