"""A real kernel's hibernation into an image file, on the machine model:
kernels that do not share A's files (``RealFilesystems``), an ext4 file
system on a loop device holding a prepared file.  A maps the file before it
loads B; B writes the image by block address with the file system not even
mounted (B has only its initramfs); C maps the file itself and resumes A
byte for byte.  And what A refuses before it loads B."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.cycle.engine import EngineSettings, KexecEngine
from kexechibd.cycle.params import SaveParams
from kexechibd.cycle.saver import image_store
from kexechibd.errors import NotSupported
from kexechibd.image import SealedImageStore, open_store, prepare_image_file
from kexechibd.image.extents import map_file
from kexechibd.image.extentstore import is_prepared
from kexechibd.image.seal import SEAL_CIPHER, CryptTarget, Seal, SealKey
from kexechibd.kernel.api import KernelGone
from kexechibd.model.machine import Machine
from kexechibd.model.workload import populate
from kexechibd.operation import CancelToken, HibernateOptions, ResumeOptions, Role
from tests.blockdev_support import Mounted, filesystem, run
from tests.model_cycle import RealFilesystems, Recorder, ram_digest, settings
from tests.sizes import MIB

RAM = 128 * MIB  # small: the file must hold two slots of all of it


@pytest.fixture
def small_machine(tmp_path: Path) -> Iterator[Machine]:
    m = Machine.create(tmp_path / "machine", ram=RAM)
    m.power_on()
    yield m
    m.close()


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Mounted]:
    mkfs = ("mkfs.ext4", "-q", "-b", "4096")
    with filesystem(tmp_path, "ext4", *mkfs, size=2 * RAM + 64 * MIB) as fs:
        yield fs


def config_for(tmp_path: Path, image: Path) -> EngineSettings:
    return dataclasses.replace(
        settings(tmp_path), image_location=image, window_start=64 * MIB, window_size=32 * MIB
    )


@contextlib.contextmanager
def unmounted(fs: Mounted) -> Iterator[None]:
    """B's view: none of A's file systems."""
    run("umount", str(fs.where))
    try:
        yield
    finally:
        run("mount", "-t", fs.fstype, str(fs.disk.loop), str(fs.where))


async def test_a_real_kernel_hibernates_into_a_prepared_file_and_resumes(
    small_machine: Machine, ext4: Mounted, tmp_path: Path
) -> None:
    machine = small_machine
    a = RealFilesystems(machine)
    populate(a, pages=2_000, seed=11)
    image = ext4.where / "image"
    prepare_image_file(image, 2 * RAM)
    config = config_for(tmp_path, image)
    observer = Recorder(a)
    hibernate = asyncio.create_task(
        KexecEngine(config, a).hibernate(HibernateOptions(), observer, CancelToken())
    )
    while machine.running in (None, a.id):
        assert not hibernate.done(), hibernate.result()
        await asyncio.sleep(0.02)
    b = RealFilesystems(machine)
    saver = KexecEngine(config, b)
    assert saver.role is Role.SAVER
    with unmounted(ext4), pytest.raises(KernelGone, match="powered off"):
        await saver.save(Recorder(), CancelToken())
    # C boots with the file system mounted again, and finds the image by path.
    machine.power_on()
    c = RealFilesystems(machine)
    assert open_store(image).open().summary.state == "committed"
    with pytest.raises(KernelGone):
        await KexecEngine(config, c).resume(image, ResumeOptions(), Recorder(), CancelToken())
    await asyncio.wait_for(hibernate, 60)
    assert machine.running == a.id
    assert ram_digest(a, observer.excluded) == observer.digest
    assert not open_store(image).exists() and is_prepared(image)  # A wiped it, kept the file
    a.close()


async def test_a_refuses_an_unprepared_file_naming_the_command_that_prepares_it(
    small_machine: Machine, ext4: Mounted, tmp_path: Path
) -> None:
    a = RealFilesystems(small_machine)
    engine = KexecEngine(config_for(tmp_path, ext4.where / "image"), a)
    with pytest.raises(NotSupported, match=r"`kexechibctl image create \S+/image --size \d+M`"):
        await engine.hibernate(HibernateOptions(), Recorder(), CancelToken())
    assert not a.kexec_loaded()


async def test_a_refuses_a_prepared_file_too_small_for_the_worst_case(
    small_machine: Machine, ext4: Mounted, tmp_path: Path
) -> None:
    image = ext4.where / "image"
    prepare_image_file(image, 16 * MIB)
    a = RealFilesystems(small_machine)
    engine = KexecEngine(config_for(tmp_path, image), a)
    with pytest.raises(NotSupported, match=r"holds 7 MiB.*recreate it larger: rm "):
        await engine.hibernate(HibernateOptions(), Recorder(), CancelToken())
    assert not a.kexec_loaded()


def test_the_map_travels_to_b_in_its_parameters(small_machine: Machine, ext4: Mounted) -> None:
    image = ext4.where / "image"
    mapped = prepare_image_file(image, 8 * MIB)
    origin = RealFilesystems(small_machine).identity()
    params = SaveParams("id", "poweroff", str(image), "zstd", 1, MIB, origin, 0.0, ())
    sent = dataclasses.replace(params, image_file=mapped)
    assert SaveParams.from_json(sent.to_json()).image_file == map_file(image)
    assert SaveParams.from_json(params.to_json()).image_file is None


def test_a_seal_travels_to_b_in_its_parameters(small_machine: Machine, ext4: Mounted) -> None:
    image = ext4.where / "image"
    mapped = prepare_image_file(image, 8 * MIB)
    origin = RealFilesystems(small_machine).identity()
    target = CryptTarget(SEAL_CIPHER, (254, 2), 32768, 1 << 21)
    seal = Seal(target, "vda2", 2 << 30, SealKey.generate())
    params = SaveParams("id", "poweroff", str(image), "zstd", 1, MIB, origin, 0.0, ())
    sent = dataclasses.replace(params, image_file=mapped, image_seal=seal)
    received = SaveParams.from_json(sent.to_json())
    assert received.image_seal == seal
    assert isinstance(image_store(received), SealedImageStore)
