"""The lab guest's initramfs: busybox, a toolbox that lives in RAM, and /init.

/init mounts proc, sys and dev, mounts the host's `/` read-only over virtio-9p
(mount tag `hostroot` unless `kexechib.lab.root=` names another, or `none` to
stay in the initramfs), puts tmpfs on /run, /tmp and /dev/shm of that root,
and runs the command inside it with chroot. The command comes from
`kexechib.lab.run=<path>` on the kernel command line (a path inside the new
root) or else from the fw_cfg file `opt/kexechib/run` (the harness's usual
way: no quoting, no path that must be visible to the guest). It reports on
the serial console with lines that start with `KEXECHIB-LAB` and powers off.

The toolbox (`/lab` in the initramfs, bind-mounted at /run/kexechib-lab/ram in
the new root) holds busybox and host programs with their shared libraries,
loaded from RAM: a kernel that was jumped back into has lost its 9p session
(the device is reset on PM restore, and QEMU drops all fids on reset), so
whatever runs after a kexec jump must not need the 9p root. See docs/lab.md.
"""

from __future__ import annotations

import io
import os
import stat
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from kexechibd.lab.debs import unpacked

MARKER = "KEXECHIB-LAB"
RAM_TOOLBOX = "/run/kexechib-lab/ram"
GUEST_PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{RAM_TOOLBOX}"

INIT = r"""#!/bin/busybox sh
# /init of the kexechibd kernel lab (written by kexechibd/lab/initramfs.py).
/bin/busybox --install -s /bin
export PATH=/bin:/lab
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
up() { cut -d' ' -f1 /proc/uptime; }
say() { echo "@MARKER@ $*"; }
finish() {
	say "exit status=$1 uptime=$(up)"
	sync
	poweroff -f
	sleep 5
	reboot -f
}
say "init uptime=$(up) kernel=$(uname -r) version=$(uname -v | cut -d' ' -f1)"

root=hostroot
run=
for arg in $(cat /proc/cmdline); do
	case $arg in
	kexechib.lab.root=*) root=${arg#*=} ;;
	kexechib.lab.run=*) run=${arg#*=} ;;
	esac
done

if [ "$root" = none ]; then
	new=/
	mkdir -p /run /tmp
	mount -t tmpfs -o mode=0755 tmpfs /run
	mount -t tmpfs -o mode=1777 tmpfs /tmp
	mkdir -p /run/kexechib-lab
	ln -s /lab @RAM@
else
	new=/host
	mkdir -p $new
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
	mount -t tmpfs -o mode=1777 tmpfs $new/tmp
	mkdir -p $new@RAM@ $new/run/lock
	mount --bind /lab $new@RAM@
fi

fwcfg=/sys/firmware/qemu_fw_cfg/by_name/opt/kexechib/run/raw
if [ -z "$run" ] && [ -r $fwcfg ]; then
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
    return (
        INIT.replace("@MARKER@", MARKER).replace("@RAM@", RAM_TOOLBOX).replace("@PATH@", GUEST_PATH)
    )


@dataclass
class _Entry:
    name: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


@dataclass
class Cpio:
    """A newc ("070701") archive, the format the kernel unpacks as initramfs."""

    entries: list[_Entry] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def _add(self, entry: _Entry) -> None:
        name = entry.name.strip("/")
        parent = os.path.dirname(name)
        if parent and parent not in self._names:
            self.directory(parent)
        if name in self._names:
            raise ValueError(f"{name} is already in the archive")
        self._names.add(name)
        entry.name = name
        self.entries.append(entry)

    def directory(self, name: str, mode: int = 0o755) -> None:
        self._add(_Entry(name, stat.S_IFDIR | mode))

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._add(_Entry(name, stat.S_IFREG | mode, data))

    def symlink(self, name: str, target: str) -> None:
        self._add(_Entry(name, stat.S_IFLNK | 0o777, target.encode()))

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._add(_Entry(name, stat.S_IFCHR | mode, rdev=(major, minor)))

    def to_bytes(self) -> bytes:
        out = io.BytesIO()

        def pad() -> None:
            out.write(b"\0" * (-out.tell() % 4))

        trailer = _Entry("TRAILER!!!", 0)
        for ino, entry in enumerate([*self.entries, trailer], start=1):
            name = entry.name.encode() + b"\0"
            fields = (
                ino, entry.mode, 0, 0, 2 if stat.S_ISDIR(entry.mode) else 1, 0,
                len(entry.data), 0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
            )
            out.write(b"070701" + b"".join(b"%08X" % f for f in fields))
            out.write(name)
            pad()
            out.write(entry.data)
            pad()
        return out.getvalue()


def shared_libraries(program: Path) -> list[Path]:
    """The shared libraries `program` loads, the dynamic loader included (from ldd)."""
    out = subprocess.run(
        ["ldd", str(program)], capture_output=True, text=True, check=False
    ).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        parts = line.split()
        if "=>" in parts:
            target = parts[parts.index("=>") + 1]
            if target == "not":
                raise FileNotFoundError(f"{program} needs {parts[0]}, which is not installed")
            if target.startswith("/"):
                libs.append(Path(target))
        elif parts and parts[0].startswith("/"):
            libs.append(Path(parts[0]))
    return libs


def busybox_path() -> Path:
    """busybox from Debian's busybox-static, unpacked into the lab cache."""
    return unpacked("busybox-static") / "bin" / "busybox"


def kexec_path() -> Path:
    """Debian's kexec binary, unpacked into the lab cache (not installed: see debs.py)."""
    return unpacked("kexec-tools") / "sbin" / "kexec"


def build_initramfs(
    programs: Mapping[str, Path] | None = None,
    files: Mapping[str, bytes] | None = None,
    extra_dirs: Iterable[str] = (),
) -> bytes:
    """The lab initramfs as bytes (uncompressed newc: fastest to unpack under TCG).

    `programs` maps toolbox names to host programs: each lands in /lab (in RAM;
    at /run/kexechib-lab/ram in the guest's chroot) with its shared libraries
    in /lab/lib and a wrapper that runs it with the loader from there. Busybox
    is always in the toolbox. `files` adds files by path (mode 0755).
    """
    archive = Cpio()
    for d in ("bin", "dev", "proc", "sys", "host", "lab", "lab/lib", *extra_dirs):
        archive.directory(d)
    archive.chardev("dev/console", 5, 1)
    archive.file("lab/busybox", busybox_path().read_bytes(), 0o755)
    archive.symlink("bin/busybox", "/lab/busybox")
    archive.file("init", init_script().encode(), 0o755)
    libs: dict[str, Path] = {}
    for name, program in (programs or {}).items():
        archive.file(f"lab/{name}.bin", program.read_bytes(), 0o755)
        loader = ""
        for lib in shared_libraries(program):
            libs.setdefault(lib.name, lib)
            if lib.name.startswith("ld-linux"):
                loader = lib.name
        wrapper = (
            f"#!{RAM_TOOLBOX}/busybox sh\n"
            f'd="${{0%/*}}"\n'
            f'exec "$d/lib/{loader}" --library-path "$d/lib" "$d/{name}.bin" "$@"\n'
        )
        archive.file(f"lab/{name}", wrapper.encode(), 0o755)
    for name, lib in sorted(libs.items()):
        archive.file(f"lab/lib/{name}", lib.resolve().read_bytes(), 0o755)
    for path, data in (files or {}).items():
        archive.file(path, data, 0o755)
    return archive.to_bytes()


def lab_initramfs(path: Path, with_kexec: bool = True) -> Path:
    """Write the standard lab initramfs (busybox, and kexec in the toolbox) to `path`."""
    programs = {"kexec": kexec_path()} if with_kexec else {}
    path.write_bytes(build_initramfs(programs))
    return path
