"""The model's staged-load semantics beyond the conformance vectors: what
ends up in memory after relocation."""

from __future__ import annotations

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, Stage
from kexechibd.model import kimage
from kexechibd.model.kernel import ModelKernel

P = PAGE_SIZE
BASE = 0x8000000


def _relocate(kernel: ModelKernel) -> None:
    loaded = kernel.record.loaded
    assert loaded is not None
    kimage.relocate(kernel.memory, loaded)


def test_overlap_overwrites_earlier_data(kernel: ModelKernel) -> None:
    kernel.kexec_load(0, [Segment(b"A" * 2 * P, BASE, 2 * P)], abi.load_flags(Stage.START))
    kernel.kexec_load(0, [Segment(b"B" * 10, BASE + P, P)], abi.load_flags(Stage.FINAL))
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"A" * P
    assert kernel.memory.read(BASE + P, P) == b"B" * 10 + bytes(P - 10)


def test_zero_fill_pages_are_zeroed_by_relocation(kernel: ModelKernel) -> None:
    kernel.memory.write(BASE, b"\xff" * 4 * P)
    kernel.kexec_load(0, [Segment(b"", BASE, 4 * P)], abi.load_flags(Stage.START))
    kernel.kexec_load(0, [Segment(b"D" * P, BASE + 2 * P, P)], abi.load_flags(Stage.FINAL))
    _relocate(kernel)
    assert kernel.memory.read(BASE, 2 * P) == bytes(2 * P)
    assert kernel.memory.read(BASE + 2 * P, P) == b"D" * P
    assert kernel.memory.read(BASE + 3 * P, P) == bytes(P)


def test_destinations_busy_in_the_kernel_get_sources_elsewhere(kernel: ModelKernel) -> None:
    busy = BASE >> abi.PAGE_SHIFT
    assert kernel.take(busy)
    kernel.kexec_load(0, [Segment(b"E" * P, BASE, P)], abi.load_flags(Stage.START))
    runs = abi.decode_page_map(kernel.kexec_pgmap())
    assert runs[0].dest_pfn == busy and runs[0].src_pfn != busy
    kernel.kexec_load(0, [], abi.load_flags(Stage.FINAL))
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"E" * P


def test_a_source_page_that_becomes_a_destination_is_moved(kernel: ModelKernel) -> None:
    busy = BASE >> abi.PAGE_SHIFT
    assert kernel.take(busy)
    kernel.kexec_load(0, [Segment(b"1" * P, BASE, P)], abi.load_flags(Stage.START))
    src = abi.decode_page_map(kernel.kexec_pgmap())[0].src_pfn
    kernel.kexec_load(0, [Segment(b"2" * P, src << abi.PAGE_SHIFT, P)], abi.load_flags(Stage.MID))
    runs = {r.dest_pfn: r.src_pfn for r in abi.decode_page_map(kernel.kexec_pgmap())}
    assert runs[src] == src and runs[busy] not in (busy, src)
    kernel.kexec_load(0, [], abi.load_flags(Stage.FINAL))
    _relocate(kernel)
    assert kernel.memory.read(BASE, P) == b"1" * P
    assert kernel.memory.read(src << abi.PAGE_SHIFT, P) == b"2" * P


def test_running_out_of_pages_is_enomem_and_discards(kernel: ModelKernel) -> None:
    free = kernel.allocator.free_pages
    kernel.kexec_load(0, [Segment(b"x", BASE, P)], abi.load_flags(Stage.START))
    huge = Segment(b"", 0x100000, (free + 16) * P)
    kernel.kexec_load(0, [], abi.load_flags(Stage.START))
    with pytest.raises(abi.KexecNoMemory):
        kernel.kexec_load(
            0,
            [Segment(b"y" * P, 0x100000, P), huge],
            abi.load_flags(Stage.START, preserve_context=True),
        )
    assert kernel.allocator.free_pages == free
    with pytest.raises(abi.KexecInvalid):
        kernel.kexec_load(0, [], abi.load_flags(Stage.FINAL, preserve_context=True))


def test_half_ram_rule_does_not_apply_to_staged_zero_fill(kernel: ModelKernel) -> None:
    total = kernel.memory.size
    kernel.kexec_load(
        0, [Segment(b"", 0x100000, (total * 3 // 4) & ~(P - 1))], abi.load_flags(Stage.START)
    )
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


def test_a_staged_load_of_100k_scattered_pages_completes_on_4_gib(tmp_path) -> None:
    """Issue 2's acceptance: ≥ 100,000 single-page segments over a 4 GiB model."""
    import random

    from kexechibd.model.machine import Machine

    with Machine.create(tmp_path / "big", ram=4 << 30) as machine:
        machine.power_on()
        with ModelKernel(machine) as big:
            pfns = random.Random(3).sample(range(0x4000, (3 << 30) >> abi.PAGE_SHIFT), 100_000)
            segs = [Segment(pfn.to_bytes(8, "little"), pfn << abi.PAGE_SHIFT, P) for pfn in pfns]
            for i in range(0, len(segs), abi.KEXEC_STAGE_SEGMENT_MAX):
                stage = Stage.START if i == 0 else Stage.MID
                big.kexec_load(0, segs[i : i + abi.KEXEC_STAGE_SEGMENT_MAX], abi.load_flags(stage))
            big.kexec_load(0x100000, [], abi.load_flags(Stage.FINAL))
            runs = abi.decode_page_map(big.kexec_pgmap())
            assert sum(r.npages for r in runs) == 100_000
            loaded = big.record.loaded
            assert loaded is not None
            kimage.relocate(big.memory, loaded)
            for pfn in pfns[::997]:
                assert big.memory.read(pfn << abi.PAGE_SHIFT, 8) == pfn.to_bytes(8, "little")
