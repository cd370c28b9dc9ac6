"""Export an image as a plain ELF core for readelf, gdb or crash.

Layout: ELF header; program headers (one PT_NOTE, then one PT_LOAD per
maximal run, in address order); with 65535 or more program headers, one
section header whose ``sh_info`` holds the count (PN_XNUM); notes (A's
VMCOREINFO, the identity and page map of the image); the data runs' bytes
from the next page boundary on, uncompressed.  Zero runs are PT_LOADs with
``p_filesz`` 0.  ``p_paddr`` is the physical address; ``p_vaddr`` is the same
(A's virtual layout is not known here; crash works from ``p_paddr`` and
VMCOREINFO).  Both passes stream: memory is a few chunks, not the image.
"""

from __future__ import annotations

from typing import BinaryIO

from kexechibd.image import format
from kexechibd.image.format import NOTE_OWNER, PHDR, SHDR, VMCOREINFO_OWNER
from kexechibd.image.meta import ImageError
from kexechibd.image.reader import ImageReader
from kexechibd.image.writer import _write_all

_BATCH = 4096  # program headers written per write() call


def export_elf_core(reader: ImageReader, out: BinaryIO) -> None:
    """Write the image behind ``reader`` to ``out`` (written sequentially:
    a pipe will do) as an ELF core."""
    meta = reader.meta
    ps = meta.page_size
    loads = reader.summary.runs
    phnum = 1 + loads
    xnum = phnum >= format.PN_XNUM
    notes = format.encode_note(NOTE_OWNER, format.NT_IDENTITY, format.encode_identity(meta))
    if meta.page_map:
        notes += format.encode_note(NOTE_OWNER, format.NT_PAGE_MAP, meta.page_map)
    if meta.vmcoreinfo:
        notes += format.encode_note(VMCOREINFO_OWNER, format.NT_VMCOREINFO, meta.vmcoreinfo)
    phoff = format.EHDR.size
    shoff = phoff + PHDR.size * phnum if xnum else 0
    notes_at = phoff + PHDR.size * phnum + (SHDR.size if xnum else 0)
    data_at = format.align_up(notes_at + len(notes), ps)

    _write_all(out, format.encode_elf_prefix(format.PN_XNUM if xnum else phnum,
                                             shoff, 1 if xnum else 0))
    batch = [PHDR.pack(format.PT_NOTE, 0, notes_at, 0, 0, len(notes), 0, 4)]
    offset = data_at
    count = 0
    for run in reader.covered():
        count += 1
        if count > loads:
            break
        size = run.npages * ps
        addr = run.pfn * ps
        filesz = 0 if run.zero else size
        batch.append(PHDR.pack(format.PT_LOAD, format.PF_RWX, offset, addr, addr, filesz,
                               size, 0))
        offset += filesz
        if len(batch) >= _BATCH:
            _write_all(out, b"".join(batch))
            batch.clear()
    if count != loads:
        raise ImageError(f"image has {count} runs, its header says {loads}")
    _write_all(out, b"".join(batch))
    if xnum:
        _write_all(out, SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
    _write_all(out, notes)
    _write_all(out, bytes(data_at - notes_at - len(notes)))
    for chunk in reader.chunks():
        _write_all(out, chunk.data)
