"""Entry lists in model memory (DESIGN §7; include/linux/kexec.h,
kernel/kexec_core.c kimage_add_entry/kimage_terminate, relocate_kernel_64.S):
long lists chain indirection pages as the kernel does, and a list that no
kernel could have written — it may come from an image — is refused before
anything moves, never followed forever."""

from __future__ import annotations

import array
import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, Segment
from kexechibd.model import kimage
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.memory import PhysicalMemory
from tests.model_support import BASE, FINAL, START, P, fill, indirection_pages, loaded


@contextlib.contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging (a walker that follows a cycle forever)."""

    def expired(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


# ------------------------------------------------------------ long entry lists


def test_more_than_511_entries_chain_indirection_pages_as_the_kernel_does(
    kernel: ModelKernel,
) -> None:
    segs = [Segment(i.to_bytes(4, "little") * (P // 4), BASE + 2 * i * P, P) for i in range(600)]
    kernel.kexec_load(0, segs[:300], START)
    kernel.kexec_load(0, segs[300:], FINAL)
    image = loaded(kernel)
    pages = indirection_pages(kernel.memory, image.head)
    assert len(pages) == 3  # 1200 entries: 511 + 511 + 178, each page linked from slot 511
    assert all(p[511] & abi.IND_INDIRECTION for p in pages[:2])
    entries = list(kimage.walk_entries(kernel.memory, image.head))
    assert [d for _, d, _ in entries] == [(BASE >> PAGE_SHIFT) + 2 * i for i in range(600)]
    owned = kimage.image_pages(kernel.memory, image)
    assert len(owned) == 600 + 3 + 2  # sources, indirection pages, control and swap
    kimage.relocate(kernel.memory, image)
    for i in (0, 299, 300, 511, 599):
        assert kernel.memory.read(BASE + 2 * i * P, 4) == i.to_bytes(4, "little")


def test_511_entries_fill_one_indirection_page_and_done_takes_the_last_slot(
    kernel: ModelKernel,
) -> None:
    """kimage_terminate() writes IND_DONE where the next link would go."""
    kernel.kexec_load(0, [Segment(fill(5, 510), BASE, 510 * P)], START)
    kernel.kexec_load(0, [], FINAL)
    pages = indirection_pages(kernel.memory, loaded(kernel).head)
    assert len(pages) == 1
    assert pages[0][0] == BASE | abi.IND_DESTINATION
    assert pages[0][511] == abi.IND_DONE


def test_unloading_a_long_image_frees_every_page(kernel: ModelKernel) -> None:
    before = kernel.allocator.to_bytes()
    segs = [Segment(fill(1), BASE + 2 * i * P, P) for i in range(1500)]
    kernel.kexec_load(0, segs[:1000], START)
    kernel.kexec_load(0, segs[1000:], FINAL)
    kernel.kexec_load(0, [], abi.load_flags())
    assert kernel.allocator.to_bytes() == before


# ------------------------------------------------------------ corrupt entry lists


@pytest.fixture
def small_memory(tmp_path: Path) -> Iterator[PhysicalMemory]:
    with PhysicalMemory(tmp_path / "mem", 64 * P, create=True) as memory:
        yield memory


def write_list(memory: PhysicalMemory, pfn: int, *words: int) -> int:
    memory.write(pfn * P, array.array("Q", words).tobytes())
    return pfn * P


def test_a_well_formed_list_walks(small_memory: PhysicalMemory) -> None:
    head = write_list(
        small_memory,
        1,
        (8 * P) | abi.IND_DESTINATION,
        (20 * P) | abi.IND_SOURCE,
        abi.IND_ZERO,
        (2 * P) | abi.IND_INDIRECTION,
    )
    write_list(small_memory, 2, (21 * P) | abi.IND_SOURCE, abi.IND_DONE)
    assert list(kimage.walk_entries(small_memory, head)) == [
        (kimage.ENTRY_SOURCE, 8, 20),
        (kimage.ENTRY_ZERO, 9, 0),
        (kimage.ENTRY_SOURCE, 10, 21),
    ]


CORRUPT = {
    "two-flags": (
        (8 * P) | abi.IND_DESTINATION,
        (20 * P) | abi.IND_SOURCE | abi.IND_DONE,
        abi.IND_DONE,
    ),
    "unknown-bits": ((8 * P) | abi.IND_DESTINATION, (20 * P) | abi.IND_SOURCE | 0x20, abi.IND_DONE),
    "no-flag": ((8 * P) | abi.IND_DESTINATION, 20 * P),
    "source-first": ((20 * P) | abi.IND_SOURCE, abi.IND_DONE),
    "zero-first": (abi.IND_ZERO, abi.IND_DONE),
    "source-beyond-memory": ((8 * P) | abi.IND_DESTINATION, (64 * P) | abi.IND_SOURCE),
    "dest-beyond-memory": ((64 * P) | abi.IND_DESTINATION, (20 * P) | abi.IND_SOURCE),
    "dest-runs-off-memory": (
        (63 * P) | abi.IND_DESTINATION,
        (20 * P) | abi.IND_SOURCE,
        (21 * P) | abi.IND_SOURCE,
        abi.IND_DONE,
    ),
    "zero-beyond-memory": ((64 * P) | abi.IND_DESTINATION, abi.IND_ZERO, abi.IND_DONE),
    "link-beyond-memory": ((100 * P) | abi.IND_INDIRECTION,),
    "self-link": ((1 * P) | abi.IND_INDIRECTION,),
    "no-end": ((8 * P) | abi.IND_DESTINATION,),
}


@pytest.mark.parametrize("words", CORRUPT.values(), ids=CORRUPT.keys())
def test_corrupt_lists_are_refused(small_memory: PhysicalMemory, words: tuple[int, ...]) -> None:
    head = write_list(small_memory, 1, *words)
    with deadline(10), pytest.raises(kimage.CorruptEntryList):
        list(kimage.walk_entries(small_memory, head))


@pytest.mark.parametrize("words", CORRUPT.values(), ids=CORRUPT.keys())
def test_the_pages_of_a_corrupt_image_are_refused(
    small_memory: PhysicalMemory, words: tuple[int, ...]
) -> None:
    head = write_list(small_memory, 1, *words)
    image = kimage.LoadedImage(head, 3 * P, 4 * P, 0, False, (0, 0))
    with deadline(10), pytest.raises(kimage.CorruptEntryList):
        kimage.image_pages(small_memory, image)


def test_a_cycle_through_two_pages_is_refused(small_memory: PhysicalMemory) -> None:
    head = write_list(small_memory, 1, (8 * P) | abi.IND_DESTINATION, (2 * P) | abi.IND_INDIRECTION)
    write_list(small_memory, 2, (20 * P) | abi.IND_SOURCE, (1 * P) | abi.IND_INDIRECTION)
    with deadline(10), pytest.raises(kimage.CorruptEntryList):
        list(kimage.walk_entries(small_memory, head))
    with deadline(10), pytest.raises(kimage.CorruptEntryList):
        kimage.image_pages(small_memory, kimage.LoadedImage(head, 0, 0, 0, True, (0, 0)))


@pytest.mark.parametrize("head", [P + 8, 64 * P, 1 << 40], ids=["unaligned", "end", "far"])
def test_a_bad_head_is_refused(small_memory: PhysicalMemory, head: int) -> None:
    with pytest.raises(kimage.CorruptEntryList):
        list(kimage.walk_entries(small_memory, head))


def test_a_corrupt_return_path_moves_nothing(small_memory: PhysicalMemory) -> None:
    small_memory.write(8 * P, fill(0x08))
    small_memory.write(20 * P, fill(0x20))
    head = write_list(
        small_memory,
        1,
        (8 * P) | abi.IND_DESTINATION,
        (20 * P) | abi.IND_SOURCE,
        (30 * P) | abi.IND_SOURCE | abi.IND_ZERO,
    )
    with pytest.raises(kimage.CorruptEntryList):
        kimage.swap_back(small_memory, head)
    assert small_memory.read(8 * P, P) == fill(0x08)
    assert small_memory.read(20 * P, P) == fill(0x20)
