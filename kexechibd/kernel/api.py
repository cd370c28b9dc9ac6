"""The ``Kernel`` protocol: everything the daemon asks of a kernel.

Two backends implement it: ``kexechibd.kernel.linux`` (the running Linux
kernel, behind the safety guard) and ``kexechibd.model`` (the machine model).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, NoReturn, Protocol, runtime_checkable

from kexechibd.kernel.abi import Segment


class MemoryKind(enum.Enum):
    """Top-level kinds of physical memory as ``/proc/iomem`` names them."""

    RAM = "System RAM"
    RESERVED = "Reserved"
    ACPI = "ACPI Tables"
    NVS = "ACPI Non-volatile Storage"
    UNUSABLE = "Unusable memory"
    PERSISTENT = "Persistent Memory"

    @property
    def e820_type(self) -> int:
        return _E820_TYPES[self]

    @classmethod
    def from_e820(cls, e820_type: int) -> MemoryKind:
        for kind, value in _E820_TYPES.items():
            if value == e820_type:
                return kind
        return cls.RESERVED


# arch/x86/include/asm/e820/types.h
_E820_TYPES = {
    MemoryKind.RAM: 1,
    MemoryKind.RESERVED: 2,
    MemoryKind.ACPI: 3,
    MemoryKind.NVS: 4,
    MemoryKind.UNUSABLE: 5,
    MemoryKind.PERSISTENT: 7,
}


@dataclass(frozen=True, slots=True, order=True)
class MemoryRange:
    """Physical range ``[start, end)``."""

    start: int
    end: int
    kind: MemoryKind = MemoryKind.RAM

    @property
    def size(self) -> int:
        return self.end - self.start

    def contains(self, start: int, end: int) -> bool:
        return self.start <= start and end <= self.end

    def __str__(self) -> str:
        return f"[{self.start:#x}-{self.end - 1:#x}] {self.kind.value}"


@dataclass(frozen=True, slots=True)
class KernelIdentity:
    """Who a running kernel is: enough to tell whether an image belongs here."""

    release: str
    build_id: str
    boot_id: str
    machine_id: str


@dataclass(frozen=True)
class SupportReport:
    """What a kernel can do for kexechibd, and precisely what is missing.

    ``kexec_jump`` is ``None`` when it cannot be known without a real
    ``kexec_load`` and the safety guard forbids one.
    """

    backend: str
    kexec: bool
    cap_sys_boot: bool
    lockdown: str
    kexec_load_disabled: bool
    kexec_jump: bool | None
    staged_load: bool
    guard: str = ""
    notes: tuple[str, ...] = field(default=())

    @property
    def missing(self) -> list[str]:
        """One sentence per missing piece, in the order a user must fix them."""
        reasons = []
        if not self.kexec:
            reasons.append("no kexec in this kernel (CONFIG_KEXEC is not set)")
        if not self.cap_sys_boot:
            reasons.append("no CAP_SYS_BOOT (run as root)")
        if self.lockdown not in ("", "none"):
            reasons.append(f"kernel lockdown is active ({self.lockdown}); kexec_load is forbidden")
        if self.kexec_load_disabled:
            reasons.append("kexec_load is disabled (kernel.kexec_load_disabled=1)")
        if self.kexec and self.kexec_jump is False:
            reasons.append("no CONFIG_KEXEC_JUMP (preserve-context loads are refused)")
        if self.kexec and not self.staged_load:
            reasons.append(
                "no staged-load support (/proc/kexec_pgmap missing; needs the kexechib patch)"
            )
        if self.guard:
            reasons.append(self.guard)
        return reasons

    @property
    def can_jump(self) -> bool:
        """A preserve-context load and jump could work (JumpBack)."""
        return (
            self.kexec
            and self.cap_sys_boot
            and self.lockdown in ("", "none")
            and not self.kexec_load_disabled
            and self.kexec_jump is not False
            and not self.guard
        )

    @property
    def can_hibernate(self) -> bool:
        return self.can_jump and self.kexec_jump is True and self.staged_load

    @property
    def summary(self) -> str:
        return "supported" if self.can_hibernate else "; ".join(self.missing)


class KernelGone(BaseException):
    """The kernel this process ran on is gone for good: it kexec'd into a
    kernel that will not come back, or powered off.  On real hardware the call
    never returns; the machine model, whose processes outlive their kernels,
    raises this instead.  Like ``SystemExit`` it is not an ``Exception``: the
    process must stop touching the machine."""


@runtime_checkable
class Kernel(Protocol):
    """The running kernel, as the daemon sees it (DESIGN §2.3)."""

    @property
    def backend(self) -> str:
        """``linux`` or ``model``."""
        ...

    @property
    def successors_share_files(self) -> bool:
        """Whether the kernels started from this one (B, and C after power-off)
        can open the files this kernel's paths name.  A real B has only its
        initramfs and the block devices, and must not mount A's filesystems
        (DESIGN §1.3); the model's kernels all share the host's filesystem."""
        ...

    def kexec_load(self, entry: int, segments: Sequence[Segment], flags: int) -> None:
        """``kexec_load(2)``; raises a ``KernelError`` subclass on failure."""
        ...

    def kexec_loaded(self) -> bool:
        """``/sys/kernel/kexec_loaded``."""
        ...

    def kexec_pgmap(self) -> bytes:
        """The raw bytes of ``/proc/kexec_pgmap`` (decode with ``abi.decode_page_map``)."""
        ...

    def reboot_kexec(self) -> int:
        """``reboot(LINUX_REBOOT_CMD_KEXEC)``.

        Returns 0 in a kernel that is jumped back into (preserve-context);
        otherwise the calling kernel is gone and this never returns.
        """
        ...

    def power_off(self) -> NoReturn:
        """``reboot(LINUX_REBOOT_CMD_POWER_OFF)``; memory is lost."""
        ...

    def vmcore(self) -> BinaryIO:
        """``/proc/vmcore``: the previous kernel's memory as an ELF core (readable, seekable)."""
        ...

    def cmdline(self) -> str:
        """``/proc/cmdline``."""
        ...

    def memory_map(self) -> list[MemoryRange]:
        """The firmware physical memory map (top level of ``/proc/iomem``)."""
        ...

    def vmcoreinfo(self) -> tuple[int, int] | None:
        """Physical address and size of the VMCOREINFO note, when the kernel has one."""
        ...

    def acpi_rsdp(self) -> int | None:
        """Physical address of the firmware's ACPI RSDP, as this kernel was
        told or found it (x86 ``boot_params.acpi_rsdp_addr``); ``None`` when
        unknown.  A kernel this one starts needs it on a UEFI machine."""
        ...

    def identity(self) -> KernelIdentity: ...

    def probe(self) -> SupportReport:
        """What this kernel supports; names exactly what is missing."""
        ...

    def rootfs(self) -> Path:
        """The root of this kernel's own filesystem tree (``/`` on Linux): where
        B's userspace finds the files its initramfs carried (DESIGN §3)."""
        ...
