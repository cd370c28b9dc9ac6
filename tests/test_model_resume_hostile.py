"""Resuming hostile images on the model: each gets a precise error, and the
kernel is left with no staged image and nothing loaded."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.cycle.engine import KexecEngine
from kexechibd.engine import CancelToken, HibernateOptions, Mode, ResumeOptions
from kexechibd.errors import BadImage
from kexechibd.kernel.api import KernelGone
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from tests.test_model_cycle import Recorder, boot_b_and_save, settings

MIB = 1 << 20


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Machine, Path]]:
    """A machine whose A hibernated: B saved the image and powered off."""
    tmp = tmp_path_factory.mktemp("hostile")
    machine = Machine.create(tmp / "machine", ram=512 * MIB)
    machine.power_on()
    config = settings(tmp)

    async def hibernate() -> None:
        with ModelKernel(machine) as a:
            populate(a, pages=3_000, seed=2)
            engine = KexecEngine(config, a)
            task = asyncio.get_running_loop().create_task(
                engine.hibernate(HibernateOptions(mode=Mode.POWEROFF), Recorder(), CancelToken())
            )
            with pytest.raises(KernelGone):
                await boot_b_and_save(machine, a.id, config, task)

    asyncio.run(hibernate())
    yield machine, config.image_location
    machine.close()


def resume_in_c(machine: Machine, image: Path, tmp_path: Path) -> tuple[ModelKernel, BadImage]:
    if machine.power == "on":
        machine.power_off()
    machine.power_on()
    c = ModelKernel(machine)
    engine = KexecEngine(settings(tmp_path), c)
    with pytest.raises(BadImage) as info:
        asyncio.run(engine.resume(image, ResumeOptions(), Recorder(), CancelToken()))
    return c, info.value


def copy(image: Path, tmp_path: Path) -> Path:
    target = tmp_path / "hostile-image"
    shutil.copyfile(image, target)
    os.chmod(target, 0o600)
    return target


def flip(path: Path, offset: int) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x40]))


def assert_nothing_left(c: ModelKernel) -> None:
    assert not c.kexec_loaded()
    assert c.kexec_pgmap() == b""
    c.close()


def test_a_flipped_byte_in_chunk_data_names_the_chunk(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    flip(bad, bad.stat().st_size * 2 // 3)
    c, error = resume_in_c(machine, bad, tmp_path)
    assert "chunk" in str(error)
    assert_nothing_left(c)


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.95])
def test_a_truncated_image_is_refused(saved, tmp_path, fraction: float) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    os.truncate(bad, int(bad.stat().st_size * fraction))
    c, error = resume_in_c(machine, bad, tmp_path)
    assert "trunc" in str(error) or "end" in str(error)
    assert_nothing_left(c)


def test_a_flipped_header_byte_is_refused_before_loading(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    flip(bad, 300)
    c, error = resume_in_c(machine, bad, tmp_path)
    assert "offset" in str(error) or "header" in str(error)
    assert_nothing_left(c)


def test_a_world_writable_image_is_refused(saved, tmp_path) -> None:
    machine, image = saved
    bad = copy(image, tmp_path)
    os.chmod(bad, 0o606)
    c, error = resume_in_c(machine, bad, tmp_path)
    assert "world-writable" in str(error)
    assert_nothing_left(c)


def test_an_image_of_another_machine_is_refused(saved, tmp_path) -> None:
    _, image = saved
    other = Machine.create(tmp_path / "other", ram=512 * MIB, seed=99)
    c, error = resume_in_c(other, copy(image, tmp_path), tmp_path)
    assert "made on machine" in str(error)
    assert_nothing_left(c)
    other.close()


def test_a_missing_image_is_bad_image(saved, tmp_path) -> None:
    machine, _ = saved
    c, error = resume_in_c(machine, tmp_path / "absent", tmp_path)
    assert "no image" in str(error)
    assert_nothing_left(c)
