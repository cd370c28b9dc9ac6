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

import shutil
import subprocess
from pathlib import Path

import pytest

from kexechibd.image import prepare_image_file
from kexechibd.initramfs import record
from kexechibd.initramfs.archive import Tree, add_programs
from kexechibd.lab import lab_kernel
from kexechibd.lab.qemu import GuestSpec, run_guest
from tests.test_image_extent_store import Mounted, ext4  # noqa: F401 (fixture)
from tests.test_initramfs_hook import mkinitramfs

pytestmark = pytest.mark.lab

INIT = """#!/bin/sh
echo "ROOT-INIT: reached the root filesystem"
while read -r line; do echo "ROOT-MOUNT: $line"; done < /proc/self/mounts
if [ -e /run/kexechib/initramfs-ran ]; then
	read -r status < /run/kexechib/initramfs-ran
	echo "ROOT-INIT: kexechibd --initramfs exited $status"
fi
"""


def kernel_with_ext4() -> Path:
    kernel = lab_kernel(build=False)
    config = kernel.parent / "config"
    if not config.exists() or "CONFIG_EXT4_FS=y" not in config.read_text():
        pytest.skip(f"the lab kernel {kernel} has no ext4 built in (Debian guest's lab.config)")
    return kernel


def boot(tmp_path: Path, fs: Mounted, append: str) -> str:
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


@pytest.mark.parametrize("append", ["", "kexechib.noresume"], ids=["no-image", "noresume"])
def test_the_debian_initramfs_with_our_script_reaches_the_root(
    tmp_path: Path,
    ext4: Mounted,  # noqa: F811
    append: str,
) -> None:
    log = boot(tmp_path, ext4, append)
    assert "ROOT-INIT: reached the root filesystem" in log, log[-4000:]
    assert "ROOT-INIT: kexechibd --initramfs exited 0" in log, log[-4000:]
    assert "role origin: no image" in log, log[-4000:]
    assert "ROOT-MOUNT: /dev/vda / ext4 ro" in log, log[-4000:]
