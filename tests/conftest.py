"""Shared fixtures: model machines."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Machine

MIB = 1 << 20


@pytest.fixture
def machine(tmp_path: Path) -> Iterator[Machine]:
    """A powered-on 512 MiB model machine."""
    m = Machine.create(tmp_path / "machine", ram=512 * MIB)
    m.power_on()
    yield m
    m.close()


@pytest.fixture
def kernel(machine: Machine) -> Iterator[ModelKernel]:
    """The running kernel of ``machine``."""
    k = ModelKernel(machine)
    yield k
    k.close()
