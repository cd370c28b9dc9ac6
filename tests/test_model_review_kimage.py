"""The model's kimage where the conformance vectors cannot look: what
relocation leaves in memory, eviction, ENOMEM rollback of the page
allocator, and work and memory bounded by the image, not the machine
(DESIGN §2.1–§2.2, §7; kernel/kexec_core.c, relocate_kernel_64.S)."""

from __future__ import annotations

import array
import tracemalloc
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, PAGE_SIZE, Segment, Stage
from kexechibd.model import kimage
from kexechibd.model.allocator import PageAllocator
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.memory import PhysicalMemory

P = PAGE_SIZE
BASE = 0x8000000
START = abi.load_flags(Stage.START)
MID = abi.load_flags(Stage.MID)
FINAL = abi.load_flags(Stage.FINAL)
START_KEEP = abi.load_flags(Stage.START, preserve_context=True)
FINAL_KEEP = abi.load_flags(Stage.FINAL, preserve_context=True)
# The fixture machine has 512 MiB; its RAM ends below 128 KiB of ACPI tables.
RAM_TOP_PFN = ((512 << 20) - (128 << 10)) >> PAGE_SHIFT


def page_map(kernel: ModelKernel) -> dict[int, int]:
    return {
        r.dest_pfn + i: r.src_pfn + i
        for r in abi.decode_page_map(kernel.kexec_pgmap())
        for i in range(r.npages)
    }


def loaded(kernel: ModelKernel) -> kimage.LoadedImage:
    image = kernel.record.loaded
    assert image is not None
    return image


def fill(byte: int, npages: int = 1) -> bytes:
    return bytes([byte]) * (npages * P)


def read_page(kernel: ModelKernel, pfn: int) -> bytes:
    return kernel.memory.read(pfn << PAGE_SHIFT, P)


def busy_page(kernel: ModelKernel, pfn: int) -> int:
    """Make ``pfn`` a page the running kernel uses."""
    assert kernel.take(pfn)
    return pfn


# ------------------------------------------------------------ relocation


def test_a_source_that_is_a_zero_fill_destination_is_copied_before_zeroing(
    kernel: ModelKernel,
) -> None:
    """Placement: a source may be a zero-fill destination (copy first, zero last)."""
    zero_first = RAM_TOP_PFN - 64
    kernel.memory.write(zero_first << PAGE_SHIFT, fill(0xFF, 64))
    dest = busy_page(kernel, BASE >> PAGE_SHIFT)
    kernel.kexec_load(0, [Segment.zero(zero_first << PAGE_SHIFT, 64 * P)], START)
    kernel.kexec_load(0, [Segment(fill(0xD1), dest << PAGE_SHIFT, P)], MID)
    src = page_map(kernel)[dest]
    assert zero_first <= src < RAM_TOP_PFN, "the top-down allocator used a zero-fill page"
    kernel.kexec_load(0, [], FINAL)
    kimage.relocate(kernel.memory, loaded(kernel))
    assert read_page(kernel, dest) == fill(0xD1)
    assert kernel.memory.read(zero_first << PAGE_SHIFT, 64 * P) == bytes(64 * P)


def test_data_over_a_zero_fill_source_evicts_what_it_holds(kernel: ModelKernel) -> None:
    zero_first = RAM_TOP_PFN - 64
    dest = busy_page(kernel, BASE >> PAGE_SHIFT)
    kernel.kexec_load(0, [Segment.zero(zero_first << PAGE_SHIFT, 64 * P)], START)
    kernel.kexec_load(0, [Segment(fill(0xD1), dest << PAGE_SHIFT, P)], MID)
    src = page_map(kernel)[dest]
    kernel.kexec_load(0, [Segment(fill(0xD2), src << PAGE_SHIFT, P)], MID)
    pm = page_map(kernel)
    assert pm[src] == src
    assert pm[dest] not in pm or pm[dest] == dest
    kernel.kexec_load(0, [], FINAL)
    kimage.relocate(kernel.memory, loaded(kernel))
    assert read_page(kernel, dest) == fill(0xD1)
    assert read_page(kernel, src) == fill(0xD2)
    others = [p for p in range(zero_first, RAM_TOP_PFN) if p != src]
    assert all(read_page(kernel, p) == bytes(P) for p in others)


def test_a_freed_destination_takes_its_data_home_and_lends_its_source(
    kernel: ModelKernel,
) -> None:
    """mainline's kimage_alloc_page(): the allocator returns a destination whose
    data waits elsewhere, so the data moves home and the old source is reused."""
    top = kernel.allocator.alloc()  # the highest free page, now in use
    kernel.kexec_load(0, [Segment(fill(0xA1), top << PAGE_SHIFT, P)], START)
    first_src = page_map(kernel)[top]
    assert first_src != top
    kernel.allocator.free(top)  # the kernel freed it meanwhile
    other = busy_page(kernel, BASE >> PAGE_SHIFT)
    kernel.kexec_load(0, [Segment(fill(0xA2), other << PAGE_SHIFT, P)], MID)
    pm = page_map(kernel)
    assert pm[top] == top and pm[other] == first_src
    kernel.kexec_load(0, [], FINAL)
    kimage.relocate(kernel.memory, loaded(kernel))
    assert read_page(kernel, top) == fill(0xA1)
    assert read_page(kernel, other) == fill(0xA2)


def test_a_preserve_context_jump_swaps_and_the_return_swaps_back(kernel: ModelKernel) -> None:
    dest = busy_page(kernel, BASE >> PAGE_SHIFT)
    kernel.memory.write(BASE, fill(0x01))
    own = (BASE >> PAGE_SHIFT) + 8
    kernel.kexec_load(0, [Segment(fill(0x02), BASE, P)], START_KEEP)
    kernel.kexec_load(0, [Segment(fill(0x03), own << PAGE_SHIFT, P)], FINAL_KEEP)
    src = page_map(kernel)[dest]
    assert page_map(kernel)[own] == own
    image = loaded(kernel)
    kimage.relocate(kernel.memory, image)
    assert read_page(kernel, dest) == fill(0x02)
    assert read_page(kernel, src) == fill(0x01), "the source keeps the old contents"
    assert read_page(kernel, own) == fill(0x03)
    kimage.swap_back(kernel.memory, image.head)
    assert read_page(kernel, dest) == fill(0x01)
    assert read_page(kernel, src) == fill(0x02)


def test_a_zero_buffer_overlap_zeroes_the_data_page(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, [Segment(fill(0x44, 2), BASE, 2 * P)], START)
    kernel.kexec_load(0, [Segment.zero(BASE + P, P)], MID)
    kernel.kexec_load(0, [Segment(b"\x55" * 10, BASE, P)], FINAL)
    kimage.relocate(kernel.memory, loaded(kernel))
    assert kernel.memory.read(BASE, P) == b"\x55" * 10 + bytes(P - 10)
    assert kernel.memory.read(BASE + P, P) == bytes(P)


# ------------------------------------------------------------ ENOMEM and rollback


def test_enomem_in_a_staged_call_gives_back_every_page(kernel: ModelKernel) -> None:
    busy_page(kernel, BASE >> PAGE_SHIFT)
    before = kernel.allocator.to_bytes()
    kernel.kexec_load(
        0,
        [Segment(fill(1, 4), BASE, 4 * P), Segment.zero(BASE + 8 * P, 16 * P)],
        START,
    )
    kernel.kexec_load(0, [Segment(fill(2), BASE + 32 * P, P)], MID)
    assert kernel.allocator.to_bytes() != before
    too_big = Segment(b"\x01", 0x100000, (kernel.allocator.free_pages + 8) * P)
    with pytest.raises(abi.KexecNoMemory):
        kernel.kexec_load(0, [Segment(fill(3), BASE + 40 * P, P), too_big], MID)
    assert kernel.allocator.to_bytes() == before
    with pytest.raises(abi.KexecInvalid):
        kernel.kexec_load(0, [], FINAL)


def test_enomem_while_finishing_keeps_the_loaded_image(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, [Segment(fill(7, 2), BASE + 64 * P, 2 * P)], abi.load_flags())
    old = loaded(kernel)
    before = kernel.allocator.to_bytes()
    kernel.kexec_load(0, [Segment(fill(8), BASE, P)], START)
    hog = kernel.allocate(kernel.allocator.free_pages)
    with pytest.raises(abi.KexecNoMemory):
        kernel.kexec_load(0, [], FINAL)
    for pfn in hog:
        kernel.allocator.free(pfn)
    assert kernel.allocator.to_bytes() == before
    assert loaded(kernel) == old
    with pytest.raises(abi.KexecInvalid):
        kernel.kexec_load(0, [], FINAL)


def test_enomem_while_evicting_gives_back_every_page(kernel: ModelKernel) -> None:
    dest = busy_page(kernel, BASE >> PAGE_SHIFT)
    before = kernel.allocator.to_bytes()
    kernel.kexec_load(0, [Segment(fill(1), BASE, P)], START)
    src = page_map(kernel)[dest]
    hog = kernel.allocate(kernel.allocator.free_pages)
    with pytest.raises(abi.KexecNoMemory):
        kernel.kexec_load(0, [Segment(fill(2), src << PAGE_SHIFT, P)], MID)
    for pfn in hog:
        kernel.allocator.free(pfn)
    assert kernel.allocator.to_bytes() == before


def _indirection_pages(memory: PhysicalMemory, head: int) -> list[array.array[int]]:
    pages = []
    page = head
    while page:
        words = array.array("Q", memory.read(page, P))
        pages.append(words)
        page = words[-1] & abi.PAGE_MASK if words[-1] & abi.IND_INDIRECTION else 0
    return pages


# ------------------------------------------------------------ bounded work and memory


def test_an_image_needs_memory_for_its_pages_not_for_the_machine(tmp_path: Path) -> None:
    """A small image on a 16 GiB machine: the destination table is the kernel
    patch's hash table, sized by the image (DESIGN §2.2)."""
    npages = (16 << 30) >> PAGE_SHIFT
    with PhysicalMemory(tmp_path / "mem", npages * P, create=True) as memory:
        allocator = PageAllocator.with_free(npages, [(0x1000, 0x2000)])
        tracemalloc.start()
        try:
            builder = kimage.ImageBuilder(memory, allocator, preserve_context=False, staged=True)
            builder.add([Segment(fill(1, 2), 0x1800 * P, 2 * P), Segment.zero(npages * P - P, P)])
            builder.page_map()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 2 << 20


def test_finishing_passes_each_free_destination_once(kernel: ModelKernel) -> None:
    """Control, swap and indirection pages are never destinations: the pages
    the allocator offers that are (here: free zero-fill pages at the top of
    RAM) are set aside once for the whole of KS_final, not once per page."""
    zero_pages = 4096
    kernel.kexec_load(
        0, [Segment.zero((RAM_TOP_PFN - zero_pages) << PAGE_SHIFT, zero_pages * P)], START
    )
    segs = [Segment(fill(1), BASE + 2 * i * P, P) for i in range(1200)]
    kernel.kexec_load(0, segs[:600], MID)
    kernel.kexec_load(0, segs[600:], MID)
    calls = 0
    alloc = kernel.allocator.alloc

    def counting_alloc() -> int:
        nonlocal calls
        calls += 1
        return alloc()

    kernel.allocator.alloc = counting_alloc  # type: ignore[method-assign]
    kernel.kexec_load(0, [], FINAL)
    image = loaded(kernel)
    private = len(_indirection_pages(kernel.memory, image.head)) + 2
    assert calls <= zero_pages + private


def test_control_swap_and_indirection_pages_are_no_kind_of_destination(
    kernel: ModelKernel,
) -> None:
    zero_first = RAM_TOP_PFN - 2048
    kernel.kexec_load(0, [Segment.zero(zero_first << PAGE_SHIFT, 2048 * P)], START)
    segs = [Segment(fill(1), BASE + 2 * i * P, P) for i in range(1000)]
    kernel.kexec_load(0, segs, FINAL)
    image = loaded(kernel)
    dests = {d for _, d, _ in kimage.walk_entries(kernel.memory, image.head)}
    sources = {s for k, _, s in kimage.walk_entries(kernel.memory, image.head) if s}
    private = kimage.image_pages(kernel.memory, image) - sources
    assert len(private) == 2 + len(_indirection_pages(kernel.memory, image.head)) == 2 + 8
    assert not private & dests  # 2,049 + 2,000 entries in 8 pages
