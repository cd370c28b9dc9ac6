"""Debian's own initramfs, built by the real mkinitramfs with kexechibd's
hook and local-premount script, boots the lab kernel to a root filesystem
on a virtio ext4 disk: our script runs (before the root is checked or
mounted), finds the image file on that disk through its resume record by
block address — /dev/disk/by-uuid, which the initramfs' udev made — sees no
image (or `kexechib.noresume`), and the boot goes on to the root's init.
This proves the script does not break a normal boot.

The root disk is a 64 MiB ext4 loop disk made on the host: a prepared image
file (kexechibctl image create's code) and an /sbin/init of dash that prints
what it found and exits (the kernel then panics, and panic=-1 with QEMU's
-no-reboot ends the guest).  The lab kernel must have ext4 built in (the
Debian guest's kernel/lab.config does); otherwise the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kexechibd.image import ExtentImageStore, prepare_image_file
from kexechibd.image.slots import SlotLayout
from kexechibd.initramfs import record
from kexechibd.initramfs.archive import Tree, add_programs
from kexechibd.lab import lab_kernel
from kexechibd.lab.qemu import GuestSpec, run_guest
from tests.blockdev_support import Mounted
from tests.image_support import save
from tests.initramfs_support import mkinitramfs

pytestmark = pytest.mark.lab

INIT = """#!/bin/sh
echo "ROOT-INIT: reached the root filesystem"
if [ -e /run/kexechib/initramfs-ran ]; then
	read -r status < /run/kexechib/initramfs-ran
	echo "ROOT-INIT: kexechibd --initramfs exited $status"
fi
while read -r line; do echo "ROOT-MOUNT: $line"; done < /proc/self/mounts
# The console drains asynchronously: give it time before init's exit panics.
i=0
while [ $i -lt 200000 ]; do i=$((i + 1)); done
echo "ROOT-INIT: done"
"""


def kernel_with_ext4() -> Path:
    kernel = lab_kernel(build=False)
    config = kernel.parent / "config"
    if not config.exists() or "CONFIG_EXT4_FS=y" not in config.read_text():
        pytest.skip(reason=f"the lab kernel {kernel} has no ext4 built in (see kernel/lab.config)")
    return kernel


def put_image(image: Path, kind: str) -> None:
    """An image in the prepared file, written by block address as B writes:
    ``valid`` (committed, made by another boot), ``foreign`` (the same: its
    machine id is not the guest's, so the resume itself refuses it),
    ``damaged`` (its header corrupted after the commit)."""
    store = ExtentImageStore(image)
    save(store, 1)
    if kind == "damaged":
        (slot,) = [r.slot for r in store.records() if r is not None and r.sequence > 0]
        start = SlotLayout.for_device(image.stat().st_size).offset(slot)
        with open(image, "r+b") as f:
            f.seek(start + 64)
            f.write(b"\xff" * 16)
            os.fsync(f.fileno())


def boot(tmp_path: Path, fs: Mounted, append: str, image_kind: str | None) -> str:
    kernel = kernel_with_ext4()
    root = Tree(fs.where)
    for top in ("bin", "sbin", "lib", "lib64"):
        root.symlink(top, f"usr/{top}")
    for where in ("dev", "proc", "sys", "run", "tmp"):  # initramfs-tools moves these in
        root.directory(where)
    add_programs(root, {"usr/bin/sh": Path("/usr/bin/dash")})
    root.file("usr/sbin/init", INIT.encode(), 0o755)
    image = fs.where / "image"
    prepare_image_file(image, 8 << 20)
    if image_kind:
        put_image(image, image_kind)
    config = tmp_path / "kexechibd.conf"
    config.write_text(f"[image]\nlocation = {image}\n")
    initrd = mkinitramfs(tmp_path, config)
    made = record.make(image)
    subprocess.run(["umount", str(fs.where)], check=True)
    result = run_guest(
        GuestSpec(
            command="true",
            kernel=kernel,
            initrd=initrd,
            append=f"root=/dev/vda ro {append}",
            disks=(fs.disk.backing,),
            memory_mib=512,
            timeout=300,
            name="debian-initramfs",
        )
    )
    log = result.log
    assert not result.timed_out, result.describe(80)
    assert made.links[0].startswith("/dev/disk/by-uuid/")
    if result.timed_out is False:
        shutil.rmtree(result.workdir, ignore_errors=True)
    return log


@pytest.mark.parametrize(
    ("append", "image_kind", "said"),
    [
        ("", None, "kexechibd: INFO: nothing to do: no image"),
        ("kexechib.noresume", "valid", "kexechib: noresume given; the image at "),
        ("", "foreign", "refusing to resume another machine's memory"),
        ("", "damaged", "cannot be resumed ("),
    ],
    ids=["no-image", "noresume", "foreign-image", "damaged-image"],
)
def test_the_debian_initramfs_with_our_script_reaches_the_root(
    tmp_path: Path,
    ext4: Mounted,
    append: str,
    image_kind: str | None,
    said: str,
) -> None:
    log = boot(tmp_path, ext4, append, image_kind)
    assert said in log, log[-4000:]
    # local-premount runs before the root is checked and mounted
    assert log.index(said) < log.index("EXT4-fs (vda): mounted filesystem"), log[-4000:]
    assert "ROOT-INIT: reached the root filesystem" in log, log[-4000:]
    status = "1" if image_kind == "foreign" else "0"
    assert f"ROOT-INIT: kexechibd --initramfs exited {status}" in log, log[-4000:]
    assert "ROOT-MOUNT: /dev/vda / ext4 ro" in log, log[-4000:]
    assert "ROOT-INIT: done" in log, log[-4000:]
    if image_kind in ("valid", "foreign"):
        # left in place, still resumable
        subprocess.run(["mount", "-o", "ro", str(ext4.disk.loop), str(ext4.where)], check=True)
        with ExtentImageStore(ext4.where / "image").open() as reader:
            assert reader.summary.state == "committed"
