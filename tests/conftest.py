"""Shared fixtures: model machines, a loop device, an ext4 filesystem with a
prepared image file, an installed tree."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.image import prepare_image_file
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine
from tests.blockdev_support import FILE_SIZE, Disk, Mounted, filesystem, make_disk
from tests.model_support import FIXTURE_RAM

SHM = Path("/dev/shm")


def pytest_configure(config: pytest.Config) -> None:
    """Model machines map their memory from files; on tmpfs that costs RAM
    instead of disk writes and is several times faster.  Each run gets its
    own directory (several runs may share the machine) and removes it."""
    if config.option.basetemp is None and SHM.is_dir() and os.access(SHM, os.W_OK):
        config.option.basetemp = str(SHM / f"kexechib-pytest-{os.getpid()}")
        config._kexechib_basetemp = config.option.basetemp  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    basetemp = getattr(config, "_kexechib_basetemp", None)
    if basetemp:
        shutil.rmtree(basetemp, ignore_errors=True)


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    """A powered-on 512 MiB model machine."""
    m = Machine.create(tmp_path / "machine", ram=FIXTURE_RAM)
    m.power_on()
    yield m
    m.close()


@pytest.fixture
def kernel(machine: Machine) -> Iterator[ModelKernel]:
    """The running kernel of ``machine``."""
    k = ModelKernel(machine)
    yield k
    k.close()


@pytest.fixture
def loop_disk(tmp_path: Path) -> Iterator[Disk]:
    """A 32 MiB loop device (tests/blockdev_support.py); needs root."""
    with make_disk(tmp_path, "loop") as d:
        yield d


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Mounted]:
    """A 64 MiB ext4 filesystem on a loop device, mounted; needs root."""
    with filesystem(tmp_path, "ext4", "mkfs.ext4", "-q", "-b", "4096") as fs:
        yield fs


@pytest.fixture
def prepared(ext4: Mounted) -> Path:
    """An image file prepared on ``ext4`` (``kexechibctl image create``'s work)."""
    path = ext4.where / "image"
    prepare_image_file(path, FILE_SIZE)
    return path


@pytest.fixture(scope="session")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What `make install DESTDIR=...` installs from this checkout."""
    destdir = tmp_path_factory.mktemp("destdir")
    subprocess.run(
        ["make", "-s", "install", f"DESTDIR={destdir}"],
        cwd=Path(__file__).resolve().parents[1],
        check=True,
        capture_output=True,
    )
    return destdir
