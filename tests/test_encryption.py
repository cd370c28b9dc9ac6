"""An image of an encrypted system is never written in the clear
(kexechibd.encryption; issue 16 point 2).

The block devices here are sysfs trees written in a temporary directory, the
way the kernel lays them out (Documentation/ABI/stable/sysfs-block,
testing/sysfs-block-dm; cryptsetup names dm-crypt mappings ``CRYPT-<type>-``):
a stand-in, because the development machine's kernel has no device-mapper
(`dmsetup targets` fails), so no real dm-crypt device can exist here.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kexechibd.encryption import (
    OVERRIDE,
    Storage,
    crypt_mapping,
    location_device,
    mount_storage,
    parse_swaps,
    plaintext_refusal,
    protection,
)
from kexechibd.mounts import parse_mountinfo

VDA2 = os.makedev(254, 2)
VDB1 = os.makedev(254, 17)
LUKS = os.makedev(253, 0)  # dm-0: LUKS2 on vda2
LVM_ON_LUKS = os.makedev(253, 1)  # dm-1: an LVM volume on dm-0
LVM_PLAIN = os.makedev(253, 2)  # dm-2: an LVM volume on vdb1


def _device(sysfs: Path, node: Path, dev: int) -> None:
    node.mkdir(parents=True)
    (node / "dev").write_text(f"{os.major(dev)}:{os.minor(dev)}\n")
    link = sysfs / "dev/block" / f"{os.major(dev)}:{os.minor(dev)}"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(node)


def _dm(sysfs: Path, index: int, dev: int, name: str, uuid: str, slaves: list[Path]) -> Path:
    node = sysfs / "devices/virtual/block" / f"dm-{index}"
    _device(sysfs, node, dev)
    (node / "dm").mkdir()
    (node / "dm/name").write_text(f"{name}\n")
    (node / "dm/uuid").write_text(f"{uuid}\n")
    (node / "slaves").mkdir()
    for slave in slaves:
        (node / "slaves" / slave.name).symlink_to(slave)
    return node


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """vda2 under LUKS2 (dm-0 "root"), an LVM volume on it (dm-1), and an LVM
    volume on the plain partition vdb1 (dm-2)."""
    root = tmp_path / "sys"
    disks = root / "devices/pci0000:00/0000:00:04.0/virtio2/block"
    vda2, vdb1 = disks / "vda/vda2", disks / "vdb/vdb1"
    _device(root, vda2, VDA2)
    _device(root, vdb1, VDB1)
    luks = _dm(root, 0, LUKS, "root", "CRYPT-LUKS2-3f1c9a-root", [vda2])
    _dm(root, 1, LVM_ON_LUKS, "vg-home", "LVM-Abc123Def456", [luks])
    _dm(root, 2, LVM_PLAIN, "data-images", "LVM-Ghi789Jkl012", [vdb1])
    return root


def test_a_luks_mapping_is_encrypted(sysfs: Path) -> None:
    assert crypt_mapping(LUKS, sysfs) == "root"


def test_a_volume_built_on_a_luks_mapping_is_encrypted(sysfs: Path) -> None:
    assert crypt_mapping(LVM_ON_LUKS, sysfs) == "root"


def test_a_plain_partition_is_not_encrypted(sysfs: Path) -> None:
    assert crypt_mapping(VDB1, sysfs) == ""


def test_a_volume_on_a_plain_partition_is_not_encrypted(sysfs: Path) -> None:
    assert crypt_mapping(LVM_PLAIN, sysfs) == ""


def test_a_device_sysfs_does_not_know_is_not_encrypted(sysfs: Path) -> None:
    assert crypt_mapping(os.makedev(8, 0), sysfs) == ""
    assert crypt_mapping(0, sysfs) == ""


ROOT_ON_LUKS = Storage("/ (ext4 on /dev/mapper/root)", LUKS)


def test_a_raw_plain_partition_on_an_encrypted_system_is_refused_naming_the_override() -> None:
    refusal = plaintext_refusal(
        Path("/dev/vdb1"), "", [(ROOT_ON_LUKS, "root")], allow_plaintext=False
    )
    assert "/ (ext4 on /dev/mapper/root) is on the dm-crypt mapping root" in refusal
    assert "/dev/vdb1 would not be encrypted" in refusal
    assert OVERRIDE in refusal


def test_an_encrypted_location_on_an_encrypted_system_is_accepted() -> None:
    assert not plaintext_refusal(
        Path("/var/lib/kexechib/image"), "root", [(ROOT_ON_LUKS, "root")], allow_plaintext=False
    )


def test_the_override_accepts_a_plain_location() -> None:
    assert not plaintext_refusal(
        Path("/dev/vdb1"), "", [(ROOT_ON_LUKS, "root")], allow_plaintext=True
    )


def test_a_system_without_encrypted_storage_accepts_a_plain_location() -> None:
    assert not plaintext_refusal(Path("/dev/vdb1"), "", [], allow_plaintext=False)


def test_the_refusal_names_two_encrypted_things_and_counts_the_rest() -> None:
    swap = Storage("swap /dev/dm-3", os.makedev(253, 3))
    home = Storage("/home (ext4 on /dev/mapper/vg-home)", LVM_ON_LUKS)
    var = Storage("/var (xfs on /dev/mapper/var)", os.makedev(253, 4))
    encrypted = [(ROOT_ON_LUKS, "root"), (home, "root"), (swap, "swap"), (var, "var")]
    refusal = plaintext_refusal(Path("/dev/vdb1"), "", encrypted, allow_plaintext=False)
    assert "swap /dev/dm-3" not in refusal
    assert "(and 2 more)" in refusal


def test_status_says_an_image_on_dm_crypt_is_encrypted() -> None:
    line = protection(Path("/img"), "root", [(ROOT_ON_LUKS, "root")], allow_plaintext=False)
    assert line == "encrypted: /img is on the dm-crypt mapping root"


def test_status_says_a_sealed_file_is_encrypted_with_its_own_key() -> None:
    line = protection(
        Path("/img"), "root", [(ROOT_ON_LUKS, "root")], allow_plaintext=False, sealed=True
    )
    assert line.startswith("encrypted: /img is sealed") and "mapping root" in line


def test_status_says_a_plain_image_on_an_encrypted_system_is_refused() -> None:
    line = protection(Path("/dev/vdb1"), "", [(ROOT_ON_LUKS, "root")], allow_plaintext=False)
    assert line.startswith("hibernation refused: ")


def test_status_says_loudly_when_the_override_lets_a_plain_image_through() -> None:
    line = protection(Path("/dev/vdb1"), "", [(ROOT_ON_LUKS, "root")], allow_plaintext=True)
    assert line.startswith("NOT encrypted") and OVERRIDE in line


def test_status_says_a_plain_image_of_a_plain_system_is_not_encrypted() -> None:
    line = protection(Path("/dev/vdb1"), "", [], allow_plaintext=False)
    assert line.startswith("not encrypted, like the rest of this system")


def test_swaps_lists_partitions_and_files_with_escapes_undone() -> None:
    text = (
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        "/dev/dm-3                               partition\t1048572\t\t0\t\t-2\n"
        "/swap\\040file                            file\t\t524284\t\t0\t\t-3\n"
    )
    assert parse_swaps(text) == ["/dev/dm-3", "/swap file"]


def test_memory_filesystems_are_not_storage() -> None:
    mounts = parse_mountinfo(
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/mapper/root rw\n"
        "23 22 0:21 / /run rw,nosuid shared:2 - tmpfs tmpfs rw,mode=755\n"
    )
    assert mount_storage(mounts) == [Storage("/ (ext4 on /dev/mapper/root)", LUKS)]


def test_a_file_location_is_on_its_filesystems_device(tmp_path: Path) -> None:
    image = tmp_path / "image"
    image.write_bytes(b"")
    assert location_device(image) == os.stat(tmp_path).st_dev


def test_a_file_location_not_created_yet_is_on_its_directorys_device(tmp_path: Path) -> None:
    assert location_device(tmp_path / "image") == os.stat(tmp_path).st_dev
