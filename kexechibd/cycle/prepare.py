"""Prepare in A: load kernel B with a staged, preserve-context load (DESIGN §1.1).

``plan_saver_load`` is pure: from B's files, the window and A's memory map it
lays out every segment.  ``load_saver`` talks to the kernel: ``KS_start`` with
everything but the parameters, read ``/proc/kexec_pgmap``, ``KS_final`` with
the parameters over the placeholder.  Any failure discards the staged image.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kexechibd import bootproto, cmdline, ranges
from kexechibd.cycle.elfcorehdr import build_elfcorehdr
from kexechibd.cycle.kexec_ops import discard_staged
from kexechibd.cycle.params import SaveParams, pack_params
from kexechibd.cycle.window import Window
from kexechibd.errors import ConfigError
from kexechibd.kernel import abi
from kexechibd.kernel.abi import PAGE_SIZE, Segment, page_align_down, page_align_up
from kexechibd.kernel.api import Kernel, MemoryKind, MemoryRange
from kexechibd.purgatory import CMDLINE_ROOM, EntryRegs, build_purgatory

PARAMS_JSON_ROOM = 64 << 10


@dataclass(frozen=True)
class SaverFiles:
    """Kernel B as the configuration names it."""

    kernel: bytes
    initrd: bytes
    extra_cmdline: str


@dataclass(frozen=True)
class SaverLoad:
    """Everything of B's image except the parameters."""

    segments: tuple[Segment, ...]  # sorted by address; includes the zero placeholder
    entry: int
    placeholder: Segment
    cmdline: str


def placeholder_size(window: Window) -> int:
    """Enough for the worst-case page map of the window plus the parameters."""
    pages = sum(r.size for r in window.ranges) // PAGE_SIZE
    worst_map = abi.PGMAP_HEADER.size + abi.PGMAP_RECORD.size * pages
    return page_align_up(worst_map + PARAMS_JSON_ROOM)


def saver_cmdline(
    window: Window, elfcorehdr_addr: int, extra: str, elfcorehdr_size: int = PAGE_SIZE
) -> str:
    # The ELF core header must not be RAM to B: B's kernel reads it as it
    # reads A's memory (x86 ioremap), which refuses RAM, and /proc/vmcore
    # is then missing (as kexec-tools does, B gets it outside its RAM).
    header = MemoryRange(
        elfcorehdr_addr, elfcorehdr_addr + page_align_up(elfcorehdr_size), MemoryKind.RESERVED
    )
    parts = [
        f"elfcorehdr={elfcorehdr_addr >> 10}K",
        cmdline.memmap_exactmap([*window.ranges, header]),
        "nokaslr",
        f"{cmdline.ROLE_PARAMETER}={cmdline.ROLE_SAVE}",
        cmdline.SAVE_TARGET_PARAMETER,
        f"{cmdline.ENABLE_KEXEC_PARAMETER}=1",
    ]
    if extra.strip():
        parts.append(extra.strip())
    return " ".join(parts)


class _Cursor:
    """Places segments one after another inside the window's main range."""

    def __init__(self, window: Window) -> None:
        self.window = window
        self.at = window.main.start

    def take(self, size: int, what: str, align: int = PAGE_SIZE) -> int:
        start = (self.at + align - 1) // align * align
        end = start + page_align_up(size)
        if end > self.window.main.end:
            raise ConfigError(
                f"B's window ({self.window.main.size >> 20} MiB) is too small: no room for {what} "
                f"({size >> 10} KiB at {start:#x}); configure a larger window"
            )
        self.at = end
        return start


def plan_saver_load(
    files: SaverFiles,
    window: Window,
    memory_map: Sequence[MemoryRange],
    *,
    vmcoreinfo: tuple[int, int] | None,
    purgatory: bytes,
    acpi_rsdp: int | None = None,
) -> SaverLoad:
    image = bootproto.BzImage.parse(files.kernel)
    # Whole pages only: a partial page at the end of a firmware RAM range
    # (QEMU's ends at 0x9fc00) is not memory Linux uses, and images hold pages.
    ram = [
        MemoryRange(page_align_up(r.start), page_align_down(r.end))
        for r in memory_map
        if r.kind is MemoryKind.RAM and page_align_down(r.end) > page_align_up(r.start)
    ]
    header = build_elfcorehdr(window.outside(ram), notes=[vmcoreinfo] if vmcoreinfo else [])

    cursor = _Cursor(window)
    kernel_addr = cursor.take(
        image.load_size, "the kernel", align=max(image.kernel_alignment, PAGE_SIZE)
    )
    hdr_addr = cursor.take(len(header), "the ELF core header")
    text = saver_cmdline(window, hdr_addr, files.extra_cmdline, len(header))
    if len(text) + CMDLINE_ROOM > image.cmdline_size:
        raise ConfigError(
            f"B's command line is {len(text)} bytes; the kernel accepts {image.cmdline_size} "
            f"and purgatory needs {CMDLINE_ROOM} more; shorten [saver] cmdline"
        )
    setup_addr = cursor.take(PAGE_SIZE + len(text) + CMDLINE_ROOM, "boot parameters")
    cmdline_addr = setup_addr + PAGE_SIZE
    initrd_addr = cursor.take(len(files.initrd) or PAGE_SIZE, "the initrd")
    reserve = placeholder_size(window)
    holder_addr = cursor.take(reserve, "the parameter placeholder")
    purgatory_addr = cursor.take(0, "purgatory")  # placed last; its size is known below

    params = bootproto.build_boot_params(
        image,
        kernel_addr=kernel_addr,
        cmdline_addr=cmdline_addr,
        # The placeholder counts as initrd: the kernel unpacks both archives.
        initrd_addr=initrd_addr,
        initrd_size=holder_addr + reserve - initrd_addr,
        e820=memory_map,
        # On a UEFI machine B finds ACPI (and so powers off) only through this.
        acpi_rsdp=acpi_rsdp,
    )
    setup = bytes(params) + text.encode() + b"\0"
    data = [
        Segment(image.kernel, kernel_addr, page_align_up(image.load_size)),
        Segment(header, hdr_addr, page_align_up(len(header))),
        Segment(setup, setup_addr, page_align_up(len(setup) + CMDLINE_ROOM)),
        Segment(files.initrd, initrd_addr, holder_addr - initrd_addr),
    ]
    purg = build_purgatory(
        purgatory,
        base=purgatory_addr,
        hashed=data,
        regs=EntryRegs(rsi=setup_addr, rip=kernel_addr + bootproto.ENTRY64_OFFSET),
        cmdline_end=cmdline_addr + len(text),
        cmdline_room=CMDLINE_ROOM,
    )
    if purg.segment.end > window.main.end:
        raise ConfigError("B's window is too small: no room for purgatory")
    placeholder = Segment.zero(holder_addr, reserve)
    used = [*data, placeholder, purg.segment]
    backups = [
        Segment.zero(r.start, r.size)
        for r in ranges.subtract(list(window.ranges), [(s.mem, s.end) for s in used])
        if r.size
    ]
    segments = tuple(sorted([*used, *backups], key=lambda s: s.mem))
    return SaverLoad(segments, purg.entry, placeholder, text)


def load_saver(
    kernel: Kernel,
    plan: SaverLoad,
    params: SaveParams,
    *,
    staged: bool = True,
    checkpoint: Callable[[], None] = lambda: None,
) -> bytes:
    """Load B (DESIGN §1.1 steps 1–3); returns the page map B receives.

    Without staged-load support (a mainline kernel with kexec jump) B is
    loaded in one ``KS_full`` call with the parameters already in place and
    no page map: enough for a checkpoint and jumps between the kernels, whose
    images restore through their own backup map.  ``checkpoint`` is called
    between steps (cancellation raises from it)."""
    if not staged:
        archive = _params_archive(plan, params, b"")
        segments = [archive if s is plan.placeholder else s for s in plan.segments]
        kernel.kexec_load(plan.entry, segments, abi.load_flags(preserve_context=True))
        return b""
    flags_start = abi.load_flags(abi.Stage.START, preserve_context=True)
    flags_final = abi.load_flags(abi.Stage.FINAL, preserve_context=True)
    if len(plan.segments) > abi.KEXEC_STAGE_SEGMENT_MAX:
        raise ConfigError("B's window is too fragmented for one staged call")
    kernel.kexec_load(plan.entry, plan.segments, flags_start)
    try:
        checkpoint()
        page_map = kernel.kexec_pgmap()
        abi.decode_page_map(page_map)
        archive = _params_archive(plan, params, page_map)
        checkpoint()
        kernel.kexec_load(plan.entry, [archive], flags_final)
    except BaseException:
        discard_staged(kernel)
        raise
    return page_map


def _params_archive(plan: SaverLoad, params: SaveParams, page_map: bytes) -> Segment:
    """The segment that fills the placeholder with B's parameters."""
    archive = pack_params(params, page_map)
    if len(archive) > plan.placeholder.memsz:
        raise ConfigError(
            f"B's parameters ({len(archive)} bytes) exceed the placeholder "
            f"({plan.placeholder.memsz} bytes)"
        )
    return Segment(archive, plan.placeholder.mem, plan.placeholder.memsz)
