"""What the tests of the machine model's kexec_load share: the flags of each
stage, a place to load, and readers of what the model's kimage holds.

Not a test module: pytest does not collect it."""

from __future__ import annotations

import array
import contextlib
from collections.abc import Iterator
from pathlib import Path

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE, Stage
from kexechibd.model import kimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.machine import Capabilities, Machine
from kexechibd.model.memory import PhysicalMemory
from tests.sizes import KIB, MIB

P = PAGE_SIZE
# The `machine` fixture's RAM (tests/conftest.py); the model's firmware map
# ends it below 128 KiB of ACPI tables.
FIXTURE_RAM = 512 * MIB
RAM_TOP_PFN = (FIXTURE_RAM - (128 * KIB)) >> PAGE_SHIFT
# Free RAM in the middle of the fixture machine, far from the allocator's top.
BASE = 0x8000000

START = abi.load_flags(Stage.START)
MID = abi.load_flags(Stage.MID)
FINAL = abi.load_flags(Stage.FINAL)
START_KEEP = abi.load_flags(Stage.START, preserve_context=True)
FINAL_KEEP = abi.load_flags(Stage.FINAL, preserve_context=True)
FULL = abi.load_flags()


@contextlib.contextmanager
def model_kernel(
    path: Path, ram: int = FIXTURE_RAM, capabilities: Capabilities | None = None
) -> Iterator[ModelKernel]:
    """The running kernel of a new, powered-on model machine at ``path``."""
    with Machine.create(path, ram=ram, capabilities=capabilities) as machine:
        machine.power_on()
        with ModelKernel(machine) as kernel:
            yield kernel


def fill(byte: int, npages: int = 1) -> bytes:
    return bytes([byte]) * (npages * P)


def loaded(kernel: ModelKernel) -> kimage.LoadedImage:
    image = kernel.record.loaded
    assert image is not None
    return image


def page_map(kernel: ModelKernel) -> dict[int, int]:
    """Destination pfn → source pfn of the staged image, page by page."""
    return {
        r.dest_pfn + i: r.src_pfn + i
        for r in abi.decode_page_map(kernel.kexec_pgmap())
        for i in range(r.npages)
    }


def read_page(kernel: ModelKernel, pfn: int) -> bytes:
    return kernel.memory.read(pfn << PAGE_SHIFT, P)


def busy_page(kernel: ModelKernel, pfn: int) -> int:
    """Make ``pfn`` a page the running kernel uses."""
    assert kernel.take(pfn)
    return pfn


def indirection_pages(memory: PhysicalMemory, head: int) -> list[array.array[int]]:
    """The entry list's pages, in the order the kernel chains them."""
    pages = []
    page = head
    while page:
        words = array.array("Q", memory.read(page, P))
        pages.append(words)
        page = words[-1] & abi.PAGE_MASK if words[-1] & abi.IND_INDIRECTION else 0
    return pages
