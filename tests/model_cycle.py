"""Helpers for tests that jump between kernels on a model machine: loading
B by hand, or driving the engine (its settings, an observer that records what
it reports, B's saver once A jumped).

Not a test module: pytest does not collect it."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.cycle.params import SaveParams
from kexechibd.cycle.prepare import SaverFiles, load_saver, plan_saver_load
from kexechibd.cycle.window import Window, choose_window
from kexechibd.kernel.api import KernelGone, MemoryKind
from kexechibd.model import kimage
from kexechibd.model.bzimage import make_bzimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import digest_ram
from kexechibd.operation import CancelToken, Role, State
from kexechibd.purgatory import default_purgatory_path
from tests.sizes import KIB, MIB

WINDOW_START = 256 * MIB
WINDOW_SIZE = 64 * MIB


def saver_files(extra: str = "") -> SaverFiles:
    return SaverFiles(make_bzimage(kernel_size=128 * KIB, init_size=1 * MIB), b"", extra)


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


class Recorder:
    """An observer that remembers what the engine reported and fingerprints
    A's memory at the last moment before the jump."""

    def __init__(self, kernel: ModelKernel | None = None) -> None:
        self.kernel = kernel
        self.states: list[State] = []
        self.progress: list[tuple[float, str]] = []
        self.digest = ""
        self.excluded: set[int] = set()
        self.returned = 0

    def set_state(self, state: State) -> None:
        self.states.append(state)

    def set_progress(self, fraction: float, phase: str) -> None:
        self.progress.append((fraction, phase))

    async def before_jump(self) -> None:
        if self.kernel is not None:
            self.excluded = owned_by_image(self.kernel)
            self.digest = ram_digest(self.kernel, self.excluded)

    async def after_return(self) -> None:
        self.returned += 1


def settings(tmp_path: Path) -> EngineSettings:
    kernel = tmp_path / "vmlinuz-b"
    kernel.write_bytes(make_bzimage(kernel_size=128 * KIB, init_size=1 * MIB))
    return EngineSettings(
        image_location=tmp_path / "image",
        chunk_size=1 * MIB,
        saver_kernel=kernel,
        saver_initrd=None,
        saver_cmdline="console=ttyS0",
        window_start=256 * MIB,
        window_size=64 * MIB,
        low_memory=True,
    )


class RealFilesystems(ModelKernel):
    """A model kernel standing for a real one, whose B sees only its
    initramfs and the block devices, not A's files."""

    successors_share_files = False


async def b_boots(machine: Machine, a_id: int, a: asyncio.Task[None] | None = None) -> ModelKernel:
    """Kernel B, once A jumped to it.  ``a`` is A's hibernate task: if it
    ends before B runs, its error is the test's (not a wait for ever)."""
    while machine.running in (None, a_id):
        if a is not None and a.done():
            a.result()
            raise AssertionError("A's hibernate returned without jumping")
        await asyncio.sleep(0.02)
    return ModelKernel(machine)


async def boot_b_and_save(
    machine: Machine, a_id: int, config: EngineSettings, a: asyncio.Task[None] | None = None
) -> None:
    """What B's init does: start the daemon, which saves A."""
    b = await b_boots(machine, a_id, a)
    engine = KexecEngine(config, b)
    assert engine.role is Role.SAVER
    await engine.save(Recorder(), CancelToken())


__all__ = [
    "Jump",
    "KernelGone",
    "RealFilesystems",
    "Recorder",
    "b_boots",
    "boot_b_and_save",
    "load_b",
    "owned_by_image",
    "ram_digest",
    "settings",
    "wait_for_kernel",
]
