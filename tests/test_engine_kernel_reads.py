"""One Hibernate reads each of the kernel's facts once (memory map,
VMCOREINFO, ACPI RSDP, identity, support) and plans every step from that
one snapshot (``kexechibd.cycle.facts``), on the machine model."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from kexechibd.cycle.engine import KexecEngine
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import CancelToken, HibernateOptions, Mode, Role, RoleDecision
from tests.test_model_cycle import Recorder, boot_b_and_save, settings

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


async def test_a_hibernate_reads_each_of_the_kernels_facts_once(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    populate(kernel, pages=500, seed=3)
    config = settings(tmp_path)
    counting = CountingKernel(kernel)
    # The role as the daemon hands it over (deciding it is not the Hibernate's).
    origin = RoleDecision(Role.ORIGIN, "no image")
    engine = KexecEngine(config, counting, role=origin)  # type: ignore[arg-type]
    hibernate = asyncio.create_task(
        engine.hibernate(HibernateOptions(mode=Mode.CHECKPOINT), Recorder(), CancelToken())
    )
    saver = asyncio.create_task(boot_b_and_save(machine, kernel.id, config, hibernate))
    await asyncio.wait_for(hibernate, 60)
    saver.cancel()
    assert dict(counting.reads) == dict.fromkeys(FACTS, 1)
