"""The lab guest's initramfs: busybox, a toolbox that lives in RAM, and /init.

/init mounts proc, sys and dev, mounts the host's `/` read-only over virtio-9p
(mount tag `hostroot` unless `kexechib.lab.root=` names another, or `none` to
stay in the initramfs), puts tmpfs on /run, /tmp and /dev/shm of that root,
and runs the command inside it with chroot. The command comes from
`kexechib.lab.run=<path>` on the kernel command line (a path inside the new
root) or else from the fw_cfg file `opt/kexechib/run` (the harness's usual
way: no quoting, no path that must be visible to the guest). It reports on
the serial console with lines that start with `KEXECHIB-LAB` and powers off.

The RAM root (`/lab` in the initramfs, rbind-mounted at /run/kexechib-lab/ram
in the 9p chroot) is a tiny root of its own: busybox, host programs with
their shared libraries at their usual paths, and its own proc, sys, dev, run
and tmp. `chroot /run/kexechib-lab/ram CMD` runs CMD without touching 9p. That
matters after a kexec jump: the kernel that is jumped back into has lost its
9p session (PM restore resets the virtio device and QEMU drops every fid on
reset), and even the dynamic loader of a program started from the 9p root
looks at /etc/ld.so.preload there. With `kexechib.lab.root=none` the command
runs in the RAM root itself. See docs/lab.md.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

# The archive writer and ldd live in the product: kernel B's initramfs is
# built with them too (kexechibd/initramfs/).
from kexechibd.initramfs.archive import Cpio, add_programs
from kexechibd.lab.debs import unpacked

MARKER = "KEXECHIB-LAB"
RAM_ROOT = "/run/kexechib-lab/ram"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

INIT = r"""#!/bin/busybox sh
# /init of the kexechibd kernel lab (written by kexechibd/lab/initramfs.py).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "@MARKER@ $*"; }
finish() {
	say "exit status=$1 uptime=$(up)"
	sync
	# Wait for the console to drain (stty sets its own settings with
	# TCSADRAIN): the kernel's power-off messages would cut into lines still
	# queued for the serial port.
	stty -F /dev/console "$(stty -F /dev/console -g)" 2>/dev/null
	poweroff -f
	sleep 5
	reboot -f
}
say "init uptime=$(up) kernel=$(uname -r) version=$(uname -v | cut -d' ' -f1)"

root=hostroot
run=
keep=
for arg in $(cat /proc/cmdline); do
	case $arg in
	kexechib.lab.root=*) root=${arg#*=} ;;
	kexechib.lab.run=*) run=${arg#*=} ;;
	kexechib.lab.keep=*) keep=${arg#*=} ;;
	esac
done

# The RAM root: everything a command needs that must not come from 9p.
mount -t proc proc /lab/proc
mount -t sysfs sysfs /lab/sys
mount -t devtmpfs devtmpfs /lab/dev
mount -t tmpfs -o mode=0755 tmpfs /lab/run
mount -t tmpfs -o mode=1777 tmpfs /lab/tmp

if [ "$root" = none ]; then
	new=/lab
	mkdir -p /lab/run/kexechib-lab
	ln -s / /lab@RAM@
	# Kernel B's parameters (DESIGN §3) arrive as an archive appended to its
	# initrd, unpacked into /kexechib of this root: the command sees them there.
	if [ -d /kexechib ]; then
		mkdir -p /lab/kexechib
		mount --bind /kexechib /lab/kexechib
	fi
else
	new=/host
	if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000 \
			"$root" $new; then
		say "error=mount-9p tag=$root"
		finish 255
	fi
	mount -t proc proc $new/proc
	mount -t sysfs sysfs $new/sys
	mount -t devtmpfs devtmpfs $new/dev
	mkdir -p $new/dev/pts $new/dev/shm
	mount -t devpts -o newinstance,ptmxmode=0666 devpts $new/dev/pts
	mount -t tmpfs -o mode=1777 tmpfs $new/dev/shm
	mount -t tmpfs -o mode=0755 tmpfs $new/run
	# A host directory under /tmp the command needs (the checkout, when it
	# lives there) stays visible through the guest's own /tmp.
	if [ -n "$keep" ]; then
		mkdir -p /hosttmp
		mount --bind $new/tmp /hosttmp
	fi
	mount -t tmpfs -o mode=1777 tmpfs $new/tmp
	if [ -n "$keep" ]; then
		mkdir -p "$new$keep"
		mount --bind "/hosttmp${keep#/tmp}" "$new$keep"
	fi
	mkdir -p $new@RAM@ $new/run/lock
	mount --rbind /lab $new@RAM@
fi

fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/kexechib/run/raw
if [ -z "$run" ] && [ -r $fwcfg ]; then
	mkdir -p $new/run/kexechib-lab
	cat $fwcfg > $new/run/kexechib-lab/run.sh
	run=/run/kexechib-lab/run.sh
fi
if [ -z "$run" ]; then
	say "error=no-command"
	finish 255
fi

say "run uptime=$(up) root=$root command=$run"
env -i PATH=@PATH@ HOME=/root TERM=dumb LANG=C.UTF-8 PYTHONDONTWRITEBYTECODE=1 \
	chroot $new /bin/sh "$run"
finish $?
"""


def init_script() -> str:
    return INIT.replace("@MARKER@", MARKER).replace("@RAM@", RAM_ROOT).replace("@PATH@", GUEST_PATH)


def busybox_path() -> Path:
    """busybox from Debian's busybox-static, unpacked into the lab cache."""
    return unpacked("busybox-static") / "bin" / "busybox"


def kexec_path() -> Path:
    """Debian's kexec binary, unpacked into the lab cache (not installed: see debs.py)."""
    return unpacked("kexec-tools") / "sbin" / "kexec"


def busybox_applets(busybox: Path) -> list[str]:
    """Applet paths (e.g. `usr/bin/md5sum`) the busybox binary provides."""
    out = subprocess.run(
        [str(busybox), "--list-full"], capture_output=True, text=True, check=True
    ).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def initramfs_archive(
    programs: Mapping[str, Path] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> Cpio:
    """The lab initramfs as an archive that callers may extend (see build_initramfs)."""
    archive = Cpio()
    for d in (
        "bin",
        "dev",
        "proc",
        "sys",
        "host",
        "lab/proc",
        "lab/sys",
        "lab/dev",
        "lab/run",
        "lab/tmp",
        "lab/etc",
        "lab/root",
    ):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    busybox = busybox_path()
    archive.file("lab/bin/busybox", busybox.read_bytes(), 0o755)
    archive.symlink("bin/busybox", "/lab/bin/busybox")
    add_programs(archive, programs or {}, "lab")
    for applet in busybox_applets(busybox):
        if f"lab/{applet}" not in archive.names and applet != "bin/busybox":
            archive.symlink(f"lab/{applet}", "/bin/busybox")
    archive.file("init", init_script().encode(), 0o755)
    for path, data in (files or {}).items():
        archive.file(path, data, 0o755)
    return archive


def build_initramfs(
    programs: Mapping[str, Path] | None = None,
    files: Mapping[str, bytes] | None = None,
) -> bytes:
    """The lab initramfs as bytes (uncompressed newc: fastest to unpack under TCG).

    `programs` maps paths in the RAM root (e.g. `sbin/kexec`) to host programs;
    each lands there with its shared libraries and loader at the paths ldd
    names, so it runs unchanged inside `chroot /run/kexechib-lab/ram`.
    Busybox and its applets are always there. `files` adds executable files by
    path in the initramfs (`lab/b.sh` is `/b.sh` in the RAM root).
    """
    return initramfs_archive(programs, files).to_bytes()


def lab_initramfs(path: Path, with_kexec: bool = True) -> Path:
    """Write the standard lab initramfs (busybox, and kexec in the RAM root) to `path`."""
    programs = {"sbin/kexec": kexec_path()} if with_kexec else {}
    path.write_bytes(build_initramfs(programs))
    return path
