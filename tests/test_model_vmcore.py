"""/proc/vmcore of a model kernel, served from an ELF core header in memory."""

from __future__ import annotations

from elftools.elf.elffile import ELFFile

from kexechibd.cycle.elfcorehdr import build_elfcorehdr
from kexechibd.kernel.api import MemoryRange
from kexechibd.model.memory import PhysicalMemory
from kexechibd.model.vmcore import VmcoreFile


def test_vmcore_serves_each_pt_load_from_physical_memory(tmp_path) -> None:
    with PhysicalMemory(tmp_path / "mem", 64 << 20, create=True) as memory:
        memory.write(0x100000, b"first range")
        memory.write(0x2000000, b"second range")
        note = b"\x0b\0\0\0\x05\0\0\0\0\0\0\0VMCOREINFO\0\0hello\0\0\0"
        memory.write(0x3000000, note)
        header = build_elfcorehdr(
            [MemoryRange(0x100000, 0x200000), MemoryRange(0x2000000, 0x2100000)],
            notes=[(0x3000000, 4096)],
        )
        memory.write(0x3800000, header)
        core = VmcoreFile(memory, 0x3800000)
        elf = ELFFile(core)
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        assert [(s["p_paddr"], s["p_filesz"]) for s in loads] == [
            (0x100000, 0x100000),
            (0x2000000, 0x100000),
        ]
        assert loads[0].data()[:11] == b"first range"
        assert loads[1].data()[:12] == b"second range"
        notes = [n for s in elf.iter_segments() if s["p_type"] == "PT_NOTE" for n in s.iter_notes()]
        assert [n["n_name"] for n in notes] == ["VMCOREINFO"]
        assert core.size == loads[-1]["p_offset"] + 0x100000
