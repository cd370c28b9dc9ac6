"""The ELF core header A hands to B through ``elfcorehdr=`` (pure).

What ``fs/proc/vmcore.c`` expects: an ELF64 ``ET_CORE`` header for x86_64, a
PT_NOTE per note blob at its physical address (A's VMCOREINFO), and one
PT_LOAD per range of A's RAM that B must save, with ``p_offset = p_paddr =``
the physical address.  (kexec-tools' x86_64 header also carries a PT_LOAD for
the kernel text that overlaps RAM; this one does not, so the PT_LOADs never
overlap and can be saved and restored as they are.)
"""

from __future__ import annotations

from collections.abc import Sequence

from kexechibd.kernel.abi import PAGE_SIZE, page_align_up
from kexechibd.kernel.api import MemoryRange
from kexechibd.kernel.elfcore import PF_RWX, PHDR, PT_LOAD, PT_NOTE, core_ehdr


def build_elfcorehdr(ram: Sequence[MemoryRange], *, notes: Sequence[tuple[int, int]] = ()) -> bytes:
    """The header: ``notes`` are ``(physical address, size)`` of note blobs."""
    phnum = len(notes) + len(ram)
    ehdr = core_ehdr(phnum)
    phdrs = [PHDR.pack(PT_NOTE, 0, addr, 0, addr, size, size, 0) for addr, size in notes]
    phdrs += [PHDR.pack(PT_LOAD, PF_RWX, r.start, 0, r.start, r.size, r.size, 0) for r in ram]
    header = ehdr + b"".join(phdrs)
    return header.ljust(page_align_up(len(header)) or PAGE_SIZE, b"\0")
