"""Which devices the device store refuses, and that it says why: mounted (or
a partition of it, or its disk), swap, held by device-mapper, claimed by
another program, or a node others may write (or, for a save, read)."""

from __future__ import annotations

import grp
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from kexechibd.image import DeviceImageStore, ImageError, blockdev
from tests.blockdev_support import Disk
from tests.image_support import make_meta, newest, save

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="block devices and ownership need root")

OTHER = 4242  # a uid and gid that are neither root nor disk


@pytest.fixture
def private_node(loop_disk: Disk) -> Disk:
    if not loop_disk.private_node:
        pytest.skip(reason="the temp directory is nodev: no device node of our own to chmod")
    return loop_disk


# -- in use ------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mkfs.ext2") is None, reason="needs mkfs.ext2 (e2fsprogs)")
def test_a_mounted_device_is_refused_and_left_untouched(loop_disk: Disk, tmp_path: Path) -> None:
    subprocess.run(["mkfs.ext2", "-q", "-F", str(loop_disk.path)], check=True, timeout=60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    mounted = subprocess.run(["mount", str(loop_disk.path), str(mnt)], capture_output=True)
    if mounted.returncode:
        pytest.skip(reason=f"cannot mount here: {mounted.stderr.decode().strip()}")
    try:
        before = loop_disk.read()
        store = loop_disk.store()
        with pytest.raises(ImageError, match=f"is in use: it is mounted at {mnt} \\(ext2\\)"):
            save(store, 1)
        for action in (store.open, store.exists, store.invalidate):
            with pytest.raises(ImageError, match="mounted at"):
                action()
        assert loop_disk.read() == before
    finally:
        subprocess.run(["umount", str(mnt)], check=True, timeout=60)


def test_a_device_another_program_claimed_is_not_written(loop_disk: Disk) -> None:
    """What this mount namespace cannot show (a mount elsewhere) the kernel's
    exclusive claim still refuses."""
    store = loop_disk.store()
    save(store, 1)
    claim = os.open(loop_disk.path, os.O_RDONLY | os.O_EXCL)
    try:
        with pytest.raises(ImageError, match=r"Device or resource busy \(it is in use"):
            save(store, 2)
        with pytest.raises(ImageError, match="busy"):
            store.mark_consumed()
        assert newest(store) == ("image-1", "committed")  # reading does not claim it
    finally:
        os.close(claim)


def test_the_store_holds_the_device_exclusively_while_it_writes(loop_disk: Disk) -> None:
    store = loop_disk.store()
    with store.writer(make_meta()) as w:
        with pytest.raises(OSError, match="busy"):
            os.close(os.open(loop_disk.path, os.O_RDONLY | os.O_EXCL))
        w.abort()


# -- who may reach the device node ------------------------------------------------------------


def disk_gid() -> int:
    try:
        return grp.getgrnam("disk").gr_gid
    except KeyError:
        pytest.skip(reason="this system has no disk group")


def test_a_root_disk_0660_node_is_accepted(private_node: Disk) -> None:
    os.chown(private_node.path, 0, disk_gid())
    os.chmod(private_node.path, 0o660)
    store = private_node.store()
    save(store, 1)
    store.mark_consumed()
    assert newest(store) == ("image-1", "consumed")


@pytest.mark.parametrize(
    "uid, gid, mode, match",
    [
        (OTHER, 0, 0o600, f"owned by uid {OTHER}, not root"),
        (0, 0, 0o602, "mode 0602 .* writable by others"),
        (0, OTHER, 0o620, "writable by others"),
    ],
)
def test_a_node_others_could_write_through_is_refused(
    private_node: Disk, uid: int, gid: int, mode: int, match: str
) -> None:
    store = private_node.store()
    save(store, 1)
    os.chown(private_node.path, uid, gid)
    os.chmod(private_node.path, mode)
    for action in (store.open, store.mark_consumed, store.invalidate):
        with pytest.raises(ImageError, match=match):
            action()
    with pytest.raises(ImageError, match=match):
        save(store, 2)


@pytest.mark.parametrize("gid, mode", [(0, 0o604), (OTHER, 0o640)])
def test_a_node_others_could_read_through_takes_no_new_image(
    private_node: Disk, gid: int, mode: int
) -> None:
    store = private_node.store()
    save(store, 1)
    os.chown(private_node.path, 0, gid)
    os.chmod(private_node.path, mode)
    with pytest.raises(ImageError, match="readable by others, who would read all of memory"):
        save(store, 2)
    assert newest(store) == ("image-1", "committed")  # what is there can still be resumed


# -- what sysfs and /proc say: a model of them --------------------------------------------------
#
# A loop device here gets no partitions (no partition scanning in this
# kernel) and no device-mapper holders, so these read a model of sysfs,
# /proc/self/mountinfo and /proc/swaps laid out as the kernel lays them out.

DISK = os.makedev(7, 0)
PART = os.makedev(259, 1)


@pytest.fixture
def fake_sys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "sys"
    dev = root / "devices/virtual/block/loop0"
    (dev / "holders").mkdir(parents=True)
    (dev / "dev").write_text("7:0\n")
    part = dev / "loop0p1"
    (part / "holders").mkdir(parents=True)
    (part / "dev").write_text("259:1\n")
    (part / "partition").write_text("1\n")
    block = root / "dev/block"
    block.mkdir(parents=True)
    (block / "7:0").symlink_to(dev)
    (block / "259:1").symlink_to(part)
    monkeypatch.setattr(blockdev, "SYS_DEV_BLOCK", block)
    monkeypatch.setattr(blockdev, "MOUNTINFO", tmp_path / "mountinfo")
    monkeypatch.setattr(blockdev, "SWAPS", tmp_path / "swaps")
    (tmp_path / "mountinfo").write_text(
        "22 27 0:21 / /proc rw,relatime - proc proc rw\n"
        "27 1 253:0 / / rw,relatime - ext4 /dev/vda1 rw\n"
    )
    (tmp_path / "swaps").write_text("Filename\tType\tSize\tUsed\tPriority\n")
    return tmp_path


def mount(fake: Path, majmin: str, where: str, source: str = "/dev/x") -> None:
    with (fake / "mountinfo").open("a") as f:
        f.write(f"90 27 {majmin} / {where} rw - ext4 {source} rw\n")


def test_a_free_device_is_not_in_use(fake_sys: Path) -> None:
    assert blockdev.device_in_use(DISK) is None
    assert blockdev.device_in_use(PART) is None


def test_a_disk_whose_partition_is_mounted_is_in_use(fake_sys: Path) -> None:
    mount(fake_sys, "259:1", "/srv/with\\040space")
    assert (
        blockdev.device_in_use(DISK) == "its partition loop0p1 is mounted at /srv/with space (ext4)"
    )


def test_a_partition_of_a_mounted_disk_is_in_use(fake_sys: Path) -> None:
    mount(fake_sys, "7:0", "/mnt")
    assert blockdev.device_in_use(PART) == "its disk loop0 is mounted at /mnt (ext4)"


def test_a_device_mounted_under_an_anonymous_number_is_found_by_its_source(
    fake_sys: Path,
) -> None:
    node = fake_sys / "loop0p1"  # btrfs reports 0:NN; its source names the device
    os.mknod(node, stat.S_IFBLK | 0o600, PART)
    mount(fake_sys, "0:45", "/home", source=f"/dev/../{node}")
    assert blockdev.device_in_use(DISK) == "its partition loop0p1 is mounted at /home (ext4)"


def test_a_device_used_as_swap_is_in_use(fake_sys: Path) -> None:
    node = fake_sys / "swapdev"
    os.mknod(node, stat.S_IFBLK | 0o600, PART)
    with (fake_sys / "swaps").open("a") as f:
        f.write(f"{node}\tpartition\t1048572\t0\t-2\n")
    assert blockdev.device_in_use(PART) == "it is active swap"
    assert blockdev.device_in_use(DISK) == "its partition loop0p1 is active swap"


def test_a_device_held_by_device_mapper_is_in_use(fake_sys: Path) -> None:
    (fake_sys / "sys/devices/virtual/block/loop0/loop0p1/holders/dm-0").mkdir()
    assert blockdev.device_in_use(DISK) == (
        "its partition loop0p1 is held by dm-0 (device-mapper, RAID or the like)"
    )


def test_without_sysfs_only_the_device_itself_is_checked(
    fake_sys: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(blockdev, "SYS_DEV_BLOCK", fake_sys / "absent")
    mount(fake_sys, "259:1", "/mnt")
    assert blockdev.device_in_use(DISK) is None
    assert blockdev.device_in_use(PART) == "it is mounted at /mnt (ext4)"


def test_a_regular_file_is_a_device_only_when_allowed(tmp_path: Path) -> None:
    path = tmp_path / "slots"
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    os.truncate(path, 4 << 20)
    with pytest.raises(ImageError, match="is not a block device"):
        DeviceImageStore(path).exists()
    assert not DeviceImageStore(path, allow_regular_file=True).exists()
    path.chmod(0o620)
    with pytest.raises(ImageError, match="mode 0620: others may read or change it"):
        DeviceImageStore(path, allow_regular_file=True).exists()
