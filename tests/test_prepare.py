"""Kernel B's load as A plans it (DESIGN §1.1), checked without a kernel."""

from __future__ import annotations

import io

from elftools.elf.elffile import ELFFile

from kexechibd import bootproto, cmdline, ranges
from kexechibd.cycle.prepare import SaverFiles, SaverLoad, plan_saver_load
from kexechibd.cycle.window import Window, choose_window
from kexechibd.kernel.api import MemoryKind, MemoryRange
from kexechibd.model.bzimage import make_bzimage
from kexechibd.operation import Role
from kexechibd.purgatory import default_purgatory_path
from kexechibd.role import ImageFinding, ImageVerdict, detect_role
from tests.sizes import KIB, MIB

# QEMU's e820: the first RAM range ends mid-page, below the EBDA.
FIRMWARE = [
    MemoryRange(0, 0x9FC00),
    MemoryRange(0x9FC00, 0xA0000, MemoryKind.RESERVED),
    MemoryRange(0xF0000, MIB, MemoryKind.RESERVED),
    MemoryRange(MIB, 512 * MIB - 0x20000),
    MemoryRange(512 * MIB - 0x20000, 512 * MIB, MemoryKind.RESERVED),
]


def _plan(acpi_rsdp: int | None = None) -> tuple[Window, SaverLoad]:
    window = choose_window(256 * MIB, 64 * MIB, FIRMWARE, low_memory=True)
    files = SaverFiles(make_bzimage(kernel_size=128 * KIB, init_size=MIB), b"initrd", "")
    plan = plan_saver_load(
        files,
        window,
        FIRMWARE,
        vmcoreinfo=None,
        purgatory=default_purgatory_path().read_bytes(),
        acpi_rsdp=acpi_rsdp,
    )
    return window, plan


def test_b_gets_its_window_as_ram_except_the_elf_core_header() -> None:
    # B's kernel reads the header as it reads A's memory (x86 ioremap), which
    # refuses RAM: a header inside B's RAM leaves B without /proc/vmcore.
    window, plan = _plan()
    header = cmdline.elfcorehdr(plan.cmdline)
    assert header is not None
    header_pages = next(s for s in plan.segments if s.mem == header.addr)
    b_ram = cmdline.apply_memmap(FIRMWARE, plan.cmdline)
    assert b_ram == ranges.subtract(list(window.ranges), [(header_pages.mem, header_pages.end)])


def test_the_elf_core_header_lists_whole_pages_of_a_s_ram_outside_the_window() -> None:
    # B saves page by page; the partial page below QEMU's EBDA is not A's.
    _, plan = _plan()
    header = cmdline.elfcorehdr(plan.cmdline)
    assert header is not None
    segment = next(s for s in plan.segments if s.mem == header.addr)
    elf = ELFFile(io.BytesIO(bytes(segment.buf)))
    loads = [(p["p_paddr"], p["p_paddr"] + p["p_memsz"]) for p in elf.iter_segments("PT_LOAD")]
    assert loads == [(MIB, 256 * MIB), (320 * MIB, 512 * MIB - 0x20000)]


def test_a_systemd_b_boots_the_save_target_and_not_a_s_mounts() -> None:
    _, plan = _plan()
    assert "systemd.unit=kexechib-save.target" in plan.cmdline.split()
    b = detect_role(
        plan.cmdline + " kexec_jump_back_entry=0x1000", ImageFinding(ImageVerdict.ABSENT), ""
    )
    assert (b.role, b.problem) == (Role.SAVER, "")


def test_b_is_told_where_a_s_firmware_put_the_acpi_rsdp() -> None:
    # On a UEFI machine B finds ACPI, and so powers off, only through its zero page.
    _, plan = _plan(acpi_rsdp=0x7FB7E014)
    setup = next(s for s in plan.segments if bytes(s.buf[0x202:0x206]) == b"HdrS")
    assert bootproto.BootParams.parse(bytes(setup.buf[:4096])).acpi_rsdp == 0x7FB7E014
