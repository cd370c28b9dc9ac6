"""Memory that looks like a running system's, for model machines.

``populate`` takes page frames scattered over RAM through the running
kernel's allocator (so the kernel will not hand them out) and fills them with
a realistic mix — log text, structured binary data, incompressible bytes and
pages that happen to be zero — making many discontiguous runs.
``digest_ram`` fingerprints RAM so a test can check a restore byte for byte.
"""

from __future__ import annotations

import hashlib
import random
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.model import kimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.memory import PhysicalMemory

WORDS = (
    "kernel",
    "systemd",
    "dbus",
    "session",
    "audit",
    "block",
    "device",
    "mounted",
    "filesystem",
    "journal",
    "unit",
    "started",
    "network",
    "link",
    "carrier",
    "acquired",
    "address",
    "lease",
    "renewed",
    "memory",
    "pressure",
    "cgroup",
    "scope",
    "user",
)


@dataclass(frozen=True)
class Workload:
    pages: tuple[int, ...]
    kinds: dict[str, int]


def _text_page(rng: random.Random, n: int) -> bytes:
    lines = []
    size = 0
    while size < PAGE_SIZE:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(4, 12)))
        line = f"2026-11-27T10:{n % 60:02d}:{rng.randrange(60):02d} host {words} [{n}]\n"
        lines.append(line)
        size += len(line)
    return "".join(lines).encode()[:PAGE_SIZE]


def _binary_page(rng: random.Random, n: int) -> bytes:
    base = rng.randrange(1 << 40) << 12
    records = [
        struct.pack("<QQII", base + i * 64, n * 1000 + i, i, rng.randrange(16))
        for i in range(PAGE_SIZE // 24)
    ]
    return b"".join(records).ljust(PAGE_SIZE, b"\0")


def populate(kernel: ModelKernel, *, pages: int, seed: int = 0) -> Workload:
    """Allocate ``pages`` scattered page frames and fill them."""
    rng = random.Random(seed)
    ram = [r for r in kernel.memory_map() if r.kind is MemoryKind.RAM]
    candidates = [pfn for r in ram for pfn in range(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT)]
    taken: list[int] = []
    kinds = {"text": 0, "binary": 0, "random": 0, "zero": 0}
    for pfn in rng.sample(candidates, min(len(candidates), pages * 3)):
        if len(taken) == pages:
            break
        if not kernel.take(pfn):
            continue
        taken.append(pfn)
        roll = rng.random()
        if roll < 0.4:
            kind, data = "text", _text_page(rng, pfn)
        elif roll < 0.7:
            kind, data = "binary", _binary_page(rng, pfn)
        elif roll < 0.9:
            kind, data = "random", rng.randbytes(PAGE_SIZE)
        else:
            kind, data = "zero", bytes(PAGE_SIZE)
        kinds[kind] += 1
        kernel.memory.write(pfn << PAGE_SHIFT, data)
    kernel.flush()
    return Workload(tuple(sorted(taken)), kinds)


def count_runs(pfns: Iterable[int]) -> int:
    runs = 0
    last = -2
    for pfn in sorted(pfns):
        if pfn != last + 1:
            runs += 1
        last = pfn
    return runs


def digest_ram(
    memory: PhysicalMemory, ram: Iterable[MemoryRange], exclude: Iterable[int] = ()
) -> str:
    """SHA-256 of every RAM page except the ``exclude`` page frames."""
    skip = sorted(set(exclude))
    h = hashlib.sha256()
    for r in ram:
        if r.kind is not MemoryKind.RAM:
            continue
        pos = r.start
        lo = r.start >> PAGE_SHIFT
        hi = r.end >> PAGE_SHIFT
        for pfn in (p for p in skip if lo <= p < hi):
            if (pfn << PAGE_SHIFT) > pos:
                h.update(memory.view(pos, (pfn << PAGE_SHIFT) - pos))
            pos = (pfn + 1) << PAGE_SHIFT
        if r.end > pos:
            h.update(memory.view(pos, r.end - pos))
    return h.hexdigest()


def in_use_digest(machine: Machine) -> str:
    """SHA-256 of the pages the running kernel uses (its page allocator's
    view), its own kexec image left out: what a hibernation must preserve.
    Reads the machine directory only, so it works while a daemon drives the
    kernel."""
    kid = machine.running
    if kid is None:
        raise RuntimeError("the machine is off")
    loaded = machine.record(kid).loaded
    exclude = kimage.image_pages(machine.memory, loaded) if loaded else set()
    allocator = machine.load_allocator(kid)
    ram = [r for r in machine.firmware if r.kind is MemoryKind.RAM]
    free = {
        pfn for r in ram for pfn in allocator.free_in(r.start >> PAGE_SHIFT, r.end >> PAGE_SHIFT)
    }
    return digest_ram(machine.memory, ram, exclude | free)
