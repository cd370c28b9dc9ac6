"""The model's kimage where the conformance vectors cannot look: what
relocation leaves in memory (overlaps, zero fill, eviction, the
preserve-context swap), ENOMEM rollback of the page allocator, and work and
memory bounded by the image, not the machine (DESIGN §2.1–§2.2, §7;
kernel/kexec_core.c, relocate_kernel_64.S)."""

from __future__ import annotations

import random
import tracemalloc
from pathlib import Path

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, Segment, Stage
from kexechibd.kernel.api import MemoryKind
from kexechibd.model import kimage
from kexechibd.model.allocator import PageAllocator
from kexechibd.model.kernel import ModelKernel
from kexechibd.model.memory import PhysicalMemory
from tests.model_support import (
    BASE,
    FINAL,
    FINAL_KEEP,
    MID,
    RAM_TOP_PFN,
    START,
    START_KEEP,
    P,
    busy_page,
    fill,
    indirection_pages,
    loaded,
    model_kernel,
    page_map,
    read_page,
)


def _relocate(kernel: ModelKernel) -> None:
    kimage.relocate(kernel.memory, loaded(kernel))


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


def test_overlap_overwrites_earlier_data(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, [Segment(b"A" * 2 * P, BASE, 2 * P)], START)
    kernel.kexec_load(0, [Segment(b"B" * 10, BASE + P, P)], FINAL)
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"A" * P
    assert kernel.memory.read(BASE + P, P) == b"B" * 10 + bytes(P - 10)


def test_zero_fill_pages_are_zeroed_by_relocation(kernel: ModelKernel) -> None:
    kernel.memory.write(BASE, b"\xff" * 4 * P)
    kernel.kexec_load(0, [Segment(b"", BASE, 4 * P)], START)
    kernel.kexec_load(0, [Segment(b"D" * P, BASE + 2 * P, P)], FINAL)
    _relocate(kernel)
    assert kernel.memory.read(BASE, 2 * P) == bytes(2 * P)
    assert kernel.memory.read(BASE + 2 * P, P) == b"D" * P
    assert kernel.memory.read(BASE + 3 * P, P) == bytes(P)


def test_destinations_busy_in_the_kernel_get_sources_elsewhere(kernel: ModelKernel) -> None:
    busy = BASE >> abi.PAGE_SHIFT
    assert kernel.take(busy)
    kernel.kexec_load(0, [Segment(b"E" * P, BASE, P)], START)
    runs = abi.decode_page_map(kernel.kexec_pgmap())
    assert runs[0].dest_pfn == busy and runs[0].src_pfn != busy
    kernel.kexec_load(0, [], FINAL)
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"E" * P


def test_a_source_page_that_becomes_a_destination_is_moved(kernel: ModelKernel) -> None:
    busy = BASE >> abi.PAGE_SHIFT
    assert kernel.take(busy)
    kernel.kexec_load(0, [Segment(b"1" * P, BASE, P)], START)
    src = abi.decode_page_map(kernel.kexec_pgmap())[0].src_pfn
    kernel.kexec_load(0, [Segment(b"2" * P, src << abi.PAGE_SHIFT, P)], MID)
    runs = {r.dest_pfn: r.src_pfn for r in abi.decode_page_map(kernel.kexec_pgmap())}
    assert runs[src] == src and runs[busy] not in (busy, src)
    kernel.kexec_load(0, [], FINAL)
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"1" * P
    assert kernel.memory.read(src << abi.PAGE_SHIFT, P) == b"2" * P


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


def test_running_out_of_pages_is_enomem_and_discards(kernel: ModelKernel) -> None:
    free = kernel.allocator.free_pages
    kernel.kexec_load(0, [Segment(b"x", BASE, P)], START)
    huge = Segment(b"", 0x100000, (free + 16) * P)
    kernel.kexec_load(0, [], START)
    with pytest.raises(abi.KexecNoMemory):
        kernel.kexec_load(
            0,
            [Segment(b"y" * P, 0x100000, P), huge],
            abi.load_flags(Stage.START, preserve_context=True),
        )
    assert kernel.allocator.free_pages == free
    with pytest.raises(abi.KexecInvalid):
        kernel.kexec_load(0, [], abi.load_flags(Stage.FINAL, preserve_context=True))


# ------------------------------------------------------------ limits and unloading


def test_half_ram_rule_does_not_apply_to_staged_zero_fill(kernel: ModelKernel) -> None:
    total = kernel.memory.size
    kernel.kexec_load(0, [Segment(b"", 0x100000, (total * 3 // 4) & ~(P - 1))], START)
    with pytest.raises(abi.KexecInvalid):
        kernel.kexec_load(
            0, [Segment(b"", 0x100000, (total * 3 // 4) & ~(P - 1))], abi.load_flags()
        )


def test_unloading_frees_every_page(kernel: ModelKernel) -> None:
    free = kernel.allocator.free_pages
    kernel.kexec_load(
        0, [Segment(b"z" * 3 * P, BASE, 8 * P)], abi.load_flags(preserve_context=True)
    )
    assert kernel.allocator.free_pages < free
    kernel.kexec_load(0, [], abi.load_flags())
    assert kernel.allocator.free_pages == free


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
    private = len(indirection_pages(kernel.memory, image.head)) + 2
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
    assert len(private) == 2 + len(indirection_pages(kernel.memory, image.head)) == 2 + 8
    assert not private & dests  # 2,049 + 2,000 entries in 8 pages


def test_a_staged_load_of_100k_scattered_pages_completes_on_4_gib(tmp_path) -> None:
    """Issue 2's acceptance: ≥ 100,000 single-page segments over a 4 GiB model."""
    with model_kernel(tmp_path / "big", ram=4 << 30) as big:
        top = max(r.end for r in big.memory_map() if r.kind is MemoryKind.RAM and r.end <= 3 << 30)
        pfns = random.Random(3).sample(range(0x4000, top >> abi.PAGE_SHIFT), 100_000)
        segs = [Segment(pfn.to_bytes(8, "little"), pfn << abi.PAGE_SHIFT, P) for pfn in pfns]
        for i in range(0, len(segs), abi.KEXEC_STAGE_SEGMENT_MAX):
            stage = Stage.START if i == 0 else Stage.MID
            big.kexec_load(0, segs[i : i + abi.KEXEC_STAGE_SEGMENT_MAX], abi.load_flags(stage))
        big.kexec_load(0x100000, [], FINAL)
        runs = abi.decode_page_map(big.kexec_pgmap())
        assert sum(r.npages for r in runs) == 100_000
        kimage.relocate(big.memory, loaded(big))
        for pfn in pfns[::997]:
            assert big.memory.read(pfn << abi.PAGE_SHIFT, 8) == pfn.to_bytes(8, "little")
