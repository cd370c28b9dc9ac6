"""kexechibd.kernel.elfcore writes what pyelftools (and so crash, makedumpfile
and fs/proc/vmcore.c's checks) reads as an x86-64 ELF64 core header."""

from __future__ import annotations

import io

from elftools.elf.elffile import ELFFile

from kexechibd.kernel.elfcore import PF_RWX, PHDR, PT_LOAD, core_ehdr


def test_a_core_header_reads_back_as_an_x86_64_elf64_core_file() -> None:
    data = core_ehdr(1) + PHDR.pack(PT_LOAD, PF_RWX, 0x1000, 0, 0x1000, 0x2000, 0x2000, 0)
    elf = ELFFile(io.BytesIO(data))
    assert (elf.elfclass, elf.little_endian) == (64, True)
    assert (elf["e_type"], elf["e_machine"], elf["e_version"]) == (
        "ET_CORE",
        "EM_X86_64",
        "EV_CURRENT",
    )
    (segment,) = elf.iter_segments()
    assert (segment["p_type"], segment["p_paddr"], segment["p_memsz"]) == (
        "PT_LOAD",
        0x1000,
        0x2000,
    )
    assert segment["p_flags"] == PF_RWX == 7


def test_section_headers_are_announced_only_when_there_are_some() -> None:
    elf = ELFFile(io.BytesIO(core_ehdr(0xFFFF, shoff=4096, shnum=1)))
    assert (elf["e_shoff"], elf["e_shnum"], elf["e_shentsize"]) == (4096, 1, 64)
    assert ELFFile(io.BytesIO(core_ehdr(2)))["e_shentsize"] == 0
