"""The kernel lab: real kernels under QEMU (see docs/lab.md).

`run_guest(GuestSpec(command=...))` boots the lab kernel (kernel/build.sh,
cached) with the lab initramfs, runs the command in a chroot of the host's
root mounted read-only over 9p, and returns a `GuestResult`.
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

__all__ = [
    "Guest",
    "GuestResult",
    "GuestSpec",
    "KernelBuildError",
    "LabError",
    "LogLine",
    "Marker",
    "cache_root",
    "default_initramfs",
    "lab_kernel",
    "new_workdir",
    "qemu_available",
    "remove_workdir",
    "run_guest",
    "run_guest_async",
]
