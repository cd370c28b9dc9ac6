"""Save in B (DESIGN §1.3): A's memory from ``/proc/vmcore`` into an image.

B reads its parameters from the files its initramfs carried, reads every
PT_LOAD of ``/proc/vmcore`` (A's RAM outside B's window, as it was at the
jump) and hands the bytes to the image writer, which finds zero pages,
compresses chunks on all cores and commits the image last.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

from kexechibd.cycle.params import SaveParams
from kexechibd.errors import Failed
from kexechibd.image import (
    ExtentImageStore,
    ImageMeta,
    ImageMode,
    ImageStore,
    ImageSummary,
    SealedImageStore,
    open_store,
)
from kexechibd.kernel.api import Kernel

READ_SIZE = 4 << 20

Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class LoadSegment:
    paddr: int
    offset: int
    size: int


@dataclass(frozen=True)
class CoreLayout:
    loads: tuple[LoadSegment, ...]
    vmcoreinfo: bytes

    @property
    def total(self) -> int:
        return sum(s.size for s in self.loads)


def _read_exactly(core: BinaryIO, offset: int, n: int) -> bytes:
    """``n`` bytes at ``offset`` as a fresh ``bytes``, which the image writer
    keeps without copying (reading into a reused buffer and copying that
    cost a second pass over all of memory on the saver's busiest thread)."""
    core.seek(offset)
    data = core.read(n)
    while len(data) < n:
        more = core.read(n - len(data))
        if not more:
            raise Failed(f"/proc/vmcore ended early at offset {offset + len(data):#x}")
        data += more
    return data


def read_core_layout(core: BinaryIO) -> CoreLayout:
    """PT_LOADs and the VMCOREINFO note of ``/proc/vmcore`` (pyelftools)."""
    elf = ELFFile(core)
    loads = []
    vmcoreinfo = b""
    for seg in elf.iter_segments():
        if seg["p_type"] == "PT_LOAD" and seg["p_filesz"]:
            loads.append(LoadSegment(seg["p_paddr"], seg["p_offset"], seg["p_filesz"]))
        elif isinstance(seg, NoteSegment):
            for note in seg.iter_notes():
                if note["n_name"] == "VMCOREINFO":
                    desc = note["n_desc"]
                    vmcoreinfo = desc.encode() if isinstance(desc, str) else bytes(desc)
    loads.sort(key=lambda s: s.paddr)
    for a, b in itertools.pairwise(loads):
        if b.paddr < a.paddr + a.size:
            raise Failed(f"/proc/vmcore has overlapping PT_LOADs at {b.paddr:#x}")
    return CoreLayout(tuple(loads), vmcoreinfo)


def image_meta(
    params: SaveParams, page_map: bytes, jump_back_entry: int, vmcoreinfo: bytes
) -> ImageMeta:
    return ImageMeta(
        kernel_release=params.origin.release,
        build_id=params.origin.build_id,
        boot_id=params.origin.boot_id,
        machine_id=params.origin.machine_id,
        created=params.created,
        jump_back_entry=jump_back_entry,
        hibernate_id=params.hibernate_id,
        mode=ImageMode(params.mode),
        window=params.window,
        page_map=page_map,
        vmcoreinfo=vmcoreinfo,
    )


def image_store(params: SaveParams) -> ImageStore:
    """Where B writes: a prepared file by block address on its device, with
    the map A made of it (B has only its initramfs and never sees A's
    filesystems), or the location itself (a device; a file in the model)."""
    if params.image_file is not None and params.image_seal is not None:
        return SealedImageStore(
            params.image_location, extents=params.image_file, seal=params.image_seal
        )
    if params.image_file is not None:
        return ExtentImageStore(params.image_location, extents=params.image_file)
    return open_store(params.image_location)


def save_image(
    kernel: Kernel,
    params: SaveParams,
    page_map: bytes,
    jump_back_entry: int,
    *,
    progress: Progress = lambda fraction, phase: None,
    checkpoint: Callable[[], None] = lambda: None,
) -> ImageSummary:
    """Write A's memory to ``params.image_location``; the previous image there
    stays valid until the new one is committed."""
    store = image_store(params)
    with kernel.vmcore() as core:
        layout = read_core_layout(core)
        meta = image_meta(params, page_map, jump_back_entry, layout.vmcoreinfo)
        total = max(layout.total, 1)
        done = 0
        with store.writer(
            meta, compression=params.compression, level=params.level, chunk_size=params.chunk_size
        ) as writer:
            for load in layout.loads:
                pos = 0
                while pos < load.size:
                    n = min(READ_SIZE, load.size - pos)
                    writer.add(load.paddr + pos, _read_exactly(core, load.offset + pos, n))
                    pos += n
                    done += n
                    progress(done / total, "saving")
                    checkpoint()
            return writer.commit()
