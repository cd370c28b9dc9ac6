"""``/proc/vmcore`` of a model kernel, built the way ``fs/proc/vmcore.c`` builds it.

The ELF core header the previous kernel left at ``elfcorehdr=`` is read from
model memory; its PT_NOTEs are merged into one (each note's real size found
by walking ``Elf64_Nhdr``s); each PT_LOAD's ``p_offset`` is taken as the
physical address of its data, page-rounded, and rewritten to the file offset
inside the new file, whose header occupies whole pages.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from elftools.elf.elffile import ELFFile

from kexechibd.kernel.abi import PAGE_SIZE, page_align_down, page_align_up
from kexechibd.kernel.elfcore import E_IDENT, EHDR, NHDR, PHDR, PT_LOAD, PT_NOTE, core_ehdr
from kexechibd.model.memory import PhysicalMemory

MAX_HEADER = 1 << 20


class VmcoreError(ValueError):
    """The ELF core header is not one ``fs/proc/vmcore.c`` accepts."""


@dataclass(frozen=True)
class _Region:
    offset: int  # file offset
    phys: int  # physical address
    size: int


def _real_note_size(memory: PhysicalMemory, addr: int, memsz: int) -> int:
    size = 0
    while size + NHDR.size <= memsz:
        namesz, descsz, _ = NHDR.unpack(memory.read(addr + size, NHDR.size))
        if namesz == 0:
            break
        size += NHDR.size + ((namesz + 3) & ~3) + ((descsz + 3) & ~3)
    return min(size, memsz)


class VmcoreFile(io.RawIOBase):
    """A readable, seekable ``/proc/vmcore`` over model memory."""

    def __init__(self, memory: PhysicalMemory, elfcorehdr: int) -> None:
        super().__init__()
        self._memory = memory
        header = memory.read(elfcorehdr, min(MAX_HEADER, memory.size - elfcorehdr))
        try:
            elf = ELFFile(io.BytesIO(header))
            if elf["e_type"] != "ET_CORE" or elf["e_machine"] != "EM_X86_64":
                raise VmcoreError("elfcorehdr is not an x86_64 ELF core header")
            if elf.elfclass != 64 or elf["e_ident"]["EI_VERSION"] != "EV_CURRENT":
                raise VmcoreError("elfcorehdr is not an ELF64 EV_CURRENT header")
            if elf.num_segments() == 0:
                raise VmcoreError("elfcorehdr has no program headers")
            segments = [seg.header for seg in elf.iter_segments()]
        except VmcoreError:
            raise
        except Exception as exc:
            raise VmcoreError(
                f"elfcorehdr at {elfcorehdr:#x} is not a valid ELF header: {exc}"
            ) from None

        notes = b"".join(
            memory.read(s.p_offset, _real_note_size(memory, s.p_offset, s.p_memsz))
            for s in segments
            if s.p_type == "PT_NOTE"
        )
        loads = [s for s in segments if s.p_type == "PT_LOAD"]
        phnum = len(loads) + (1 if notes else 0)
        notes_offset = EHDR.size + phnum * PHDR.size
        offset = page_align_up(notes_offset + len(notes))
        phdrs = []
        if notes:
            phdrs.append(PHDR.pack(PT_NOTE, 0, notes_offset, 0, 0, len(notes), len(notes), 0))
        self._regions: list[_Region] = []
        for s in loads:
            start = page_align_down(s.p_offset)
            end = page_align_up(s.p_offset + s.p_memsz)
            if end > memory.size:
                raise VmcoreError(f"PT_LOAD at {s.p_offset:#x} lies beyond physical memory")
            self._regions.append(_Region(offset, start, end - start))
            phdrs.append(
                PHDR.pack(
                    PT_LOAD,
                    s.p_flags,
                    offset + (s.p_offset - start),
                    s.p_vaddr,
                    s.p_paddr,
                    s.p_filesz,
                    s.p_memsz,
                    s.p_align,
                )
            )
            offset += end - start
        ehdr = core_ehdr(phnum, ident=header[: len(E_IDENT)])
        self._header = (ehdr + b"".join(phdrs) + notes).ljust(
            page_align_up(notes_offset + len(notes)), b"\0"
        )
        self._size = offset
        self._pos = 0

    # io.RawIOBase -----------------------------------------------------------

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        done = 0
        while done < len(out) and self._pos < self._size:
            chunk = self._read_at(self._pos, len(out) - done)
            out[done : done + len(chunk)] = chunk
            done += len(chunk)
            self._pos += len(chunk)
        return done

    def _read_at(self, pos: int, length: int) -> bytes:
        if pos < len(self._header):
            return self._header[pos : pos + length]
        for region in self._regions:
            if region.offset <= pos < region.offset + region.size:
                n = min(length, region.offset + region.size - pos)
                return self._memory.read(region.phys + pos - region.offset, n)
        # Padding between the header and the first region.
        return bytes(min(length, PAGE_SIZE - pos % PAGE_SIZE))

    @property
    def size(self) -> int:
        return self._size
