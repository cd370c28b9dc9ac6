"""The kernel lab: real kernels under QEMU (see docs/lab.md).

`run_guest(GuestSpec(command=...))` boots the lab kernel (kernel/build.sh,
cached) with the lab initramfs, runs the command in a chroot of the host's
root mounted read-only over 9p, and returns a `GuestResult`.

Across kexec jumps the 9p root is lost; the guest userspace
(`kexechibd.lab.userspace`: Debian's python3, kexechibd, a system bus, all in
the initramfs) runs the daemon in kernels A and B instead: `daemon_guest`.
"""

from kexechibd.lab.kernel import KernelBuildError, cache_root, lab_kernel
from kexechibd.lab.qemu import (
    Guest,
    GuestResult,
    GuestSpec,
    LabError,
    LogLine,
    Marker,
    default_initramfs,
    new_workdir,
    qemu_available,
    remove_workdir,
    run_guest,
    run_guest_async,
)
from kexechibd.lab.userspace import (
    daemon_guest,
    image_disk,
    lab_config,
    lab_userspace,
    origin_initrd,
)

__all__ = [
    "Guest",
    "GuestResult",
    "GuestSpec",
    "KernelBuildError",
    "LabError",
    "LogLine",
    "Marker",
    "cache_root",
    "daemon_guest",
    "default_initramfs",
    "image_disk",
    "lab_config",
    "lab_kernel",
    "lab_userspace",
    "new_workdir",
    "origin_initrd",
    "qemu_available",
    "remove_workdir",
    "run_guest",
    "run_guest_async",
]
