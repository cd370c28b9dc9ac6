"""Export an image as a plain ELF core for readelf, gdb or crash.

Layout: ELF header; program headers (one PT_NOTE, then one PT_LOAD per
maximal run, in address order); with 65535 or more program headers, one
section header whose ``sh_info`` holds the count (PN_XNUM); notes (A's
VMCOREINFO, the identity and page map of the image); the data runs' bytes
from the next page boundary on, uncompressed.  Zero runs are PT_LOADs with
``p_filesz`` 0.  ``p_paddr`` is the physical address; ``p_vaddr`` is the same
(A's virtual layout is not known here; crash works from ``p_paddr`` and
VMCOREINFO).  Both passes stream: memory is a few chunks, not the image.

``export_image`` writes the core to a file the way images are kept: private
(0600, it holds all of memory), under a temporary name in the target's
directory, published under the target's name only once whole and fsynced,
never over an existing file, and removed on any failure (a chunk whose
checksum fails included).
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from pathlib import Path
from typing import BinaryIO

from kexechibd.image import format
from kexechibd.image.fileio import fsync, fsync_dir, write_all
from kexechibd.image.format import NOTE_OWNER, PHDR, SHDR, VMCOREINFO_OWNER
from kexechibd.image.meta import ImageError
from kexechibd.image.reader import ImageReader

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

    write_all(
        out, format.encode_elf_prefix(format.PN_XNUM if xnum else phnum, shoff, 1 if xnum else 0)
    )
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
        batch.append(PHDR.pack(format.PT_LOAD, format.PF_RWX, offset, addr, addr, filesz, size, 0))
        offset += filesz
        if len(batch) >= _BATCH:
            write_all(out, b"".join(batch))
            batch.clear()
    if count != loads:
        raise ImageError(f"image has {count} runs, its header says {loads}")
    write_all(out, b"".join(batch))
    if xnum:
        write_all(out, SHDR.pack(0, 0, 0, 0, 0, 0, 0, phnum, 0, 0))
    write_all(out, notes)
    write_all(out, bytes(data_at - notes_at - len(notes)))
    for chunk in reader.chunks():
        write_all(out, chunk.data)


class ExportError(ImageError):
    """The core could not be written where it was asked for (the target
    exists, or its directory refused the file); nothing was left there."""


# Filesystems without hard links (vfat, some FUSE ones) answer these.
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)


def export_image(reader: ImageReader, target: Path) -> None:
    """Export the image behind ``reader`` as an ELF core to the new file
    ``target``: written as a 0600 temporary file beside it, fsynced, then
    published under ``target`` (a hard link, which never replaces a file,
    with a check-then-rename on filesystems without links).  Raises
    ``ExportError`` when ``target`` exists or cannot be made, and whatever
    reading the image raises; in every case ``target`` is left as it was
    and the temporary file is removed."""
    target = Path(target)
    if os.path.lexists(target):
        raise _exists(target)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except OSError as e:
        raise ExportError(f"cannot create a file in {target.parent}: {e.strerror}") from e
    published = False
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), 0o600)  # a default ACL could have widened the mode
            export_elf_core(reader, out)
            fsync(out)
        _publish(tmp, target)
        published = True
        fsync_dir(target.parent)
    except OSError as e:
        if published:
            raise ExportError(
                f"{target} is written but its directory could not be synced: {e}"
            ) from e
        raise ExportError(f"cannot write {target}: {e.strerror or e}") from e
    finally:
        # Published by a link, or not published at all: either way the
        # temporary name goes (after a rename it is gone already).
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _publish(tmp: Path, target: Path) -> None:
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise _exists(target) from None
    except OSError as e:
        if e.errno not in _NO_LINKS:
            raise
        if os.path.lexists(target):  # racy, as any check-then-rename is
            raise _exists(target) from None
        os.rename(tmp, target)


def _exists(target: Path) -> ExportError:
    return ExportError(
        f"{target} exists; an export never replaces a file (it may be another image "
        "or a core you still need): remove it or name another"
    )
