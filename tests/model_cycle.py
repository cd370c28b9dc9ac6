"""Helpers for tests that jump between kernels on a model machine."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from kexechibd.cycle.params import SaveParams
from kexechibd.cycle.prepare import SaverFiles, load_saver, plan_saver_load
from kexechibd.cycle.window import Window, choose_window
from kexechibd.kernel.api import KernelGone, MemoryKind
from kexechibd.model import kimage
from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import digest_ram
from kexechibd.purgatory import default_purgatory_path

MIB = 1 << 20
WINDOW_START = 256 * MIB
WINDOW_SIZE = 64 * MIB


def saver_files(extra: str = "") -> SaverFiles:
    return SaverFiles(make_bzimage(kernel_size=128 << 10, init_size=1 * MIB), b"", extra)


def window_of(kernel: ModelKernel) -> Window:
    return choose_window(WINDOW_START, WINDOW_SIZE, kernel.memory_map(), low_memory=True)


def save_params(kernel: ModelKernel, window: Window, location: str, mode: str = "poweroff"):
    return SaveParams(
        hibernate_id=uuid.uuid4().hex,
        mode=mode,
        image_location=location,
        compression="zstd",
        level=1,
        chunk_size=1 * MIB,
        origin=kernel.identity(),
        created=time.time(),
        window=window.spans,
        vmcoreinfo=kernel.vmcoreinfo(),
    )


def load_b(
    kernel: ModelKernel, location: str = "/nonexistent", mode: str = "poweroff"
) -> SaveParams:
    """Load kernel B into ``kernel`` exactly as Hibernate does."""
    window = window_of(kernel)
    plan = plan_saver_load(
        saver_files(),
        window,
        kernel.memory_map(),
        vmcoreinfo=kernel.vmcoreinfo(),
        purgatory=default_purgatory_path().read_bytes(),
    )
    params = save_params(kernel, window, location, mode)
    load_saver(kernel, plan, params)
    return params


def owned_by_image(kernel: ModelKernel) -> set[int]:
    loaded = kernel.record.loaded
    return kimage.image_pages(kernel.memory, loaded) if loaded else set()


def ram_digest(kernel: ModelKernel, exclude: set[int]) -> str:
    ram = [r for r in kernel.machine.firmware if r.kind is MemoryKind.RAM]
    return digest_ram(kernel.memory, ram, exclude)


@dataclass
class Jump:
    """``reboot_kexec`` of one kernel, running in a thread (the kernel is
    frozen until something jumps back into it)."""

    kernel: ModelKernel
    result: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result.append(self.kernel.reboot_kexec())
        except BaseException as exc:
            self.result.append(exc)

    def wait(self, timeout: float = 60) -> object:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the kernel was never jumped back into"
        return self.result[0]


def wait_for_kernel(
    machine: Machine, not_id: int, timeout: float = 60, check: Callable[[], None] = lambda: None
) -> ModelKernel:
    """The kernel that runs once control left ``not_id``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        check()
        running = machine.running
        if running is not None and running != not_id:
            return ModelKernel(machine, running)
        if machine.state.get("crash"):
            raise AssertionError(f"the machine crashed: {machine.state['crash']}")
        time.sleep(0.02)
    raise AssertionError("no other kernel started")


__all__ = ["Jump", "KernelGone", "load_b", "owned_by_image", "ram_digest", "wait_for_kernel"]
