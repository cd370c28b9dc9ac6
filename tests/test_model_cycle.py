"""The full cycle on the machine model, driven by the engine — the daemon's
own code — with nothing but the Kernel protocol between it and the "kernel":
prepare → jump → save → power off (memory scrambled) → boot C → resume → A
continues with its memory byte for byte as it was at the jump."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.errors import NotSupported
from kexechibd.image import open_store
from kexechibd.kernel.api import KernelGone
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import count_runs, populate
from kexechibd.operation import CancelToken, HibernateOptions, Mode, ResumeOptions, Role, State
from tests.blockdev_support import make_disk
from tests.model_cycle import Recorder, b_boots, boot_b_and_save, ram_digest, settings


def image_state(location: Path) -> str:
    with open_store(location).open() as reader:
        return reader.summary.state


def reboot_results(kernel: ModelKernel) -> list[int]:
    """What each of ``kernel``'s reboot(KEXEC) calls returns, as it returns:
    0 in the kernel that is jumped back into (DESIGN §1.5)."""
    results: list[int] = []
    reboot = kernel.reboot_kexec

    def recorded() -> int:
        results.append(reboot())
        return results[-1]

    kernel.reboot_kexec = recorded  # type: ignore[method-assign]
    return results


async def boot_c_and_resume(machine: Machine, config: EngineSettings, image: Path) -> None:
    machine.power_on()
    c = ModelKernel(machine)
    engine = KexecEngine(config, c)
    # As the daemon would decide: the image of an earlier boot awaits.
    assert engine.role is Role.RESTORER
    await engine.resume(image, ResumeOptions(), Recorder(), CancelToken())


async def test_hibernate_power_off_and_resume_restores_a_byte_for_byte(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    workload = populate(kernel, pages=24_000, seed=5)
    assert count_runs(workload.pages) >= 10_000
    config = settings(tmp_path)
    engine = KexecEngine(config, kernel)
    observer = Recorder(kernel)
    reboots = reboot_results(kernel)
    hibernate = asyncio.create_task(
        engine.hibernate(HibernateOptions(mode=Mode.POWEROFF), observer, CancelToken())
    )
    with pytest.raises(KernelGone, match="powered off"):
        await boot_b_and_save(machine, kernel.id, config, hibernate)
    assert machine.power == "off"
    assert not hibernate.done()
    with pytest.raises(KernelGone):
        await boot_c_and_resume(machine, config, config.image_location)
    await asyncio.wait_for(hibernate, 60)
    assert reboots == [0]
    assert machine.running == kernel.id
    assert ram_digest(kernel, observer.excluded) == observer.digest
    assert observer.states == [State.PREPARING, State.LOADING, State.JUMPING, State.RESUMING]
    assert observer.returned == 1
    assert not kernel.kexec_loaded(), "A's stale image of B was not unloaded"
    assert not open_store(config.image_location).exists(), "the used image was not wiped"


async def checkpoint(
    machine: Machine, kernel: ModelKernel, config: EngineSettings
) -> tuple[Recorder, asyncio.Task[None]]:
    """Hibernate in checkpoint mode: B saves and jumps back; returns once A
    is back, with the observer and B's (waiting) saver task."""
    engine = KexecEngine(config, kernel)
    observer = Recorder(kernel)
    reboots = reboot_results(kernel)
    hibernate = asyncio.create_task(
        engine.hibernate(HibernateOptions(mode=Mode.CHECKPOINT), observer, CancelToken())
    )
    saver = asyncio.create_task(boot_b_and_save(machine, kernel.id, config, hibernate))
    await asyncio.wait_for(hibernate, 60)
    assert reboots == [0]
    assert machine.running == kernel.id
    assert ram_digest(kernel, observer.excluded) == observer.digest
    return observer, saver


async def test_checkpoint_jumps_back_and_the_image_resumes_later(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    populate(kernel, pages=2_000, seed=6)
    config = settings(tmp_path)
    observer, saver = await checkpoint(machine, kernel, config)
    assert image_state(config.image_location) == "committed"
    # A carries on and changes its memory; later the machine loses power.
    populate(kernel, pages=500, seed=7)
    assert ram_digest(kernel, observer.excluded) != observer.digest
    kernel.close()
    saver.cancel()
    machine.power_off()
    with pytest.raises(KernelGone):
        await boot_c_and_resume(machine, config, config.image_location)
    resumed = ModelKernel(machine)
    assert resumed.id == kernel.id
    assert ram_digest(resumed, observer.excluded) == observer.digest
    # C marked the image consumed before its jump.  What A's daemon does
    # next belongs to the daemon frozen in the checkpoint's reboot(), which
    # this process already let go on: the next test keeps that daemon frozen.
    assert image_state(config.image_location) == "consumed"
    resumed.close()


async def test_a_checkpoint_resumed_on_a_fresh_c_completes_the_hibernate_a_was_frozen_in(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    """B committed a checkpoint, then the power failed as it jumped back:
    A's daemon is still in the checkpoint's reboot(), which returns 0 when a
    fresh C resumes the image; A then invalidates the image and unloads its
    stale image of B, as after any resume."""
    populate(kernel, pages=2_000, seed=9)
    config = settings(tmp_path)
    observer = Recorder(kernel)
    reboots = reboot_results(kernel)
    hibernate = asyncio.create_task(
        KexecEngine(config, kernel).hibernate(
            HibernateOptions(mode=Mode.CHECKPOINT), observer, CancelToken()
        )
    )
    b = await b_boots(machine, kernel.id, hibernate)

    def power_fails() -> int:
        machine.power_off()
        raise KernelGone("the power failed")

    b.reboot_kexec = power_fails  # type: ignore[method-assign]
    with pytest.raises(KernelGone, match="the power failed"):
        await KexecEngine(config, b).save(Recorder(), CancelToken())
    assert image_state(config.image_location) == "committed"
    with pytest.raises(KernelGone):
        await boot_c_and_resume(machine, config, config.image_location)
    await asyncio.wait_for(hibernate, 60)
    assert reboots == [0]
    assert ram_digest(kernel, observer.excluded) == observer.digest
    assert observer.states == [State.PREPARING, State.LOADING, State.JUMPING, State.RESUMING]
    assert not kernel.kexec_loaded(), "A's stale image of B was not unloaded"
    assert not open_store(config.image_location).exists(), "the used image was not wiped"


async def test_checkpoint_works_on_a_kernel_without_staged_loads(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    """Mainline kexec jump (no kexechib patch): B is loaded in one KS_full
    call; a checkpoint and the jump back still work."""
    machine.set_capabilities(staged_load=False)
    populate(kernel, pages=1_000, seed=8)
    config = settings(tmp_path)
    _, saver = await checkpoint(machine, kernel, config)
    assert open_store(config.image_location).open().meta.page_map == b""
    saver.cancel()


async def test_hibernating_to_power_off_needs_staged_loads(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    machine.set_capabilities(staged_load=False)
    engine = KexecEngine(settings(tmp_path), kernel)
    with pytest.raises(NotSupported, match="staged-load"):
        await engine.hibernate(HibernateOptions(mode=Mode.POWEROFF), Recorder(), CancelToken())
    assert not kernel.kexec_loaded()


async def test_an_image_device_too_small_for_the_worst_case_is_refused_before_the_jump(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    with make_disk(tmp_path, "loop") as disk:
        config = dataclasses.replace(settings(tmp_path), image_location=disk.path)
        engine = KexecEngine(config, kernel)
        with pytest.raises(NotSupported, match="holds 15 MiB"):
            await engine.hibernate(HibernateOptions(), Recorder(), CancelToken())
    assert not kernel.kexec_loaded()
    assert machine.running == kernel.id
