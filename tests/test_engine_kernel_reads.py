"""One Hibernate reads each of the kernel's facts once (memory map,
VMCOREINFO, ACPI RSDP, identity, support) and plans every step from that
one snapshot (``kexechibd.cycle.facts``), on the machine model."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kexechibd.cycle.engine import KexecEngine
from kexechibd.daemon.manager import Manager
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import CancelToken, HibernateOptions, Mode, Role, RoleDecision
from tests.model_cycle import Recorder, boot_b_and_save, settings

HibernateCall = Callable[[KexecEngine, HibernateOptions], Awaitable[None]]
FACTS = ("memory_map", "vmcoreinfo", "acpi_rsdp", "identity", "probe")


class CountingKernel:
    """The model's kernel as the engine sees it, counting the engine's own
    queries of the facts (the model's internal calls are not counted: it
    calls itself, not this wrapper)."""

    def __init__(self, kernel: ModelKernel) -> None:
        self._kernel = kernel
        self.reads: Counter[str] = Counter()

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._kernel, name)
        if name not in FACTS:
            return attribute

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.reads[name] += 1
            return attribute(*args, **kwargs)

        return counted


# The role as the daemon hands it over (deciding it is not the Hibernate's).
ORIGIN = RoleDecision(Role.ORIGIN, "no image")


async def checkpoint(
    machine: Machine, kernel: ModelKernel, tmp_path: Path, hibernate: HibernateCall
) -> Counter[str]:
    """A Hibernate in checkpoint mode, started by ``hibernate`` on an
    engine over the counting kernel; returns the reads once A is back."""
    populate(kernel, pages=500, seed=3)
    config = settings(tmp_path)
    counting = CountingKernel(kernel)
    engine = KexecEngine(config, counting, role=ORIGIN)  # type: ignore[arg-type]
    task = asyncio.create_task(hibernate(engine, HibernateOptions(mode=Mode.CHECKPOINT)))
    saver = asyncio.create_task(boot_b_and_save(machine, kernel.id, config, task))
    await asyncio.wait_for(task, 60)
    saver.cancel()
    return counting.reads


async def test_a_hibernate_reads_each_of_the_kernels_facts_once(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    async def hibernate(engine: KexecEngine, options: HibernateOptions) -> None:
        await engine.hibernate(options, Recorder(), CancelToken())

    reads = await checkpoint(machine, kernel, tmp_path, hibernate)
    assert dict(reads) == dict.fromkeys(FACTS, 1)


async def test_so_does_one_through_the_daemon_which_checks_support_first(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    async def hibernate(engine: KexecEngine, options: HibernateOptions) -> None:
        await Manager(engine, ORIGIN).hibernate(options)

    reads = await checkpoint(machine, kernel, tmp_path, hibernate)
    assert dict(reads) == dict.fromkeys(FACTS, 1)
