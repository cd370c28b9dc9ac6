"""Failures on the way, on the machine model: whatever goes wrong in B ends
with a jump back to A, which carries on unchanged (DESIGN §9); whatever goes
wrong in C before its jump leaves C as it was — nothing loaded, the image
still resumable."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.cycle.params import PARAMS_FILE
from kexechibd.errors import Cancelled, Failed, NotSupported
from kexechibd.image import open_store
from kexechibd.kernel import abi
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import CancelToken, HibernateOptions, ResumeOptions, Role, State
from tests.model_cycle import (
    RealFilesystems,
    Recorder,
    b_boots,
    boot_b_and_save,
    ram_digest,
    settings,
)


class CancelAt(Recorder):
    """Cancels the operation once its progress reaches ``fraction``."""

    def __init__(self, cancel: CancelToken, fraction: float) -> None:
        super().__init__()
        self.cancel = cancel
        self.fraction = fraction

    def set_progress(self, fraction: float, phase: str) -> None:
        super().set_progress(fraction, phase)
        if fraction >= self.fraction:
            self.cancel.cancel()


class PowerOffFails(ModelKernel):
    """Fault injection: a kernel whose power-off returns an error.  The model
    refuses power-off only for want of CAP_SYS_BOOT, which would refuse the
    jump back as well; real firmware can fail on its own."""

    def power_off(self) -> NoReturn:
        raise abi.reboot_error(errno.EIO, "POWER_OFF")


async def hibernate_with_b(
    machine: Machine,
    kernel: ModelKernel,
    config: EngineSettings,
    run_b: type[ModelKernel] = ModelKernel,
    b_observer: Recorder | None = None,
    b_cancel: CancelToken | None = None,
    before_b: object = None,
) -> tuple[Recorder, asyncio.Task[None], asyncio.Task[None]]:
    """A hibernates; B (a ``run_b`` kernel) runs its saver.  Returns once A's
    Hibernate has ended, with A's observer, A's task and B's task."""
    observer = Recorder(kernel)
    a = asyncio.create_task(
        KexecEngine(config, kernel).hibernate(HibernateOptions(), observer, CancelToken())
    )
    b = run_b(machine, (await b_boots(machine, kernel.id, a)).id)
    if callable(before_b):
        before_b(b)
    engine = KexecEngine(config, b)
    assert engine.role is Role.SAVER
    saver = asyncio.create_task(engine.save(b_observer or Recorder(), b_cancel or CancelToken()))
    await asyncio.wait({a}, timeout=60)
    assert a.done(), "A was never jumped back into"
    return observer, a, saver


def a_carries_on_unchanged(machine: Machine, kernel: ModelKernel, observer: Recorder) -> None:
    assert machine.running == kernel.id
    assert ram_digest(kernel, observer.excluded) == observer.digest
    assert not kernel.kexec_loaded(), "A kept kernel B loaded"


# ------------------------------------------------------------ B fails


async def test_a_save_that_cannot_create_its_image_jumps_back_to_a(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    populate(kernel, pages=500, seed=1)
    (tmp_path / "not-a-directory").write_bytes(b"")
    config = dataclasses.replace(
        settings(tmp_path), image_location=tmp_path / "not-a-directory" / "image"
    )
    observer, a, saver = await hibernate_with_b(machine, kernel, config)
    with pytest.raises(Failed, match="kernel B jumped back without saving an image"):
        a.result()
    a_carries_on_unchanged(machine, kernel, observer)
    saver.cancel()


async def test_b_without_its_parameters_jumps_back_to_a(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    config = settings(tmp_path)

    def lose_parameters(b: ModelKernel) -> None:
        (b.rootfs() / PARAMS_FILE).unlink()

    observer, a, saver = await hibernate_with_b(machine, kernel, config, before_b=lose_parameters)
    with pytest.raises(Failed, match="kernel B jumped back without saving an image"):
        a.result()
    a_carries_on_unchanged(machine, kernel, observer)
    assert not config.image_location.exists()
    saver.cancel()


async def test_cancelling_b_mid_save_leaves_the_previous_image_untouched(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    populate(kernel, pages=3_000, seed=2)
    config = settings(tmp_path)
    previous = os.urandom(64 << 10)
    config.image_location.write_bytes(previous)
    cancel = CancelToken()
    b_observer = CancelAt(cancel, 0.3)
    observer, a, saver = await hibernate_with_b(
        machine, kernel, config, b_observer=b_observer, b_cancel=cancel
    )
    with pytest.raises(Failed, match="jumped back without saving"):
        a.result()
    assert any(0.3 <= f < 1 for f, _ in b_observer.progress), "cancelled before the save began"
    assert config.image_location.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("image")) == ["image"]
    a_carries_on_unchanged(machine, kernel, observer)
    saver.cancel()


async def test_when_b_cannot_power_off_a_withdraws_the_image_and_carries_on(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    """A carries on after B saved it: resuming that image later would roll
    A back behind its disks' backs, so A wipes it (DESIGN §1.4), as it
    wipes a resumed one."""
    populate(kernel, pages=500, seed=3)
    config = settings(tmp_path)
    observer, a, saver = await hibernate_with_b(machine, kernel, config, run_b=PowerOffFails)
    with pytest.raises(Failed, match="could not power off"):
        a.result()
    a_carries_on_unchanged(machine, kernel, observer)
    assert not open_store(config.image_location).exists()
    assert not config.image_location.exists()  # a plain file is zeroed, then removed
    saver.cancel()


# ------------------------------------------------------------ C fails before its jump


@pytest.fixture
def saved(machine: Machine, kernel: ModelKernel, tmp_path: Path) -> Iterator[EngineSettings]:
    """An image of A, saved by B, after which the machine powered off and C
    booted: C's kernel is the running one."""
    populate(kernel, pages=2_000, seed=4)
    config = settings(tmp_path)
    engine = KexecEngine(config, kernel)

    async def cycle() -> None:
        a = asyncio.create_task(engine.hibernate(HibernateOptions(), Recorder(), CancelToken()))
        with pytest.raises(BaseException, match="powered off"):
            await boot_b_and_save(machine, kernel.id, config, a)
        a.cancel()

    asyncio.run(cycle())
    kernel.close()
    machine.power_on()
    yield config


def c_is_as_it_was(c: ModelKernel, image: Path) -> None:
    assert c.machine.running == c.id
    assert not c.kexec_loaded()
    with open_store(image).open() as reader:
        assert reader.summary.state == "committed"


async def resume(c: ModelKernel, config: EngineSettings, observer: Recorder, cancel: CancelToken):
    await KexecEngine(config, c).resume(config.image_location, ResumeOptions(), observer, cancel)


async def test_a_cancel_after_the_image_is_loaded_unloads_it(
    saved: EngineSettings, machine: Machine
) -> None:
    c = ModelKernel(machine)
    cancel = CancelToken()
    observer = CancelAt(cancel, 1.0)
    with pytest.raises(Cancelled):
        await resume(c, saved, observer, cancel)
    assert State.JUMPING not in observer.states
    c_is_as_it_was(c, saved.image_location)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """``directory`` bind-mounted read-only over itself, as the root
    filesystem is when kexechib-resume.service runs."""
    if os.geteuid() != 0:
        pytest.skip(reason="a read-only bind mount needs root (make check runs as root)")
    subprocess.run(["mount", "--bind", directory, directory], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", directory], check=True)
        yield
    finally:
        subprocess.run(["umount", directory], check=True)


async def test_an_image_that_cannot_be_marked_consumed_is_not_jumped_to(
    saved: EngineSettings, machine: Machine, tmp_path: Path
) -> None:
    c = ModelKernel(machine)
    readonly = tmp_path / "ro"
    readonly.mkdir()
    image = readonly / "image"
    os.rename(saved.image_location, image)
    config = dataclasses.replace(saved, image_location=image)
    with read_only(readonly):
        with pytest.raises(Failed, match=r"could not mark .* as being resumed .*Read-only"):
            await resume(c, config, Recorder(), CancelToken())
        c_is_as_it_was(c, image)


# ------------------------------------------------------------ refused before the jump


async def test_a_file_image_is_refused_when_b_cannot_reach_files(
    machine: Machine, tmp_path: Path
) -> None:
    kernel = RealFilesystems(machine)
    engine = KexecEngine(settings(tmp_path), kernel)
    with pytest.raises(NotSupported, match="not a block device: kernel B has only its initramfs"):
        await engine.hibernate(HibernateOptions(), Recorder(), CancelToken())
    assert not kernel.kexec_loaded()
    assert machine.running == kernel.id


async def test_a_missing_purgatory_is_refused_by_name_before_anything_is_loaded(
    machine: Machine, kernel: ModelKernel, tmp_path: Path
) -> None:
    config = dataclasses.replace(settings(tmp_path), purgatory=tmp_path / "no-purgatory.ro")
    engine = KexecEngine(config, kernel)
    with pytest.raises(NotSupported, match=r"cannot read the purgatory: .*no-purgatory\.ro"):
        await engine.hibernate(HibernateOptions(), Recorder(), CancelToken())
    assert not kernel.kexec_loaded()
