"""Random staged loads against a reference reading of DESIGN §2.2: whatever
mix of overlaps, partial buffers, zero-fill segments and destinations the
kernel is using (taken and given back between calls), relocation leaves
exactly what the segments say in every destination, a preserve-context
swap leaves each destination's old contents in its source, the placement
invariant holds, no private page is a destination, and unloading gives
back every page.  Seeded: a failure names its seed."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SHIFT, Segment, Stage
from kexechibd.model import kimage
from kexechibd.model.kernel import ModelKernel
from tests.model_support import BASE, RAM_TOP_PFN, P

# A window at the top of RAM gets its sources from inside itself (the
# allocator works top down), which exercises parking, eviction and sources
# that are zero-fill destinations.
WINDOWS = {"middle": (BASE >> PAGE_SHIFT, 192), "top": (RAM_TOP_PFN - 192, 192)}
DATA, ZERO = "data", "zero"


@dataclass
class Expected:
    """Per destination page: what it holds after relocation, and its kind."""

    pages: dict[int, tuple[str, bytes]] = field(default_factory=dict)

    def apply(self, seg: Segment, zero_fill: bool) -> None:
        first = seg.mem >> PAGE_SHIFT
        buf = bytes(seg.buf)
        for i in range(seg.memsz >> PAGE_SHIFT):
            dest = first + i
            if zero_fill:
                kind = DATA if self.pages.get(dest, (ZERO, b""))[0] == DATA else ZERO
                self.pages[dest] = (kind, bytes(P))
            else:
                self.pages[dest] = (DATA, buf[i * P : (i + 1) * P].ljust(P, b"\0"))


def random_segment(rng: random.Random, window: tuple[int, int]) -> Segment:
    first, size = window
    start = rng.randrange(size)
    npages = min(rng.randint(1, 12), size - start)
    memsz = npages * P
    bufsz = rng.choice([memsz, memsz, 0, rng.randrange(1, memsz)])
    return Segment(rng.randbytes(bufsz), (first + start) << PAGE_SHIFT, memsz)


def scenario(kernel: ModelKernel, seed: int, window: tuple[int, int]) -> None:
    rng = random.Random(seed)
    preserve = rng.random() < 0.4
    first, size = window
    kernel.memory.write(first << PAGE_SHIFT, rng.randbytes(size * P))
    before = kernel.allocator.to_bytes()
    held = {p for p in range(first, first + size) if rng.random() < 0.3 and kernel.take(p)}
    expected = Expected()
    ncalls = rng.randint(1, 5)
    for n in range(ncalls):
        segs = [random_segment(rng, window) for _ in range(rng.randint(0 if n else 1, 6))]
        for seg in segs:
            expected.apply(seg, zero_fill=not preserve and seg.bufsz == 0)
        stage = Stage.START if n == 0 else Stage.FINAL if n == ncalls - 1 else Stage.MID
        if ncalls == 1:
            kernel.kexec_load(0, segs, abi.load_flags(Stage.START, preserve_context=preserve))
            stage = Stage.FINAL
            segs = []
        kernel.kexec_load(0, segs, abi.load_flags(stage, preserve_context=preserve))
        for page in rng.sample(sorted(held), len(held) // 4):  # the kernel frees some
            held.discard(page)
            kernel.allocator.free(page)
        for page in rng.sample(range(first, first + size), 8):  # and uses others
            if kernel.take(page):
                held.add(page)

    image = kernel.record.loaded
    assert image is not None
    entries = list(kimage.walk_entries(kernel.memory, image.head))
    sources = {d: s for k, d, s in entries if k == kimage.ENTRY_SOURCE}
    zeros = {d for k, d, _ in entries if k == kimage.ENTRY_ZERO}
    assert {d for d, (k, _) in expected.pages.items() if k == DATA} == set(sources)
    assert {d for d, (k, _) in expected.pages.items() if k == ZERO} == zeros
    for dest, src in sources.items():
        assert src == dest or src not in sources, f"seed {seed}: source {src:#x} is a data page"
    private = kimage.image_pages(kernel.memory, image) - set(sources.values())
    assert not private & (set(sources) | zeros), f"seed {seed}: a private page is a destination"

    old = {d: kernel.memory.read(d << PAGE_SHIFT, P) for d in sources}
    kimage.relocate(kernel.memory, image)
    for dest, (_, data) in expected.pages.items():
        assert kernel.memory.read(dest << PAGE_SHIFT, P) == data, f"seed {seed}: page {dest:#x}"
    if preserve:
        for dest, src in sources.items():
            if src != dest:
                assert kernel.memory.read(src << PAGE_SHIFT, P) == old[dest], f"seed {seed}"

    kernel.kexec_load(0, [], abi.load_flags())
    for page in held:
        kernel.allocator.free(page)
    assert kernel.allocator.to_bytes() == before, f"seed {seed}: pages leaked or lost"


@pytest.mark.parametrize("window", WINDOWS.values(), ids=WINDOWS.keys())
@pytest.mark.parametrize("block", range(3))
def test_random_staged_loads_match_the_specification(
    kernel: ModelKernel, block: int, window: tuple[int, int]
) -> None:
    for seed in range(block * 50, block * 50 + 50):
        scenario(kernel, seed, window)
