"""The ELF64 core file of the kernel interface (pure): the layout
``fs/proc/vmcore.c`` reads from ``elfcorehdr=`` and writes as
``/proc/vmcore``, which kexechibd's image also follows so that crash and
makedumpfile can read an export.

Values come from pyelftools' tables (as its ELFFile reads them back); the
structures are ``Elf64_Ehdr``, ``Elf64_Phdr``, ``Elf64_Shdr`` and
``Elf64_Nhdr`` of include/uapi/linux/elf.h, little endian (x86-64).  Reading
an ELF file is pyelftools' job; this module only writes.
"""

from __future__ import annotations

import struct

from elftools.elf.constants import P_FLAGS
from elftools.elf.enums import (
    ENUM_E_MACHINE,
    ENUM_E_TYPE,
    ENUM_E_VERSION,
    ENUM_EI_CLASS,
    ENUM_EI_DATA,
    ENUM_EI_OSABI,
    ENUM_P_TYPE_BASE,
)

ET_CORE = ENUM_E_TYPE["ET_CORE"]
EM_X86_64 = ENUM_E_MACHINE["EM_X86_64"]
EV_CURRENT = ENUM_E_VERSION["EV_CURRENT"]
PT_LOAD = ENUM_P_TYPE_BASE["PT_LOAD"]
PT_NOTE = ENUM_P_TYPE_BASE["PT_NOTE"]
PF_RWX = P_FLAGS.PF_R | P_FLAGS.PF_W | P_FLAGS.PF_X
# e_phnum's escape (include/uapi/linux/elf.h): the real count is in the first
# section header's sh_info.
PN_XNUM = 0xFFFF

EHDR = struct.Struct("<16sHHIQQQIHHHHHH")  # Elf64_Ehdr
PHDR = struct.Struct("<IIQQQQQQ")  # Elf64_Phdr
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr
NHDR = struct.Struct("<III")  # Elf64_Nhdr: namesz, descsz, type
E_IDENT = (
    b"\x7fELF"
    + bytes(
        [
            ENUM_EI_CLASS["ELFCLASS64"],
            ENUM_EI_DATA["ELFDATA2LSB"],
            EV_CURRENT,
            ENUM_EI_OSABI["ELFOSABI_SYSV"],
        ]
    )
    + bytes(8)
)


def core_ehdr(phnum: int, *, shoff: int = 0, shnum: int = 0, ident: bytes = E_IDENT) -> bytes:
    """An x86-64 ``ET_CORE`` header whose program headers follow it at 64."""
    return EHDR.pack(
        ident,
        ET_CORE,
        EM_X86_64,
        EV_CURRENT,
        0,  # e_entry
        EHDR.size,  # e_phoff
        shoff,
        0,  # e_flags
        EHDR.size,
        PHDR.size,
        phnum,
        SHDR.size if shnum else 0,
        shnum,
        0,  # e_shstrndx
    )
