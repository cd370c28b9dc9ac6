"""Kernel B's load as A plans it (DESIGN §1.1), checked without a kernel."""

from __future__ import annotations

from kexechibd import cmdline
from kexechibd.cycle.prepare import SaverFiles, plan_saver_load
from kexechibd.cycle.window import choose_window
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.model.bzimage import make_bzimage
from kexechibd.purgatory import default_purgatory_path

MIB = 1 << 20
FIRMWARE = [
    MemoryRange(0, 0x9F000),
    MemoryRange(0x9F000, 0x100000, MemoryKind.RESERVED),
    MemoryRange(MIB, 512 * MIB),
]


def test_b_gets_its_window_as_ram_except_the_elf_core_header() -> None:
    # B's kernel reads the header as it reads A's memory (x86 ioremap), which
    # refuses RAM: a header inside B's RAM leaves B without /proc/vmcore.
    window = choose_window(256 * MIB, 64 * MIB, FIRMWARE, low_memory=True)
    files = SaverFiles(make_bzimage(kernel_size=128 << 10, init_size=MIB), b"initrd", "")
    plan = plan_saver_load(
        files, window, FIRMWARE, vmcoreinfo=None, purgatory=default_purgatory_path().read_bytes()
    )
    header = cmdline.elfcorehdr(plan.cmdline)
    assert header is not None
    header_pages = next(s for s in plan.segments if s.mem == header.addr)
    b_ram = cmdline.apply_memmap(FIRMWARE, plan.cmdline)
    assert b_ram == cmdline.subtract(list(window.ranges), [(header_pages.mem, header_pages.end)])
