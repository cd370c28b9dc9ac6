"""The kernel interface, in one place.

Every kexec/reboot constant, the staged-load extension of DESIGN §2.2, the
``struct kexec_segment`` layout, the kimage entry-list encoding, the
``/proc/kexec_pgmap`` format and what each errno means live here and nowhere
else.  Values come from ``include/uapi/linux/kexec.h``, ``include/linux/kexec.h``,
``include/uapi/linux/reboot.h`` and ``kernel/kexec*.c`` (x86_64); the staged-load
values are this project's definition (DESIGN §2.2).

This module is pure: no I/O, no syscalls.
"""

from __future__ import annotations

import enum
import errno
import struct
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

# --------------------------------------------------------------------------
# Machine
# --------------------------------------------------------------------------

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

# x86_64 syscall numbers (arch/x86/entry/syscalls/syscall_64.tbl).
SYS_REBOOT = 169
SYS_KEXEC_LOAD = 246
# Kernel B's init loads its disk drivers with it (kexechibd/initramfs/init.py).
SYS_FINIT_MODULE = 313

# reboot(2) (include/uapi/linux/reboot.h).
LINUX_REBOOT_MAGIC1 = 0xFEE1DEAD
LINUX_REBOOT_MAGIC2 = 672274793
LINUX_REBOOT_CMD_KEXEC = 0x45584543
LINUX_REBOOT_CMD_POWER_OFF = 0x4321FEDC

# kexec_load(2) flags (include/uapi/linux/kexec.h).
KEXEC_ON_CRASH = 0x00000001
KEXEC_PRESERVE_CONTEXT = 0x00000002
KEXEC_UPDATE_ELFCOREHDR = 0x00000004
KEXEC_CRASH_HOTPLUG_SUPPORT = 0x00000008
KEXEC_DEBUG = 0x00000010
KEXEC_ARCH_MASK = 0xFFFF0000
KEXEC_ARCH_DEFAULT = 0 << 16
KEXEC_ARCH_X86_64 = 62 << 16
KEXEC_SEGMENT_MAX = 16

# Highest destination a segment may reach on x86_64 with 4-level paging
# (KEXEC_DESTINATION_MEMORY_LIMIT = MAXMEM - 1, MAX_PHYSMEM_BITS = 46).  A
# kernel running with 5-level paging allows 52 bits; the machine model and
# the lab guests (-cpu max,la57=off) use 4-level paging.
KEXEC_DESTINATION_MEMORY_LIMIT = (1 << 46) - 1

# The flags a kernel accepts (KEXEC_FLAGS in include/linux/kexec.h): crash
# always, preserve-context only with CONFIG_KEXEC_JUMP, stages only with the
# kexechib patch.
KEXEC_FLAGS_MAINLINE = KEXEC_ON_CRASH
KEXEC_FLAGS_JUMP = KEXEC_PRESERVE_CONTEXT


# --------------------------------------------------------------------------
# Staged load (DESIGN §2.2)
# --------------------------------------------------------------------------

KEXEC_STAGE_MASK = 0x00000300
KEXEC_STAGE_SEGMENT_MAX = 1024


class Stage(enum.IntEnum):
    """Which part of a staged load a ``kexec_load`` call is."""

    FULL = 0x00000000
    START = 0x00000100
    MID = 0x00000200
    FINAL = 0x00000300

    @classmethod
    def of(cls, flags: int) -> Stage:
        return cls(flags & KEXEC_STAGE_MASK)

    @property
    def segment_max(self) -> int:
        return KEXEC_SEGMENT_MAX if self is Stage.FULL else KEXEC_STAGE_SEGMENT_MAX


def load_flags(
    stage: Stage = Stage.FULL, *, preserve_context: bool = False, arch: int = KEXEC_ARCH_X86_64
) -> int:
    """The ``flags`` argument for one ``kexec_load`` call."""
    return int(stage) | (KEXEC_PRESERVE_CONTEXT if preserve_context else 0) | arch


# --------------------------------------------------------------------------
# struct kexec_segment
# --------------------------------------------------------------------------

# struct kexec_segment { const void *buf; size_t bufsz; const void *mem; size_t memsz; }
KEXEC_SEGMENT = struct.Struct("<QQQQ")
KEXEC_SEGMENT_CDEF = """
struct kexec_segment {
    const void *buf;
    size_t bufsz;
    const void *mem;
    size_t memsz;
};
"""


@dataclass(frozen=True, slots=True)
class Segment:
    """One segment of a kexec image: ``buf`` is copied to physical ``mem``;
    the rest of ``memsz`` is zero.  ``bufsz`` is ``len(buf)``."""

    buf: bytes | bytearray | memoryview
    mem: int
    memsz: int

    @property
    def bufsz(self) -> int:
        return len(self.buf)

    @property
    def end(self) -> int:
        return self.mem + self.memsz

    @classmethod
    def zero(cls, mem: int, memsz: int) -> Segment:
        """A segment with no buffer (a backup or zero-fill segment)."""
        return cls(b"", mem, memsz)

    def __repr__(self) -> str:
        return f"Segment(mem={self.mem:#x}, memsz={self.memsz:#x}, bufsz={self.bufsz:#x})"


def page_align_up(value: int) -> int:
    return (value + PAGE_SIZE - 1) & PAGE_MASK


def page_align_down(value: int) -> int:
    return value & PAGE_MASK


# --------------------------------------------------------------------------
# kimage entry list (include/linux/kexec.h), as relocation code walks it
# --------------------------------------------------------------------------

IND_DESTINATION = 1 << 0  # entry = next destination page
IND_INDIRECTION = 1 << 1  # entry = next page of entries
IND_DONE = 1 << 2  # end of list
IND_SOURCE = 1 << 3  # entry = source page for the current destination; dest += PAGE_SIZE
IND_ZERO = 1 << 4  # kexechib: zero the current destination page (no source); dest += PAGE_SIZE
IND_FLAGS = IND_DESTINATION | IND_INDIRECTION | IND_DONE | IND_SOURCE | IND_ZERO
ENTRIES_PER_PAGE = PAGE_SIZE // 8
KIMAGE_ENTRY = struct.Struct("<Q")


# --------------------------------------------------------------------------
# /proc/kexec_pgmap (DESIGN §2.2)
# --------------------------------------------------------------------------

# x86 boot_params ("zero page", arch/x86/include/uapi/asm/bootparam.h):
# acpi_rsdp_addr, a u64 that kernels of boot protocol 2.14 and later read.
# The kernel's own copy is /sys/kernel/boot_params/data; its decompressor
# stored there the RSDP it found (arch/x86/boot/compressed/misc.c).
BOOT_PARAMS_ACPI_RSDP_ADDR = 0x070
BOOT_PARAMS_PATH = "/sys/kernel/boot_params/data"
EFI_SYSTAB_PATH = "/sys/firmware/efi/systab"

PGMAP_PATH = "/proc/kexec_pgmap"
PGMAP_MAGIC = b"KXPGMAP1"
PGMAP_HEADER = struct.Struct("<8sII")
PGMAP_RECORD = struct.Struct("<QQQ")


@dataclass(frozen=True, slots=True)
class PageMapRun:
    """Destination pages ``dest_pfn..+npages`` have their sources at ``src_pfn..``."""

    dest_pfn: int
    src_pfn: int
    npages: int

    @property
    def dest_end(self) -> int:
        return self.dest_pfn + self.npages


class PageMapFormatError(ValueError):
    """``/proc/kexec_pgmap`` bytes that do not follow DESIGN §2.2."""


def coalesce_page_map(pairs: Iterable[tuple[int, int]]) -> Iterator[PageMapRun]:
    """Maximal runs from ``(dest_pfn, src_pfn)`` pairs sorted by ``dest_pfn``."""
    run: list[int] | None = None
    for dest, src in pairs:
        if run is not None and dest == run[0] + run[2] and src == run[1] + run[2]:
            run[2] += 1
            continue
        if run is not None:
            yield PageMapRun(run[0], run[1], run[2])
        run = [dest, src, 1]
    if run is not None:
        yield PageMapRun(run[0], run[1], run[2])


def encode_page_map(runs: Iterable[PageMapRun], page_size: int = PAGE_SIZE) -> bytes:
    parts = [PGMAP_HEADER.pack(PGMAP_MAGIC, page_size, 0)]
    parts.extend(PGMAP_RECORD.pack(r.dest_pfn, r.src_pfn, r.npages) for r in runs)
    return b"".join(parts)


def decode_page_map(data: bytes | memoryview) -> list[PageMapRun]:
    """Parse and validate ``/proc/kexec_pgmap``; an empty file is an empty map."""
    if len(data) == 0:
        return []
    if len(data) < PGMAP_HEADER.size:
        raise PageMapFormatError(f"page map truncated: {len(data)} bytes, header needs 16")
    magic, page_size, reserved = PGMAP_HEADER.unpack_from(data)
    if magic != PGMAP_MAGIC:
        raise PageMapFormatError(f"page map magic is {magic!r}, expected {PGMAP_MAGIC!r}")
    if page_size != PAGE_SIZE:
        raise PageMapFormatError(f"page map page size is {page_size}, expected {PAGE_SIZE}")
    if reserved != 0:
        raise PageMapFormatError("page map reserved header field is not zero")
    body = len(data) - PGMAP_HEADER.size
    if body % PGMAP_RECORD.size:
        raise PageMapFormatError(
            f"page map body is {body} bytes, not a multiple of {PGMAP_RECORD.size}"
        )
    runs: list[PageMapRun] = []
    for i, (dest, src, npages) in enumerate(PGMAP_RECORD.iter_unpack(data[PGMAP_HEADER.size :])):
        where = PGMAP_HEADER.size + i * PGMAP_RECORD.size
        if npages == 0:
            raise PageMapFormatError(f"page map record at offset {where} has no pages")
        if runs and dest < runs[-1].dest_end:
            raise PageMapFormatError(f"page map record at offset {where} is unsorted or overlaps")
        runs.append(PageMapRun(dest, src, npages))
    return runs


# --------------------------------------------------------------------------
# Errors: what each errno means, said so that a user knows what to do
# --------------------------------------------------------------------------


class KernelError(Exception):
    """A kernel refused a request.  ``errno`` is the kernel's answer (0 when
    the refusal did not come from the kernel); ``hint`` says what to do."""

    def __init__(self, operation: str, err: int, message: str, hint: str = "") -> None:
        self.operation = operation
        self.errno = err
        self.message = message
        self.hint = hint
        text = f"{operation}: {message}"
        if err:
            text += f" ({errno.errorcode.get(err, err)})"
        if hint:
            text += f"; {hint}"
        super().__init__(text)


class KexecNotPermitted(KernelError):
    """EPERM: capability, lockdown or ``kexec_load_disabled``."""


class KexecInvalid(KernelError):
    """EINVAL: flags or segment list the kernel does not accept."""


class KexecBadAddress(KernelError):
    """EADDRNOTAVAIL: unaligned or out-of-range destination."""


class KexecBusy(KernelError):
    """EBUSY: another kexec operation holds the kexec lock."""


class KexecNoMemory(KernelError):
    """ENOMEM: the kernel could not allocate pages for the image."""


class KexecUnsupported(KernelError):
    """ENOSYS: the kernel has no kexec at all."""


class KexecFault(KernelError):
    """EFAULT: a buffer the kernel was given could not be read."""


class RebootFailed(KernelError):
    """``reboot(2)`` returned an error."""


class GuardRefused(KernelError):
    """The structural safety guard refused a dangerous call (DESIGN §9)."""


def _describe_einval(flags: int, nr_segments: int) -> tuple[str, str]:
    stage = Stage.of(flags)
    if flags & KEXEC_ON_CRASH and stage is not Stage.FULL:
        return "a crash image cannot be loaded in stages", "load crash images with KS_full"
    if nr_segments > stage.segment_max:
        return (
            f"{nr_segments} segments exceed the limit of {stage.segment_max} per call",
            "split the load into more staged calls",
        )
    causes = []
    if flags & KEXEC_PRESERVE_CONTEXT:
        causes.append("this kernel lacks CONFIG_KEXEC_JUMP (preserve-context loads are refused)")
    if stage is not Stage.FULL:
        causes.append(
            "this kernel lacks staged-load support (the kexechib kernel patch)"
            if stage is Stage.START
            else "no staged load is in progress, or its preserve-context bit differs"
        )
    causes.append("segments overlap, have bufsz > memsz, or exceed half of RAM")
    return "the kernel rejected the request: " + "; or ".join(causes), (
        "check the kernel configuration with `kexechibctl status`"
    )


def kexec_load_error(err: int, flags: int, nr_segments: int) -> KernelError:
    """The exception for ``kexec_load`` failing with ``err`` (DESIGN §2.1, §2.2)."""
    op = "kexec_load"
    if err == errno.EPERM:
        return KexecNotPermitted(
            op,
            err,
            "not permitted",
            "needs CAP_SYS_BOOT, kernel.kexec_load_disabled=0 and no kernel lockdown "
            "(Secure Boot enables lockdown, which forbids kexec_load)",
        )
    if err == errno.EINVAL:
        message, hint = _describe_einval(flags, nr_segments)
        return KexecInvalid(op, err, message, hint)
    if err == errno.EADDRNOTAVAIL:
        return KexecBadAddress(
            op,
            err,
            "a segment destination is not page aligned or lies beyond the addressable limit",
            "segments must start and end on page boundaries inside physical memory",
        )
    if err == errno.EBUSY:
        return KexecBusy(op, err, "another kexec operation is in progress", "retry later")
    if err == errno.ENOMEM:
        return KexecNoMemory(
            op,
            err,
            "the kernel could not allocate pages for the image",
            "free memory, or use a smaller image",
        )
    if err == errno.ENOSYS:
        return KexecUnsupported(
            op, err, "this kernel has no kexec support", "use a kernel built with CONFIG_KEXEC"
        )
    if err == errno.EFAULT:
        return KexecFault(op, err, "a segment buffer could not be read", "")
    return KernelError(op, err, "failed", "")


def reboot_error(err: int, command: str) -> KernelError:
    op = f"reboot({command})"
    if err == errno.EPERM:
        return RebootFailed(op, err, "not permitted", "needs CAP_SYS_BOOT")
    if err == errno.EINVAL:
        return RebootFailed(op, err, "no kexec image is loaded", "load one first (kexec_load)")
    if err == errno.EBUSY:
        return RebootFailed(op, err, "another kexec operation is in progress", "retry later")
    return RebootFailed(op, err, "failed", "")


# /proc/kexec_pgmap is produced as it is read, one read() buffer per hold of
# the kexec lock (kernel patch 0014): a read that would continue into another
# state of the image than the one it began with at offset 0 fails with ESTALE,
# and the reader starts again.  Only another kexec caller changes the image
# meanwhile, so a few attempts are plenty.
PGMAP_READ_ATTEMPTS = 3


class PageMapUnavailable(KernelError):
    """``/proc/kexec_pgmap`` could not be read (ENOENT, EPERM, EBUSY, ESTALE)."""


def pgmap_error(err: int) -> KernelError:
    """The exception for reading ``/proc/kexec_pgmap`` failing with ``err``."""
    op = f"read {PGMAP_PATH}"
    if err == errno.ENOENT:
        return PageMapUnavailable(
            op,
            err,
            "this kernel has no staged-load support",
            "boot a kernel with the kexechib patch series (kernel/)",
        )
    if err == errno.EPERM:
        return PageMapUnavailable(
            op, err, "not permitted", "needs CAP_SYS_BOOT and no kernel lockdown (as kexec_load)"
        )
    if err == errno.EBUSY:
        return PageMapUnavailable(op, err, "another kexec operation is in progress", "retry later")
    if err == errno.ESTALE:
        return PageMapUnavailable(
            op,
            err,
            f"the image changed during each of {PGMAP_READ_ATTEMPTS} reads",
            "another process is loading kexec images; stop it and retry",
        )
    return PageMapUnavailable(op, err, "failed", "")


def total_memsz(segments: Sequence[Segment]) -> int:
    return sum(s.memsz for s in segments)


# ---------------------------------------------------------------------------
# FIEMAP (linux/fiemap.h, linux/fs.h): where a prepared image file's blocks
# are on its device (kexechibd/image/extents.py)
# ---------------------------------------------------------------------------

FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
FIEMAP_FLAG_SYNC = 0x1  # write dirty data out first: delayed allocations get blocks
FIEMAP_MAX_OFFSET = (1 << 64) - 1
# struct fiemap: fm_start, fm_length, fm_flags, fm_mapped_extents,
# fm_extent_count, fm_reserved
FIEMAP = struct.Struct("<QQIIII")
# struct fiemap_extent: fe_logical, fe_physical, fe_length, fe_reserved64[2],
# fe_flags, fe_reserved[3]
FIEMAP_EXTENT = struct.Struct("<QQQ16sI12s")

EXTENT_LAST = 0x1
EXTENT_MERGED = 0x1000  # the filesystem merged block-sized records: harmless
# Every other flag says the bytes are not simply at fe_physical on the device,
# or are not ours alone, or read back as something else through the filesystem.
EXTENT_FLAGS = {
    0x2: "UNKNOWN (location not known)",
    0x4: "DELALLOC (no block allocated yet)",
    0x8: "ENCODED (compressed or encrypted on disk)",
    0x80: "DATA_ENCRYPTED",
    0x100: "NOT_ALIGNED (not block-aligned on disk)",
    0x200: "DATA_INLINE (stored in metadata)",
    0x400: "DATA_TAIL (packed with other files' tails)",
    0x800: "UNWRITTEN (preallocated, never written: reads back as zeros through the "
    "filesystem, which would discard what we write there)",
    0x2000: "SHARED (shared with another file or a snapshot)",
}
