"""/init of kernel B's initramfs: the first and only program B runs.

It mounts what the saver reads (proc, sysfs, devtmpfs), loads the disk
drivers the builder put in (``finit_module``, in ``modules.dep`` order),
waits until the image's device is there, and runs ``kexechibd --oneshot``
in a child process, which saves A and powers off (or, in checkpoint mode,
jumps back to A).  Nothing else runs in B: no udev, no systemd, no mount of
A's filesystems, whose page cache is frozen inside the image (DESIGN §1.3).

If the save fails, B stays up with the console showing why: A is still
frozen in memory and the previous image is intact (like
kexechib-save.service, which leaves B up too).  This process must never
exit: the kernel panics when init does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import time
from pathlib import Path
from typing import Any

import cffi

from kexechibd.initramfs import manifest as manifest_module
from kexechibd.kernel import abi

# How long B waits for the image's disk to show up after its driver loaded
# (NVMe and SCSI find their disks asynchronously).
DEVICE_WAIT_SECONDS = 30.0

_ffi = cffi.FFI()
_ffi.cdef(
    "int mount(const char *source, const char *target, const char *fstype,"
    " unsigned long flags, const void *data);"
    "long syscall(long number, ...);"
)


def say(text: str) -> None:
    uptime = Path("/proc/uptime").read_text().split()[0] if Path("/proc/uptime").exists() else "?"
    print(f"kexechib-init: {text} (uptime {uptime} s)", file=sys.stderr, flush=True)


def _mount(libc: Any, fstype: str, target: str, options: str = "") -> None:
    os.makedirs(target, exist_ok=True)
    data = options.encode() if options else _ffi.NULL
    _ffi.errno = 0
    if libc.mount(fstype.encode(), target.encode(), fstype.encode(), 0, data) != 0:
        say(f"cannot mount {fstype} on {target}: {os.strerror(_ffi.errno)}")


def load_modules(libc: Any, modules: tuple[str, ...], release: str) -> None:
    """finit_module() each module, in order; one that is already there
    (EEXIST) or has no device is not an error."""
    if modules and os.uname().release != release:
        say(f"this kernel is {os.uname().release}, the modules are for {release}: not loading them")
        return
    loaded = 0
    for rel in modules:
        path = f"/lib/modules/{release}/{rel}"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            say(f"cannot open {path}: {e.strerror}")
            continue
        try:
            _ffi.errno = 0
            ret = libc.syscall(
                _ffi.cast("long", abi.SYS_FINIT_MODULE),
                _ffi.cast("int", fd),
                _ffi.new("char[]", b""),  # no module parameters
                _ffi.cast("int", 0),
            )
            if ret != 0 and _ffi.errno not in (errno.EEXIST, errno.ENODEV):
                say(f"cannot load {rel}: {os.strerror(_ffi.errno)}")
            else:
                loaded += ret == 0
        finally:
            os.close(fd)
    if modules:
        say(f"loaded {loaded} of {len(modules)} kernel modules")


# B has no udev to make the /dev/disk/by-* links; the partition label, which
# DESIGN §9 suggests for a raw image partition, is in sysfs (PARTNAME).
PARTLABELS = Path("/dev/disk/by-partlabel")


def link_partlabel(
    label: str, sys_block: Path = Path("/sys/class/block"), links: Path = PARTLABELS
) -> bool:
    """Make ``links``/``label`` (/dev/disk/by-partlabel/…) point at the
    partition with that label, if there is one now."""
    for uevent in sys_block.glob("*/uevent"):
        with contextlib.suppress(OSError):
            fields = dict(
                line.split("=", 1) for line in uevent.read_text().splitlines() if "=" in line
            )
            if fields.get("PARTNAME") == label and "DEVNAME" in fields:
                links.mkdir(parents=True, exist_ok=True)
                with contextlib.suppress(FileExistsError):
                    (links / label).symlink_to(f"../../{fields['DEVNAME']}")
                return True
    return False


def wait_for_image_device() -> None:
    """Wait until the block device the parameters name is there."""
    from kexechibd.cycle.params import read_params
    from kexechibd.errors import KexechibError

    try:
        params, _ = read_params(Path("/"))
    except KexechibError:
        return  # the saver reports it
    if params.image_seal is not None:  # B has no dm-crypt mapping: the disk under it
        major, minor = params.image_seal.target.device
        target = Path(f"/sys/dev/block/{major}:{minor}")
    elif params.image_file is not None:
        target = Path(f"/sys/dev/block/{params.image_file.major}:{params.image_file.minor}")
    elif params.image_location.startswith("/dev/"):
        target = Path(params.image_location)
    else:
        return
    deadline = time.monotonic() + DEVICE_WAIT_SECONDS
    while not target.exists():
        if target.parent == PARTLABELS and link_partlabel(target.name):
            continue
        if time.monotonic() > deadline:
            say(f"{target} did not appear: is the image disk's driver in this initramfs?")
            return
        time.sleep(0.05)


def main() -> None:
    if os.getpid() != 1:  # never mount over a running system's /proc, /dev…
        sys.exit("kexechib-init: only kernel B's init (PID 1) runs this")
    try:
        start_saver()
    except Exception as e:  # init must not exit: say it, and stay up
        say(f"error: {e!r}; kernel B stays up")
    while True:
        time.sleep(3600)


def start_saver() -> None:
    libc = _ffi.dlopen(None)
    _mount(libc, "proc", "/proc")
    _mount(libc, "sysfs", "/sys")
    _mount(libc, "devtmpfs", "/dev")
    _mount(libc, "tmpfs", "/run", "mode=0755")
    _mount(libc, "tmpfs", "/tmp", "mode=1777")
    os.environ.update(PATH="/usr/sbin:/usr/bin:/sbin:/bin", LANG="C.UTF-8", HOME="/")
    say("kernel B is up")
    try:
        found = manifest_module.Manifest.from_json(Path(f"/{manifest_module.NAME}").read_bytes())
    except (OSError, ValueError) as e:
        say(f"no manifest, so no kernel modules to load: {e}")
    else:
        load_modules(libc, found.modules, found.kernel_release)
    wait_for_image_device()
    say("starting kexechibd --oneshot")
    pid = os.fork()
    if pid == 0:
        status = 1
        try:
            from kexechibd.daemon.main import main as daemon_main

            sys.argv = ["kexechibd", "--oneshot"]
            status = daemon_main(["--oneshot"])
        finally:
            os._exit(status)
    while True:
        try:
            reaped, status = os.wait()
        except ChildProcessError:
            break
        if reaped == pid:
            code = os.waitstatus_to_exitcode(status)
            say(
                f"kexechibd --oneshot ended with status {code}"
                + ("" if code == 0 else "; kernel B stays up (A is frozen, the old image intact)")
            )
