"""What one operation reads from the kernel, read once at its start.

A Hibernate plans B's window, B's parameters and B's load from the memory
map, VMCOREINFO and identity of the running kernel: each read once into a
``KernelFacts`` and passed down, so every step plans from the same facts
(and none asks /proc again).
"""

from __future__ import annotations

from dataclasses import dataclass

from kexechibd.kernel.api import Kernel, KernelIdentity, MemoryRange, SupportReport


@dataclass(frozen=True)
class KernelFacts:
    memory_map: tuple[MemoryRange, ...]
    vmcoreinfo: tuple[int, int] | None
    acpi_rsdp: int | None
    identity: KernelIdentity
    support: SupportReport

    @classmethod
    def read(cls, kernel: Kernel, support: SupportReport | None = None) -> KernelFacts:
        """``support``: a report the caller read just before (the daemon's
        check that the operation may start), taken as it is."""
        return cls(
            memory_map=tuple(kernel.memory_map()),
            vmcoreinfo=kernel.vmcoreinfo(),
            acpi_rsdp=kernel.acpi_rsdp(),
            identity=kernel.identity(),
            support=kernel.probe() if support is None else support,
        )
