"""The Debian guest with its root on LUKS2, as Debian's installer lays out an
encrypted system (issue 16 point 4, docs/lab.md §13):

    /dev/vda1  ext4 /boot, in the clear (the kernel, the initramfs)
    /dev/vda2  LUKS2 (aes-xts-plain64), opened as /dev/mapper/root by the
               initramfs's cryptsetup; ext4 / inside

    run = await debian_cycle(kernel, workdir, machine=LuksMachine())

In the lab the initramfs unlocks the root with a key file it carries
(crypttab's third field, cryptsetup-initramfs's KEYFILE_PATTERN), so that no
one types a passphrase; a real machine asks for one there (docs/install.md).

The host has no device-mapper, so the disk is made in two steps.  On the
host: the product tree (debian.product_tree) with crypttab, fstab and the key,
its initramfs (`update-initramfs` in a chroot: the crypttab entry carries the
`initramfs` option, as the root's mapping does not exist there), /boot's and
/'s filesystems as files, and the GPT (sfdisk).  In a lab guest (the lab
kernel, the host's cryptsetup and e2image over 9p): `cryptsetup luksFormat`
of vda2 and `e2image -ra` of the root filesystem into the mapping, which
writes only its used blocks (aes-xts under TCG runs at about 25 MB/s).

The image file is not made on the host: in QEMU 1, A's script runs
`kexechibctl image create` (sealed, since the root is on dm-crypt), which
also runs `update-initramfs -u` so that the initramfs on /boot records it;
the host takes that initramfs out of vda1 for QEMU 2 (`after_hibernate`).
The guest has 768 MiB, so the image file (two slots of A's RAM outside B's
window) is written through dm-crypt in about a minute.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from kexechibd.lab.debian import (
    DebianError,
    DebianMachine,
    debian_config,
    fsck,
    in_chroot,
    initramfs_path,
    kernel_release,
    product_tree,
    run_tool,
)
from kexechibd.lab.qemu import GuestSpec, run_guest

MIB = 1 << 20
MAPPING = "root"
LUKS_UUID = "6b657865-6368-4962-ad6c-756b73000001"  # fixed: crypttab names it
BOOT_UUID = "6b657865-6368-4962-ad62-6f6f74000001"
KEY = "/etc/keys/root.key"  # in the root; copied into the initramfs
# The disk, in MiB: the GPT, /boot, then the LUKS2 partition (its header,
# then the root filesystem), then the GPT's backup.
GPT_MIB = 1
BOOT_MIB = 256
HEADER_MIB = 2  # LUKS2 metadata 2 x 16 KiB and 1 MiB of keyslots, rounded up
ROOT_MIB = 2560
DISK_MIB = GPT_MIB + BOOT_MIB + HEADER_MIB + ROOT_MIB + GPT_MIB
MEMORY_MIB = 768
# B's window: plain RAM of a 768 MiB guest under OVMF (its allocations sit
# below 16 MiB and near the top of RAM).
WINDOW = "192M@384M"
# Two slots, each holding A's RAM outside B's window incompressible.
IMAGE_SIZE = "1200M"


def luks_files(root: Path, key: bytes) -> None:
    """What makes the tree an encrypted Debian system: crypttab and fstab,
    the key file, and the initramfs settings that carry the key (mode 0600
    archive: it holds a key)."""
    keys = root / "etc/keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    key_file = root / KEY.lstrip("/")
    key_file.write_bytes(key)
    key_file.chmod(0o400)
    (root / "etc/crypttab").write_text(f"{MAPPING} UUID={LUKS_UUID} {KEY} luks,initramfs\n")
    (root / "etc/fstab").write_text(
        f"/dev/mapper/{MAPPING} / ext4 errors=remount-ro 0 1\n"
        f"UUID={BOOT_UUID} /boot ext4 defaults 0 2\n"
    )
    with (root / "etc/cryptsetup-initramfs/conf-hook").open("a") as f:
        f.write('KEYFILE_PATTERN="/etc/keys/*.key"\n')
    (root / "etc/initramfs-tools/conf.d/umask").write_text("UMASK=0077\n")


def encrypt_root(kernel: Path, workdir: Path, disk: Path, root_fs: Path, key_file: Path) -> None:
    """In a lab guest: LUKS2 on the disk's second partition, the root
    filesystem ``root_fs`` copied into it block for block (used blocks only),
    and checked there."""
    mapped = f"/dev/mapper/{MAPPING}"
    script = f"""set -e
cryptsetup luksFormat --type luks2 --batch-mode --uuid {LUKS_UUID} --key-file {key_file} \\
    --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --luks2-metadata-size 16k \\
    --luks2-keyslots-size 1m --offset {HEADER_MIB * MIB // 512} /dev/vda2
cryptsetup open --key-file {key_file} /dev/vda2 {MAPPING}
e2image -ra /dev/vdb {mapped}
e2fsck -fn {mapped}
cryptsetup close {MAPPING}
"""
    # PBKDF2 at 1000 rounds: argon2id's default costs minutes under TCG.
    spec = GuestSpec(
        command=script,
        kernel=kernel,
        memory_mib=512,
        disks=(disk, root_fs),
        timeout=600,
        name="luks-build",
    )
    result = run_guest(spec, workdir / "luks-build")
    if result.exit_status != 0:
        raise DebianError(f"encrypting the root failed: {result.describe()}")


def boot_partition(disk: Path) -> str:
    """The disk file with e2fsprogs' offset option: /boot's filesystem."""
    return f"{disk}?offset={GPT_MIB * MIB}"


def luks_disk(workdir: Path, kernel: Path) -> Path:
    """The encrypted Debian guest's disk (`workdir/disk.img`), its
    initramfs copied out for QEMU (debian.initramfs_path)."""
    disk, boot_fs, root_fs = workdir / "disk.img", workdir / "boot.img", workdir / "root.img"
    key_file = workdir / "root.key"
    key = os.urandom(64)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    release = kernel_release(kernel)
    config = debian_config(window=WINDOW)
    with product_tree(workdir, kernel, config=config) as tree:
        luks_files(tree, key)
        in_chroot(tree, f"update-initramfs -c -k {release}")
        shutil.copyfile(tree / f"boot/initrd.img-{release}", initramfs_path(disk))
        boot_tree = workdir / "boot"
        boot_tree.mkdir()
        for entry in (tree / "boot").iterdir():
            shutil.move(entry, boot_tree / entry.name)
        run_tool(["mkfs.ext4", "-q", "-F", "-L", "root", "-b", "4096", "-d", str(tree),
              str(root_fs), f"{ROOT_MIB}M"])  # fmt: skip
    run_tool(["mkfs.ext4", "-q", "-F", "-L", "boot", "-U", BOOT_UUID, "-d", str(boot_tree),
          str(boot_fs), f"{BOOT_MIB}M"])  # fmt: skip
    shutil.rmtree(boot_tree)
    with disk.open("wb") as f:
        f.truncate(DISK_MIB * MIB)
    layout = (
        "label: gpt\n"
        f"start={GPT_MIB * MIB // 512}, size={BOOT_MIB}MiB, type=linux, name=boot\n"
        f"size={(HEADER_MIB + ROOT_MIB)}MiB, type=linux, name=root\n"
    )
    subprocess.run(["sfdisk", "-q", str(disk)], input=layout, text=True, check=True,
                   capture_output=True)  # fmt: skip
    run_tool(["dd", f"if={boot_fs}", f"of={disk}", "bs=1M", f"seek={GPT_MIB}",
          "conv=notrunc,sparse", "status=none"])  # fmt: skip
    boot_fs.unlink()
    try:
        encrypt_root(kernel, workdir, disk, root_fs, key_file)
    finally:
        root_fs.unlink()
    return disk


class LuksMachine(DebianMachine):
    """The encrypted Debian guest for debian.debian_cycle."""

    name = "luks"
    root = f"/dev/mapper/{MAPPING}"
    memory_mib = MEMORY_MIB
    # The size A's script prepares the image file with (debian-cycle.sh).
    append = f"kexechib.lab.image_size={IMAGE_SIZE}"

    def disk(self, workdir: Path, kernel: Path) -> Path:
        return luks_disk(workdir, kernel)

    def after_hibernate(self, disk: Path, kernel: Path) -> None:
        """A made the image file and a new initramfs on /boot, which records
        it: QEMU 2 boots that one (a bootloader would read it from vda1)."""
        out = initramfs_path(disk)
        out.unlink()
        name = f"/initrd.img-{kernel_release(kernel)}"
        run_tool(["debugfs", "-R", f"dump {name} {out}", boot_partition(disk)])
        if not out.exists() or out.stat().st_size == 0:
            raise DebianError(f"no {name} on the guest's /boot")

    def fsck(self, disk: Path) -> tuple[int, str]:
        """/boot's filesystem: the host cannot open the encrypted root."""
        return fsck(boot_partition(disk))
